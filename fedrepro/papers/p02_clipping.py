"""Paper 02 (Morelle, *Differential privacy and Byzantine resilience in federated learning*, INRIA 2024).

Everything notebook 02 runs, so that a test can reach it:

* :class:`ClippingParameters` — the notebook's parameters cell as one validated dataclass, written
  whole to ``results.json``;
* :class:`Protocol` — the paper's runs on one parameter set: the non-private baseline, the noise
  sweep over flat / per-layer uniform / per-layer adaptive clipping, the paper's explicit list,
  extra seeds at the smallest σ, clip-only runs (σ = 0) and more clients (beyond the paper). Every
  run starts from the same initial weights with a fresh :class:`~fedrepro.privacy.DPTrainer`;
* the tables (:func:`sweep_table`, :func:`budget_text`, :func:`clipping_or_noise_table`,
  :func:`gradient_text`) and the result keys of ``fedrepro/paper_results/02.yaml``
  (:func:`final_key`, ...), filled in by :func:`record_results`;
* the paper's claims as checks by :mod:`fedrepro.claims`' criterion (:func:`claim_checks`):
  :func:`order_claim` (flat > adaptive > uniform at the smallest σ) and :func:`noise_trends` (accuracy
  rises as σ falls), over seeds where ``repeat_seeds`` measured them, else binomial over the test images.

The figures are in :mod:`fedrepro.papers.p02_plots`; DP-SGD, the clipping strategies and the
accounting they compose are in :mod:`fedrepro.privacy`.
"""
from __future__ import annotations

import functools
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fedrepro import claims
from fedrepro.data import ClientSplit, FederatedData, ImageDataset, load_federated
from fedrepro.federation import BACKENDS, run_federation
from fedrepro.fl import FedAvgConfig
from fedrepro.models import MODELS, build_model
from fedrepro.privacy.accounting import ACCOUNTANTS, epsilon_for, noise_for_epsilon, sample_rate, steps_per_epoch
from fedrepro.privacy.clipping import (adaptive_thresholds, check_thresholds, gradient_entries,
                                       layer_gradient_magnitudes, strategy_name, uniform_thresholds)
from fedrepro.privacy.trainer import DPIncompatibleModelError, DPTrainer, check_dp_compatible, history_epsilons
from fedrepro.runtime import derive_seed, generator
from fedrepro.validation import choice, device, integer, integers, names, number, numbers, require, text

NON_PRIVATE = "non-private"
PAPER_ORDER = ("flat", "per_layer_adaptive", "per_layer_uniform")  # the paper's ranking, best first
LABELS = {"flat": "flat", "per_layer_adaptive": "adaptive", "per_layer_uniform": "uniform",
          "per_layer": "paper's list", NON_PRIVATE: "non-private"}
# Sec. 4: 13 values from 2 down to 0.22; the paper gives only the ends and the count, we space them evenly
PAPER_NOISE_MULTIPLIERS = (2.0, 1.8517, 1.7033, 1.555, 1.4067, 1.2583, 1.11, 0.9617, 0.8133, 0.665, 0.5167,
                           0.3683, 0.22)
PAPER_LAYER_LIST = (1.2, 1.1, 1.0, 0.5, 0.3)  # the paper's explicit S_j for conv1, conv2, fc1, fc2, fc3
OPTIMIZER = "sgd"
ADAPTIVE_MAGNITUDE = "max |grad| of the layer's weights, public batch, every round"
IMAGE_SIZE = 32


# --- parameters ---------------------------------------------------------------------------------

@dataclass
class ClippingParameters:
    """Notebook 02's parameters cell (all but ``tier`` and ``results_dir``). Defaults: paper 02's protocol
    (Sec. 3–4) where it states one, our assumptions (the notebook's table) where it does not, extras off."""

    seed: int = 0
    dataset: str = "cifar10"
    model_name: str = "tanhnet"
    num_clients: int = 2
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    max_grad_norm: float = 2.0  # S, the total clipping threshold
    delta: float = 1e-5
    accountant: str = "rdp"
    noise_multipliers: list[float] = field(default_factory=lambda: list(PAPER_NOISE_MULTIPLIERS))
    strategies: list[str] = field(default_factory=lambda: list(PAPER_ORDER))
    paper_layer_list: list[float] = field(default_factory=lambda: list(PAPER_LAYER_LIST))
    paper_list_noise_multipliers: list[float] = field(default_factory=list)  # empty: the explicit list is not run
    repeat_seeds: list[int] = field(default_factory=list)  # extra seeds at the smallest σ
    clip_only: bool = False  # every strategy also with σ = 0 (ε = ∞)
    samples_per_client: int | None = None  # None: each client keeps its whole share
    test_samples: int | None = None  # None: the whole test set minus the public batch
    public_samples: int = 256  # held-out test images adaptive clipping measures M_j on
    physical_batch_size: int | None = None
    extension_clients: int = 0  # beyond the paper: the same images over more clients; 0 skips it
    extension_noise_multipliers: list[float] = field(default_factory=list)
    backend: str = "simulator"
    torch_threads: int | None = None
    device: str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        integer("seed", self.seed, 0)
        text("dataset", self.dataset, "a dataset name such as 'cifar10'")
        choice("model_name", self.model_name, MODELS.names())
        for name in ("num_clients", "rounds", "local_epochs", "batch_size", "public_samples"):
            integer(name, getattr(self, name), 1)
        number("lr", self.lr, 0, low_open=True, high_open=True)
        number("momentum", self.momentum, 0, 1, high_open=True)
        number("max_grad_norm", self.max_grad_norm, 0, low_open=True, high_open=True)
        number("delta", self.delta, 0, 1, low_open=True, high_open=True)
        choice("accountant", self.accountant, ACCOUNTANTS)
        self.noise_multipliers = numbers("noise_multipliers", self.noise_multipliers, 0, low_open=True,
                                         high_open=True, nonempty=True)
        self.strategies = names("strategies", self.strategies, PAPER_ORDER, nonempty=True, unique=True)
        self.paper_layer_list = numbers("paper_layer_list", self.paper_layer_list, 0, low_open=True, high_open=True)
        self.paper_list_noise_multipliers = numbers("paper_list_noise_multipliers", self.paper_list_noise_multipliers,
                                                    0, low_open=True, high_open=True)
        require(self.paper_layer_list or not self.paper_list_noise_multipliers, "paper_layer_list",
                self.paper_layer_list, "paper_list_noise_multipliers asks to run the paper's list at "
                f"{self.paper_list_noise_multipliers}")
        self.repeat_seeds = integers("repeat_seeds", self.repeat_seeds, 0)
        require(isinstance(self.clip_only, bool), "clip_only", self.clip_only, "expected True or False")
        for name in ("samples_per_client", "test_samples", "physical_batch_size", "torch_threads"):
            integer(name, getattr(self, name), 1, optional=True)
        integer("extension_clients", self.extension_clients, 0)
        self.extension_noise_multipliers = numbers("extension_noise_multipliers", self.extension_noise_multipliers,
                                                   0, low_open=True, high_open=True,
                                                   nonempty=bool(self.extension_clients))
        require(not self.extension_clients or self.extension_samples_per_client != 0, "extension_clients",
                self.extension_clients, f"it leaves no image per client ({self.samples_per_client} × "
                f"{self.num_clients} images in all)")
        choice("backend", self.backend, BACKENDS.names())
        device("device", self.device)
        text("data_root", self.data_root, "a folder path", optional=True, empty=True)

    @property
    def smallest_sigma(self) -> float:
        """The paper's 'last run'."""
        return min(self.noise_multipliers)

    @property
    def extension_samples_per_client(self) -> int | None:
        """The same images in all, shared by ``extension_clients`` clients."""
        if self.samples_per_client is None:
            return None
        return self.samples_per_client * self.num_clients // self.extension_clients

    def report_parameters(self) -> dict[str, Any]:
        """What ``results.json`` records: every parameter, and the protocol choices no parameter sets."""
        return {**asdict(self), "optimizer": OPTIMIZER, "adaptive_magnitude": ADAPTIVE_MAGNITUDE}


# --- one run, one sweep ---------------------------------------------------------------------------

@dataclass
class PrivateRun:
    """One FedAvg run: its clipping strategy and σ, the ε it spent and the accuracy it reached."""

    strategy: str
    noise_multiplier: float
    epsilon: float  # the run's ε: the largest client ε, composed over all rounds
    client_epsilons: dict[int, float]
    delta: float
    accountant: str
    final_accuracy: float  # global model's test accuracy after the last round
    mean_accuracy: float  # mean over rounds of the test accuracy
    history: list[dict[str, float]]
    thresholds: list[list[float]] = field(default_factory=list)  # per round, as client 0 used them
    num_clients: int = 0
    seconds: float = 0.0
    label: str = ""
    test_size: int = 0  # test images the accuracies are over: the binomial spread of a single run
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the final global model

    def as_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (∞ stays a float)."""
        return {k: v for k, v in asdict(self.__class__(**{**self.__dict__, "model": None})).items() if k != "model"}


def split_public(test: ImageDataset, public_samples: int, seed: int,
                 test_samples: int | None = None) -> tuple[ImageDataset, ImageDataset]:
    """Hold ``public_samples`` test images out as the server's public batch; evaluate on (up to ``test_samples`` of) the rest.

    The public batch is what per-layer adaptive clipping measures M_j on; no client trains on it
    and no accuracy is computed on it.
    """
    if not 0 <= public_samples < len(test):
        raise ValueError(f"public_samples must be in [0, {len(test)}), got {public_samples}")
    order = torch.randperm(len(test), generator=generator(seed, "public-split"))
    rest = order[public_samples:] if test_samples is None else order[public_samples:public_samples + test_samples]
    return test.subset(order[:public_samples].sort().values), test.subset(rest.sort().values)


def seeded_model(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` under a fixed seed, so every run of a sweep starts from the same weights."""
    torch.manual_seed(derive_seed(seed, "model-init"))
    return factory()


def run_private(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                config: FedAvgConfig, trainer: DPTrainer | None, label: str = "", backend: str = "simulator") -> PrivateRun:
    """One FedAvg run with ``trainer`` (None: the non-private baseline, ε = ∞) on ``backend`` (simulator | flower)."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        result = run_federation(seeded_model(factory, config.seed), train, test, list(splits), config, trainer=trainer,
                                progress=False, backend=backend)
    accuracies = [h["test_accuracy"] for h in result.history]
    common = dict(final_accuracy=result.final_accuracy, mean_accuracy=sum(accuracies) / len(accuracies),
                  history=result.history, num_clients=len(splits), seconds=time.perf_counter() - started, label=label,
                  test_size=len(test), model=result.model)
    if trainer is None:
        return PrivateRun(NON_PRIVATE, 0.0, math.inf, {}, math.nan, "", **common)
    # read from the history, not the trainer: with FedAvgConfig.workers the accountants live in worker processes
    epsilons = history_epsilons(result.history)
    first = min(epsilons)
    thresholds = [[m[k] for k in sorted((k for k in m if k.startswith("threshold/")), key=lambda k: int(k.split("/")[1]))]
                  for m in (h["clients"][first] for h in result.history if first in h["clients"])]
    sigmas = {m["noise_multiplier"] for h in result.history for m in h["clients"].values()}
    return PrivateRun(trainer.clipping, sigmas.pop() if len(sigmas) == 1 else math.nan, max(epsilons.values()),
                      epsilons, trainer.delta, trainer.accountant, thresholds=thresholds, **common)


def noise_sweep(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                config: FedAvgConfig, strategies: Sequence[str], noise_multipliers: Sequence[float], *,
                max_grad_norm: float, delta: float = 1e-5, progress: bool = True, label: str = "",
                backend: str = "simulator", **trainer_options: Any) -> list[PrivateRun]:
    """Every (strategy, σ) pair, each a fresh run from the same initial weights with a fresh DPTrainer.

    ``trainer_options`` go to :class:`DPTrainer` (``public_data``, ``accountant``, ``granularity``,
    ``thresholds`` for ``per_layer``, ...).
    """
    runs = []
    pairs = [(strategy_name(s), float(sigma)) for s in strategies for sigma in noise_multipliers]
    quiet = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    for strategy, sigma in tqdm(pairs, desc=label or "noise sweep", unit="run", disable=quiet):
        options = dict(trainer_options)
        if strategy != "per_layer":
            options.pop("thresholds", None)
        if strategy != "per_layer_adaptive":
            options.pop("public_data", None)
        trainer = DPTrainer(clipping=strategy, max_grad_norm=max_grad_norm, noise_multiplier=sigma, delta=delta, **options)
        runs.append(run_private(factory, train, test, splits, config, trainer, label=label, backend=backend))
    return runs


def run_baseline(factory: Callable[[], nn.Module], train: ImageDataset, test: ImageDataset, splits: Sequence[ClientSplit],
                 config: FedAvgConfig, label: str = "", backend: str = "simulator") -> PrivateRun:
    """The non-private FedAvg run with the same optimizer, data and initial weights (fixed batches, no clipping)."""
    return run_private(factory, train, test, splits, config, None, label=label, backend=backend)


# --- paper 02's runs on one parameter set -------------------------------------------------------

def load_data(params: ClippingParameters) -> tuple[FederatedData, ImageDataset, ImageDataset]:
    """The clients' training shares (no validation split: the paper splits the training set at random over
    the clients), the server's public batch and the evaluation set (:func:`split_public`)."""
    data = load_federated(params.dataset, params.num_clients, params.seed, val_fraction=0.0,
                          samples_per_client=params.samples_per_client, image_size=IMAGE_SIZE, root=params.data_root)
    public, test = split_public(data.test, params.public_samples, params.seed, params.test_samples)
    return data, public, test


def model_factory(model_name: str, train: ImageDataset) -> Callable[[], nn.Module]:
    """A fresh ``model_name`` for ``train``'s images (picklable, unlike a lambda)."""
    return functools.partial(build_model, model_name, in_channels=train.channels, num_classes=train.num_classes,
                             image_size=IMAGE_SIZE)


def client_sizes(data: FederatedData) -> list[int]:
    """The distinct numbers of training images per client, smallest first (its ε is the largest)."""
    return sorted({len(split.train) for split in data.splits})


@dataclass
class Extension:
    """Beyond the paper: the same images over more clients, its baseline and its sweep."""

    data: FederatedData
    baseline: PrivateRun
    runs: list[PrivateRun]


class Protocol:
    """Paper 02's runs for one parameter set: same data, optimizer and initial weights for every run.

    The methods run in the order the notebook calls them; each run reseeds its model from
    ``params.seed`` (:func:`seeded_model`) and gets a fresh :class:`DPTrainer`.
    """

    def __init__(self, params: ClippingParameters, data: FederatedData, test: ImageDataset,
                 public_data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.params, self.data, self.test, self.public_data = params, data, test, public_data
        self.config = FedAvgConfig(rounds=params.rounds, local_epochs=params.local_epochs, batch_size=params.batch_size,
                                   optimizer=OPTIMIZER, lr=params.lr, momentum=params.momentum, seed=params.seed,
                                   device=params.device)
        self.factory = model_factory(params.model_name, data.train)
        self.label = f"{params.num_clients} clients"

    def _sweep(self, data: FederatedData, config: FedAvgConfig, strategies: Sequence[str],
               noise_multipliers: Sequence[float], label: str, **options: Any) -> list[PrivateRun]:
        p = self.params
        return noise_sweep(self.factory, data.train, self.test, data.splits, config, strategies, noise_multipliers,
                           max_grad_norm=p.max_grad_norm, delta=p.delta, label=label, accountant=p.accountant,
                           physical_batch_size=p.physical_batch_size, backend=p.backend, **options)

    def initial_model(self) -> nn.Module:
        """The weights every run starts from."""
        return seeded_model(self.factory, self.params.seed)

    def baseline(self) -> PrivateRun:
        """Non-private FedAvg on the same data: the ceiling of every private run."""
        return run_baseline(self.factory, self.data.train, self.test, self.data.splits, self.config, label=self.label,
                            backend=self.params.backend)

    def sweep(self) -> list[PrivateRun]:
        """The paper's Figure 3: every strategy at every σ."""
        return self._sweep(self.data, self.config, self.params.strategies, self.params.noise_multipliers, self.label,
                           public_data=self.public_data)

    def paper_list(self) -> list[PrivateRun]:
        """The paper's explicit per-layer thresholds at ``paper_list_noise_multipliers`` (none: no runs)."""
        if not self.params.paper_list_noise_multipliers:
            return []
        return self._sweep(self.data, self.config, ["per_layer"], self.params.paper_list_noise_multipliers,
                           "paper's list", thresholds=self.params.paper_layer_list)

    def repeats(self) -> list[PrivateRun]:
        """Every strategy at the smallest σ once per extra seed: the yardstick of run-to-run spread."""
        runs: list[PrivateRun] = []
        for extra in self.params.repeat_seeds:
            runs += self._sweep(self.data, replace(self.config, seed=extra), self.params.strategies,
                                [self.params.smallest_sigma], f"seed {extra}", public_data=self.public_data)
        return runs

    def clip_only(self) -> list[PrivateRun]:
        """Every strategy with clipping and no noise (σ = 0, ε = ∞), if ``clip_only``."""
        if not self.params.clip_only:
            return []
        return self._sweep(self.data, self.config, self.params.strategies, [0.0], "clip only",
                           public_data=self.public_data)

    def extension(self) -> Extension | None:
        """The same images over ``extension_clients`` clients: a baseline and a sweep (None: skipped)."""
        p = self.params
        if not p.extension_clients:
            return None
        wide = load_federated(p.dataset, p.extension_clients, p.seed, val_fraction=0.0,
                              samples_per_client=p.extension_samples_per_client, image_size=IMAGE_SIZE, root=p.data_root)
        label = f"{p.extension_clients} clients"
        baseline = run_baseline(self.factory, wide.train, self.test, wide.splits, self.config, label=label,
                                backend=p.backend)
        runs = self._sweep(wide, self.config, p.strategies, p.extension_noise_multipliers, label,
                           public_data=self.public_data)
        return Extension(wide, baseline, runs)


# --- what the notebook prints beside the runs ---------------------------------------------------

def budget_text(params: ClippingParameters, n_client: int) -> str:
    """ε of the sweep per client of ``n_client`` images: composed over all rounds and for one round.

    DP-SGD takes ⌈n/B⌉ Poisson-sampled steps per round with q = 1/⌈n/B⌉ (opacus's convention); one
    accountant per client sees every step, so the run's ε is that of rounds·⌈n/B⌉ steps composed.
    """
    p = params
    q, per_round = sample_rate(n_client, p.batch_size), steps_per_epoch(n_client, p.batch_size) * p.local_epochs
    lines = [f"client: n = {n_client}, B = {p.batch_size}: q = {q:.5f}, {per_round} steps per round, "
             f"{p.rounds * per_round} in {p.rounds} rounds ({p.accountant.upper()}, delta = {p.delta:g})",
             f"{'sigma':>7} {'eps, all rounds':>16} {'eps, one round':>15}"]
    lines += [f"{sigma:7.4g} {epsilon_for(sigma, q, p.rounds * per_round, p.delta, p.accountant):16.4g} "
              f"{epsilon_for(sigma, q, per_round, p.delta, p.accountant):15.4g}" for sigma in p.noise_multipliers]
    lines += [f"sigma for eps = {target:g} after {p.rounds} rounds: "
              f"{noise_for_epsilon(target, p.delta, q, p.rounds * per_round, p.accountant):.3f}"
              for target in (1.0, 3.0, 8.0)]
    return "\n".join(lines)


def refusal_text(layers: Sequence[Any]) -> str:
    """What fedrepro says to a BatchNorm model and to a per-layer list of the wrong length (the fix included)."""
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("a BatchNorm ResNet-18", lambda: check_dp_compatible(build_model("resnet18", norm="batch"))),
        ("a 3-value per-layer list", lambda: check_thresholds([1.2, 1.1, 1.0], layers))]
    lines = []
    for attempt, check in attempts:
        try:
            check()
            lines.append(f"{attempt}: accepted")
        except (DPIncompatibleModelError, ValueError) as error:
            lines.append(f"{attempt}: {type(error).__name__}: {error}\n")
    return "\n".join(lines)


def layer_names(layers: Sequence[Any]) -> list[str]:
    """The clipping layers' names, e.g. ``conv1+gn1`` (a GroupNorm joins the conv layer before it)."""
    return [layer.name for layer in layers]


def timing_text(runs: Sequence[PrivateRun]) -> str:
    return f"{len(runs)} private runs in {sum(r.seconds for r in runs):.0f} s"


def last_run(runs: Sequence[PrivateRun], strategy: str) -> PrivateRun | None:
    """``strategy``'s run at the smallest σ of ``runs`` (the paper's last run), or None."""
    sigma = min(r.noise_multiplier for r in runs)
    return next((r for r in runs if r.strategy == strategy and r.noise_multiplier == sigma), None)


def gradient_states(initial: nn.Module, baseline: PrivateRun, runs: Sequence[PrivateRun]) -> dict[str, nn.Module]:
    """Figure 2's model states: initial, after non-private FedAvg, after DP FedAvg (flat at the smallest σ,
    else the sweep's last run)."""
    private = last_run(runs, "flat")
    private = runs[-1] if private is None else private
    return {"initial model": initial, "after non-private FedAvg": baseline.model,
            f"after DP FedAvg ({LABELS[private.strategy]}, σ = {private.noise_multiplier:g})": private.model}


def gradient_entries_by_state(states: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                              layers: Sequence[Any]) -> dict[str, dict[str, torch.Tensor]]:
    """|∂L/∂w| of every lead weight per layer, per model state (moved to the batch's device)."""
    return {name: gradient_entries(model.to(x.device), x, y, layers) for name, model in states.items()}


def gradient_text(states: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, layers: Sequence[Any],
                  max_grad_norm: float) -> str:
    """Per state: M_j = max |∂L/∂w| (what adaptive clipping uses) and the S_j it implies, and each layer's median
    per-sample gradient norm (what clipping acts on) against S and S/√m."""
    uniform = uniform_thresholds(max_grad_norm, len(layers))[0]
    lines = ["layers: " + ", ".join(layer_names(layers))]
    for name, model in states.items():
        magnitudes = layer_gradient_magnitudes(model, x, y, layers)
        norms = layer_gradient_magnitudes(model, x, y, layers, statistic="median_norm")
        lines.append(f"{name}:\n  M_j = max|grad| " + ", ".join(f"{v:.3g}" for v in magnitudes)
                     + " -> adaptive S_j " + ", ".join(f"{v:.2f}" for v in adaptive_thresholds(magnitudes, max_grad_norm))
                     + "\n  median per-sample gradient norm per layer " + ", ".join(f"{v:.2f}" for v in norms)
                     + f" (whole model {math.sqrt(sum(v * v for v in norms)):.2f}; S = {max_grad_norm:g}, "
                     f"S/sqrt(m) = {uniform:.2f})")
    return "\n".join(lines)


def clipping_or_noise_table(runs: Sequence[PrivateRun], clip_runs: Sequence[PrivateRun], baseline: PrivateRun,
                            strategies: Sequence[str]) -> str:
    """Markdown: non-private, clip-only (σ = 0) and each strategy at both ends of the sweep, to tell what clipping
    costs (non-private → clip only) from what the noise costs (clip only → largest σ)."""
    ends = [min(r.noise_multiplier for r in runs), max(r.noise_multiplier for r in runs)]
    rows = ["| strategy | clip only (σ = 0) | " + " | ".join(
                f"σ = {s:g} (ε = {next(r.epsilon for r in runs if r.noise_multiplier == s):.3g})" for s in ends) + " |",
            "|---|---|" + "---|" * len(ends), f"| non-private | {baseline.final_accuracy:.3f} |" + " |" * len(ends)]
    for strategy in strategies:
        clip = next((f"{r.final_accuracy:.3f}" for r in clip_runs if r.strategy == strategy), "—")
        rows.append(f"| {LABELS[strategy]} | {clip} | " + " | ".join(
            f"{next(r.final_accuracy for r in runs if r.strategy == strategy and r.noise_multiplier == s):.3f}"
            for s in ends) + " |")
    return "\n".join(rows)


# --- summaries of a sweep -----------------------------------------------------------------------------------

def by_strategy(runs: Sequence[PrivateRun]) -> dict[str, list[PrivateRun]]:
    """Runs grouped by strategy, each list ordered by decreasing σ (increasing ε)."""
    grouped: dict[str, list[PrivateRun]] = {}
    for run in runs:
        grouped.setdefault(run.strategy, []).append(run)
    return {k: sorted(v, key=lambda r: -r.noise_multiplier) for k, v in grouped.items()}


def ranking(runs: Sequence[PrivateRun], noise_multiplier: float | None = None,
            metric: str = "final_accuracy") -> list[tuple[str, float]]:
    """Strategies ordered by ``metric`` at one σ (default: the smallest σ of the sweep, the paper's 'last execution')."""
    sigma = min(r.noise_multiplier for r in runs) if noise_multiplier is None else noise_multiplier
    chosen = [(r.strategy, getattr(r, metric)) for r in runs if math.isclose(r.noise_multiplier, sigma)]
    return sorted(chosen, key=lambda item: -item[1])


def wins(runs: Sequence[PrivateRun], first: str, second: str, metric: str = "final_accuracy") -> tuple[int, int]:
    """(σ values where ``first`` beats ``second``, σ values both were run at)."""
    a = {r.noise_multiplier: getattr(r, metric) for r in runs if r.strategy == first}
    b = {r.noise_multiplier: getattr(r, metric) for r in runs if r.strategy == second}
    common = sorted(set(a) & set(b))
    return sum(a[s] > b[s] for s in common), len(common)


def mean_metric(runs: Sequence[PrivateRun], strategy: str, metric: str = "final_accuracy") -> float:
    values = [getattr(r, metric) for r in runs if r.strategy == strategy]
    return sum(values) / len(values) if values else math.nan


def sweep_table(runs: Sequence[PrivateRun], metric: str = "final_accuracy") -> str:
    """A markdown table: one row per σ with ε and each strategy's ``metric``."""
    grouped = by_strategy(runs)
    strategies = list(grouped)
    sigmas = sorted({r.noise_multiplier for r in runs}, reverse=True)
    lookup = {(r.strategy, r.noise_multiplier): r for r in runs}
    lines = ["| σ | ε | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
    for sigma in sigmas:
        eps = next(r.epsilon for r in runs if r.noise_multiplier == sigma)
        cells = [f"{getattr(lookup[(s, sigma)], metric):.3f}" if (s, sigma) in lookup else "—" for s in strategies]
        lines.append(f"| {sigma:.3g} | {eps:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_with_paper(runs: Sequence[PrivateRun], paper_order: Sequence[str] = PAPER_ORDER,
                       repeats: Sequence[PrivateRun] = (), metric: str = "final_accuracy") -> dict[str, Any]:
    """The paper's reading (``paper_order``, best first) beside a sweep: the ranking at the smallest σ, wins
    and means over the sweep, and the order's verdict by the claim criterion (:func:`order_claim`).

    ``repeats``: extra runs at the smallest σ with other seeds, whose spread the order is judged against.
    """
    runs = [r for r in runs if r.strategy in paper_order]
    order = order_claim(runs, repeats, paper_order, metric)
    last = ranking(runs, order.sigma, metric)
    pairs = [(a, b) for i, a in enumerate(paper_order) for b in paper_order[i + 1:]]
    pair_wins = {f"{a}>{b}": wins(runs, a, b, metric) for a, b in pairs}
    means = {s: mean_metric(runs, s, metric) for s in paper_order}
    lines = [f"At the smallest σ = {order.sigma:.3g} (the paper's last run): "
             + " > ".join(f"{LABELS.get(s, s)} {v:.3f}" for s, v in last) + ".",
             "Across the sweep, " + "; ".join(f"{LABELS.get(a, a)} beats {LABELS.get(b, b)} at {w}/{n} σ values"
                                              for (a, b), (w, n) in zip(pairs, pair_wins.values())) + ".",
             "Mean over the sweep: " + ", ".join(f"{LABELS.get(s, s)} {v:.3f}" for s, v in means.items()) + "."]
    spread = seed_spread(order.values)
    if spread is not None:
        lines.append(f"Over {order.seeds} seeds at σ = {order.sigma:.3g}, one strategy's accuracy varies by up to "
                     f"{spread:.3f} from seed to seed.")
    lines.append(order.text())
    return {"sigma": order.sigma, "ranking": last, "order": order.verdict, "pair_wins": pair_wins, "means": means,
            "seed_spread": spread, "text": "\n".join(lines)}


# --- the paper's claims, checked --------------------------------------------------------------

def seed_values(runs: Sequence[PrivateRun], repeats: Sequence[PrivateRun] = (),
                metric: str = "final_accuracy") -> dict[str, list[float]]:
    """Each strategy's ``metric`` at the smallest σ of ``runs``: the sweep's run, then one per extra seed."""
    sigma = min(r.noise_multiplier for r in runs)
    values: dict[str, list[float]] = {}
    for run in [*(r for r in runs if r.noise_multiplier == sigma), *repeats]:
        values.setdefault(run.strategy, []).append(getattr(run, metric))
    return values


def seed_spread(values: Mapping[str, Sequence[float]]) -> float | None:
    """The largest range (max − min) of one strategy's values over seeds; None with a single seed."""
    ranges = [max(v) - min(v) for v in values.values() if len(v) > 1]
    return max(ranges) if ranges else None


def strategy_gap(better: Sequence[float], worse: Sequence[float], test_size: int) -> tuple[claims.Comparison, str]:
    """``better`` − ``worse``, accuracies of two strategies at one σ, and the spread it is judged by: over
    seeds (Welch) when both have at least 2, else binomial over the ``test_size`` test images of each run."""
    if min(len(better), len(worse)) > 1:
        return claims.compare(better, worse), f"over {min(len(better), len(worse))} seeds"
    mean_a, mean_b = sum(better) / len(better), sum(worse) / len(worse)
    return claims.compare_proportions(mean_a, test_size, mean_b, test_size), f"binomial over {test_size} test images"


@dataclass
class OrderClaim:
    """The paper's 'flat > adaptive > uniform' at its last run (the smallest σ), step by step by
    :data:`fedrepro.claims.CRITERION` (:func:`strategy_gap`: over seeds when ``repeat_seeds`` gave each
    strategy 2 values or more there, else binomial over the test images). Confirmed when every step of the
    paper's order among the strategies run is, contradicted when any step is.
    """

    sigma: float
    values: dict[str, list[float]]  # per strategy: the sweep's run, then one per extra seed
    test_size: int
    paper_order: tuple[str, ...] = PAPER_ORDER

    @property
    def means(self) -> dict[str, float]:
        return {s: sum(v) / len(v) for s, v in self.values.items()}

    @property
    def seeds(self) -> int:
        return max(len(v) for v in self.values.values())

    def steps(self) -> list[tuple[str, str, claims.Comparison, str]]:
        """(better, worse, comparison, spread) for each consecutive pair of the paper's order that we ran."""
        ran = [s for s in self.paper_order if s in self.values]
        return [(a, b, *strategy_gap(self.values[a], self.values[b], self.test_size)) for a, b in zip(ran, ran[1:])]

    @property
    def verdict(self) -> str:
        verdicts = [comparison.verdict for _, _, comparison, _ in self.steps()]
        if not verdicts or claims.NO_SPREAD in verdicts:
            return claims.NO_SPREAD
        if claims.CONTRADICTED in verdicts:
            return claims.CONTRADICTED
        return claims.CONFIRMED if all(v == claims.CONFIRMED for v in verdicts) else claims.INSIDE

    def checks(self) -> list[claims.ClaimCheck]:
        """One check per step, each under its own key (``claim/flat_beats_adaptive``, ...)."""
        means = self.means
        return [claims.check(f"claim/{LABELS[a]}_beats_{LABELS[b]}",
                             f"{LABELS[a]} beats {LABELS[b]} at σ = {self.sigma:.3g} (paper: flat > adaptive > "
                             "uniform)", comparison, f"{LABELS[a]} {means[a]:.3f} vs {LABELS[b]} {means[b]:.3f}, {spread}")
                for a, b, comparison, spread in self.steps()]

    def text(self) -> str:
        paper = " > ".join(LABELS.get(s, s) for s in self.paper_order)
        steps = "; ".join(f"{LABELS[a]} − {LABELS[b]} {c.estimate()} ({spread}): {c.verdict}"
                          for a, b, c, spread in self.steps())
        return f"The paper's order {paper} at σ = {self.sigma:.3g}, by the claim criterion: {self.verdict}" + \
            (f" ({steps})." if steps else " (one strategy: no order to check).")


def order_claim(runs: Sequence[PrivateRun], repeats: Sequence[PrivateRun] = (), paper_order: Sequence[str] = PAPER_ORDER,
                metric: str = "final_accuracy") -> OrderClaim:
    """:class:`OrderClaim` from a sweep and its extra seeds at the smallest σ (strategies outside the paper's
    order ignored)."""
    ran = [r for r in runs if r.strategy in paper_order]
    values = seed_values(ran, [r for r in repeats if r.strategy in paper_order], metric)
    return OrderClaim(sigma=min(r.noise_multiplier for r in runs), values=values,
                      test_size=min(r.test_size for r in ran), paper_order=tuple(paper_order))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-a: (concordant − discordant pairs) / all pairs; ties count as neither."""
    pairs = [(x[i] - x[j]) * (y[i] - y[j]) for i in range(len(x)) for j in range(i + 1, len(x))]
    if not pairs:
        return math.nan
    return sum((d > 0) - (d < 0) for d in pairs) / len(pairs)


@dataclass
class NoiseTrend:
    """One strategy's accuracy from the largest to the smallest σ of the sweep (the paper's Figure 1:
    accuracy rises as σ falls), by :data:`fedrepro.claims.CRITERION`. With 2 seeds or more at the smallest σ,
    their mean against the largest σ's single run, se = s·√(1/n + 1) with the seeds' standard deviation s
    taken for both ends (:func:`fedrepro.claims.compare_to_single`); otherwise the two runs' accuracies with
    the binomial error over their test images. Kendall's τ between σ and accuracy over the sweep is shown."""

    strategy: str
    sigmas: tuple[float, float]  # largest, smallest
    accuracies: tuple[float, float]  # the sweep's runs at those σ
    tau: float
    comparison: claims.Comparison  # smallest σ − largest σ
    spread: str  # which spread the comparison used

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def check(self) -> claims.ClaimCheck:
        label = LABELS.get(self.strategy, self.strategy)
        return claims.check("claim/accuracy_rises_as_noise_falls", f"{label}: accuracy rises as noise falls",
                            self.comparison,
                            f"{self.accuracies[0]:.3f} at σ = {self.sigmas[0]:.3g} → {self.accuracies[1]:.3f} at "
                            f"σ = {self.sigmas[1]:.3g}, Kendall τ(σ, accuracy) = {self.tau:+.2f}, {self.spread}")


def noise_trends(runs: Sequence[PrivateRun], repeats: Sequence[PrivateRun] = (),
                 metric: str = "final_accuracy") -> list[NoiseTrend]:
    """:class:`NoiseTrend` of every strategy with at least two σ values in ``runs``; ``repeats`` are the extra
    seeds at the smallest σ."""
    seeds = seed_values(runs, repeats, metric)
    trends = []
    for strategy, group in by_strategy(runs).items():  # each group by decreasing σ
        if len(group) < 2:
            continue
        values = [getattr(r, metric) for r in group]
        at_smallest = seeds.get(strategy, [])
        if len(at_smallest) > 1:
            comparison = claims.compare_to_single(at_smallest, values[0])
            spread = f"seed spread over {len(at_smallest)} seeds at σ = {group[-1].noise_multiplier:.3g}"
        else:
            comparison = claims.compare_proportions(values[-1], group[-1].test_size, values[0], group[0].test_size)
            spread = f"binomial over {group[-1].test_size} test images"
        trends.append(NoiseTrend(strategy, (group[0].noise_multiplier, group[-1].noise_multiplier),
                                 (values[0], values[-1]), kendall_tau([r.noise_multiplier for r in group], values),
                                 comparison, spread))
    return trends


def claim_checks(order: OrderClaim, trends: Sequence[NoiseTrend]) -> list[claims.ClaimCheck]:
    """The paper's two claims, checked; record them with :func:`fedrepro.claims.record`."""
    return [*order.checks(), *(trend.check() for trend in trends)]


def claims_summary(order: OrderClaim, trends: Sequence[NoiseTrend]) -> dict[str, Any]:
    """The verdicts, JSON-ready, for ``results.json``."""
    return {"order": order.verdict, "order_steps": {c.key: c.verdict for c in order.checks()},
            "accuracy_rises_as_noise_falls": {t.strategy: t.verdict for t in trends}}


# --- result keys (fedrepro/paper_results/02.yaml) and what a run records ---------------------------

MAX_EPSILON = "sweep/max_epsilon"
MIN_EPSILON = "sweep/min_epsilon"
BASELINE_ACCURACY = "baseline/accuracy"
SEED_SPREAD = "repeats/max_seed_spread"


def final_key(strategy: str) -> str:
    """Test accuracy of ``strategy`` at the smallest σ (the paper's 'last run')."""
    return f"final/{strategy}/accuracy"


def mean_key(strategy: str) -> str:
    return f"sweep/{strategy}/mean_accuracy"


def paper_list_key(sigma: float) -> str:
    return f"paper_list/sigma={sigma:g}/accuracy"


def clip_only_key(strategy: str) -> str:
    return f"clip_only/{strategy}/accuracy"


def extension_key(clients: int, strategy: str) -> str:
    return f"clients={clients}/{strategy}/accuracy"


def paper_final(report) -> dict[str, float | None]:
    """The paper's accuracy of each strategy at its last run (Figure 3's stars)."""
    return {strategy: report.reported(final_key(strategy)) for strategy in PAPER_ORDER}


def record_results(report, params: ClippingParameters, baseline: PrivateRun, runs: Sequence[PrivateRun],
                   list_runs: Sequence[PrivateRun], repeats: Sequence[PrivateRun], clip_runs: Sequence[PrivateRun],
                   verdict: Mapping[str, Any], extension: Extension | None,
                   claims: Mapping[str, Any] | None = None) -> None:
    """Every number of the run into ``report`` under its key, and every run (without its model)."""
    smallest, rounds, delta = params.smallest_sigma, params.rounds, params.delta
    for run in runs:
        if run.noise_multiplier == smallest:
            report.measure(final_key(run.strategy), run.final_accuracy,
                           setting=f"test accuracy, {LABELS[run.strategy]} clipping, σ = {smallest:g} ({rounds} rounds)")
    report.measure(MAX_EPSILON, max(r.epsilon for r in runs),
                   setting=f"ε at σ = {smallest:g} ({params.accountant.upper()}, δ = {delta:g}, composed over {rounds} rounds)")
    report.measure(MIN_EPSILON, min(r.epsilon for r in runs), setting=f"ε at σ = {max(params.noise_multipliers):g}")
    report.measure(BASELINE_ACCURACY, baseline.final_accuracy, setting="non-private FedAvg test accuracy")
    for strategy, value in verdict["means"].items():
        report.measure(mean_key(strategy), value,
                       setting=f"{LABELS[strategy]}: test accuracy averaged over the σ sweep")
    for run in list_runs:
        report.measure(paper_list_key(run.noise_multiplier), run.final_accuracy,
                       setting=f"test accuracy, the paper's per-layer list, σ = {run.noise_multiplier:g}")
    for run in clip_runs:
        report.measure(clip_only_key(run.strategy), run.final_accuracy,
                       setting=f"test accuracy, {LABELS[run.strategy]} clipping without noise (σ = 0)")
    if verdict["seed_spread"] is not None:
        report.measure(SEED_SPREAD, verdict["seed_spread"], setting=f"largest seed-to-seed accuracy range at σ = {smallest:g}")
    if extension is not None:
        for run in extension.runs:
            if run.noise_multiplier == min(params.extension_noise_multipliers):
                report.measure(extension_key(params.extension_clients, run.strategy), run.final_accuracy,
                               setting=f"{params.extension_clients} clients, {LABELS[run.strategy]}, "
                                       f"σ = {run.noise_multiplier:g} (ε = {run.epsilon:.3g})")
    report.parameters["runs"] = [r.as_dict() for r in [*runs, *list_runs, *repeats, *clip_runs]]
    report.parameters["order"] = verdict["order"]
    if claims is not None:
        report.parameters["claims"] = dict(claims)
