"""Paper 01's figures: transfer-attack bars (Figures 2–3), accuracy loss with adversarial training
(Figure 4, appendix 6–7) and robust accuracy under a train-time attacker (Figure 5, appendix 8–9)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from fedrepro.robustness.threat import TransferResult


def plot_transfer(results: Mapping[str, TransferResult], pairs: Sequence[tuple[str, str, str]],
                  title: str = "Transfer attacks") -> Figure:
    """One panel per setting (e.g. ε): for each (generator, fp32 target, int8 target), the accuracy on the
    generator's adversarial examples of the fp32 target and of its int8 version (higher is better)."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False, sharey=True)
    for ax, (setting, result) in zip(axes[0], results.items()):
        labels, fp32, int8 = [], [], []
        for generator, target, target_int8 in pairs:
            if generator not in result.accuracy or target not in result.accuracy[generator]:
                continue
            labels.append(f"{generator}\n→ {target}")
            fp32.append(100 * result.accuracy[generator][target])
            int8.append(100 * result.accuracy[generator].get(target_int8, float("nan")))
        positions = range(len(labels))
        ax.bar([p - 0.2 for p in positions], fp32, width=0.4, label="fp32 target")
        ax.bar([p + 0.2 for p in positions], int8, width=0.4, label="int8 target")
        ax.set_xticks(list(positions), labels, fontsize=7)
        ax.set_title(setting, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy under attack (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_figure_2_3(transfers: Mapping[tuple[float, str], TransferResult], epsilons: Sequence[float], title: str,
                    method: str = "pgd") -> Figure:
    """Figures 2–3: one panel per ε with ``method``; every pair of the normal and the DP models as
    generator and fp32 target, beside the target's int8 version."""
    names = ["normal"] + [f"DP ε={e:g}" for e in epsilons]
    return plot_transfer({f"ε = {eps:g} ({method.upper()})": transfers[(eps, method)] for eps in epsilons},
                         [(g, t, f"{t} int8") for g in names for t in names], title=title)


def plot_share_curves(rows: Sequence[Mapping], value: str, group: str, panel: str, ylabel: str,
                      title: str) -> Figure:
    """Lines of ``value`` (fraction) against ``share`` for each ``group``, one panel per ``panel`` value."""
    panels = list(dict.fromkeys(r[panel] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.2), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], panels):
        subset = [r for r in rows if r[panel] == name]
        for key in dict.fromkeys(r[group] for r in subset):
            points = sorted((r["share"], 100 * r[value]) for r in subset if r[group] == key)
            ax.plot([100 * s for s, _ in points], [v for _, v in points], marker="o", label=str(key))
        ax.set(title=str(name), xlabel="adversarial share of the training data (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
