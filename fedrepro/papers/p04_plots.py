"""Notebook 04's figures: Figure 9's hyper-parameter curves, Figure 11's utility–privacy scatter,
reconstruction grids like Figures 7 and 10, and the per-victim SSIM spread behind every ASR."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedrepro.metrics import ASR_THRESHOLD
from fedrepro.papers.p04_leakage import Leakage
from fedrepro.plots import image_grid

ACCURACY_COLOR, SSIM_COLOR = "#1b9e77", "#d95f02"


def _reported(report, key: str | None) -> float | None:
    return None if report is None or key is None else report.reported(key)


def plot_hyperparameter_study(panels: Mapping[str, Sequence[Mapping[str, Any]]], baseline: Mapping[str, Any] | None = None,
                              report=None, title: str = "") -> Figure:
    """Figure 9: one panel per hyper-parameter, accuracy (left axis) and SSIM (right axis) per value.

    ``panels`` maps a panel title to rows with ``label`` (the x tick), ``accuracy``/``ssim`` and their
    keys; the paper's values (where its text gives them) are drawn as open markers, the undefended
    CNN as dashed lines.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels.items()):
        x = np.arange(len(rows))
        twin = ax.twinx()
        acc = [r.get("accuracy", np.nan) for r in rows]
        ssim = [r.get("ssim", np.nan) for r in rows]
        ax.plot(x, acc, "-o", color=ACCURACY_COLOR, label="accuracy (ours)")
        twin.plot(x, ssim, "-s", color=SSIM_COLOR, label="SSIM (ours)")
        paper_acc = [_reported(report, r.get("accuracy_key")) for r in rows]
        paper_ssim = [_reported(report, r.get("ssim_key")) for r in rows]
        for xi, value in zip(x, paper_acc):
            if value is not None:
                ax.plot(xi, value, "o", mfc="none", mec=ACCURACY_COLOR, ms=10, mew=1.5)
        for xi, value in zip(x, paper_ssim):
            if value is not None:
                twin.plot(xi, value, "s", mfc="none", mec=SSIM_COLOR, ms=10, mew=1.5)
        if baseline is not None:
            if baseline.get("accuracy") is not None:
                ax.axhline(baseline["accuracy"], color=ACCURACY_COLOR, linestyle="--", alpha=0.6)
            if baseline.get("ssim") is not None:
                twin.axhline(baseline["ssim"], color=SSIM_COLOR, linestyle="--", alpha=0.6)
        twin.axhline(ASR_THRESHOLD, color="red", linewidth=0.8, alpha=0.4)
        ax.set_xticks(x, [str(r["label"]) for r in rows], rotation=30 if len(rows) > 5 else 0, fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("test accuracy (%)", color=ACCURACY_COLOR)
        twin.set_ylabel("SSIM", color=SSIM_COLOR)
        twin.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=ACCURACY_COLOR, marker="o", label="accuracy (ours)"),
               Line2D([], [], color=SSIM_COLOR, marker="s", label="SSIM (ours)"),
               Line2D([], [], color="gray", marker="o", mfc="none", linestyle="none", label="paper (text of Sec. VI-A)"),
               Line2D([], [], color="gray", linestyle="--", label="CNN without defense")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


MARKERS = {"cnn": "o", "resnet18": "s", "vit": "^"}


def plot_utility_privacy(rows: Sequence[Mapping[str, Any]], report=None, title: str = "") -> Figure:
    """Figure 11: test accuracy against 1 − SSIM; colour = dataset, marker = model, open = no defense,
    filled = CVB. Right of the red line (SSIM < 0.5 on average) counts as privacy preserving. A second
    panel shows the paper's numbers for the same settings when it reports them."""
    panels = [("ours", {r["label"]: (r.get("accuracy"), r.get("ssim")) for r in rows})]
    if report is not None:
        paper = {r["label"]: (_reported(report, r.get("accuracy_key")), _reported(report, r.get("ssim_key"))) for r in rows}
        if any(a is not None and s is not None for a, s in paper.values()):
            panels.append(("paper", paper))
    datasets = sorted({r["dataset"] for r in rows})
    colors = {d: plt.get_cmap("tab10")(i) for i, d in enumerate(datasets)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False, sharey=False)
    for ax, (name, values) in zip(axes[0], panels):
        for r in rows:
            accuracy, ssim = values[r["label"]]
            if accuracy is None or ssim is None:
                continue
            filled = r["defense"] != "none"
            ax.scatter(1 - ssim, accuracy, marker=MARKERS.get(r["model"], "D"), s=70,
                       facecolors=colors[r["dataset"]] if filled else "none", edgecolors=colors[r["dataset"]], linewidths=1.5)
            if r["defense"] not in ("none", "cvb"):  # variants: name them
                ax.annotate(r["defense"], (1 - ssim, accuracy), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.axvline(1 - ASR_THRESHOLD, color="red", linewidth=1)
        ax.set(xlabel="1 − SSIM (privacy, higher is better)", ylabel="test accuracy (%)", title=name, xlim=(0, 1))
    accuracies = [a for _, values in panels for a, s in values.values() if a is not None and s is not None]
    if accuracies:
        low, high = min(accuracies), max(accuracies)
        pad = max(1.0, 0.08 * (high - low))
        for ax in axes[0]:
            ax.set_ylim(low - pad, high + pad)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[d], marker="o", linestyle="none", label=d) for d in datasets]
    handles += [Line2D([], [], color="gray", marker=MARKERS.get(m, "D"), linestyle="none", mfc="none", label=m)
                for m in sorted({r["model"] for r in rows})]
    handles += [Line2D([], [], color="gray", marker="o", linestyle="none", mfc="none", label="no defense"),
                Line2D([], [], color="gray", marker="o", linestyle="none", label="CVB")]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstruction_grid(leakages: Sequence[Leakage], labels: Sequence[str] | None = None, count: int = 8,
                        scale: float = 1.1) -> Figure:
    """Figures 7 / 10: the victims' originals, then each setting's reconstructions with their SSIM."""
    if not leakages:
        raise ValueError("nothing to show")
    count = min(count, len(leakages[0].originals))
    rows = [leakages[0].originals[:count]] + [found.reconstructions[:count] for found in leakages]
    names = ["original"] + list(labels or [found.setting for found in leakages])
    captions = [[""] * count] + [[f"SSIM {v:.2f}" for v in found.ssim[:count]] for found in leakages]
    return image_grid(rows, row_labels=names, captions=captions, scale=scale)


def reconstruction_grids(grids: Mapping[str, tuple[Sequence[Leakage], Sequence[str]]], count: int = 8,
                         title: str = "", tier: str = "") -> list[Figure]:
    """One :func:`reconstruction_grid` per entry of ``grids`` (e.g. Figure 10's datasets, from
    :func:`~fedrepro.papers.p04_tables.figure_10`), titled ``"<title>: <name> (<tier> tier)"``."""
    figures = []
    for name, (leakages, labels) in grids.items():
        fig = reconstruction_grid(leakages, labels, count=count)
        fig.suptitle(f"{title}: {name}" + (f" ({tier} tier)" if tier else ""), y=1.02)
        figures.append(fig)
    return figures


def plot_ssim_spread(leakages: Sequence[Leakage], labels: Sequence[str] | None = None, title: str = "") -> Figure:
    """Every victim's SSIM per setting (the ASR is the share above the red 0.5 line)."""
    labels = list(labels or [found.setting for found in leakages])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(leakages) + 2), 3.6))
    rng = np.random.default_rng(0)
    for i, found in enumerate(leakages):
        jitter = rng.uniform(-0.15, 0.15, len(found.ssim))
        ax.scatter(i + jitter, found.ssim, s=14, alpha=0.7)
        ax.plot([i - 0.3, i + 0.3], [found.ssim_mean] * 2, color="black")
        ax.text(i, 1.02, f"ASR {found.asr:.0f}%", ha="center", fontsize=8)
    ax.axhline(ASR_THRESHOLD, color="red", linewidth=1)
    ax.set_xticks(range(len(leakages)), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="SSIM per victim", ylim=(min(0, ax.get_ylim()[0]), 1.1))
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, pad=16)
    fig.tight_layout()
    return fig


def plot_gradient_stochasticity(similarities: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Per layer (weights only), how alike repeated victim gradients of one image are, for several models:
    a cosine of 1 is a deterministic gradient; the layers from a bottleneck's decoder on are stochastic."""
    fig, axes = plt.subplots(1, len(similarities), figsize=(4.5 * len(similarities), 3.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], similarities.items()):
        names = [k for k in values if k.endswith("weight")]
        short = [k.removesuffix(".weight").replace("layers.", "") for k in names]
        colors = ["#66a61e" if any(t in k for t in ("encoder", "decoder", ".mu", ".sigma")) else "#1f78b4" for k in names]
        ax.bar(range(len(names)), [values[k] for k in names], color=colors)
        ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=7)
        ax.set(ylim=(min(0.0, min(values[k] for k in names) - 0.05), 1.05), ylabel="mean cosine between draws", title=name)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
