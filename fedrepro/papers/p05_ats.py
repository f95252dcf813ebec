"""Paper 05 (Gao et al., *Privacy-preserving Collaborative Learning with Automatic Transformation
Search*): notebook 05's whole protocol — its parameters (:class:`ATSParameters`), one row at a time,
and every section as a :class:`ATSStudy` method.

A *row* is one training configuration — a transformation policy (``"none"``, a random policy, a
searched one, a hybrid ``"a+b"``) and optionally a gradient defense (pruning, Laplacian or Gaussian
noise, Table 3) — trained with FedAvg (:func:`train_row`) and then attacked
(:func:`attack_under_policy`): every victim (one test image, batch size 1 as in the paper) is
transformed by the client with the row's policy, its gradient on the trained global model is what
the server sees (after the row's gradient defense), and the server runs one of the six ``ats_*``
attacks. The paper's claims are checked on the measured rows by :func:`claim_checks`, with the
criterion of :mod:`fedrepro.claims`.

Choices that change numbers, made once here:

- **PSNR reference.** The paper measures PSNR "between the attacker's reconstructed samples and
  transformed samples" (Sec. 5.1 and the caption of Table 2), i.e. against ``T(x)``, the image
  the gradient was really computed on. :class:`PolicyAttack` keeps both: ``psnr`` against the
  transformed image (the paper's, used for every table) and ``psnr_original`` against the clean
  image (what a privacy-minded reader may care about; never higher by much, since the attacker can
  at best recover ``T(x)``).
- **Model mode.** The victim's gradient is computed in eval mode (BatchNorm running statistics), as
  the reference attack code (inversefed) does, and the attacker uses the same mode.
- **Labels** are known to the attacker (the paper's setting: "the strongest attacks").
- **Victim transformation randomness** (the ± signs of shear/translate/enhance, the hybrid's
  choice) is seeded per row, so None/Random/searched rows attack the same clean images.
- **Gradient defenses in training** (Table 3's accuracy): the client applies the defense to its
  gradient at every local step (:func:`fedrepro.defenses.transforms.policy_trainer`), per layer, as
  DLG's defenses do. Table 3's Gaussian noise is given by its standard deviation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from fedrepro import claims, metrics
from fedrepro.attacks import ServerView, client_update, run_attack
from fedrepro.claims import ClaimCheck
from fedrepro.data import KNOWN_DATASETS, FederatedData, ImageDataset, load_federated
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms import (LIBRARY, Policy, apply_policy, policy_trainer, random_policies,
                                          search_space_size)
from fedrepro.fl import LR_SCHEDULE_EXAMPLE, FedAvgConfig, LRSchedule, evaluate, run_fedavg
from fedrepro.results import TIERS, paper_values
from fedrepro.runtime import generator
from fedrepro.validation import choice, integer, names, number, parsed, require

#: Offline stand-ins: the dataset a smaller tier uses in place of the paper's, for result keys.
STAND_INS = {"cifar10": "cifar100", "mnist": "fashion-mnist"}

#: The paper's published policies (Tables 1 and 4): setting -> (best1, best2).
PUBLISHED = {
    ("cifar100", "resnet20"): ("3-1-7", "43-18-18"),
    ("cifar100", "convnet"): ("21-13-3", "7-4-15"),
    ("fashion-mnist", "resnet20"): ("19-15-45", "2-43-21"),
    ("fashion-mnist", "convnet"): ("42-28-42", "14-48-48"),
}

#: Notebook 05's sections, for its ``tables`` parameter.
SECTIONS = ("figure5", "table1", "figure4", "figure2", "table2", "table3", "table4")

#: The architectures the paper searches on.
ARCHS = ("resnet20", "convnet")

#: Table 3's gradient defenses as notebook 05 writes them, ``[kind, value]``: the parameter each kind's
#: value is (05's Gaussian noise is a standard deviation, not paper 03's variance).
TABLE3_PARAMETER = {"prune": "ratio", "laplacian": "scale", "gaussian": "std"}

#: Paper 05's Table 3 defenses (kind, value).
TABLE3 = (("prune", 0.70), ("prune", 0.95), ("prune", 0.99), ("laplacian", 1e-3), ("laplacian", 1e-2),
          ("gaussian", 1e-3), ("gaussian", 1e-2))

#: The six attacks of Table 2, in the paper's order.
TABLE2_ATTACKS = ("ats_lbfgs_l2", "ats_adam_cosine", "ats_lbfgs_cosine", "ats_adam_l1", "ats_adam_l2", "ats_sgd_cosine")

#: Result key of the Pearson correlation of S_pri and attack PSNR (Figure 2).
PEARSON_KEY = "spri_psnr_pearson"

#: Table 1's columns.
TABLE1_COLUMNS = ("slot", "policy", "PSNR (dB)", "paper PSNR", "PSNR vs clean", "accuracy (%)", "paper accuracy")


# --- keys ----------------------------------------------------------------------------------------

def paper_dataset(dataset: str) -> str:
    """The paper's dataset a (possibly stand-in) dataset is compared with."""
    return STAND_INS.get(dataset, dataset)


def stand_in_note(dataset: str) -> str:
    """``" (CIFAR-10 stands in for cifar100)"`` when ``dataset`` is a stand-in, else ``""``."""
    target = paper_dataset(dataset)
    return "" if target == dataset else f" ({dataset} stands in for {target})"


def table3_defense(kind: str, value: float | None = None) -> Defense | None:
    """Notebook 05's ``[kind, value]`` as a :class:`~fedrepro.defenses.spec.Defense` (None for "none"):
    ``("gaussian", 1e-2)`` is ``Defense.of("gaussian", std=1e-2)``."""
    if kind == "none":
        return None
    if kind not in TABLE3_PARAMETER:
        raise ValueError(f"table 3 defense {kind!r} unknown; choose one of none, {', '.join(TABLE3_PARAMETER)}")
    return Defense.of(kind, **{TABLE3_PARAMETER[kind]: value})


def defense_label(defense: Defense | None) -> str:
    """Result-key label of a gradient defense: ``prune-0.70``, ``laplacian-1e-3``, ``none``."""
    if defense is None or defense.kind == "none":
        return "none"
    if defense.kind == "gc":
        return f"prune-{defense['p']:.2f}"
    if defense.kind == "gaussian" and defense["std"] is None:
        raise ValueError(f"paper 05's Gaussian noise is given by its standard deviation, got {defense.label}")
    if defense.kind not in ("gaussian", "laplacian"):
        return defense.label
    value = defense["std" if defense.kind == "gaussian" else "scale"]
    exponent = int(round(math.log10(value)))
    if not math.isclose(value, 10.0 ** exponent, rel_tol=1e-9):
        return f"{defense.kind}-{value:g}"
    return f"{defense.kind}-1e{exponent}"


def result_key(dataset: str, arch: str, slot: str, what: str, attack: str | None = None, transfer: bool = False) -> str:
    """The ``fedrepro/paper_results/05.yaml`` key of one number (stand-in datasets map to the paper's)."""
    parts = [paper_dataset(dataset), arch] + (["transfer"] if transfer else []) + ([attack] if attack else [])
    return "/".join(parts + [slot, what])


def published_key(dataset: str, arch: str, policy: str, what: str) -> str:
    """Key of a published policy applied directly on ``dataset`` (Table 1's extra rows)."""
    return f"{paper_dataset(dataset)}/{arch}/published/{policy}/{what}"


def table2_key(attack: str, slot: str) -> str:
    """Table 2's key: the paper reports it for CIFAR-100 / ResNet20 only, so every run is compared there."""
    return f"cifar100/resnet20/{attack}/{slot}/psnr"


def table3_key(label: str, what: str) -> str:
    """Table 3's key (CIFAR-100 / ResNet20, as the paper's table)."""
    return f"cifar100/resnet20/{label}/{what}"


def figure5_key(rank: int) -> str:
    """Figure 5's key: the library index with the ``rank``-th lowest S_pri (1-based)."""
    return f"figure5/lowest/{rank}"


def semi_accuracy_key(arch: str) -> str:
    return f"search/{arch}/semi_accuracy"


SEARCHED_KEY = "search/c_max"


# --- parameters ----------------------------------------------------------------------------------

@dataclass
class ATSParameters:
    """Notebook 05's parameters cell, validated; written whole to results.json."""

    tier: str = "smoke"
    seed: int = 0
    dataset: str = "cifar10"
    archs: Sequence[str] = ("convnet",)
    convnet_width: int | None = 8
    tables: Sequence[str] = SECTIONS
    num_clients: int = 2
    samples_per_client: int | None = 64
    test_samples: int | None = 200
    rounds: int = 1
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0005
    fl_workers: int | None = 1
    threads: int | None = 1
    semi_fraction: float = 0.01
    semi_epochs: int = 2
    semi_lr: float = 0.02
    spri_per_class: int = 1
    spri_points: int = 5
    sacc_runs: int = 2
    t_acc_per_image: float = -1.35
    c_max: int = 4
    figure5_operations: int = 10
    victims: int = 2
    attack_iterations: int | None = 10
    figure2_attack_iterations: int | None = None
    random_policies: int = 1
    figure2_policies: int = 3
    table2_attacks: Sequence[str] = ("ats_adam_cosine", "ats_adam_l2")
    table3_defenses: Sequence[Sequence[Any]] = (("prune", 0.7), ("gaussian", 0.01))
    transfer_dataset: str = "mnist"
    published_policies: Sequence[str] = ("3-1-7",)
    device: str = "auto"
    data_root: str | None = None
    results_dir: str = "../reports/smoke/05_transformation_search"

    def __post_init__(self) -> None:
        choice("tier", self.tier, TIERS)
        self.archs = names("archs", self.archs, ARCHS, nonempty=True)
        self.tables = names("tables", self.tables, SECTIONS)
        self.table2_attacks = names("table2_attacks", self.table2_attacks, TABLE2_ATTACKS)
        for name in ("dataset", "transfer_dataset"):
            choice(name, getattr(self, name), KNOWN_DATASETS)
        at_least = {"num_clients": 1, "rounds": 1, "local_epochs": 1, "batch_size": 1, "semi_epochs": 1,
                    "spri_per_class": 1, "spri_points": 2, "sacc_runs": 1, "c_max": 1, "victims": 1,
                    "random_policies": 1, "figure2_policies": 2}
        for name, low in at_least.items():
            integer(name, getattr(self, name), low)
        for name in ("convnet_width", "samples_per_client", "test_samples", "fl_workers", "threads",
                     "attack_iterations", "figure2_attack_iterations"):
            integer(name, getattr(self, name), 1, optional=True)
        parsed("lr_schedule", self.lr_schedule, LRSchedule.parse, LR_SCHEDULE_EXAMPLE)
        integer("figure5_operations", self.figure5_operations, 1, len(LIBRARY))
        number("semi_fraction", self.semi_fraction, 0, 1, low_open=True)
        for name in ("lr", "semi_lr"):
            number(name, getattr(self, name), 0, low_open=True)
        number("momentum", self.momentum, 0, 1, high_open=True)
        number("weight_decay", self.weight_decay, 0)
        number("t_acc_per_image", self.t_acc_per_image, high=0)  # S_acc is at most -1 per image
        self.table3_defenses = [list(d) for d in self.table3_defenses]
        for index, entry in enumerate(self.table3_defenses):
            require(len(entry) == 2, f"table3_defenses[{index}]", entry, "expected a [kind, value] pair")
            table3_defense(*entry)
        self.published_policies = [str(Policy(p)) for p in self.published_policies]

    @property
    def defenses(self) -> list[Defense]:
        """Table 3's defenses as specs."""
        return [table3_defense(kind, value) for kind, value in self.table3_defenses]

    @property
    def figure2_iterations(self) -> int | None:
        """Figure 2's attack length: its own (the paper reduced it to 2,500), else ``attack_iterations``."""
        return self.attack_iterations if self.figure2_attack_iterations is None else self.figure2_attack_iterations

    def fedavg_config(self) -> FedAvgConfig:
        return FedAvgConfig(rounds=self.rounds, local_epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
                            lr_schedule=self.lr_schedule, optimizer="sgd", momentum=self.momentum,
                            weight_decay=self.weight_decay, seed=self.seed, device=self.device, workers=self.fl_workers)


# --- models and training -------------------------------------------------------------------------

def build_ats_model(arch: str, dataset: ImageDataset, seed: int, width: int | None = None) -> nn.Module:
    """``resnet20`` or ``convnet`` (BatchNorm, as the paper's code) for ``dataset``, seeded by (seed, arch).

    ``width`` sets the ConvNet's width (the paper's is 64; small tiers shrink it)."""
    from fedrepro.models import build_model

    options = {"width": width} if (arch == "convnet" and width) else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator(seed, "ats-model", arch).initial_seed())
        return build_model(arch, in_channels=dataset.channels, num_classes=dataset.num_classes,
                           image_size=dataset.image_size, **options)


@dataclass
class TrainedRow:
    """One FedAvg run: its policy / defense, the trained global model and its test accuracy (%)."""

    policy: str
    defense: str
    model: nn.Module
    accuracy: float
    seconds: float


def train_row(arch: str, data: FederatedData, config: FedAvgConfig, policy: str = "none",
              defense: Defense | None = None, seed: int = 0, width: int | None = None,
              progress: bool = False) -> TrainedRow:
    """Train ``arch`` from the seeded initialisation with FedAvg, clients transforming with ``policy``
    (and applying ``defense`` to the gradient of every local step)."""
    model = build_ats_model(arch, data.train, seed, width)
    trainer = policy_trainer(str(Policy(policy)), tuple(data.train.mean), tuple(data.train.std),
                             defense=None if defense is None else defense.gradient_defense())
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    return TrainedRow(str(Policy(policy)), defense_label(defense), result.model.eval(),
                      100.0 * result.final_accuracy, result.seconds)


# --- attacks -------------------------------------------------------------------------------------

@dataclass
class PolicyAttack:
    """One attack on victims transformed by ``policy``: images in [0, 1] and per-image PSNR."""

    policy: str
    attack: str
    defense: str
    originals: torch.Tensor
    transformed: torch.Tensor
    reconstructions: torch.Tensor
    psnr: np.ndarray  # against the transformed image (the paper's)
    psnr_original: np.ndarray  # against the clean image
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def psnr_mean(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def psnr_original_mean(self) -> float:
        return float(np.mean(self.psnr_original))


def victim_images(images: torch.Tensor, policy: str, seed: int = 0) -> torch.Tensor:
    """The victims' uint8 images after the client's transformation (seeded per policy)."""
    return apply_policy(images, Policy(policy), generator(seed, "ats-victims", str(Policy(policy))))


def attack_under_policy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, policy: str, *,
                        mean: Sequence[float], std: Sequence[float], attack: str = "ats_adam_cosine",
                        iterations: int | None = None, defense: Defense | None = None, seed: int = 0,
                        progress: bool = False, **overrides) -> PolicyAttack:
    """Attack ``model`` on uint8 victim ``images`` (batch size 1 each) that the client transforms with
    ``policy`` before computing its gradient (after the gradient ``defense``, if any)."""
    started = time.perf_counter()
    model.eval()
    transformed = victim_images(images, policy, seed)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = (transformed.float() / 255.0 - m) / s
    device = next(model.parameters()).device
    update = client_update(model, x.to(device), labels.to(device), images_per_victim=1,
                           defense=None if defense is None else defense.gradient_defense(),
                           generator=generator(seed, "ats-defense"))
    view = ServerView(model, update, num_images=1, image_shape=tuple(images.shape[1:]), mean=tuple(mean),
                      std=tuple(std), labels=labels.to(device)[:, None])
    if iterations is not None:
        overrides["max_iterations"] = iterations
    result = run_attack(view, attack, seed=seed, progress=progress, **overrides)
    rec = result.denormalized().cpu()
    originals = images.float() / 255.0
    shown = transformed.float() / 255.0
    return PolicyAttack(str(Policy(policy)), attack, defense_label(defense), originals, shown, rec,
                        metrics.psnr(shown, rec), metrics.psnr(originals, rec), time.perf_counter() - started)


class Rows:
    """Trained models and attacks of one (dataset, architecture), each computed once and cached.

    ``trained(policy, defense)`` trains a FedAvg model (see :func:`train_row`); ``attacked(policy,
    attack, defense)`` attacks the victims on the model trained with the same policy and defense, for
    ``iterations`` (None: the attack preset's count) unless the call gives its own.
    ``victims``/``labels`` are uint8 test images, attacked one image per victim.
    """

    def __init__(self, arch: str, data: FederatedData, config: FedAvgConfig, victims: torch.Tensor,
                 labels: torch.Tensor, *, seed: int = 0, width: int | None = None, iterations: int | None = None,
                 progress: bool = False) -> None:
        self.arch, self.data, self.config = arch, data, config
        self.victims, self.labels = victims, labels
        self.seed, self.width, self.iterations, self.progress = seed, width, iterations, progress
        self.models: dict[tuple[str, str], TrainedRow] = {}
        self.attacks: dict[tuple[str, str, str, str, int | None], PolicyAttack] = {}

    def trained(self, policy: str = "none", defense: Defense | None = None) -> TrainedRow:
        key = (str(Policy(policy)), defense_label(defense))
        if key not in self.models:
            self.models[key] = train_row(self.arch, self.data, self.config, key[0], defense, self.seed, self.width,
                                         self.progress)
        return self.models[key]

    def attacked(self, policy: str = "none", attack: str = "ats_adam_cosine", defense: Defense | None = None,
                 model_policy: str | None = None, iterations: int | None = None) -> PolicyAttack:
        """Attack victims transformed by ``policy`` on the model trained with ``model_policy``
        (default: the same policy) and the same defense, for ``iterations`` (default: the rows')."""
        trained_with = str(Policy(policy if model_policy is None else model_policy))
        length = self.iterations if iterations is None else iterations
        key = (str(Policy(policy)), attack, defense_label(defense), trained_with, length)
        if key not in self.attacks:
            row = self.trained(trained_with, defense)
            self.attacks[key] = attack_under_policy(
                row.model, self.victims, self.labels, key[0], mean=self.data.train.mean, std=self.data.train.std,
                attack=attack, iterations=length, defense=defense, seed=self.seed, progress=self.progress)
        return self.attacks[key]


def random_policy_list(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct random policies of ≤ 3 operations (the paper's Random rows), seeded."""
    return random_policies(count, generator(seed, "ats-random-policies"))


# --- statistics ----------------------------------------------------------------------------------

def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation coefficient of two equally long sequences (nan if either is constant)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two sequences of the same length >= 2, got {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def lowest(scores: Mapping[Any, float], count: int = 5) -> list[Any]:
    """The ``count`` keys with the lowest scores (ties by key)."""
    return [k for k, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[:count]]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 2) -> str:
    """A Markdown table of ``rows`` (missing values as "—", floats rounded)."""
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --- the paper's claims --------------------------------------------------------------------------

#: The slots of Tables 1 and 4 that hold searched policies: the two best and their hybrid.
SEARCHED_SLOTS = ("best1", "best2", "hybrid")


@dataclass(frozen=True)
class PolicyResult:
    """One row of Table 1 or 4 as the claim checks read it: each victim's attack PSNR and the test accuracy."""

    policy: str
    psnr: np.ndarray
    accuracy: float  # %
    test_images: int


def check_lowers_psnr(key: str, statement: str, none: PolicyResult, searched: PolicyResult) -> ClaimCheck:
    """The searched policy lowers the attack's PSNR: None's mean minus the policy's exceeds Z Welch standard
    errors over the victims (:func:`fedrepro.claims.compare`)."""
    comparison = claims.compare(none.psnr, searched.psnr)
    return ClaimCheck(key, statement, comparison.verdict,
                      f"none {float(np.mean(none.psnr)):.2f} dB − {searched.policy} {float(np.mean(searched.psnr)):.2f} "
                      f"dB over {len(searched.psnr)} victims: {comparison.estimate()}")


def check_accuracy_cost(key: str, statement: str, none: PolicyResult, searched: PolicyResult,
                        margin: float = claims.ACCURACY_MARGIN) -> ClaimCheck:
    """The policy's accuracy cost is negligible, a non-inferiority claim: confirmed when policy − None >
    −``margin`` + Z·se in points, se binomial over the test images (:func:`fedrepro.claims.compare_accuracies`,
    :func:`fedrepro.claims.non_inferior`); contradicted when the whole band lies below −``margin``."""
    comparison = claims.compare_accuracies([searched.accuracy], [none.accuracy], none.test_images)
    return ClaimCheck(key, statement, claims.non_inferior(comparison, margin).verdict,
                      f"{searched.policy} {searched.accuracy:.2f} % − none {none.accuracy:.2f} %: "
                      f"{comparison.estimate()} points (binomial, {none.test_images} test images); "
                      f"must exceed −{margin:g} (margin)")


def check_correlation(key: str, statement: str, r: float, n: int) -> ClaimCheck:
    """S_pri and attack PSNR correlate positively: Fisher's z of Pearson's r over ``n`` policies clears its
    standard error 1/√(n − 3) by Z (:func:`fedrepro.claims.compare_correlation`)."""
    comparison = claims.compare_correlation(r, n)
    return ClaimCheck(key, statement, comparison.verdict,
                      f"r = {r:+.3f} over {n} policies; atanh r {comparison.estimate()}")


def claim_checks(search: Mapping[str, Mapping[str, PolicyResult]], transfer: Mapping[str, Mapping[str, PolicyResult]],
                 correlation: tuple[float, int] | None, margin: float = claims.ACCURACY_MARGIN) -> list[ClaimCheck]:
    """Paper 05's claims on what the sections measured: ``search`` and ``transfer`` are Tables 1 and 4 by
    architecture and slot (each needs its ``none`` row), ``correlation`` Figure 2's (r, policies).

    * ``claim/searched_lowers_psnr``: each searched policy (two best, hybrid) lowers the attack's PSNR
      below None's (:func:`check_lowers_psnr`);
    * ``claim/accuracy_cost_negligible``: each costs at most ``margin`` points of test accuracy, a
      non-inferiority claim (:func:`check_accuracy_cost`);
    * ``claim/spri_predicts_psnr``: S_pri and attack PSNR correlate positively (:func:`check_correlation`);
    * ``claim/policies_transfer``: on the transfer dataset too, each lowers the PSNR below None's.

    Every verdict follows :data:`fedrepro.claims.CRITERION`; a claim tested on several policies and
    architectures scores the share of them that confirm it (:func:`fedrepro.claims.scores`).
    """
    checks = []
    for arch, rows in search.items():
        for slot in (s for s in SEARCHED_SLOTS if s in rows):
            checks.append(check_lowers_psnr("claim/searched_lowers_psnr", f"{slot} {rows[slot].policy} lowers the "
                                            f"attack's PSNR ({arch})", rows["none"], rows[slot]))
    for arch, rows in search.items():
        for slot in (s for s in SEARCHED_SLOTS if s in rows):
            checks.append(check_accuracy_cost("claim/accuracy_cost_negligible", f"{slot} {rows[slot].policy} costs at "
                                              f"most {margin:g} pp of accuracy ({arch})", rows["none"], rows[slot],
                                              margin))
    if correlation is not None:
        checks.append(check_correlation("claim/spri_predicts_psnr", "S_pri predicts the attack's PSNR (positive "
                                        "Pearson r)", *correlation))
    for arch, rows in transfer.items():
        for slot in (s for s in SEARCHED_SLOTS if s in rows):
            checks.append(check_lowers_psnr("claim/policies_transfer", f"{slot} {rows[slot].policy} lowers the "
                                            f"attack's PSNR on the transfer dataset ({arch})", rows["none"], rows[slot]))
    return checks


def claims_table(checks: Sequence[ClaimCheck]) -> str:
    """Markdown: each check's verdict and evidence, then the criterion the verdicts follow."""
    return claims.checks_table(checks, claim="claim (paper 05)")


# --- plots ---------------------------------------------------------------------------------------

def plot_single_scores(scores: Mapping[int, float], highlight: int = 5, paper_lowest: Sequence[int] = (),
                       title: str = "") -> Figure:
    """Figure 5: S_pri of each library operation (bars); the ``highlight`` lowest in red, the paper's
    five lowest marked with a star."""
    import matplotlib.pyplot as plt

    index = sorted(scores)
    values = [scores[i] for i in index]
    red = set(lowest(scores, highlight))
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.bar(range(len(index)), values, color=["tab:red" if i in red else "tab:blue" for i in index])
    ax.set_xticks(range(len(index)))
    ax.set_xticklabels([str(i) for i in index], fontsize=6)
    for pos, i in enumerate(index):
        if i in paper_lowest:
            ax.text(pos, values[pos], "*", ha="center", va="bottom", fontsize=11)
    low, high = min(values), max(values)
    ax.set_ylim(max(0.0, low - 0.1 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
    ax.set_xlabel("library index (red: our lowest; *: the paper's five lowest)")
    ax.set_ylabel("S_pri")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_correlation(spri: Sequence[float], psnr: Sequence[float], r: float, paper_r: float | None = None,
                     title: str = "") -> Figure:
    """Figure 2: attack PSNR against S_pri over random policies, with a least-squares line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter(spri, psnr, s=18)
    if len(spri) >= 2 and np.ptp(spri) > 0:
        slope, intercept = np.polyfit(spri, psnr, 1)
        xs = np.linspace(min(spri), max(spri), 10)
        ax.plot(xs, slope * xs + intercept, color="tab:red", lw=1)
    label = f"Pearson r = {r:.3f}" + (f" (paper {paper_r:.3f})" if paper_r is not None else "")
    ax.set_title((title + "\n" if title else "") + label, fontsize=9)
    ax.set_xlabel("S_pri")
    ax.set_ylabel("attack PSNR (dB)")
    fig.tight_layout()
    return fig


def figure4_grid(none: PolicyAttack, defended: PolicyAttack, count: int = 6) -> Figure:
    """Figure 4: clean / reconstructed without / transformed / reconstructed with, PSNR captions."""
    from fedrepro.plots import image_grid

    n = min(count, len(none.originals))
    rows = [none.originals[:n], none.reconstructions[:n], defended.transformed[:n], defended.reconstructions[:n]]
    captions = [[""] * n, [f"{v:.1f} dB" for v in none.psnr[:n]], [""] * n,
                [f"{v:.1f} dB" for v in defended.psnr[:n]]]
    labels = ["clean", "rec. without", f"transformed\n{defended.policy}", "rec. with"]
    return image_grid(rows, labels, captions)


def describe_policy(policy: str) -> str:
    """``"3-1-7"`` -> ``"3-1-7: translateX(0.45) → contrast(0.33) → translateY(0.10)"``."""
    p = Policy(policy)
    return f"{p}: {p.describe()}"


# --- the notebook's sections ---------------------------------------------------------------------

def library_summary(indices: Sequence[int] | None = None, max_ops: int = 3) -> str:
    """The size of the search space and the library operations at ``indices``, one per line (default: the
    five operations with the lowest S_pri in the paper's Figure 5, read from ``paper_results/05.yaml``)."""
    if indices is None:
        values = paper_values()
        indices = [int(values[("05", figure5_key(rank))].value) for rank in range(1, 6)]
    lines = [f"policies of at most {max_ops} operations: {search_space_size(max_ops):,}"]
    lines += [f"{index:2d}: {LIBRARY[index].describe()}" for index in indices]
    return "\n".join(lines)


class ATSStudy:
    """Notebook 05 on one search dataset: the search per architecture, then each table and figure.

    Every number goes into ``report`` under this module's keys. ``data`` / ``transfer`` are loaded from
    the parameters when not given (tests pass small in-memory datasets). Sections reuse each other's
    trained models and attacks through one :class:`Rows` per architecture, so calling them in the
    notebook's order runs each training and attack once.
    """

    def __init__(self, params: ATSParameters, report: Any, data: FederatedData | None = None,
                 transfer: FederatedData | None = None) -> None:
        from fedrepro.search import SearchSettings, pick_images

        p = params
        self.params, self.report, self._transfer = p, report, transfer
        self.work = Path(p.results_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = data if data is not None else self._load(p.dataset)
        self.mean, self.std = self.data.train.mean, self.data.train.std
        self.rest = self.data.test.subset(torch.arange(p.victims, len(self.data.test)))
        self.spri_images, self.spri_labels = pick_images(self.rest, p.spri_per_class, p.seed)
        self.config = p.fedavg_config()
        self.settings = SearchSettings(points=p.spri_points, runs=p.sacc_runs, seed=p.seed)
        self.t_acc = p.t_acc_per_image * self.data.train.num_classes
        self.searches: dict[str, Any] = {}
        self.best: dict[str, list[str]] = {}
        self.hybrids: dict[str, str] = {}
        self.rows: dict[str, Rows] = {}
        self.measured: dict[str, dict[str, dict[str, PolicyResult]]] = {"table1": {}, "table4": {}}
        self.correlation: tuple[float, int] | None = None

    def _load(self, dataset: str) -> FederatedData:
        p = self.params
        return load_federated(dataset, p.num_clients, p.seed, samples_per_client=p.samples_per_client,
                              test_samples=p.test_samples, image_size=32, root=p.data_root)

    def _rows(self, arch: str, data: FederatedData) -> Rows:
        p = self.params
        return Rows(arch, data, self.config, data.test.images[:p.victims], data.test.labels[:p.victims], seed=p.seed,
                    width=p.convnet_width, iterations=p.attack_iterations)

    def describe(self) -> str:
        p = self.params
        return (f"{self.data.describe()}\nS_pri on {len(self.spri_images)} images, {p.spri_points} points; S_acc over "
                f"{p.sacc_runs} batches of {self.data.train.num_classes}, T_acc = {self.t_acc:.1f}")

    # Algorithm 1
    def search(self, arch: str) -> str:
        """Train M^s, run Algorithm 1 for ``arch`` and keep its two best policies and their hybrid."""
        from fedrepro.search import PolicySearch, train_semi_model

        p, train = self.params, self.data.train
        semi = build_ats_model(arch, train, p.seed, p.convnet_width)
        semi = train_semi_model(semi, train, fraction=p.semi_fraction, epochs=p.semi_epochs, lr=p.semi_lr,
                                seed=p.seed, device=p.device)
        device = next(semi.parameters()).device
        _, semi_accuracy = evaluate(semi, self.data.test.normalize(self.data.test.images).to(device),
                                    self.data.test.labels.to(device))
        self.report.measure(semi_accuracy_key(arch), 100 * semi_accuracy,
                            setting=f"M^s test accuracy ({p.dataset}, {p.semi_fraction:.0%} of the data, "
                                    f"{p.semi_epochs} epochs, lr {p.semi_lr})")
        random_model = build_ats_model(arch, train, p.seed + 1, p.convnet_width).eval().to(device)
        search = PolicySearch(semi, random_model, self.spri_images, self.spri_labels, self.rest.images,
                              self.rest.labels, mean=self.mean, std=self.std,
                              path=self.work / f"search-{p.dataset}-{arch}.jsonl", t_acc=self.t_acc,
                              settings=self.settings)
        self.best[arch] = [r["policy"] for r in search.run(c_max=p.c_max, n=2)]
        self.hybrids[arch] = search.hybrid(n=2)
        self.searches[arch] = search
        self.rows[arch] = self._rows(arch, self.data)
        passed = sum(search.passes(search.records[policy]) for policy in search.searched)
        lines = [f"{arch}: M^s test accuracy {100 * semi_accuracy:.1f}%",
                 f"{arch}: {len(search.searched)} policies searched, {passed} pass T_acc; best {self.best[arch]}, "
                 f"hybrid {self.hybrids[arch]}"]
        lines += [f"   {describe_policy(r['policy'])}  S_pri {r['s_pri']:.4f}  S_acc {r['s_acc']:.2f}"
                  for r in search.best(2)]
        return "\n".join(lines)

    def search_all(self) -> str:
        """:meth:`search` for every architecture; records how many policies the first searched."""
        text = "\n".join(self.search(arch) for arch in self.params.archs)
        first = self.params.archs[0]
        self.report.measure(SEARCHED_KEY, len(self.searches[first].searched),
                            setting=f"policies searched ({self.params.dataset}, {first})")
        return text

    # Figure 5
    def figure5(self) -> tuple[Figure, str]:
        """S_pri of the first ``figure5_operations`` single operations on the first architecture."""
        p, arch = self.params, self.params.archs[0]
        singles = {i: self.searches[arch].evaluate(str(i), privacy=True)["s_pri"] for i in range(p.figure5_operations)}
        ours = lowest(singles, 5)
        paper = [int(self.report.reported(figure5_key(k))) for k in range(1, 6)]
        title = f"S_pri of {len(singles)} single operations, {p.dataset}, {arch} ({p.tier} tier)"
        fig = plot_single_scores(singles, paper_lowest=paper, title=title)
        for k, index in enumerate(ours, 1):
            self.report.measure(figure5_key(k), index, setting=f"library index with the {k}. lowest S_pri "
                                f"({p.dataset}, {arch}, of operations 0..{p.figure5_operations - 1})")
        return fig, f"our five lowest: {ours}   the paper's: {paper}"

    # Tables 1 and 4
    def policy_rows(self, arch: str, data_name: str, rows: Rows, policies: Sequence[tuple[str, Any]],
                    transfer: bool = False) -> list[dict[str, Any]]:
        """Table 1 / 4 rows, one per ``(slot, policy)``; the ``random`` slot takes a list of policies and
        averages PSNR and accuracy over them."""
        out = []
        note = stand_in_note(data_name)
        for slot, policy in policies:
            if slot == "random":
                attacks = [rows.attacked(q) for q in policy]
                accs = [rows.trained(q).accuracy for q in policy]
                psnr = sum(a.psnr_mean for a in attacks) / len(attacks)
                psnr_clean = sum(a.psnr_original_mean for a in attacks) / len(attacks)
                acc, shown = sum(accs) / len(accs), f"random ({len(policy)})"
            else:
                attack = rows.attacked(policy)
                psnr, psnr_clean, acc, shown = (attack.psnr_mean, attack.psnr_original_mean,
                                                rows.trained(policy).accuracy, policy)
                table = self.measured["table4" if transfer else "table1"].setdefault(arch, {})
                table[slot] = PolicyResult(policy, attack.psnr, acc, len(rows.data.test))
            psnr_key = result_key(data_name, arch, slot, "psnr", transfer=transfer)
            acc_key = result_key(data_name, arch, slot, "accuracy", transfer=transfer)
            self.report.measure(psnr_key, psnr, setting=f"attack PSNR, {data_name}, {arch}, {shown}{note}")
            self.report.measure(acc_key, acc, setting=f"test accuracy, {data_name}, {arch}, {shown}{note}")
            out.append({"slot": slot, "policy": shown, "PSNR (dB)": psnr, "paper PSNR": self.report.reported(psnr_key),
                        "PSNR vs clean": psnr_clean, "accuracy (%)": acc,
                        "paper accuracy": self.report.reported(acc_key)})
        return out

    def table1(self) -> str:
        """None / Random / best1 / best2 / hybrid, and the paper's published policies, per architecture."""
        p = self.params
        randoms = random_policy_list(p.random_policies, p.seed)
        parts = []
        for arch in p.archs:
            rows = self.rows[arch]
            published = PUBLISHED.get((paper_dataset(p.dataset), arch), ())
            policies = [("none", "none"), ("random", randoms), ("best1", self.best[arch][0]),
                        ("best2", self.best[arch][1]), ("hybrid", self.hybrids[arch])]
            table = self.policy_rows(arch, p.dataset, rows, policies)
            for policy in p.published_policies:
                attack = rows.attacked(policy)
                acc = rows.trained(policy).accuracy
                for what, value in (("psnr", attack.psnr_mean), ("accuracy", acc)):
                    self.report.measure(published_key(p.dataset, arch, policy, what), value,
                                        setting=f"{what}, {p.dataset}, {arch}, the paper's policy {policy} applied "
                                                f"directly{stand_in_note(p.dataset)}")
                table.append({"slot": "published", "policy": policy, "PSNR (dB)": attack.psnr_mean,
                              "PSNR vs clean": attack.psnr_original_mean, "accuracy (%)": acc})
            title = (f"**Table 1, {p.dataset}, {arch}** ({p.tier} tier{stand_in_note(p.dataset)}; the paper's "
                     f"best policies here were {' and '.join(published)})")
            parts.append(title + "\n\n" + markdown_table(table, TABLE1_COLUMNS))
        return "\n\n".join(parts)

    def table4(self) -> tuple[str, str]:
        """The searched policies applied to ``transfer_dataset`` without a new search: its description
        and the tables."""
        p = self.params
        if self._transfer is None:
            self._transfer = self._load(p.transfer_dataset)
        target = self._transfer
        parts = []
        for arch in p.archs:
            rows = self._rows(arch, target)
            policies = [("none", "none"), ("best1", self.best[arch][0]), ("best2", self.best[arch][1]),
                        ("hybrid", self.hybrids[arch])]
            table = self.policy_rows(arch, p.transfer_dataset, rows, policies, transfer=True)
            parts.append(f"**Table 4, {p.dataset} → {p.transfer_dataset}, {arch}** ({p.tier} tier"
                         f"{stand_in_note(p.transfer_dataset)})\n\n" + markdown_table(table, TABLE1_COLUMNS))
        return target.describe(), "\n\n".join(parts)

    # Figures 4 and 2
    def figure4(self, count: int = 6) -> list[Figure]:
        """Clean / reconstructed / transformed by the hybrid / reconstructed, per architecture."""
        import matplotlib.pyplot as plt

        p = self.params
        figures = []
        for arch in p.archs:
            fig = figure4_grid(self.rows[arch].attacked("none"), self.rows[arch].attacked(self.hybrids[arch]), count)
            plt.suptitle(f"{p.dataset}, {arch}, hybrid {self.hybrids[arch]} ({p.tier} tier)", fontsize=9)
            figures.append(fig)
        return figures

    def figure2(self) -> Figure:
        """S_pri against attack PSNR over random policies, all attacked on the model trained without one."""
        p, arch = self.params, self.params.archs[0]
        sample = random_policy_list(p.figure2_policies, p.seed + 100)
        spri = [self.searches[arch].evaluate(policy, privacy=True)["s_pri"] for policy in sample]
        psnr = [self.rows[arch].attacked(policy, model_policy="none", iterations=p.figure2_iterations).psnr_mean
                for policy in sample]
        r = pearson(spri, psnr)
        self.correlation = (r, len(sample))
        fig = plot_correlation(spri, psnr, r, self.report.reported(PEARSON_KEY),
                               title=f"{len(sample)} random policies, {p.dataset}, {arch} ({p.tier} tier)")
        self.report.measure(PEARSON_KEY, r, setting=f"Pearson r of S_pri and attack PSNR over {len(sample)} random "
                            f"policies ({p.dataset}, {arch}, {p.figure2_iterations or 'preset'} attack iterations)")
        return fig

    # Tables 2 and 3
    def table2(self) -> str:
        """The hybrid against each of ``table2_attacks`` (first architecture)."""
        p, arch = self.params, self.params.archs[0]
        table = []
        for attack in p.table2_attacks:
            entry: dict[str, Any] = {"attack": attack}
            for slot, policy in (("none", "none"), ("hybrid", self.hybrids[arch])):
                value = self.rows[arch].attacked(policy, attack=attack).psnr_mean
                key = table2_key(attack, slot)
                self.report.measure(key, value, setting=f"{attack} PSNR, {p.dataset}, {arch}, {policy} "
                                                        f"(paper: CIFAR-100, ResNet20)")
                entry[slot] = value
                entry[f"paper {slot}"] = self.report.reported(key)
            table.append(entry)
        return (f"**Table 2, {p.dataset}, {arch}** ({p.tier} tier)\n\n"
                + markdown_table(table, ["attack", "none", "paper none", "hybrid", "paper hybrid"]))

    def table3(self) -> str:
        """No defense, each of ``table3_defenses`` (in training and on the victim's gradient), and the hybrid."""
        p, arch = self.params, self.params.archs[0]
        rows = self.rows[arch]
        table = []
        for defense in [None] + p.defenses:
            label = defense_label(defense)
            attack = rows.attacked("none", defense=defense)
            acc = rows.trained("none", defense).accuracy
            if defense is not None:
                for what, v in (("psnr", attack.psnr_mean), ("accuracy", acc)):
                    self.report.measure(table3_key(label, what), v,
                                        setting=f"{what}, {p.dataset}, {arch}, {label} (paper: CIFAR-100, ResNet20)")
            table.append({"defense": label, "PSNR (dB)": attack.psnr_mean,
                          "paper PSNR": self.report.reported(table3_key(label, "psnr")),
                          "accuracy (%)": acc, "paper accuracy": self.report.reported(table3_key(label, "accuracy"))})
        hybrid = self.hybrids[arch]
        table.append({"defense": f"hybrid {hybrid}", "PSNR (dB)": rows.attacked(hybrid).psnr_mean,
                      "paper PSNR": self.report.reported(table3_key("hybrid", "psnr")),
                      "accuracy (%)": rows.trained(hybrid).accuracy,
                      "paper accuracy": self.report.reported(table3_key("hybrid", "accuracy"))})
        return (f"**Table 3, {p.dataset}, {arch}** ({p.tier} tier)\n\n"
                + markdown_table(table, ["defense", "PSNR (dB)", "paper PSNR", "accuracy (%)", "paper accuracy"]))

    # the paper's claims
    def claims(self) -> list[ClaimCheck]:
        """:func:`claim_checks` on what Tables 1 and 4 and Figure 2 measured so far; each claim's share of
        confirmed checks is recorded as ``claim/<name>``."""
        checks = claim_checks(self.measured["table1"], self.measured["table4"], self.correlation)
        return list(claims.record(self.report, checks))


__all__ = [
    "ARCHS", "ATSParameters", "LIBRARY", "PEARSON_KEY", "PUBLISHED", "PolicyAttack", "PolicyResult", "Rows",
    "SEARCHED_KEY", "SEARCHED_SLOTS", "SECTIONS", "STAND_INS", "ATSStudy", "TABLE1_COLUMNS", "TABLE2_ATTACKS",
    "TABLE3", "TABLE3_PARAMETER", "TrainedRow", "attack_under_policy", "build_ats_model", "check_accuracy_cost",
    "check_correlation", "check_lowers_psnr", "claim_checks", "claims_table", "defense_label", "describe_policy",
    "figure4_grid", "figure5_key", "library_summary", "lowest", "markdown_table", "paper_dataset", "pearson",
    "plot_correlation",
    "plot_single_scores", "published_key", "random_policy_list", "result_key", "semi_accuracy_key", "stand_in_note",
    "table2_key", "table3_defense", "table3_key", "train_row", "victim_images",
]
