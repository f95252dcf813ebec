"""Paper 03 (slides on Geiping et al., *Inverting Gradients*): one experiment row at a time.

A *row* is one setting of one experiment — a model in some training state, optionally a gradient
defense — attacked on the same victims: each victim (one CIFAR-10 image) computes its shared
gradient as a client would, the server runs Inverting Gradients on it, and the row keeps the
originals, the reconstructions and their per-image MSE / PSNR / SSIM (:mod:`fedrepro.metrics`
conventions: de-normalised images in [0, 1], data range 1, per image then averaged).

Choices that change numbers, made once here:

- **BatchNorm mode.** The victim computes its gradient in **eval mode** by default (BatchNorm uses
  its running statistics, dropout is off), as Geiping et al.'s code does (``model.eval()`` before
  the gradient, in ``reconstruct_image.py`` and their notebooks); the attacker runs the same mode.
  ``batchnorm="train"`` makes both use batch statistics instead (for a single image: statistics over
  its pixels), the way a client's real training step would.
- **Labels** are known to the server (the papers' default; iDLG recovers them exactly anyway for
  single images).
- **Several local steps** (:func:`multistep_rows`): a client holding several images sends either
  its gradient or its model update ``w0 - wK`` after ``K`` plain-SGD steps; the server attacks the
  update with ``ig_multistep``, knowing ``K``, the local learning rate and batch size.
- **Training** ("trained" / "partially trained" networks) is plain centralised training on a
  CIFAR-10 subset with FedAvg's loss and optimizers (Adam by default); "partially trained" is a
  snapshot of the same run after fewer steps. ``augment=True`` adds random crop (4-pixel zero
  padding) and horizontal flip, the augmentation Geiping et al. train with.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from fedrepro import metrics
from fedrepro.attacks import ATTACKS, LocalTraining, ServerView, client_update, run_attack
from fedrepro.data import ImageDataset
from fedrepro.defenses import DEFENSES
from fedrepro.fl import OPTIMIZERS, FedAvgConfig, batch_order, evaluate, model_loss
from fedrepro.runtime import generator, get_device

#: Notebook 03's experiments, for its ``experiments`` parameter.
EXPERIMENTS = ("training", "architectures", "noise", "pruning", "multistep")
BATCHNORM_MODES = ("eval", "train")


# --- models -----------------------------------------------------------------------------------------

BATCHNORM_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenetv2")
"""Models built with BatchNorm here, as Geiping et al.'s ResNets and MobileNetV2 (fedrepro's ResNets
default to GroupNorm for opacus)."""


def build_paper_model(name: str, dataset: ImageDataset, seed: int) -> nn.Module:
    """``name`` from :data:`fedrepro.models.MODELS` with BatchNorm where paper 03 has it, initialised
    from ``(seed, name)`` so every tier and experiment starts from the same weights."""
    from fedrepro.models import build_model

    options = {"norm": "batch"} if name in BATCHNORM_MODELS else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator(seed, "model", name).initial_seed())
        return build_model(name, in_channels=dataset.channels, num_classes=dataset.num_classes,
                           image_size=dataset.image_size, **options)


def per_model(values: Mapping[str, Any], name: str, what: str) -> Any:
    """``values[name]``, else ``values["default"]``; a clear error when neither is set."""
    if name in values:
        return values[name]
    if "default" in values:
        return values["default"]
    raise KeyError(f"{what} has no entry for model {name!r} (nor 'default'): {dict(values)}")


# --- victims and training --------------------------------------------------------------------------

@dataclass
class CropFlip:
    """Random crop with zero padding and horizontal flip of a normalised batch (a ``batch_transform``).

    Padding is with zeros in pixel space (black), as torchvision's ``RandomCrop(32, padding=4)``.
    Draws come from a seeded generator, so a training run is reproducible.
    """

    mean: Sequence[float]
    std: Sequence[float]
    padding: int = 4
    seed: int = 0
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = generator(self.seed, "crop-flip")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        p = self.padding
        black = (-torch.tensor(self.mean, dtype=x.dtype) / torch.tensor(self.std, dtype=x.dtype)).to(x.device)
        padded = black.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        dy = torch.randint(0, 2 * p + 1, (n,), generator=self._generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=self._generator)
        flip = torch.rand(n, generator=self._generator) < 0.5
        rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
        cols = torch.where(flip.to(x.device).view(n, 1), cols.flip(1), cols)
        images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
        out = padded[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        return out, y


@dataclass
class TrainedModel:
    """A snapshot of a training run: the model (eval mode), optimizer steps taken, test accuracy."""

    model: nn.Module
    steps: int
    epochs: float
    accuracy: float
    seconds: float


def training_steps(epochs: float, num_images: int, batch_size: int) -> int:
    """Optimizer steps in ``epochs`` (may be fractional) passes over ``num_images`` images."""
    return int(math.ceil(epochs * num_images / batch_size))


def train_snapshots(model: nn.Module, train: ImageDataset, test: ImageDataset, steps: Sequence[int], *,
                    batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam", augment: bool = False,
                    seed: int = 0, device: str = "auto", progress: bool = True) -> dict[int, TrainedModel]:
    """Train ``model`` (in place) for ``max(steps)`` optimizer steps; keep a copy after each count in ``steps``.

    Step 0 is the untrained model. One optimizer (``fedrepro.fl.OPTIMIZERS``) for the whole run,
    the training loss of FedAvg (:func:`fedrepro.fl.model_loss`), minibatches from a fresh seeded
    permutation every epoch; a snapshot after *k* steps does not depend on which others are taken.
    """
    wanted = sorted(set(int(s) for s in steps))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"steps must be non-negative counts, got {list(steps)}")
    dev = get_device(device)
    model.to(dev)
    x, y = train.tensors(dev)
    x_test, y_test = test.tensors(dev)
    config = FedAvgConfig(batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, device=device)
    opt = OPTIMIZERS[optimizer](list(model.parameters()), config)
    transform = CropFlip(train.mean, train.std, seed=seed) if augment else None
    per_epoch = int(math.ceil(len(y) / batch_size))
    started = time.perf_counter()
    snapshots: dict[int, TrainedModel] = {}

    def snapshot(step: int) -> None:
        copy_ = copy.deepcopy(model).eval()
        snapshots[step] = TrainedModel(copy_, step, step / per_epoch, evaluate(copy_, x_test, y_test)[1],
                                       time.perf_counter() - started)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(generator(seed, "training").initial_seed())  # dropout
        if wanted[0] == 0:
            snapshot(0)
        model.train()
        batches: list[torch.Tensor] = []
        for step in tqdm(range(1, wanted[-1] + 1), desc="training", disable=not progress, leave=False):
            if not batches:
                epoch = (step - 1) // per_epoch
                batches = list(batch_order(len(y), batch_size, seed, 0, 0, epoch))
            index = batches.pop(0).to(dev)
            xb, yb = x[index], y[index]
            if transform is not None:
                xb, yb = transform(xb, yb)
            opt.zero_grad(set_to_none=True)
            model_loss(model, model(xb), yb).backward()
            opt.step()
            if step in wanted:
                snapshot(step)
                model.train()
    model.eval()
    return snapshots


def training_states(name: str, train: ImageDataset, test: ImageDataset, *, epochs: float, partial_fraction: float,
                    augment: bool = True, compare_no_augmentation: bool = False, batch_size: int = 64,
                    lr: float = 1e-3, optimizer: str = "adam", seed: int = 0, device: str = "auto",
                    progress: bool = True) -> dict[str, TrainedModel]:
    """The slides' network states: untrained, partially trained (``partial_fraction`` of the steps of
    the same run), trained (``epochs`` over ``train``), and optionally trained without augmentation."""
    steps = training_steps(epochs, len(train), batch_size)
    if steps < 1 or not 0 < partial_fraction < 1:
        raise ValueError(f"need epochs > 0 and 0 < partial_fraction < 1, got {epochs}, {partial_fraction}")
    partial = min(steps - 1, max(1, round(partial_fraction * steps))) if steps > 1 else 1
    options = dict(batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, device=device, progress=progress)
    snaps = train_snapshots(build_paper_model(name, train, seed), train, test, [0, partial, steps], augment=augment,
                            **options)
    states = {"untrained": snaps[0], "partially trained": snaps[partial], "trained": snaps[steps]}
    if compare_no_augmentation and augment:
        plain = train_snapshots(build_paper_model(name, train, seed), train, test, [steps], augment=False, **options)
        states["trained, no augmentation"] = plain[steps]
    return states


# --- defenses --------------------------------------------------------------------------------------

def make_defense(kind: str | None, strength: float | None = None):
    """A gradient defense from the slides' parametrisation: ``gaussian`` takes the **variance** σ²
    (std = √σ²), ``laplacian`` its scale, ``prune`` the ratio of zeroed entries; ``None``/``none`` = no defense."""
    if kind is None or kind == "none":
        return None
    if kind == "gaussian":
        return DEFENSES.get("gaussian")(std=math.sqrt(strength))
    if kind == "laplacian":
        return DEFENSES.get("laplacian")(scale=strength)
    if kind == "prune":
        return DEFENSES.get("prune")(ratio=strength)
    if kind == "int8":
        return DEFENSES.get("int8")()
    raise ValueError(f"unknown defense {kind!r}; choose none, gaussian, laplacian, prune or int8")


def defense_label(kind: str | None, strength: float | None = None) -> str:
    if kind is None or kind == "none":
        return "no defense"
    if kind == "gaussian":
        return f"σ² = {strength:g}"
    if kind == "prune":
        return f"pruned {100 * strength:g}%"
    return f"{kind} {strength:g}" if strength is not None else kind


# --- one experiment row ----------------------------------------------------------------------------

@dataclass
class InversionRow:
    """One setting attacked on every victim: images and per-image metrics."""

    experiment: str
    setting: str
    originals: torch.Tensor  # (V, C, H, W) in [0, 1]
    reconstructions: torch.Tensor  # (V, C, H, W) in [0, 1]
    mse: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    gradient_distance: np.ndarray  # the attack's final objective without priors, per victim
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def victims(self) -> int:
        return len(self.psnr)

    def summary(self) -> dict[str, float]:
        return metrics.summarize({"mse": self.mse, "psnr": self.psnr, "ssim": self.ssim})

    def captions(self) -> list[str]:
        return [f"{p:.1f} dB\nSSIM {s:.2f}" for p, s in zip(self.psnr, self.ssim)]


def attack_row(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset, *,
               experiment: str, setting: str, attack: str = "ig", attack_options: Mapping[str, Any] | None = None,
               defense: Callable | None = None, batchnorm: str = "eval", seed: int = 0,
               chunk_size: int | None = None, progress: bool = True, info: Mapping[str, Any] | None = None,
               images_per_victim: int = 1, local: LocalTraining | None = None) -> InversionRow:
    """Each ``images_per_victim`` consecutive images of ``images`` (uint8 ``(N, C, H, W)``) are one
    victim's private batch; attack them all.

    The client side (:func:`fedrepro.attacks.client_update`, with ``defense``) sees the images and
    shares its gradient, or with ``local`` its model update after that local training; the attack
    sees only the :class:`~fedrepro.attacks.ServerView` (model, shared gradient or update, labels).
    Metrics pair each reconstruction with the image in the same position of its victim's batch: with
    known, distinct labels the label pins the position.
    """
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.train(batchnorm == "train")
    started = time.perf_counter()
    try:
        x = dataset.normalize(images.to(device))
        y = labels.to(device)
        update = client_update(model, x, y, images_per_victim, defense=defense, local=local,
                               generator=generator(seed, "defense", experiment, setting))
        view = ServerView(model, update, num_images=images_per_victim, image_shape=tuple(x.shape[1:]),
                          mean=dataset.mean, std=dataset.std, labels=y.view(-1, images_per_victim),
                          kind="gradient" if local is None else "update", local=local)
        result = run_attack(view, attack, seed=seed, chunk_size=chunk_size, progress=progress,
                            **dict(attack_options or {}))
    finally:
        model.train(was_training)
    originals = dataset.denormalize(x).cpu()
    reconstructions = result.denormalized().cpu()
    scores = metrics.reconstruction_metrics(originals, reconstructions)
    return InversionRow(experiment, setting, originals, reconstructions, scores["mse"], scores["psnr"], scores["ssim"],
                        result.loss.detach().cpu().double().numpy(), time.perf_counter() - started, dict(info or {}))


def attack_options(iterations: int, restarts: int, tv_weight: float, attack: str = "ig") -> dict[str, Any]:
    """Overrides of the attack preset (Geiping's ``ig`` by default) a notebook varies."""
    ATTACKS.get(attack)  # unknown names fail here, with the list of known ones
    return {"max_iterations": int(iterations), "restarts": int(restarts), "tv_weight": float(tv_weight)}


def multistep_rows(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset, *,
                   images_per_victim: int, steps: Sequence[int], lrs: Sequence[float], batch_size: int | None,
                   options: Mapping[str, Any], **row_options: Any) -> list[InversionRow]:
    """The same victims attacked through their single gradient (preset ``ig``) and through their model
    update after ``K`` local SGD steps at learning rate ``lr``, for every ``lr`` in ``lrs`` and ``K`` in
    ``steps`` (preset ``ig_multistep``, Geiping et al. Sec. 6), all with the same attack budget
    ``options``. ``K = 1`` is ``lr`` times the gradient, so its row repeats the gradient row (a check)."""
    common = dict(images_per_victim=images_per_victim, attack_options=options, **row_options)
    rows = [attack_row(model, images, labels, dataset, experiment="multistep", setting="gradient", attack="ig",
                       info=dict(steps=0, lr=None), **common)]
    batches = "" if batch_size is None else f", batches of {batch_size}"
    for lr in lrs:
        for k in steps:
            local = LocalTraining(steps=int(k), lr=float(lr), batch_size=batch_size)
            rows.append(attack_row(model, images, labels, dataset, experiment="multistep",
                                   setting=f"update K = {k}, lr {lr:g}{batches}", attack="ig_multistep", local=local,
                                   info=dict(steps=int(k), lr=float(lr)), **common))
    return rows


# --- tables, figures, the explorer ---------------------------------------------------------------

def results_table(rows: Sequence[InversionRow], extra: Sequence[str] = ()) -> str:
    """Markdown: one line per row with PSNR / SSIM mean ± std over the victims, ASR and wall time."""
    head = ["experiment", "setting", *extra, "victims", "PSNR (dB)", "SSIM", "ASR (SSIM ≥ 0.5)", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = row.summary()
        cells = [row.experiment, row.setting, *(_fmt(row.info.get(k)) for k in extra), str(row.victims),
                 f"{s['psnr_mean']:.2f} ± {s['psnr_std']:.2f}", f"{s['ssim_mean']:.3f} ± {s['ssim_std']:.3f}",
                 f"{s['asr']:.2f}", f"{row.seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def reconstruction_grid(rows: Sequence[InversionRow], max_images: int | None = None, scale: float = 1.3) -> Figure:
    """Originals on top, then each row's reconstructions with PSNR and SSIM under every image."""
    from fedrepro.plots import image_grid

    if not rows:
        raise ValueError("no rows to show")
    n = rows[0].victims if max_images is None else min(max_images, rows[0].victims)
    images = [rows[0].originals[:n]] + [row.reconstructions[:n] for row in rows]
    labels = ["original"] + [row.setting for row in rows]
    captions = [[""] * n] + [row.captions()[:n] for row in rows]
    return image_grid(images, labels, captions, scale=scale)


def defense_explorer(rows: Sequence[InversionRow], max_images: int | None = None):
    """Pick a defense strength from a precomputed grid of rows and see its reconstructions.

    A dropdown (ipywidgets) above an ordinary figure output that the dropdown replaces in place
    (an IPython ``DisplayHandle``). The first row is drawn while the cell runs, so
    executed headlessly (papermill, nbval) the notebook keeps a static figure that any viewer shows.
    ``ipywidgets.interact`` is not used on purpose: it draws into an ``Output`` widget, whose capture
    protocol intermittently hangs headless execution (papermill issue #723, nbclient issue #312),
    and whose default drawing only shows where widget state is rendered.
    Returns the dropdown.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import DisplayHandle, display

    if not rows:
        raise ValueError("no rows to explore")
    options = [(row.setting if row.experiment in row.setting else f"{row.experiment}: {row.setting}", i)
               for i, row in enumerate(rows)]

    def figure(choice: int) -> Figure:
        row = rows[choice]
        s = row.summary()
        fig = reconstruction_grid([row], max_images)
        fig.suptitle(f"{row.setting}: PSNR {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} dB, "
                     f"SSIM {s['ssim_mean']:.3f} ± {s['ssim_std']:.3f}", fontsize=8)
        fig.tight_layout()
        plt.close(fig)  # shown through the display handle only, not again by the inline backend
        return fig

    picker = widgets.Dropdown(options=options, value=0, description="defense")
    display(picker)
    handle = DisplayHandle()
    handle.display(figure(0))
    picker.observe(lambda change: handle.update(figure(change["new"])), names="value")
    return picker


# --- the slides' claims ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimCheck:
    """A qualitative claim of the slides, tested on measured rows: 1 = our numbers agree, 0 = they do not."""

    key: str
    statement: str
    holds: bool
    evidence: str


def _mean(row: InversionRow, metric: str = "psnr") -> float:
    return float(np.mean(getattr(row, metric)))


def check_order(key: str, statement: str, better: InversionRow, worse: InversionRow,
                metric: str = "psnr") -> ClaimCheck:
    """``better`` reconstructs better than ``worse`` in mean ``metric``."""
    a, b = _mean(better, metric), _mean(worse, metric)
    return ClaimCheck(key, statement, a > b, f"{better.setting} {a:.3g} vs {worse.setting} {b:.3g} ({metric})")


def check_decreasing(key: str, statement: str, rows: Sequence[InversionRow], metric: str = "psnr",
                     tolerance: float = 0.0) -> ClaimCheck:
    """Mean ``metric`` does not increase (by more than ``tolerance``) along ``rows`` and ends lower than it starts."""
    values = [_mean(r, metric) for r in rows]
    holds = len(values) >= 2 and values[-1] < values[0] and all(b <= a + tolerance for a, b in zip(values, values[1:]))
    evidence = " → ".join(f"{r.setting}: {v:.3g}" for r, v in zip(rows, values)) + f" ({metric})"
    return ClaimCheck(key, statement, holds, evidence)


def check_spread(key: str, statement: str, wider: InversionRow, narrower: InversionRow,
                 metric: str = "psnr") -> ClaimCheck:
    """``wider``'s victims spread more (standard deviation of ``metric``) than ``narrower``'s."""
    a, b = float(np.std(getattr(wider, metric))), float(np.std(getattr(narrower, metric)))
    return ClaimCheck(key, statement, a > b, f"std {wider.setting} {a:.3g} vs {narrower.setting} {b:.3g} ({metric})")


def check_recovered(key: str, statement: str, row: InversionRow) -> ClaimCheck:
    """At least one victim reconstructed with SSIM ≥ 0.5 (paper 04's success criterion)."""
    asr = row.summary()["asr"]
    return ClaimCheck(key, statement, asr > 0, f"{row.setting}: ASR {asr:.2f}, mean SSIM {_mean(row, 'ssim'):.3f}")


def claims_table(checks: Sequence[ClaimCheck]) -> str:
    lines = ["| claim (slides) | our numbers agree? | evidence |", "|---|---|---|"]
    lines += [f"| {c.statement} | {'yes' if c.holds else '**no**'} | {c.evidence} |" for c in checks]
    return "\n".join(lines)
