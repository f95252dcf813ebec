"""Paper 02's figures (Morelle 2024), drawn from the runs of :mod:`fedrepro.papers.p02_clipping`.

Figure 1 (accuracy against ε), Figure 2 (per-layer gradient magnitudes), Figure 3 (the three clipping
strategies across the noise sweep), the adaptive thresholds per round, the same sweep over more
clients (beyond the paper) and a σ slider over a finished sweep.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from fedrepro.papers.p02_clipping import PrivateRun, by_strategy

STYLE = {
    "flat": dict(color="tab:blue", marker="o", label="flat"),
    "per_layer_adaptive": dict(color="tab:orange", marker="s", label="per-layer adaptive"),
    "per_layer_uniform": dict(color="tab:green", marker="^", label="per-layer uniform"),
    "per_layer": dict(color="tab:purple", marker="D", label="per-layer (paper's list)"),
}


def _style(strategy: str) -> dict:
    return dict(STYLE.get(strategy, dict(marker="x", label=strategy)))


def _baseline(ax, baseline: PrivateRun | None, metric: str) -> None:
    if baseline is not None:
        ax.axhline(getattr(baseline, metric), color="gray", linestyle="--",
                   label=f"non-private: {getattr(baseline, metric):.3f}")


def plot_accuracy_vs_epsilon(runs: Sequence[PrivateRun], strategies: Sequence[str] | None = None,
                             baseline: PrivateRun | None = None, metric: str = "final_accuracy",
                             title: str = "Test accuracy against the privacy budget", ax=None) -> Figure:
    """Figure 1: accuracy against ε on a log scale, one line per strategy, the non-private run dashed."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.8))
    for strategy, group in by_strategy(runs).items():
        if strategies is not None and strategy not in strategies:
            continue
        points = [(r.epsilon, getattr(r, metric)) for r in group if math.isfinite(r.epsilon)]
        ax.plot(*zip(*points), **_style(strategy))
    _baseline(ax, baseline, metric)
    ax.set_xscale("log")
    ax.set(xlabel=f"ε (log scale, δ = {runs[0].delta:g}, {runs[0].accountant.upper()})",
           ylabel="test accuracy" if metric == "final_accuracy" else "mean test accuracy over rounds", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_client_counts(runs: Sequence[PrivateRun], baseline: PrivateRun, wide_runs: Sequence[PrivateRun],
                       wide_baseline: PrivateRun, metric: str = "final_accuracy") -> Figure:
    """Figure 1 for the paper's clients (left) beside the same images over more clients (right), same y-axis."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    plot_accuracy_vs_epsilon(runs, baseline=baseline, metric=metric, title=f"{runs[0].num_clients} clients", ax=axes[0])
    plot_accuracy_vs_epsilon(wide_runs, baseline=wide_baseline, metric=metric,
                             title=f"{wide_runs[0].num_clients} clients", ax=axes[1])
    return fig


def plot_gradient_magnitudes(entries: Mapping[str, Mapping[str, torch.Tensor]], title: str = "Gradient magnitudes per layer") -> Figure:
    """Figure 2: box plot of |∂L/∂w| per layer (conv and linear weights), one box per layer and model state."""
    states = list(entries)
    layers = list(next(iter(entries.values())))
    fig, ax = plt.subplots(figsize=(min(11, max(6, 0.7 * len(layers) * len(states))), 3.8))
    width = 0.8 / len(states)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, state in enumerate(states):
        data = [entries[state][layer].clamp_min(1e-12).numpy() for layer in layers]
        positions = [i + (k - (len(states) - 1) / 2) * width for i in range(len(layers))]
        box = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set(facecolor=colors[k % len(colors)], alpha=0.5)
        ax.plot([], [], color=colors[k % len(colors)], linewidth=6, alpha=0.5, label=state)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_yscale("log")
    ax.set(ylabel="|gradient| per weight (log scale)", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_strategy_comparison(runs: Sequence[PrivateRun], baseline: PrivateRun | None = None,
                             paper: Mapping[str, float] | None = None, metric: str = "final_accuracy",
                             title: str = "Clipping strategies across the noise sweep") -> Figure:
    """Figure 3: accuracy against σ (left) and against ε on a linear scale, as the paper (right).

    ``paper`` maps a strategy to the paper's accuracy at the smallest σ (drawn as open stars there).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    smallest = min(r.noise_multiplier for r in runs)
    for strategy, group in by_strategy(runs).items():
        style = _style(strategy)
        left.plot([r.noise_multiplier for r in group], [getattr(r, metric) for r in group], **style)
        finite = [(r.epsilon, getattr(r, metric)) for r in group if math.isfinite(r.epsilon)]
        right.plot(*zip(*finite), **style)
        if paper and strategy in paper:
            eps = next(r.epsilon for r in group if r.noise_multiplier == smallest)
            for ax, x in ((left, smallest), (right, eps)):
                ax.plot([x], [paper[strategy]], marker="*", markersize=13, markerfacecolor="none",
                        markeredgecolor=style.get("color", "black"), linestyle="none")
    if paper:
        left.plot([], [], marker="*", markerfacecolor="none", markeredgecolor="black", linestyle="none",
                  markersize=11, label="paper, last run")
    for ax in (left, right):
        _baseline(ax, baseline, metric)
        ax.grid(alpha=0.3)
        ax.set_ylabel("test accuracy" if metric == "final_accuracy" else "mean test accuracy over rounds")
    left.set(xlabel="noise multiplier σ", title=title)
    left.invert_xaxis()
    right.set(xlabel=f"ε (δ = {runs[0].delta:g}, {runs[0].accountant.upper()})", title="the same runs against ε")
    left.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_thresholds(thresholds: Sequence[Sequence[float]], layers: Sequence[str], uniform: float,
                    paper: Sequence[float] | None = None, title: str = "Per-layer adaptive thresholds S_j") -> Figure:
    """The adaptive S_j per round beside the uniform S/√m and the paper's explicit list."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(layers))
    for r, values in enumerate(thresholds, start=1):
        ax.plot(x, values, marker="o", alpha=0.35 + 0.65 * r / len(thresholds), color="tab:orange",
                label="adaptive, by round (darker = later)" if r == len(thresholds) else None)
    ax.axhline(uniform, color="tab:green", linestyle=":", label=f"uniform S/√m = {uniform:.3f}")
    if paper is not None:
        ax.plot(x, paper, marker="D", color="tab:purple", linestyle="--", label="paper's list")
    ax.set_xticks(list(x), layers)
    ax.set(ylabel="threshold S_j", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_explorer(runs: Sequence[PrivateRun], baseline: PrivateRun | None = None, metric: str = "final_accuracy"):
    """A σ slider over a precomputed sweep: ε and each strategy's accuracy at that σ, marked on the curves.

    Built with ``ipywidgets.interact``, so executed headlessly (papermill, nbval) it renders once
    at the default σ (the smallest, the paper's last run).
    """
    import ipywidgets as widgets

    sigmas = sorted({r.noise_multiplier for r in runs}, reverse=True)
    lookup = {(r.strategy, r.noise_multiplier): r for r in runs}
    strategies = list(by_strategy(runs))

    def show(sigma: float) -> None:
        fig = plot_accuracy_vs_epsilon(runs, baseline=baseline, metric=metric, title=f"σ = {sigma:.3g}")
        ax = fig.axes[0]
        lines = []
        for strategy in strategies:
            run = lookup.get((strategy, sigma))
            if run is None:
                continue
            ax.plot([run.epsilon], [getattr(run, metric)], marker="o", markersize=14, markerfacecolor="none",
                    markeredgecolor="black")
            lines.append(f"{_style(strategy)['label']}: {getattr(run, metric):.3f}")
        eps = next(r.epsilon for r in runs if r.noise_multiplier == sigma)
        print(f"σ = {sigma:.3g} → ε = {eps:.3g} (δ = {runs[0].delta:g}); accuracy " + ", ".join(lines))
        plt.show()

    slider = widgets.SelectionSlider(options=[(f"{s:.3g}", s) for s in sigmas], value=sigmas[-1],
                                     description="σ", continuous_update=False)
    return widgets.interact(show, sigma=slider)
