"""Notebook 06's figures: the privacy matrix as heatmaps (defense × attack, one panel per training state, the
best attack per defense outlined), the privacy–utility scatter with its Pareto front, and reconstruction grids
of the best attack on each defense."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fedrepro.metrics import ASR_THRESHOLD
from fedrepro.plots import image_grid


def plot_matrix(matrices: Mapping[str, np.ndarray], defenses: Sequence[str], attacks: Sequence[str],
                what: str = "mean SSIM", title: str = "", vmax: float = 1.0) -> Figure:
    """One heatmap per state (``matrices``: state -> ``(defenses, attacks)`` array, NaN = not applicable).

    Each value is written in its cell; the best attack of each defense (the row's maximum) is outlined in
    red; not applicable cells are grey and marked n/a."""
    states = list(matrices)
    width = 1.6 + 0.62 * len(attacks)
    fig, axes = plt.subplots(1, len(states), figsize=(width * len(states), 0.9 + 0.42 * len(defenses)), squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#dddddd")
    image = None
    for ax, state in zip(axes[0], states):
        values = np.asarray(matrices[state], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        for i in range(values.shape[0]):
            row = values[i]
            best = int(np.nanargmax(row)) if np.isfinite(row).any() else None
            for j in range(values.shape[1]):
                if np.isnan(row[j]):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="#777777")
                    continue
                ax.text(j, i, f"{row[j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if row[j] > 0.6 * vmax else "white", fontweight="bold" if j == best else None)
            if best is not None:
                ax.add_patch(Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.8))
        ax.set_xticks(range(len(attacks)))
        ax.set_xticklabels(attacks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(defenses)))
        ax.set_yticklabels(defenses, fontsize=7)
        ax.set_title(state, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=what)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The points no other point beats on both axes (higher accuracy *and* lower worst-case SSIM), by SSIM."""
    front = [p for p in points
             if not any(q["accuracy"] >= p["accuracy"] and q["ssim"] <= p["ssim"]
                        and (q["accuracy"] > p["accuracy"] or q["ssim"] < p["ssim"]) for q in points)]
    return sorted(front, key=lambda p: p["ssim"])


def plot_privacy_utility(points: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Accuracy against the worst-case SSIM (the best attack at the state where it does best), one point per
    defense, the Pareto front as a line; left of the dotted line (SSIM 0.5) the best attack fails on
    average."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in points:
        ax.scatter(p["ssim"], p["accuracy"], s=28, zorder=3)
        ax.annotate(f"{p['defense']}\n({p['attack']}, {p['state']})", (p["ssim"], p["accuracy"]), fontsize=6,
                    xytext=(4, 3), textcoords="offset points")
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([p["ssim"] for p in front], [p["accuracy"] for p in front], "--", color="tab:red", lw=1,
                label="Pareto front", zorder=2)
        ax.legend(fontsize=7, loc="lower right")
    ax.axvline(ASR_THRESHOLD, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("worst-case SSIM (best attack, any state): lower is more private")
    ax.set_ylabel("test accuracy (%) after FedAvg")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def best_attack_grid(originals, cells: Sequence[Any], count: int = 4, scale: float = 1.1) -> Figure:
    """Originals on top, then the reconstructions of each given cell (e.g. the best attack per defense), captioned
    with the per-image SSIM."""
    n = min(count, len(originals))
    rows = [originals[:n]] + [c.reconstructions[:n] for c in cells]
    labels = ["original"] + [f"{c.defense}\n{c.attack}\n{c.state}" for c in cells]
    captions = [[""] * n] + [[f"SSIM {v:.2f}" for v in c.ssim[:n]] for c in cells]
    return image_grid(rows, labels, captions, scale=scale)
