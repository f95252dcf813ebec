"""Paper 01 (Usynin et al., *Can collaborative learning be private, robust and scalable?*, TPDP 2022).

Everything notebook 01 runs, so that a test can reach it:

* :class:`RobustnessParameters` — the notebook's parameters cell as one validated record (written whole to
  ``results.json``); :func:`prepare` turns it into a :class:`Setup` (data, attack images, the public
  calibration images, the attack budget and the two :class:`ModelPool`\ s);
* :func:`train_federated` — FedAvg of one regime (normal or DP-SGD at a target ε), optionally with a
  share of adversarial data (adversarial training or the train-time attacker): a :class:`GlobalModel`;
* the paper's tables and figures, each a function that trains/attacks what it needs, records its
  numbers in a :class:`fedrepro.results.Report` under the keys below and returns its rows:
  :func:`table_1` and :func:`size_rows` (fp32 vs int8), :func:`white_box_rows` and :func:`fab_check`,
  :func:`figure_2_3` (transfer), :func:`figure_4` (adversarial training), :func:`figure_5`
  (train-time attacker);
* the result keys (``*_key`` functions and the constants), the same as ``paper_results/01.yaml``'s;
* :func:`claim_checks` — the paper's claims and the effects the quick tier is meant to show, each with the
  numbers behind it and a verdict by :mod:`fedrepro.claims`' criterion.

Sections print one line per trained or attacked setting through ``log`` as they go (a quick-tier
section runs for minutes); tests pass a list's ``append``.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fedrepro import claims
from fedrepro.data import FederatedData, load_federated
from fedrepro.fl import FedAvgConfig, FedAvgResult, run_fedavg
from fedrepro.models import MODELS, build_model, count_parameters
from fedrepro.quantization import QuantizationReport, compare, public_calibration_set, size_table
from fedrepro.results import TIERS, Report
from fedrepro.robustness.attacks import METHODS, AdversarialConfig, Normalized, fab
from fedrepro.robustness.threat import TransferResult, WhiteBoxResult, accuracy, attack_images, transfer, white_box
from fedrepro.robustness.training import AdversarialBatches, AdversarialTrainer, poison_dataset
from fedrepro.runtime import get_device
from fedrepro.validation import choice, integer, names, number, numbers, require, text

Log = Callable[[str], None]

# --- parameters --------------------------------------------------------------------------------

POISON_MODES = ("static", "online")


@dataclass(frozen=True)
class RobustnessParameters:
    """Notebook 01's parameters cell (every name but ``results_dir``), checked before anything trains.

    Defaults are the smoke tier's. ``grid_model``/``grid_rounds`` None mean "as ``model_name``/``rounds``"
    (:attr:`grid_model_name`, :attr:`grid_rounds_used`); ``headline_samples`` None trains ``model_name`` on
    every client's whole share. Lists are stored as tuples.
    """

    tier: str = "smoke"
    seed: int = 0
    dataset: str = "cifar10"
    model_name: str = "cnn"
    grid_model: str | None = None
    grid_rounds: int | None = None
    num_clients: int = 5
    rounds: int = 1
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.003
    val_fraction: float = 0.1
    samples_per_client: int | None = 200
    headline_samples: int | None = None
    test_samples: int | None = 500
    attack_samples: int | None = 100
    calibration_samples: int | None = 100
    epsilons: tuple[float, ...] = (1.7, 3.4, 7.0)
    delta: float = 1e-05
    max_grad_norm: float = 1.0
    attack_eps_255: float = 8
    attack_step_255: float = 2
    attack_steps: int = 10
    random_start: bool = True
    attack_methods: tuple[str, ...] = ("fgsm", "pgd")
    fab_samples: int = 4
    transfer_epsilons: tuple[float, ...] = (7.0, 1.7)
    adv_methods: tuple[str, ...] = ("fgsm", "pgd")
    adv_shares: tuple[float, ...] = (0.2,)
    adv_epsilons: tuple[float, ...] = (1.7,)
    poison_method: str = "pgd"
    poison_mode: str = "static"
    poison_shares: tuple[float, ...] = (0.4,)
    poison_epsilons: tuple[float, ...] = (3.4,)
    size_models: tuple[str, ...] = ("resnet9",)
    device: str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        choice("tier", self.tier, TIERS)
        integer("seed", self.seed)
        text("dataset", self.dataset, "a dataset name")
        choice("model_name", self.model_name, MODELS)
        choice("grid_model", self.grid_model, MODELS, optional=True)
        for name in ("grid_rounds", "samples_per_client", "headline_samples", "test_samples", "attack_samples",
                     "calibration_samples"):
            integer(name, getattr(self, name), 1, optional=True)
        for name in ("num_clients", "rounds", "local_epochs", "batch_size", "fab_samples"):
            integer(name, getattr(self, name), 1)
        integer("attack_steps", self.attack_steps, 0)
        number("lr", self.lr, 0, low_open=True)
        number("val_fraction", self.val_fraction, 0, 1, high_open=True)
        number("delta", self.delta, 0, 1, low_open=True, high_open=True)
        number("max_grad_norm", self.max_grad_norm, 0, low_open=True)
        number("attack_eps_255", self.attack_eps_255, 0, 255)  # grey levels
        number("attack_step_255", self.attack_step_255, 0, 255)
        require(isinstance(self.random_start, bool), "random_start", self.random_start, "expected True or False")
        choice("poison_method", self.poison_method, METHODS)
        choice("poison_mode", self.poison_mode, POISON_MODES)
        require(isinstance(self.device, str), "device", self.device, "expected auto, cpu, cuda or cuda:N")
        lists = {  # privacy budgets ε > 0, shares of the training data in (0, 1]
            "epsilons": numbers("epsilons", self.epsilons, 0, low_open=True),
            "transfer_epsilons": numbers("transfer_epsilons", self.transfer_epsilons, 0, low_open=True),
            "adv_epsilons": numbers("adv_epsilons", self.adv_epsilons, 0, low_open=True),
            "poison_epsilons": numbers("poison_epsilons", self.poison_epsilons, 0, low_open=True),
            "adv_shares": numbers("adv_shares", self.adv_shares, 0, 1, low_open=True),
            "poison_shares": numbers("poison_shares", self.poison_shares, 0, 1, low_open=True),
            "attack_methods": names("attack_methods", self.attack_methods, METHODS),
            "adv_methods": names("adv_methods", self.adv_methods, METHODS),
            "size_models": names("size_models", self.size_models, MODELS.names()),
        }
        # the FAB cross-check, Figures 2–3 and the claim checks compare with white-box PGD
        require("pgd" in lists["attack_methods"], "attack_methods", self.attack_methods,
                "expected a list that includes pgd")
        for name, value in lists.items():
            object.__setattr__(self, name, tuple(value))

    @property
    def grid_model_name(self) -> str:
        """The model of the many-trainings grid (transfer, adversarial training, train-time attacker)."""
        return self.grid_model or self.model_name

    @property
    def grid_rounds_used(self) -> int:
        return self.grid_rounds or self.rounds

    @property
    def grid_regimes(self) -> list[float]:
        """Every DP ε the grid trains at."""
        return sorted(set(self.transfer_epsilons + self.adv_epsilons + self.poison_epsilons))


# --- training ----------------------------------------------------------------------------------

@dataclass
class GlobalModel:
    """One FedAvg-trained global model of paper 01 and how it was obtained (regime, adversarial data, time)."""

    label: str
    model: nn.Module
    result: FedAvgResult
    epsilon: float | None = None  # the target ε (None: non-private)
    spent_epsilon: float | None = None  # what the accountant reports after training
    noise_multiplier: float | None = None
    adversarial: dict[str, Any] = field(default_factory=dict)  # method, share, labels
    seconds: float = 0.0
    quantization: Any = None  # a fedrepro.quantization.QuantizationReport once quantized

    @property
    def accuracy(self) -> float:
        return self.result.final_accuracy

    def net(self, dataset) -> Normalized:
        """The model behind the dataset normalisation (takes [0, 1] images), for attacks."""
        return Normalized.for_dataset(self.model, dataset)


def client_subset(data, samples: int | None, seed: int = 0):
    """``data`` with each client training on a seeded ``samples`` of its own training images.

    Validation splits and the test set are kept, so public calibration images drawn from the
    validation splits stay disjoint from every client's training data. ``None`` returns ``data``.
    """
    from fedrepro.data import ClientSplit
    from fedrepro.runtime import generator

    if samples is None:
        return data
    splits = []
    for client, split in enumerate(data.splits):
        order = torch.randperm(len(split.train), generator=generator(seed, "client-subset", client))
        splits.append(ClientSplit(split.train[order[:samples]].sort().values, split.val))
    return dataclasses.replace(data, splits=splits)


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, num_samples: int, batch_size: int, epochs: int) -> float:
    """σ for ``epochs`` local epochs in total over a run (``fedrepro.privacy``'s RDP search), cached."""
    from fedrepro.privacy import noise_for_epsilon, sample_rate, steps_per_epoch

    return noise_for_epsilon(epsilon, delta, sample_rate(num_samples, batch_size),
                             epochs * steps_per_epoch(num_samples, batch_size))


def dp_trainer(epsilon: float, delta: float, max_grad_norm: float, data=None, config: FedAvgConfig | None = None):
    """fedrepro.privacy's DP-SGD client step (flat clipping) for a target ε.

    With ``data`` and ``config`` and equally sized clients, σ is found once (and cached across the
    notebook's many trainings) and passed as ``noise_multiplier`` — the same σ the trainer's own
    per-client search (``target_epsilon``) would find, without repeating it for every client.
    """
    from fedrepro.privacy import DPTrainer

    sizes = {len(split.train) for split in data.splits} if data is not None else set()
    if config is not None and len(sizes) == 1:
        sigma = noise_multiplier(float(epsilon), float(delta), sizes.pop(), config.batch_size,
                                 config.rounds * config.local_epochs)
        return DPTrainer(clipping="flat", max_grad_norm=max_grad_norm, noise_multiplier=sigma, delta=delta)
    return DPTrainer(clipping="flat", max_grad_norm=max_grad_norm, target_epsilon=epsilon, delta=delta)


def train_federated(model_name: str, data, config: FedAvgConfig, *, label: str | None = None,
                    epsilon: float | None = None, delta: float = 1e-5, max_grad_norm: float = 1.0,
                    adversarial_share: float = 0.0, attack: AdversarialConfig | None = None, labels: str = "true",
                    progress: bool = False) -> GlobalModel:
    """FedAvg of a fresh ``model_name`` (initialised from ``config.seed``), optionally with DP-SGD at
    target ``epsilon`` and/or ``adversarial_share`` of adversarial data (``labels="true"``: adversarial
    training; ``"predicted"``: the train-time attacker)."""
    torch.manual_seed(config.seed)
    model = build_model(model_name, in_channels=data.train.channels, num_classes=data.train.num_classes,
                        image_size=data.train.image_size)
    base = dp_trainer(epsilon, delta, max_grad_norm, data, config) if epsilon is not None else None
    if base is not None and config.workers is None and get_device(config.device).type == "cpu":
        # DPTrainer keeps per-client accountants, so FedAvg would train it in one process; in worker
        # processes each client's accountant stays in its worker and ε comes back in the metrics.
        config = dataclasses.replace(config, workers=max(1, torch.get_num_threads()))
    trainer = base
    adversarial: dict[str, Any] = {}
    if adversarial_share > 0:
        attack = attack or AdversarialConfig("pgd")
        # under DP-SGD each record gets its own coin, so the transform is per record and ε holds
        selection = "exact" if epsilon is None else "independent"
        batches = AdversarialBatches.for_dataset(data.train, adversarial_share, attack, labels, selection)
        trainer = AdversarialTrainer(batches, base)
        adversarial = {"method": attack.method, "share": adversarial_share, "labels": labels, "selection": selection}
    started = time.perf_counter()
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    seconds = time.perf_counter() - started
    spent = sigma = None
    if epsilon is not None:
        last = [m for h in result.history for m in h["clients"].values() if "epsilon" in m]
        spent = max(m["epsilon"] for m in last) if last else None
        sigma = last[-1]["noise_multiplier"] if last else None
    if label is None:
        label = "normal" if epsilon is None else f"DP ε={epsilon:g}"
        if adversarial:
            label += f" + {adversarial_share:.0%} {adversarial['method'].upper()}" + (
                " (attacker)" if labels == "predicted" else "")
    return GlobalModel(label, result.model, result, epsilon, spent, sigma, adversarial, seconds)


@dataclass
class ModelPool:
    """One architecture's normal and DP-SGD models by regime, each trained, quantized and attacked once.

    The notebook's sections ask for ``trained(ε)``, ``int8(ε)`` and ``white_box(ε, method)`` (ε None:
    the normal model) in whatever order they need them; the quick tier keeps two pools — ResNet-9
    for the headline numbers, a small CNN for the many-trainings grid.
    """

    model_name: str
    data: Any
    config: FedAvgConfig
    attack: AdversarialConfig
    x_attack: torch.Tensor
    y_attack: torch.Tensor
    calibration: torch.Tensor
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    models: dict[str, GlobalModel] = field(default_factory=dict)
    _int8: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    _white: dict[tuple[str, str], WhiteBoxResult] = field(default_factory=dict, repr=False)

    @staticmethod
    def label(epsilon: float | None) -> str:
        return "normal" if epsilon is None else f"DP ε={epsilon:g}"

    def trained(self, epsilon: float | None = None) -> GlobalModel:
        label = self.label(epsilon)
        if label not in self.models:
            self.models[label] = train_federated(self.model_name, self.data, self.config, epsilon=epsilon,
                                                 delta=self.delta, max_grad_norm=self.max_grad_norm)
        return self.models[label]

    def int8(self, epsilon: float | None = None) -> nn.Module:
        """The int8 version, calibrated on the public ``calibration`` images."""
        from fedrepro.quantization import quantize_int8

        label = self.label(epsilon)
        if label not in self._int8:
            self._int8[label] = quantize_int8(self.trained(epsilon).model, self.calibration)
        return self._int8[label]

    def white_box(self, epsilon: float | None, method: str) -> WhiteBoxResult:
        """``method`` on the fp32 model itself over the attack images (seeded by the run's seed)."""
        key = (self.label(epsilon), method)
        if key not in self._white:
            net = self.trained(epsilon).net(self.data.test)
            self._white[key] = white_box(net, self.x_attack, self.y_attack, self.attack.replace(method=method),
                                         seed=self.config.seed)
        return self._white[key]


# --- the notebook's setup ----------------------------------------------------------------------

@dataclass
class Setup:
    """What every section shares: the data, the attacked test images, the public calibration images,
    the attack budget (PGD; sections swap the method) and the headline and grid :class:`ModelPool`\\ s
    (one object when the grid uses the headline model, rounds and data)."""

    params: RobustnessParameters
    data: FederatedData
    x_attack: torch.Tensor
    y_attack: torch.Tensor
    calibration: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    attack: AdversarialConfig
    headline: ModelPool
    grid: ModelPool

    def describe(self) -> str:
        return f"{self.data.describe()}\n{len(self.y_attack)} attack images, {len(self.calibration)} calibration images"


def prepare(params: RobustnessParameters) -> Setup:
    """Load the federation and draw the attack and calibration images (each from its own seeded stream)."""
    data = load_federated(params.dataset, params.num_clients, params.seed, val_fraction=params.val_fraction,
                          samples_per_client=params.samples_per_client, test_samples=params.test_samples,
                          image_size=32, root=params.data_root)
    x_attack, y_attack = attack_images(data.test, params.attack_samples, params.seed)
    calibration = public_calibration_set(data, params.calibration_samples, params.seed)
    x_test, y_test = data.test.tensors()
    attack = AdversarialConfig("pgd", eps=params.attack_eps_255 / 255, step_size=params.attack_step_255 / 255,
                               steps=params.attack_steps, random_start=params.random_start)
    config = FedAvgConfig(rounds=params.rounds, local_epochs=params.local_epochs, batch_size=params.batch_size,
                          lr=params.lr, seed=params.seed, device=params.device)
    pool_args = dict(attack=attack, x_attack=x_attack, y_attack=y_attack, calibration=calibration,
                     delta=params.delta, max_grad_norm=params.max_grad_norm)
    headline = ModelPool(params.model_name, client_subset(data, params.headline_samples, params.seed), config,
                         **pool_args)
    shared = (params.grid_model_name == params.model_name and params.grid_rounds in (None, params.rounds)
              and params.headline_samples is None)
    grid = headline if shared else ModelPool(params.grid_model_name, data,
                                             dataclasses.replace(config, rounds=params.grid_rounds_used), **pool_args)
    return Setup(params, data, x_attack, y_attack, calibration, x_test, y_test, attack, headline, grid)


def settings_lines(setup: Setup) -> list[str]:
    """The attack budget and, per pool and DP regime, the σ that keeps a client within ε after all its steps."""
    from fedrepro.privacy import noise_for_epsilon, sample_rate, steps_per_epoch

    p = setup.params
    lines = [f"attack: L-inf eps {p.attack_eps_255}/255 = {setup.attack.eps:.4f}, step {p.attack_step_255}/255, "
             f"{setup.attack.steps} steps"]
    pools = [(setup.headline, list(p.epsilons))]
    if setup.grid is not setup.headline:
        pools.append((setup.grid, p.grid_regimes))
    for pool, regimes in pools:
        n_client = len(pool.data.splits[0].train)
        q = sample_rate(n_client, p.batch_size)
        steps = pool.config.rounds * p.local_epochs * steps_per_epoch(n_client, p.batch_size)
        lines.append(f"{pool.model_name}: {n_client} training images per client, sample rate {q:.4f}, "
                     f"{steps} noisy steps in the run")
        lines += [f"  eps {eps}: sigma {noise_for_epsilon(eps, p.delta, q, steps):.2f} (delta {p.delta:g})"
                  for eps in regimes]
    return lines


# --- result keys (those of paper_results/01.yaml where the paper reports the number) ------------

MAX_INT8_ACCURACY_CHANGE = "int8/max_accuracy_change"
PGD_OVER_FGSM_TIME = "adversarial_training/pgd_over_fgsm_time/share0.4"
FAB_TIME_FACTOR = "adversarial_training/fab/time_factor"
FAB_MAX_ACCURACY = "adversarial_training/fab/max_accuracy"


def regime_tag(epsilon: float | None) -> str:
    """``normal`` or ``dp<ε>`` (``dp1.7``), as keys spell a training regime."""
    return "normal" if epsilon is None else f"dp{epsilon:g}"


def accuracy_key(dataset: str, model: str, epsilon: float | None, int8: bool = False) -> str:
    """Table 1: ``cifar10/resnet9/accuracy`` (normal, fp32), ``cifar10/resnet9/dp1.7/int8/accuracy``."""
    regime = "" if epsilon is None else f"/{regime_tag(epsilon)}"
    return f"{dataset}/{model}{regime}{'/int8' if int8 else ''}/accuracy"


def size_reduction_key(model: str) -> str:
    return f"{model}/int8/size_reduction"


def white_box_key(dataset: str, model: str, epsilon: float | None, method: str) -> str:
    """``method`` may also be ``fab_check`` (the FAB cross-check on a few images)."""
    return f"{dataset}/{model}/{regime_tag(epsilon)}/white_box/{method}"


def transfer_roles(epsilon: float) -> dict[str, str]:
    """The transfer keys' short names of one regime's four models, by model label."""
    dp = ModelPool.label(epsilon)
    return {"normal": "normal", dp: "dp", "normal int8": "normal_int8", f"{dp} int8": "dp_int8"}


def transfer_key(dataset: str, model: str, epsilon: float, generator: str, target: str, method: str) -> str:
    """``generator``/``target`` are :func:`transfer_roles` names (``normal``, ``dp``, ``normal_int8``, ``dp_int8``)."""
    return f"{dataset}/{model}/transfer/eps{epsilon:g}/{generator}->{target}/{method}"


def int8_gain_key(model: str, epsilon: float, method: str) -> str:
    return f"{model}/transfer/int8_gain_max/eps{epsilon:g}/{method}"


def adversarial_training_key(dataset: str, model: str, epsilon: float | None, method: str, share: float,
                             measure: str) -> str:
    """``measure``: ``accuracy_loss`` (under transfer PGD) or ``robust_accuracy`` (white-box PGD)."""
    return f"{dataset}/{model}/adversarial_training/{regime_tag(epsilon)}/{method}/share{share:g}/{measure}"


def max_clean_loss_key(model: str) -> str:
    return f"{model}/adversarial_training/max_clean_accuracy_loss"


def train_time_key(dataset: str, model: str, epsilon: float | None, method: str, share: float, measure: str) -> str:
    """``measure``: ``accuracy`` or ``accuracy_drop`` (from the same training without the attacker)."""
    return f"{dataset}/{model}/train_time/{regime_tag(epsilon)}/{method}/share{share:g}/{measure}"


# --- Table 1, the size table and the white-box attacks (model_name) ----------------------------

def train_regimes(setup: Setup, log: Log = print) -> dict[str, GlobalModel]:
    """The headline model trained normally and with DP-SGD at each of ``epsilons``, by label."""
    p = setup.params
    models = {ModelPool.label(eps): setup.headline.trained(eps) for eps in (None, *p.epsilons)}
    log(f"{p.model_name}: {count_parameters(models['normal'].model):,} parameters")
    for label, trained in models.items():
        spent = "" if trained.epsilon is None else (f"  (ε spent {trained.spent_epsilon:.2f}, "
                                                    f"σ {trained.noise_multiplier:.2f})")
        log(f"{label:>10}: test accuracy {100 * trained.accuracy:5.1f}%  in {trained.seconds:5.1f} s{spent}")
    return models


def table_1(setup: Setup, models: dict[str, GlobalModel], report: Report,
            log: Log = print) -> dict[str, QuantizationReport]:
    """Table 1: each model's fp32 and int8 test accuracy (and size); sets each ``model.quantization``."""
    p = setup.params
    log(f"{'model':>10} {'fp32 acc':>9} {'int8 acc':>9} {'Δ (pts)':>8} {'fp32 KB':>9} {'int8 KB':>9} {'smaller':>8}")
    for label, trained in models.items():
        q = trained.quantization = compare(trained.model, setup.headline.int8(trained.epsilon), setup.x_test,
                                           setup.y_test)
        log(f"{label:>10} {100 * q.fp32_accuracy:8.1f}% {100 * q.int8_accuracy:8.1f}% {100 * q.accuracy_change:+8.2f} "
            f"{q.fp32_bytes / 1e3:9.1f} {q.int8_bytes / 1e3:9.1f} {100 * q.size_reduction:7.1f}%")
        report.measure(accuracy_key(p.dataset, p.model_name, trained.epsilon), 100 * q.fp32_accuracy,
                       f"{p.model_name} test accuracy, {p.dataset}, {label}, fp32 (%)")
        report.measure(accuracy_key(p.dataset, p.model_name, trained.epsilon, int8=True), 100 * q.int8_accuracy,
                       f"{p.model_name} test accuracy, {p.dataset}, {label}, int8 (%)")
    report.measure(MAX_INT8_ACCURACY_CHANGE, max(abs(100 * t.quantization.accuracy_change) for t in models.values()),
                   f"largest |int8 − fp32| accuracy over the {len(models)} trained {p.model_name} models (points)")
    return {label: trained.quantization for label, trained in models.items()}


def size_rows(setup: Setup, models: dict[str, GlobalModel], report: Report,
              log: Log = print) -> dict[str, QuantizationReport]:
    """The size table: ``size_models`` built untrained (sizes do not depend on the weights), and the
    trained headline model's reduction when it is not among them. Call after :func:`table_1`."""
    p = setup.params
    if p.model_name not in p.size_models:
        report.measure(size_reduction_key(p.model_name), 100 * models["normal"].quantization.size_reduction,
                       f"{p.model_name} serialized size reduction (%)")
    sizes = size_table(list(p.size_models))
    for name, size in sizes.items():
        log(f"{name:>10}: {size.fp32_bytes:,} → {size.int8_bytes:,} bytes ({100 * size.size_reduction:.1f}% smaller)")
        report.measure(size_reduction_key(name), 100 * size.size_reduction, f"{name} serialized size reduction (%)")
    return sizes


def white_box_rows(setup: Setup, models: dict[str, GlobalModel], report: Report,
                   log: Log = print) -> dict[tuple[str, str], WhiteBoxResult]:
    """Each ``attack_methods`` on each headline model itself, by (label, method)."""
    p = setup.params
    white = {}
    for label, trained in models.items():
        for method in p.attack_methods:
            result = white[(label, method)] = setup.headline.white_box(trained.epsilon, method)
            log(f"{label:>10} {method:>5}: clean {100 * result.clean_accuracy:5.1f}% → "
                f"{100 * result.adversarial_accuracy:5.1f}%")
            report.measure(white_box_key(p.dataset, p.model_name, trained.epsilon, method),
                           100 * result.adversarial_accuracy, f"{label}: white-box {method.upper()} accuracy (%)")
    return white


def fab_check(setup: Setup, models: dict[str, GlobalModel], white: dict[tuple[str, str], WhiteBoxResult],
              report: Report, log: Log = print) -> float:
    """torchattacks' FAB on the first ``fab_samples`` attack images of the normal model, beside our PGD
    on the same images (needs ``pgd`` among ``attack_methods``); returns FAB's accuracy (fraction)."""
    p = setup.params
    net = models["normal"].net(setup.data.test)
    x_fab, y_fab = setup.x_attack[:p.fab_samples], setup.y_attack[:p.fab_samples]
    started = time.perf_counter()
    x_adv = fab(net, x_fab, y_fab, eps=setup.attack.eps, steps=setup.attack.steps, seed=p.seed)
    seconds = time.perf_counter() - started
    fab_accuracy = accuracy(net, x_adv, y_fab)
    log(f"FAB cross-check on {p.fab_samples} images ({seconds:.1f} s): clean {100 * accuracy(net, x_fab, y_fab):.1f}%, "
        f"FAB {100 * fab_accuracy:.1f}%, "
        f"PGD {100 * accuracy(net, white[('normal', 'pgd')].adversarial[:p.fab_samples], y_fab):.1f}%, "
        f"max |δ| = {255 * (x_adv - x_fab).abs().max():.2f}/255")
    report.measure(white_box_key(p.dataset, p.model_name, None, "fab_check"), 100 * fab_accuracy,
                   f"normal: white-box FAB accuracy on {p.fab_samples} images (%)")
    return fab_accuracy


# --- Figures 2–5 (grid_model) -----------------------------------------------------------------

def figure_2_3(setup: Setup, report: Report, log: Log = print) -> dict[tuple[float, str], TransferResult]:
    """Transfer attacks, by (ε, method): the normal and the DP ε model generate (their white-box examples,
    reused), the normal and DP models, fp32 and int8, are the targets."""
    p, grid, test = setup.params, setup.grid, setup.data.test
    model = p.grid_model_name
    transfers = {}
    for eps in p.transfer_epsilons:
        dp = ModelPool.label(eps)
        generators = {"normal": grid.trained().net(test), dp: grid.trained(eps).net(test)}
        targets = {**generators, "normal int8": Normalized.for_dataset(grid.int8(), test),
                   f"{dp} int8": Normalized.for_dataset(grid.int8(eps), test)}
        role = transfer_roles(eps)
        for method in p.attack_methods:
            made = {"normal": grid.white_box(None, method).adversarial, dp: grid.white_box(eps, method).adversarial}
            result = transfers[(eps, method)] = transfer(generators, targets, setup.x_attack, setup.y_attack,
                                                         setup.attack.replace(method=method), adversarial=made)
            for row in result.rows():
                report.measure(transfer_key(p.dataset, model, eps, role[row["generator"]], role[row["target"]], method),
                               100 * row["adversarial"],
                               f"transfer {method.upper()}, {row['generator']} → {row['target']} (%)")
            gains = [100 * (result.accuracy[g][f"{t} int8"] - result.accuracy[g][t]) for g in generators
                     for t in generators]
            report.measure(int8_gain_key(model, eps, method), max(gains),
                           f"largest int8-over-fp32 robustness gain under transfer, ε {eps:g}, "
                           f"{method.upper()} (points)")
            log(f"ε = {eps:g}, {method.upper()}:")
            for row in result.rows():
                log(f"  {row['generator']:>10} → {row['target']:<16} clean {100 * row['clean']:5.1f}%  "
                    f"attacked {100 * row['adversarial']:5.1f}%")
    return transfers


def figure_4(setup: Setup, report: Report, log: Log = print) -> list[dict[str, Any]]:
    """Adversarial training: one row per (regime, method, share); share 0 is the white-box model attacked
    by its own PGD examples. ``loss`` is clean − attacked accuracy under transfer PGD from the regime's
    white-box model, ``robust`` the white-box PGD accuracy of the adversarially trained model itself."""
    p, grid, test = setup.params, setup.grid, setup.data.test
    model = p.grid_model_name
    rows: list[dict[str, Any]] = []
    for eps in (None, *p.adv_epsilons):
        base_label, base, base_wb = ModelPool.label(eps), grid.trained(eps), grid.white_box(eps, "pgd")
        for method in p.adv_methods:
            rows.append({"regime": base_label, "method": method.upper(), "share": 0.0,
                         "clean": base_wb.clean_accuracy, "loss": base_wb.accuracy_loss,
                         "robust": base_wb.adversarial_accuracy, "robust_correct": base_wb.adversarial_correct,
                         "seconds": base.seconds})
            for share in p.adv_shares:
                trained = train_federated(model, setup.data, grid.config, epsilon=eps, delta=p.delta,
                                          max_grad_norm=p.max_grad_norm, adversarial_share=share,
                                          attack=setup.attack.replace(method=method), labels="true")
                net = trained.net(test)
                tr = transfer({"wb": base.net(test)}, {"adv": net}, setup.x_attack, setup.y_attack, setup.attack,
                              adversarial={"wb": base_wb.adversarial})
                robust = white_box(net, setup.x_attack, setup.y_attack, setup.attack, seed=p.seed)
                row = {"regime": base_label, "method": method.upper(), "share": share, "clean": tr.clean["adv"],
                       "loss": tr.accuracy_loss("wb", "adv"), "robust": robust.adversarial_accuracy,
                       "robust_correct": robust.adversarial_correct, "seconds": trained.seconds,
                       "base_accuracy": base_wb.clean_accuracy}
                rows.append(row)
                report.measure(adversarial_training_key(p.dataset, model, eps, method, share, "accuracy_loss"),
                               100 * row["loss"], f"{trained.label}: accuracy loss under transfer PGD (points)")
                report.measure(adversarial_training_key(p.dataset, model, eps, method, share, "robust_accuracy"),
                               100 * row["robust"], f"{trained.label}: white-box PGD accuracy (%)")
                log(f"{trained.label:>28}: clean {100 * row['clean']:5.1f}%, loss under transfer "
                    f"{100 * row['loss']:5.1f} pts, white-box PGD {100 * row['robust']:5.1f}%  "
                    f"({trained.seconds:.0f} s)")
    _adversarial_training_costs(setup, rows, report)
    return rows


def _adversarial_training_costs(setup: Setup, rows: list[dict[str, Any]], report: Report) -> None:
    """Section 4.3's costs: the largest clean-accuracy drop, PGD vs FGSM training time at 40%, and FAB's
    time factor and best accuracy (when FAB is among ``adv_methods``)."""
    trained_rows = [r for r in rows if r["share"] > 0]
    report.measure(max_clean_loss_key(setup.params.grid_model_name),
                   100 * max(r["base_accuracy"] - r["clean"] for r in trained_rows),
                   "largest drop in clean accuracy (attack set) caused by adversarial training (points)")
    seconds = {(r["method"], r["share"]): r["seconds"] for r in trained_rows if r["regime"] == "normal"}
    if ("PGD", 0.4) in seconds and ("FGSM", 0.4) in seconds:
        report.measure(PGD_OVER_FGSM_TIME, seconds[("PGD", 0.4)] / seconds[("FGSM", 0.4)],
                       "training time with 40% PGD data / with 40% FGSM data (×)")
    if "fab" in setup.params.adv_methods:
        fab_rows = [r for r in trained_rows if r["method"] == "FAB"]
        report.measure(FAB_TIME_FACTOR, max(r["seconds"] for r in fab_rows) / setup.grid.trained().seconds,
                       "slowest FAB adversarial training / normal training time (×)")
        report.measure(FAB_MAX_ACCURACY, 100 * max(r["clean"] for r in fab_rows),
                       "best clean accuracy of a FAB-adversarially-trained model (%)")


def figure_5(setup: Setup, report: Report, log: Log = print) -> list[dict[str, Any]]:
    """The train-time attacker, one row per (panel ε, model, share): the test accuracy of FedAvg (normal
    and DP ε) when the attacker controls ``share`` of every client's data, and its drop from share 0."""
    p, grid, test = setup.params, setup.grid, setup.data.test
    model = p.grid_model_name
    attack = setup.attack.replace(method=p.poison_method)
    poisoned = {}
    if p.poison_mode == "static":
        for share in p.poison_shares:
            poisoned[share] = poison_dataset(setup.data, grid.trained().net(test), share, attack, seed=p.seed)
            log(f"attacker with {share:.0%}: {poisoned[share].replaced} training images replaced, "
                f"{poisoned[share].flipped} of them labelled with a wrong class")
    rows: list[dict[str, Any]] = []
    for eps in p.poison_epsilons:
        panel = f"ε = {eps:g}"
        for private in (None, eps):
            base_label, baseline = ModelPool.label(private), grid.trained(private)
            rows.append({"panel": panel, "model": base_label, "share": 0.0, "accuracy": baseline.accuracy, "drop": 0.0})
            for share in p.poison_shares:
                label = f"{base_label} + {share:.0%} {p.poison_method.upper()} attacker ({p.poison_mode})"
                if p.poison_mode == "static":
                    trained = train_federated(model, poisoned[share].data, grid.config, label=label, epsilon=private,
                                              delta=p.delta, max_grad_norm=p.max_grad_norm)
                else:
                    trained = train_federated(model, setup.data, grid.config, label=label, epsilon=private,
                                              delta=p.delta, max_grad_norm=p.max_grad_norm, adversarial_share=share,
                                              attack=attack, labels="predicted")
                drop = baseline.accuracy - trained.accuracy
                rows.append({"panel": panel, "model": base_label, "share": share, "accuracy": trained.accuracy,
                             "drop": drop})
                report.measure(train_time_key(p.dataset, model, private, p.poison_method, share, "accuracy"),
                               100 * trained.accuracy, f"{label}: test accuracy (%)")
                report.measure(train_time_key(p.dataset, model, private, p.poison_method, share, "accuracy_drop"),
                               100 * drop, f"{label}: drop from no attacker (points)")
                log(f"{label:>44}: accuracy {100 * trained.accuracy:5.1f}% (without attacker "
                    f"{100 * baseline.accuracy:5.1f}%, drop {100 * drop:+5.1f} pts, relative "
                    f"{drop / baseline.accuracy:+.0%})  ({trained.seconds:.0f} s)")
    return rows


# --- the claims, by fedrepro.claims' criterion ---------------------------------------------------

INT8_MAX_ACCURACY_CHANGE = 1.0  # points: the paper's "within ±1%"


def _points(hits: torch.Tensor) -> torch.Tensor:
    """Per-image correctness as 0 or 100, so that paired differences read in accuracy points."""
    return 100 * hits.double()


def _in_points(comparison: claims.Comparison) -> claims.Comparison:
    """A comparison of proportions in accuracy points, like the paired ones."""
    return dataclasses.replace(comparison, difference=100 * comparison.difference,
                               standard_error=100 * comparison.standard_error)


def int8_checks(models: dict[str, GlobalModel]) -> list[claims.ClaimCheck]:
    """Section 4.1, per trained model (after :func:`table_1`): int8 keeps accuracy within ±1 point. Both
    versions are scored on the same test images, so the change is paired image by image, and the whole
    band change ± Z se must lie inside ±1 point (:func:`fedrepro.claims.within`)."""
    checks = []
    for label, trained in models.items():
        q = trained.quantization
        change = claims.compare_paired(_points(q.int8_correct), _points(q.fp32_correct))
        checks.append(claims.check(
            "claim/int8_keeps_accuracy", f"int8 keeps accuracy within ±{INT8_MAX_ACCURACY_CHANGE:g} point ({label})",
            claims.within(change, INT8_MAX_ACCURACY_CHANGE),
            f"fp32 {100 * q.fp32_accuracy:.1f}% → int8 {100 * q.int8_accuracy:.1f}% on {change.n_a} test images, "
            f"change {change.estimate()}; room inside ±{INT8_MAX_ACCURACY_CHANGE:g} point"))
    return checks


def white_box_check(result: WhiteBoxResult, label: str = "normal") -> claims.ClaimCheck:
    """White-box PGD collapses accuracy: the attacked accuracy is below half the clean one, paired over the
    attack images (clean/2 − attacked by the criterion)."""
    comparison = claims.compare_paired(_points(result.clean_correct) / 2, _points(result.adversarial_correct))
    return claims.check("claim/white_box_collapses", f"white-box PGD takes accuracy below half the clean one ({label})",
                        comparison, f"clean {100 * result.clean_accuracy:.1f}% → PGD "
                                    f"{100 * result.adversarial_accuracy:.1f}% on {comparison.n_a} attack images; "
                                    "half the clean − attacked (points)")


def transfer_checks(transfers: dict[tuple[float, str], TransferResult]) -> list[claims.ClaimCheck]:
    """Figures 2–3, paired over the adversarial images each target sees. Per ε, method, generator and fp32
    target: the target's int8 version keeps more accuracy than the fp32 one (the paper: gains up to 5 points
    for small models, 20 for large ones). Per ε under PGD: the DP model keeps more accuracy on the normal
    model's examples than the normal model itself (the paper, PPPD ResNet-18 at ε 1.7: 30% against 5%)."""
    int8, dp_checks = [], []
    for (eps, method), result in transfers.items():
        hits, accuracy_of = result.correct, result.accuracy
        for generator in hits:
            for target in hits:  # the fp32 targets are the generators
                comparison = claims.compare_paired(_points(hits[generator][f"{target} int8"]),
                                                   _points(hits[generator][target]))
                int8.append(claims.check(
                    "claim/int8_resists_transfer",
                    f"int8 {target} more robust than fp32 to {method.upper()} from {generator} (ε {eps:g})",
                    comparison,
                    f"fp32 {100 * accuracy_of[generator][target]:.1f}% → int8 "
                    f"{100 * accuracy_of[generator][f'{target} int8']:.1f}% on {comparison.n_a} images (points)"))
        if method == "pgd":
            dp = ModelPool.label(eps)
            comparison = claims.compare_paired(_points(hits["normal"][dp]), _points(hits["normal"]["normal"]))
            dp_checks.append(claims.check(
                "claim/dp_resists_transfer", f"{dp} keeps more accuracy than the normal model on the normal model's "
                                             "PGD examples (paper: 30% vs 5%)", comparison,
                f"{dp} {100 * accuracy_of['normal'][dp]:.1f}% vs normal {100 * accuracy_of['normal']['normal']:.1f}% "
                f"on {comparison.n_a} images (points)"))
    return int8 + dp_checks


def adversarial_training_checks(rows: list[dict[str, Any]]) -> list[claims.ClaimCheck]:
    """Figure 4, per share of PGD data in the normal model's training: white-box PGD accuracy above the
    normally trained model's, paired over the attack images (robust accuracy, the usual measure of
    adversarial training; the paper's figure shows the loss under transfer)."""
    base = {r["method"]: r for r in rows if r["regime"] == "normal" and r["share"] == 0}
    checks = []
    for row in rows:
        if row["regime"] == "normal" and row["method"] == "PGD" and row["share"] > 0:
            before = base[row["method"]]
            comparison = claims.compare_paired(_points(row["robust_correct"]), _points(before["robust_correct"]))
            checks.append(claims.check(
                "claim/adversarial_training_helps",
                f"{row['share']:.0%} PGD data raises white-box PGD accuracy (normal)", comparison,
                f"{100 * before['robust']:.1f}% → {100 * row['robust']:.1f}% on {comparison.n_a} attack images "
                "(points)"))
    return checks


def _drop(panel: list[dict[str, Any]], model: str, share: float, test_size: int) -> claims.Comparison:
    """Accuracy without − with the attacker, two independently trained models: binomial over the test images."""
    accuracy = {r["share"]: r["accuracy"] for r in panel if r["model"] == model}
    return _in_points(claims.compare_proportions(accuracy[0.0], test_size, accuracy[share], test_size))


def train_time_checks(rows: list[dict[str, Any]], test_size: int, epsilons: Sequence[float],
                      shares: Sequence[float]) -> list[claims.ClaimCheck]:
    """Figure 5, per (ε, share): DP damps the train-time attacker — the normal model's accuracy drop exceeds
    the DP model's by the criterion. The four accuracies come from separately trained models and only their
    values are kept, so each carries the binomial error over the ``test_size`` test images
    (:func:`fedrepro.claims.compare_proportions`, :func:`fedrepro.claims.compare_effects`)."""
    checks = []
    for eps in epsilons:
        panel, dp = [r for r in rows if r["panel"] == f"ε = {eps:g}"], ModelPool.label(eps)
        for share in shares:
            normal, private = _drop(panel, "normal", share, test_size), _drop(panel, dp, share, test_size)
            checks.append(claims.check(
                "claim/dp_damps_attacker", f"{dp} loses less accuracy than normal to a {share:.0%} attacker",
                claims.compare_effects(normal, private),
                f"drop normal {normal.difference:.1f}, {dp} {private.difference:.1f} points on {test_size} test "
                "images (binomial); normal − DP drop (points)"))
    return checks


def claim_checks(setup: Setup, models: dict[str, GlobalModel], white: dict[tuple[str, str], WhiteBoxResult],
                 transfers: dict[tuple[float, str], TransferResult], adversarial_rows: list[dict[str, Any]],
                 attacker_rows: list[dict[str, Any]]) -> list[claims.ClaimCheck]:
    """Paper 01's claims and the effects the quick tier is meant to show, from the sections' results, each
    verdict by :data:`fedrepro.claims.CRITERION`; record them with :func:`fedrepro.claims.record`."""
    p = setup.params
    return [*int8_checks(models), white_box_check(white[("normal", "pgd")]), *transfer_checks(transfers),
            *adversarial_training_checks(adversarial_rows),
            *train_time_checks(attacker_rows, len(setup.data.test), p.poison_epsilons, p.poison_shares)]
