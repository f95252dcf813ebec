"""Paper 05 (Gao et al., *Privacy-preserving Collaborative Learning with Automatic Transformation
Search*): the experiments behind notebook 05, one row at a time.

A *row* is one training configuration — a transformation policy (``"none"``, a random policy, a
searched one, a hybrid ``"a+b"``) and optionally a gradient defense (pruning, Laplacian or Gaussian
noise, Table 3) — trained with FedAvg (:func:`train_row`) and then attacked
(:func:`attack_under_policy`): every victim (one test image, batch size 1 as in the paper) is
transformed by the client with the row's policy, its gradient on the trained global model is what
the server sees (after the row's gradient defense), and the server runs one of the six ``ats_*``
attacks.

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
  gradient at every local step (:func:`ats_trainer`), per layer, as DLG's defenses do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from fedrepro import metrics
from fedrepro.attacks import DefendedStep, ServerView, client_update, run_attack
from fedrepro.data import FederatedData, ImageDataset
from fedrepro.defenses import DEFENSES
from fedrepro.defenses.transforms import LIBRARY, Policy, apply_policy, transform_images
from fedrepro.fl import FedAvgConfig, StandardTrainer, run_fedavg
from fedrepro.runtime import generator

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

#: Paper 05's Table 3 defenses: (registry name, parameter) -> result-key label.
TABLE3 = (("prune", 0.70), ("prune", 0.95), ("prune", 0.99), ("laplacian", 1e-3), ("laplacian", 1e-2),
          ("gaussian", 1e-3), ("gaussian", 1e-2))

#: The six attacks of Table 2, in the paper's order.
TABLE2_ATTACKS = ("ats_lbfgs_l2", "ats_adam_cosine", "ats_lbfgs_cosine", "ats_adam_l1", "ats_adam_l2", "ats_sgd_cosine")


# --- keys ----------------------------------------------------------------------------------------

def paper_dataset(dataset: str) -> str:
    """The paper's dataset a (possibly stand-in) dataset is compared with."""
    return STAND_INS.get(dataset, dataset)


def stand_in_note(dataset: str) -> str:
    """``" (CIFAR-10 stands in for cifar100)"`` when ``dataset`` is a stand-in, else ``""``."""
    target = paper_dataset(dataset)
    return "" if target == dataset else f" ({dataset} stands in for {target})"


def defense_label(kind: str | None, value: float | None = None) -> str:
    """Result-key label of a gradient defense: ``prune-0.70``, ``laplacian-1e-3``, ``none``."""
    if kind is None or kind == "none":
        return "none"
    if kind == "prune":
        return f"prune-{value:.2f}"
    exponent = int(round(math.log10(value)))
    if not math.isclose(value, 10.0 ** exponent, rel_tol=1e-9):
        return f"{kind}-{value:g}"
    return f"{kind}-1e{exponent}"


def result_key(dataset: str, arch: str, slot: str, what: str, attack: str | None = None, transfer: bool = False) -> str:
    """The ``fedrepro/paper_results/05.yaml`` key of one number (stand-in datasets map to the paper's)."""
    parts = [paper_dataset(dataset), arch] + (["transfer"] if transfer else []) + ([attack] if attack else [])
    return "/".join(parts + [slot, what])


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


def make_defense(kind: str | None, value: float | None = None):
    """A gradient defense from :data:`fedrepro.defenses.DEFENSES` (None for no defense)."""
    if kind is None or kind == "none":
        return None
    name = {"prune": "ratio", "laplacian": "scale", "gaussian": "std"}[kind]
    return DEFENSES.get(kind)(**{name: value})


@dataclass(frozen=True)
class PolicyBatch:
    """A ``StandardTrainer`` batch transform: :func:`transform_batch` with ``policy``, drawing its signs
    from the global RNG (which FedAvg reseeds per round and client)."""

    policy: str
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return transform_batch(x, Policy(self.policy), self.mean, self.std), y


def ats_trainer(policy: str = "none", mean: Sequence[float] = (), std: Sequence[float] = (),
                defense: Any = None) -> StandardTrainer:
    """FedAvg local training on ``policy``-transformed batches with an optional per-step gradient defense.

    The policy part is :class:`fedrepro.defenses.transforms.PolicyBatchTransform`'s: de-normalise
    each batch to its exact uint8 pixels, transform, normalise again. The defense (pruning / noise)
    is applied to the batch gradient of every step, per layer, before the optimiser step
    (:class:`fedrepro.attacks.DefendedStep`).
    """
    parsed = Policy(policy)
    transform = None if parsed.is_identity else PolicyBatch(str(parsed), tuple(mean), tuple(std))
    return StandardTrainer(batch_transform=transform,
                           gradient_transform=None if defense is None else DefendedStep(defense))


def transform_batch(x: torch.Tensor, policy: Policy, mean: Sequence[float], std: Sequence[float],
                    g: torch.Generator | None = None) -> torch.Tensor:
    """Normalised float batch -> the same batch transformed by ``policy`` (exact uint8 round trip)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    pixels = (x.detach() * s + m).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    out = transform_images(pixels.cpu(), policy, g).to(x.device)  # g None: the global RNG FedAvg reseeds
    return (out.to(x.dtype) / 255.0 - m) / s


@dataclass
class TrainedRow:
    """One FedAvg run: its policy / defense, the trained global model and its test accuracy (%)."""

    policy: str
    defense: str
    model: nn.Module
    accuracy: float
    seconds: float


def train_row(arch: str, data: FederatedData, config: FedAvgConfig, policy: str = "none",
              defense: tuple[str, float] | None = None, seed: int = 0, width: int | None = None,
              progress: bool = False) -> TrainedRow:
    """Train ``arch`` from the seeded initialisation with FedAvg, clients transforming with ``policy``."""
    model = build_ats_model(arch, data.train, seed, width)
    kind, value = defense if defense else (None, None)
    trainer = ats_trainer(str(Policy(policy)), tuple(data.train.mean), tuple(data.train.std), make_defense(kind, value))
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    return TrainedRow(str(Policy(policy)), defense_label(kind, value), result.model.eval(),
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
                        iterations: int | None = None, defense: tuple[str, float] | None = None, seed: int = 0,
                        progress: bool = False, **overrides) -> PolicyAttack:
    """Attack ``model`` on uint8 victim ``images`` (batch size 1 each) that the client transforms with
    ``policy`` before computing its gradient (after the gradient ``defense``, if any)."""
    import time

    started = time.perf_counter()
    model.eval()
    transformed = victim_images(images, policy, seed)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = (transformed.float() / 255.0 - m) / s
    device = next(model.parameters()).device
    kind, value = defense if defense else (None, None)
    update = client_update(model, x.to(device), labels.to(device), images_per_victim=1,
                           defense=make_defense(kind, value), generator=generator(seed, "ats-defense"))
    view = ServerView(model, update, num_images=1, image_shape=tuple(images.shape[1:]), mean=tuple(mean),
                      std=tuple(std), labels=labels.to(device)[:, None])
    if iterations is not None:
        overrides["max_iterations"] = iterations
    result = run_attack(view, attack, seed=seed, progress=progress, **overrides)
    rec = result.denormalized().cpu()
    originals = images.float() / 255.0
    shown = transformed.float() / 255.0
    return PolicyAttack(str(Policy(policy)), attack, defense_label(kind, value), originals, shown, rec,
                        metrics.psnr(shown, rec), metrics.psnr(originals, rec), time.perf_counter() - started)


class Rows:
    """Trained models and attacks of one (dataset, architecture), each computed once and cached.

    ``trained(policy, defense)`` trains a FedAvg model (see :func:`train_row`); ``attacked(policy,
    attack, defense)`` attacks the victims on the model trained with the same policy and defense.
    ``victims``/``labels`` are uint8 test images, attacked one image per victim.
    """

    def __init__(self, arch: str, data: FederatedData, config: FedAvgConfig, victims: torch.Tensor,
                 labels: torch.Tensor, *, seed: int = 0, width: int | None = None, iterations: int | None = None,
                 progress: bool = False) -> None:
        self.arch, self.data, self.config = arch, data, config
        self.victims, self.labels = victims, labels
        self.seed, self.width, self.iterations, self.progress = seed, width, iterations, progress
        self.models: dict[tuple[str, str], TrainedRow] = {}
        self.attacks: dict[tuple[str, str, str, str], PolicyAttack] = {}

    def trained(self, policy: str = "none", defense: tuple[str, float] | None = None) -> TrainedRow:
        key = (str(Policy(policy)), defense_label(*(defense or (None,))))
        if key not in self.models:
            self.models[key] = train_row(self.arch, self.data, self.config, key[0], defense, self.seed, self.width,
                                         self.progress)
        return self.models[key]

    def attacked(self, policy: str = "none", attack: str = "ats_adam_cosine", defense: tuple[str, float] | None = None,
                 model_policy: str | None = None) -> PolicyAttack:
        """Attack victims transformed by ``policy`` on the model trained with ``model_policy``
        (default: the same policy) and the same defense."""
        trained_with = str(Policy(policy if model_policy is None else model_policy))
        key = (str(Policy(policy)), attack, defense_label(*(defense or (None,))), trained_with)
        if key not in self.attacks:
            row = self.trained(trained_with, defense)
            self.attacks[key] = attack_under_policy(
                row.model, self.victims, self.labels, key[0], mean=self.data.train.mean, std=self.data.train.std,
                attack=attack, iterations=self.iterations, defense=defense, seed=self.seed, progress=self.progress)
        return self.attacks[key]


def random_policy_list(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct random policies of ≤ 3 operations (the paper's Random rows), seeded."""
    from fedrepro.defenses.transforms import random_policies

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


__all__ = [
    "LIBRARY", "PUBLISHED", "PolicyAttack", "PolicyBatch", "Rows", "STAND_INS", "TABLE2_ATTACKS", "TABLE3", "TrainedRow",
    "ats_trainer", "attack_under_policy", "build_ats_model", "defense_label", "describe_policy", "figure4_grid", "lowest",
    "make_defense", "markdown_table", "paper_dataset", "pearson", "random_policy_list", "plot_correlation", "plot_single_scores",
    "result_key", "stand_in_note", "train_row", "transform_batch", "victim_images",
]
