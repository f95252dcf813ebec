"""Paper 03 (slides on Geiping et al., *Inverting Gradients*): one experiment row at a time.

A *row* is one setting of one experiment — a model in some training state, optionally a gradient
defense — attacked on the same victims: each victim (one CIFAR-10 image) computes its shared
gradient as a client would, the server runs Inverting Gradients on it, and the row keeps the
originals, the reconstructions and their per-image MSE / PSNR / SSIM (:mod:`fedrepro.metrics`
conventions: de-normalised images in [0, 1], data range 1, per image then averaged).

Everything notebook 03 runs is here, so that a test reaches it: :class:`InversionParameters` (its
parameters, checked), :class:`InversionStudy` (each section's rows, every network trained once,
every number recorded under the keys of :func:`state_key` & co.), :func:`claim_checks` (the slides'
claims against the rows, by the criterion of :mod:`fedrepro.claims`). Defenses are
:class:`fedrepro.defenses.spec.Defense` specs: ``gaussian:var…`` (the slides' σ² is a variance) and ``prune:ratio…``.

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
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from fedrepro import claims, metrics
from fedrepro.attacks import ATTACKS, LocalTraining, ServerView, client_update, run_attack
from fedrepro.attacks.victims import pick_victims
from fedrepro.augment import CropFlip
from fedrepro.claims import ClaimCheck
from fedrepro.data import ImageDataset, load_dataset, subsample
from fedrepro.defenses.spec import Defense
from fedrepro.fl import OPTIMIZERS, FedAvgConfig, batch_order, evaluate, model_loss
from fedrepro.models import MODELS, count_parameters
from fedrepro.results import Report
from fedrepro.runtime import generator, get_device
from fedrepro.validation import choice, integer, integers, names, number, numbers, require

#: Notebook 03's experiments, for its ``experiments`` parameter.
EXPERIMENTS = ("training", "architectures", "noise", "pruning", "multistep")
BATCHNORM_MODES = ("eval", "train")
STATES = ("untrained", "partially trained", "trained", "trained, no augmentation")
"""The network states :func:`training_states` returns; the last only for ``no_augmentation_models``."""


# --- parameters -------------------------------------------------------------------------------------

@dataclass
class InversionParameters:
    """Everything notebook 03 varies, checked once (its parameters cell, written whole to results.json).

    Per-model values (``victims``, ``iterations``, ``tv_weights``, ``train_epochs``) map a model name,
    or ``"default"``, to its value. Defaults are the smoke tier's.
    """

    seed: int = 0
    dataset: str = "cifar10"
    experiments: list[str] = field(default_factory=lambda: ["training", "noise", "pruning", "multistep"])
    training_models: list[str] = field(default_factory=lambda: ["cnn"])
    no_augmentation_models: list[str] = field(default_factory=lambda: ["cnn"])
    architectures: list[str] = field(default_factory=lambda: ["resnet18", "resnet34", "resnet50", "mobilenetv2"])
    defense_model: str = "cnn"
    defense_state: str = "trained"
    noise_variances: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    prune_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    victims: dict[str, int] = field(default_factory=lambda: {"default": 2})
    iterations: dict[str, int] = field(default_factory=lambda: {"default": 100})
    tv_weights: dict[str, float] = field(default_factory=lambda: {"default": 0.01})
    restarts: int = 1
    batchnorm: str = "eval"
    train_samples: int | None = 1000
    test_samples: int | None = 1000
    train_epochs: dict[str, float] = field(default_factory=lambda: {"default": 1.0})
    partial_fraction: float = 0.1
    batch_size: int = 64
    lr: float = 0.001
    claim_tolerance: float = 0.5
    explorer_images: int = 4
    multistep_model: str = "cnn"
    multistep_state: str = "untrained"
    multistep_victims: int = 1
    multistep_images: int = 2
    multistep_steps: list[int] = field(default_factory=lambda: [1, 5])
    multistep_lrs: list[float] = field(default_factory=lambda: [0.01])
    multistep_batch_size: int | None = None
    multistep_iterations: int = 30
    torch_threads: int | None = 1
    device: str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        self.experiments = names("experiments", self.experiments, EXPERIMENTS)
        for name in ("training_models", "no_augmentation_models", "architectures"):
            setattr(self, name, names(name, getattr(self, name), MODELS.names()))
        for name in ("defense_model", "multistep_model"):
            choice(name, getattr(self, name), MODELS.names())
        for name, model in (("defense_state", self.defense_model), ("multistep_state", self.multistep_model)):
            state = getattr(self, name)
            choice(name, state, STATES)
            require(state != STATES[-1] or model in self.no_augmentation_models, name, state,
                    f"it needs {model!r} in no_augmentation_models, which is {self.no_augmentation_models}")
        choice("batchnorm", self.batchnorm, BATCHNORM_MODES)
        self.noise_variances = numbers("noise_variances", self.noise_variances, 0)  # σ², a variance
        self.prune_ratios = numbers("prune_ratios", self.prune_ratios, 0, 1)
        self.multistep_steps = integers("multistep_steps", self.multistep_steps, 1)  # local steps K
        self.multistep_lrs = numbers("multistep_lrs", self.multistep_lrs, 0, low_open=True)
        for name in ("victims", "iterations", "tv_weights", "train_epochs"):
            values = getattr(self, name)
            require(isinstance(values, Mapping), name, values, "expected a mapping from model names (or 'default')")
            for model, value in values.items():
                if name in ("victims", "iterations"):
                    integer(f"{name}[{model!r}]", value, 1)
                else:
                    number(f"{name}[{model!r}]", value, 0, low_open=name == "train_epochs")
            missing = [m for m in self.used_models() if m not in values and "default" not in values]
            require(not missing, name, values, f"expected an entry for {missing} or 'default'")
        for name in ("restarts", "batch_size", "explorer_images", "multistep_victims", "multistep_images",
                     "multistep_iterations"):
            integer(name, getattr(self, name), 1)
        for name in ("train_samples", "test_samples", "multistep_batch_size", "torch_threads"):
            integer(name, getattr(self, name), 1, optional=True)
        number("lr", self.lr, 0, low_open=True)
        number("claim_tolerance", self.claim_tolerance, 0)  # dB
        number("partial_fraction", self.partial_fraction, 0, 1, low_open=True, high_open=True)

    def used_models(self) -> list[str]:
        """The networks the chosen experiments attack, each once, in the order they first appear."""
        used = self.training_models if "training" in self.experiments else []
        used = used + (self.architectures if "architectures" in self.experiments else [])
        used = used + ([self.defense_model] if {"noise", "pruning"} & set(self.experiments) else [])
        return list(dict.fromkeys(used + ([self.multistep_model] if "multistep" in self.experiments else [])))


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
class Snapshot:
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
                    seed: int = 0, device: str = "auto", progress: bool = True) -> dict[int, Snapshot]:
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
    snapshots: dict[int, Snapshot] = {}

    def snapshot(step: int) -> None:
        copy_ = copy.deepcopy(model).eval()
        snapshots[step] = Snapshot(copy_, step, step / per_epoch, evaluate(copy_, x_test, y_test)[1],
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
                    progress: bool = True) -> dict[str, Snapshot]:
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

def noise_defense(variance: float) -> Defense:
    """The slides' naive noise: N(0, σ²) on every gradient entry, σ² the **variance** (std = √σ²)."""
    return Defense.of("gaussian", var=variance)


def prune_defense(ratio: float) -> Defense:
    """Gradient pruning: the ``ratio`` of smallest-magnitude entries of every layer set to 0."""
    return Defense.of("prune", ratio=ratio)


DEFENSE_EXPERIMENTS: dict[str, Callable[[float], Defense]] = {"noise": noise_defense, "pruning": prune_defense}
"""The defense experiments and how each turns one of its strengths into a defense."""


def defense_label(defense: Defense) -> str:
    """The slides' wording of a defense: ``σ² = 0.1``, ``pruned 25%``, ``no defense``; else the spec."""
    if defense.kind == "none":
        return "no defense"
    if defense.kind == "gaussian" and defense["var"] is not None:
        return f"σ² = {defense['var']:g}"
    if defense.kind == "gc":
        return f"pruned {100 * defense['p']:g}%"
    return defense.label


def defense_strength(defense: Defense) -> float:
    """The number a defense experiment varies: σ² for noise, the pruned ratio for pruning."""
    if defense.kind == "gaussian" and defense["var"] is not None:
        return defense["var"]
    if defense.kind == "gc":
        return defense["p"]
    raise ValueError(f"{defense.label} is not one of paper 03's defenses (gaussian:var…, prune:ratio…)")


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


# --- result keys -----------------------------------------------------------------------------------

def state_key(model: str, state: str) -> str:
    """``training/cnn/trained_no_augmentation``: a network state's key (then ``/psnr``, ``/ssim``, ``/accuracy``)."""
    return f"training/{model}/{state.replace(', ', '_').replace(' ', '_')}"


def architecture_key(model: str) -> str:
    return f"architectures/{model}"


def baseline_key(model: str) -> str:
    """The undefended attack on the defended network, shared by the noise and pruning tables."""
    return f"defenses/{model}/none"


def defense_key(experiment: str, model: str, defense: Defense) -> str:
    """``noise/cnn/0.01`` (σ²), ``pruning/cnn/0.25`` (ratio)."""
    return f"{experiment}/{model}/{defense_strength(defense):g}"


def multistep_key(model: str, row: InversionRow) -> str:
    """``multistep/cnn/gradient`` or ``multistep/cnn/update_K5_lr0.01``."""
    steps = row.info["steps"]
    return f"multistep/{model}/" + ("gradient" if steps == 0 else f"update_K{steps}_lr{row.info['lr']:g}")


# --- the study: every experiment of notebook 03 -----------------------------------------------------

class InversionStudy:
    """Notebook 03's experiments on one set of victims, each network trained once and reused.

    Every row is recorded in ``report`` under the keys above (mean PSNR and SSIM over the victims),
    and kept in :attr:`rows` by experiment, which the claim checks read.
    """

    def __init__(self, params: InversionParameters, report: Report, train: ImageDataset, test: ImageDataset,
                 source: ImageDataset, log: Callable[[str], None] = print) -> None:
        self.params, self.report, self.log = params, report, log
        self.train, self.test, self.source = train, test, source
        counts = [per_model(params.victims, name, "victims") for name in params.used_models()]
        self.victim_index = pick_victims(source, max(counts, default=0), params.seed, policy="class_cycle")
        self.victim_images, self.victim_labels = source.images[self.victim_index], source.labels[self.victim_index]
        self.states: dict[str, dict[str, Snapshot]] = {}
        self.rows: dict[str, list[InversionRow]] = {}
        self._baselines: dict[str, InversionRow] = {}

    @classmethod
    def load(cls, params: InversionParameters, report: Report, log: Callable[[str], None] = print) -> "InversionStudy":
        """Training and accuracy subsets of ``params.dataset`` (seeded), victims from its test set."""
        train_full = load_dataset(params.dataset, "train", root=params.data_root)
        test_full = load_dataset(params.dataset, "test", root=params.data_root)
        train = train_full.subset(subsample(len(train_full), params.train_samples, params.seed))
        test = test_full.subset(subsample(len(test_full), params.test_samples, params.seed))
        return cls(params, report, train, test, test_full, log)

    # descriptions ---------------------------------------------------------------------------------

    def victim_names(self) -> list[str]:
        return [self.source.classes[c] for c in self.victim_labels.tolist()]

    def describe_data(self) -> str:
        return (f"training on {len(self.train):,} images, accuracy on {len(self.test):,} test images; "
                f"{len(self.victim_index)} victims: " + ", ".join(self.victim_names()))

    def victims_figure(self) -> Figure:
        from fedrepro.plots import image_grid

        return image_grid([self.victim_images.float() / 255], ["victims"], [self.victim_names()])

    def network_facts(self) -> str:
        """Parameter counts, and what each noise / pruning strength does to the CNN's gradient."""
        p = self.params
        lines = [f"{name}: {count_parameters(build_paper_model(name, self.train, p.seed)):,} parameters"
                 for name in p.used_models()]
        cnn = build_paper_model("cnn", self.train, p.seed)
        stds = [noise_defense(variance).gradient_defense().std for variance in p.noise_variances]
        lines += [f"σ² = {variance:g}: noise std {std:.4g} per gradient entry"
                  for variance, std in zip(p.noise_variances, stds)]
        for ratio in p.prune_ratios:
            zeroed = sum(math.floor(ratio * w.numel() + 1e-9) for w in cnn.parameters())
            lines.append(f"pruning {ratio:.0%}: {zeroed:,} of the CNN's {count_parameters(cnn):,} gradient entries "
                         "set to 0")
        return "\n".join(lines)

    # building blocks ------------------------------------------------------------------------------

    def snapshots(self, name: str) -> dict[str, Snapshot]:
        """Train a network once (snapshots of one run) and reuse it in every experiment."""
        p = self.params
        if name not in self.states:
            self.states[name] = training_states(
                name, self.train, self.test, epochs=per_model(p.train_epochs, name, "train_epochs"),
                partial_fraction=p.partial_fraction, augment=True,
                compare_no_augmentation=name in p.no_augmentation_models, batch_size=p.batch_size, lr=p.lr,
                seed=p.seed, device=p.device)
            self.log(f"{name}: " + ", ".join(f"{state} {s.accuracy:.1%} after {s.epochs:.2g} epochs"
                                             for state, s in self.states[name].items()) + " (test accuracy)")
        return self.states[name]

    def attack(self, name: str, snapshot: Snapshot, experiment: str, setting: str,
               defense: Defense | None = None) -> InversionRow:
        """Every victim of this model sends its gradient (through ``defense``); the server inverts them all."""
        p = self.params
        count = per_model(p.victims, name, "victims")
        options = attack_options(per_model(p.iterations, name, "iterations"), p.restarts,
                                 per_model(p.tv_weights, name, "tv_weights"))
        return attack_row(snapshot.model.to(get_device(p.device)), self.victim_images[:count],
                          self.victim_labels[:count], self.source, experiment=experiment, setting=setting,
                          attack_options=options, defense=None if defense is None else defense.gradient_defense(),
                          batchnorm=p.batchnorm, seed=p.seed,
                          info=dict(model=name, accuracy=snapshot.accuracy,
                                    parameters=count_parameters(snapshot.model)))

    def measure(self, row: InversionRow, key: str) -> None:
        summary = row.summary()
        where = f"{row.experiment}: {row.setting}"
        self.report.measure(f"{key}/psnr", summary["psnr_mean"], setting=f"{where}, mean PSNR (dB)")
        self.report.measure(f"{key}/ssim", summary["ssim_mean"], setting=f"{where}, mean SSIM")

    # the experiments ------------------------------------------------------------------------------

    def training(self) -> list[InversionRow]:
        """Section 1: each training model in each state (untrained, partially trained, trained, …)."""
        rows = self.rows["training"] = []
        for name in self.params.training_models:
            for state, snapshot in self.snapshots(name).items():
                row = self.attack(name, snapshot, "training", f"{name}: {state}")
                rows.append(row)
                self.measure(row, state_key(name, state))
                self.report.measure(f"{state_key(name, state)}/accuracy", 100 * snapshot.accuracy,
                                    setting=f"{name} {state}: test accuracy (%)")
        return rows

    def architectures(self) -> list[InversionRow]:
        """Section 2: each architecture, trained."""
        rows = self.rows["architectures"] = []
        for name in self.params.architectures:
            row = self.attack(name, self.snapshots(name)["trained"], "architectures", f"{name} (trained)")
            rows.append(row)
            self.measure(row, architecture_key(name))
        return rows

    def defense(self, experiment: str) -> list[InversionRow]:
        """Sections 3 and 4: the undefended attack, then one row per strength of ``experiment``'s defense."""
        p = self.params
        model, state = p.defense_model, p.defense_state
        defenses = [DEFENSE_EXPERIMENTS[experiment](strength)
                    for strength in {"noise": p.noise_variances, "pruning": p.prune_ratios}[experiment]]
        snapshot = self.snapshots(model)[state]
        rows = [self.baseline(snapshot)]
        rows += [self.attack(model, snapshot, experiment, f"{model} {state}: {defense_label(d)}", defense=d)
                 for d in defenses]
        for row, defense in zip(rows[1:], defenses):
            self.measure(row, defense_key(experiment, model, defense))
        self.rows[experiment] = rows
        return rows

    def baseline(self, snapshot: Snapshot) -> InversionRow:
        """The undefended row of the defense tables; the training experiment's row when it ran this very attack."""
        model, state = self.params.defense_model, self.params.defense_state
        if model not in self._baselines:
            same = [r for r in self.rows.get("training", []) if r.setting == f"{model}: {state}"]
            row = same[0] if same else self.attack(model, snapshot, "no defense", "")
            self._baselines[model] = dataclasses.replace(row, experiment="no defense",
                                                         setting=f"{model} {state}: no defense")
            self.measure(self._baselines[model], baseline_key(model))
        return self._baselines[model]

    def multistep(self) -> list[InversionRow]:
        """Section 5: each client's gradient, then its model update after K local steps, per local lr."""
        p = self.params
        index = pick_victims(self.source, p.multistep_victims * p.multistep_images, p.seed, policy="class_cycle")
        model = (build_paper_model(p.multistep_model, self.train, p.seed) if p.multistep_state == "untrained"
                 else self.snapshots(p.multistep_model)[p.multistep_state].model).to(get_device(p.device))
        options = attack_options(p.multistep_iterations, p.restarts,
                                 per_model(p.tv_weights, p.multistep_model, "tv_weights"))
        rows = self.rows["multistep"] = multistep_rows(
            model, self.source.images[index], self.source.labels[index], self.source,
            images_per_victim=p.multistep_images, steps=p.multistep_steps, lrs=p.multistep_lrs,
            batch_size=p.multistep_batch_size, options=options, batchnorm=p.batchnorm, seed=p.seed)
        for row in rows:
            self.measure(row, multistep_key(p.multistep_model, row))
        self.log(f"{p.multistep_model} ({p.multistep_state}), {p.multistep_victims} clients × "
                 f"{p.multistep_images} images")
        return rows

    def explorer_rows(self) -> list[InversionRow]:
        """The noise rows, then the pruning rows without their repeated undefended row."""
        return self.rows.get("noise", []) + self.rows.get("pruning", [])[1:]

    def claims(self) -> list[ClaimCheck]:
        """Check the slides' claims on the rows measured so far; record each claim's share of networks confirming it."""
        checks = claim_checks(self.rows, self.params.training_models, self.params.defense_model,
                              self.params.claim_tolerance)
        return list(claims.record(self.report, [check for _, results in checks for check in results]))


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


def training_grids(rows: Sequence[InversionRow], max_images: int | None = None) -> list[Figure]:
    """One :func:`reconstruction_grid` per network of the training experiment, its states in order."""
    models = dict.fromkeys(row.info["model"] for row in rows)
    return [reconstruction_grid([r for r in rows if r.info["model"] == name], max_images) for name in models]


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

def _mean(row: InversionRow, metric: str = "psnr") -> float:
    return float(np.mean(getattr(row, metric)))


def check_order(key: str, statement: str, better: InversionRow, worse: InversionRow,
                metric: str = "psnr") -> ClaimCheck:
    """``better`` reconstructs better than ``worse``: mean ``metric`` higher by more than Z standard errors."""
    a, b = _mean(better, metric), _mean(worse, metric)
    comparison = claims.compare(getattr(better, metric), getattr(worse, metric))
    return ClaimCheck(key, statement, comparison.verdict,
                      f"{better.setting} {a:.3g} vs {worse.setting} {b:.3g} ({metric}): {comparison.estimate()}")


def check_decreasing(key: str, statement: str, rows: Sequence[InversionRow], metric: str = "psnr",
                     tolerance: float = 0.0) -> ClaimCheck:
    """Mean ``metric`` ends lower than it starts by the criterion, and no step from one row to the next
    rises by more than both Z standard errors and ``tolerance`` (:func:`fedrepro.claims.decreasing`)."""
    trend = claims.decreasing([getattr(r, metric) for r in rows], tolerance)
    values = " → ".join(f"{r.setting}: {_mean(r, metric):.3g}" for r in rows)
    rises = "".join(f"; {rows[i].setting} → {rows[i + 1].setting} rises {-trend.steps[i].difference:.3g}"
                    for i in trend.rises())
    return ClaimCheck(key, statement, trend.verdict,
                      f"{values} ({metric}); first − last {trend.overall.estimate()}{rises}")


def check_spread(key: str, statement: str, wider: InversionRow, narrower: InversionRow,
                 metric: str = "psnr") -> ClaimCheck:
    """``wider``'s victims spread more than ``narrower``'s: the log ratio of their sample standard
    deviations clears its standard error (:func:`fedrepro.claims.compare_spread`)."""
    a, b = (float(np.std(getattr(r, metric), ddof=1)) if r.victims > 1 else math.nan for r in (wider, narrower))
    comparison = claims.compare_spread(getattr(wider, metric), getattr(narrower, metric))
    return ClaimCheck(key, statement, comparison.verdict,
                      f"sample std {wider.setting} {a:.3g} vs {narrower.setting} {b:.3g} ({metric}): "
                      f"ratio {math.exp(comparison.difference):.3g}, log ratio {comparison.estimate()}")


def check_recovered(key: str, statement: str, row: InversionRow) -> ClaimCheck:
    """The victims are recovered: their mean SSIM exceeds the attack-success threshold (0.5, paper 04's)
    by the criterion, a one-sample comparison (se = s/√n)."""
    comparison = claims.compare_to(row.ssim, metrics.ASR_THRESHOLD)
    return ClaimCheck(key, statement, comparison.verdict,
                      f"{row.setting}: mean SSIM {_mean(row, 'ssim'):.3f} − {metrics.ASR_THRESHOLD:g}: "
                      f"{comparison.estimate()}, ASR {row.summary()['asr']:.2f}")


def claims_table(checks: Sequence[ClaimCheck]) -> str:
    """Markdown: each check's verdict and evidence, then the criterion the verdicts follow."""
    return claims.checks_table(checks, claim="claim (slides)")


def claim_checks(rows: Mapping[str, Sequence[InversionRow]], training_models: Sequence[str], defense_model: str,
                 tolerance: float) -> list[tuple[str, list[ClaimCheck]]]:
    """The slides' claims on the measured ``rows`` (by experiment), each with one check per network tested.

    Every verdict follows :data:`fedrepro.claims.CRITERION` on the per-victim values. Training claims read
    the training rows by ``(model, state)``; the width claims need trained ResNet-18 and ResNet-50 rows; a
    defense "degrades" when the strongest defense's PSNR is below the undefended row's (the first) by the
    criterion and no step to a stronger defense rises by more than both Z standard errors and ``tolerance`` dB.
    """
    checks: list[tuple[str, list[ClaimCheck]]] = []
    if "training" in rows:
        by_state = {(r.info["model"], r.setting.split(": ", 1)[1]): r for r in rows["training"]}

        def pairs(key: str, words: str, better: str, worse: str, models: Sequence[str]) -> None:
            checks.append((key, [check_order(key, f"{words} ({name})", by_state[(name, better)],
                                             by_state[(name, worse)]) for name in models]))

        checks.append(("claim/recovery", [
            check_recovered("claim/recovery", f"images can be recovered ({name}, untrained)",
                            by_state[(name, "untrained")]) for name in training_models]))
        pairs("claim/untrained_beats_trained", "untrained reconstructs better than trained", "untrained", "trained",
              training_models)
        pairs("claim/untrained_beats_partially_trained", "untrained better than partially trained", "untrained",
              "partially trained", training_models)
        plain = [name for name in training_models if (name, "trained, no augmentation") in by_state]
        if plain:
            pairs("claim/augmentation_hurts", "trained without augmentation better than with",
                  "trained, no augmentation", "trained", plain)
    if "architectures" in rows:
        arch = {r.info["model"]: r for r in rows["architectures"]}
        if {"resnet18", "resnet50"} <= set(arch):
            checks.append(("claim/width_helps", [check_order("claim/width_helps",
                                                             "wider ResNet-50 better than ResNet-18",
                                                             arch["resnet50"], arch["resnet18"])]))
            checks.append(("claim/width_spreads", [check_spread("claim/width_spreads",
                                                                "wider ResNet-50 varies more than ResNet-18",
                                                                arch["resnet50"], arch["resnet18"])]))
    for experiment in DEFENSE_EXPERIMENTS:
        if experiment in rows:
            checks.append((f"claim/{experiment}_degrades", [check_decreasing(
                f"claim/{experiment}_degrades", f"reconstructions degrade with stronger {experiment} ({defense_model})",
                rows[experiment], tolerance=tolerance)]))
            checks.append((f"claim/{experiment}_destroys", [check_order(
                f"claim/{experiment}_destroys",
                f"the strongest {experiment} is worse than no defense ({defense_model})",
                rows[experiment][0], rows[experiment][-1])]))
    return checks

