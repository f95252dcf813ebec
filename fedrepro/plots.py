"""Plots a person would rather look at than read: learning curves and image grids."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_history(history: Sequence[dict[str, float]], paper_accuracy: float | None = None,
                 title: str = "FedAvg", label: str = "measured") -> Figure:
    """Test accuracy (%) per round, with the paper's reported accuracy as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds = [h["round"] for h in history]
    ax.plot(rounds, [100 * h["test_accuracy"] for h in history], marker="o", markersize=3, label=label)
    if paper_accuracy is not None:
        ax.axhline(paper_accuracy, color="gray", linestyle="--", label=f"paper: {paper_accuracy:.2f}%")
    ax.set(xlabel="communication round", ylabel="test accuracy (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are counts: 1, 2, 3, not 1.25
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def image_grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str] = (),
               captions: Sequence[Sequence[str]] = (), scale: float = 1.2) -> Figure:
    """A grid of [0, 1] images (each row a (N, C, H, W) tensor), optional row labels and per-image captions."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + 0.3 * bool(captions)), squeeze=False)
    for i, images in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images):
                ax.axis("off")
                continue
            image = images[j].detach().cpu().clamp(0, 1)
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0))
            if captions and i < len(captions) and j < len(captions[i]):
                ax.set_xlabel(captions[i][j], fontsize=7)
        if i < len(row_labels):
            axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    return fig
