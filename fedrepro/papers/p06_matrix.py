"""Notebook 06: every defense of the five papers against every attack, at three training states, with
each defense's accuracy cost — the privacy matrix.

A **row** is a defense (:class:`MatrixDefense`): a :class:`~fedrepro.defenses.spec.Defense` spec (``none``,
``gaussian:std0.01``, ``laplacian:scale0.01``, ``prune:ratio0.7``, ``gc:p0.99``, ``int8``, ``dp:C1,sigma1``,
``precode:P3``, ``cvb``) or a paper-05 transformation policy ``ats:<policy>`` (``ats:3-1-7``, a hybrid
``ats:3-1-7+43-18-18``). A **column** is an attack: a preset of :data:`fedrepro.attacks.ATTACKS` made for a
shared gradient (``ig``, ``dlg``, ``idlg``, ``cpl``, paper 05's ``ats_*``) or one built on the
``adaptive_base`` preset for a model with a variational bottleneck (:data:`BOTTLENECK_ATTACKS`):

* ``ignore`` — paper 04's Ignore attack: the bottleneck's decoder and every later layer are dropped;
* ``eot`` — **adaptive**, expectation over the sampling: every gradient is matched, the dummy's gradient
  being the mean over ``eot_draws`` forward passes with fresh bottleneck noise
  (``AttackConfig(draws=S, draw_mode="gradient")``) instead of one draw per evaluation;
* ``eot_ignore`` — **adaptive**: the same expectation over the Ignore attack's gradients.

On a model without a bottleneck these three are the base attack itself, so those cells are not run (n/a).
Why the mean *gradient*: averaging the S gradient distances instead (``draw_mode="loss"``, the literal expected
loss) gained nothing when measured (untrained CNN, 4 CIFAR-10 victims, 200 IG iterations, 4 draws: mean SSIM
0.023 vs 0.031 with one draw on PRECODE P = 3, 0.052 vs 0.055 on the CVB), the mean gradient a little (0.049,
0.056; with 16 draws 0.055, 0.074); over the Ignore attack's gradients clearly more (CVB, 8 victims: 0.144 vs
0.114, every victim better; the unit test). The victim's own draw stays unknown: matching it jointly with the
image (a MAP attack over the noise) is not implemented.

Two more adaptive columns, also built on ``adaptive_base``, each only where its defense is (n/a elsewhere):

* ``ats_aware`` — **adaptive** against a transformation policy (ATS rows): the attacker knows the policy,
  not the client's random draws (each signed operation's sign); it optimises the *untransformed* image
  through a differentiable copy of the policy (:mod:`fedrepro.defenses.transforms.differentiable`), one
  restart per possible draw (8 for a three-operation policy with three signed operations, their sum for a
  hybrid), and keeps the restart whose gradient matches best — chosen by its own loss. Budget: each restart
  gets ``max_iterations`` evaluations, so the column costs that many times a plain cell;
* ``topk_aware`` — **adaptive** against top-k compression and pruning (``gc`` rows): the attacker compresses
  its dummy gradient as the client compressed its own — per tensor, the k largest magnitudes, k read off the
  shared gradient — and compares in that space (``AttackConfig(space="topk")``).

One column attacks a **model update** instead of a gradient: ``ig_multistep`` (Geiping et al.'s FedAvg attack,
paper 03's section 5) sees each victim's ``w0 − wK`` after ``update_steps`` local SGD steps (lr ``update_lr``)
on its image, after the row's gradient defense applied to the update, and unrolls the same steps on its dummy.
It costs about ``update_steps`` times a gradient cell. DP-SGD rows are n/a there: their noise and clipping act
inside every local step, which :func:`fedrepro.attacks.client_update` does not unroll.

Unlike the other adaptive columns, ``topk_aware`` did *worse* than plain IG when first measured (untrained
CNN, 8 CIFAR-10 victims, 200 IG iterations: mean SSIM 0.113 → 0.066 at 99 % pruning, 0.395 → 0.304 at 70 %;
matching only on the entries the client sent, the other obvious variant, gave 0.062 and 0.284): the plain
cosine distance already uses what the dropped entries say — that they were small — by asking the dummy's
gradient to be small there, which compressing the dummy's gradient throws away. The matrix keeps the column
to show it. int8 has no such column: it changes every entry by at most half a step, and plain attacks
already break it.

A **state** is the global model attacked: ``untrained`` (the round-0 weights FedAvg starts from),
``partly trained`` (after ``partial_rounds`` rounds) and ``trained`` (after ``rounds``), all of one FedAvg run
of the row's defense (:func:`train_defense`), whose final test accuracy is the row's utility.

Decisions (made once here):

* **One base network** for every row: paper 04's CNN from one seeded initialisation; PRECODE and the CVB
  are inserted into it (:func:`fedrepro.papers.p04_training.build_defended_model`), so every row at the
  untrained state starts from the same base weights.
* **Training**: FedAvg with paper 04's protocol (Adam 1e-3, batch 64, 1 local epoch) for a fixed number of
  rounds (no early stopping, so every row trains equally long). A gradient defense is applied to every local
  step (:class:`fedrepro.attacks.DefendedStep`); DP-SGD trains with :class:`fedrepro.privacy.DPTrainer`
  (flat clipping to C, noise σ·C, Poisson sampling), whose accountant gives the row's ε at ``dp_delta``;
  an ATS row trains on policy-transformed batches (:func:`fedrepro.defenses.transforms.policy_trainer`).
* **Victims**: ``victims`` images drawn from client 0's training split (paper 04's protocol), the same for every
  cell; each is attacked alone on the gradient of one training step on its image (training mode, so a
  bottleneck samples), after the row's gradient defense. An ATS row's client transforms the image first.
  The labels are known to the server; attacks that recover labels themselves (DLG, iDLG, CPL) do, and their
  label accuracy is recorded.
* **Scores**: SSIM and PSNR (:mod:`fedrepro.metrics`) against the **clean** image, which is what privacy
  asks (paper 05 scores against the transformed image: recorded as ``psnr_transformed`` for ATS rows);
  ASR = share of victims with SSIM ≥ 0.5. Mean and standard deviation over the victims per cell.
* **Equal budget**: every attack gets ``max_iterations`` gradient evaluations and ``restarts`` restarts (an
  EOT evaluation counts once although it runs ``eot_draws`` forward passes: it costs that many times more;
  ``ats_aware`` gets them per possible draw of the policy, ``ig_multistep`` unrolls the local steps in each).
* **Batching**: victims of a cell are attacked together by the batched engine; at the untrained state the
  rows that share the base network (every row without a bottleneck) are attacked in one stacked view per
  attack. Each victim's start is keyed by the victim, not by its position in the stack
  (``invert(init_keys=...)``), and each row's client-side noise by the row, so a cell does not depend on which
  others share its batch up to float rounding: equal to 1e-9 in float64 (tested). In float32 the rounding of
  batched kernels differs with the batch; measured on the quick tier's untrained CNN (6 victims, 160
  evaluations), IG cells alone and stacked agreed to 4 decimals of SSIM, L-BFGS (iDLG) cells, which amplify
  rounding, by up to 0.005.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fedrepro import claims, metrics
from fedrepro.attacks import ATTACKS, AttackConfig, DefendedStep, ServerView, client_update
from fedrepro.attacks.threat import LocalTraining
from fedrepro.attacks.ignore import matched_layers
from fedrepro.attacks.inversion import invert
from fedrepro.data import KNOWN_DATASETS, FederatedData, load_federated
from fedrepro.defenses.spec import Defense
from fedrepro.defenses.transforms import Policy, apply_policy, policy_trainer
from fedrepro.defenses.transforms.differentiable import PolicyAwareTransform, hypotheses
from fedrepro.defenses.variational import bottlenecks
from fedrepro.fl import FedAvgConfig, StandardTrainer, run_fedavg
from fedrepro.models import MODELS
from fedrepro.papers.p04_leakage import Victims, client_victims
from fedrepro.papers.p04_training import build_defended_model
from fedrepro.results import TIERS
from fedrepro.runtime import derive_seed, generator, get_device
from fedrepro.validation import choice, device, integer, names, number, parsed, require, text

STATES = ("untrained", "partly trained", "trained")
"""The global-model states every cell is measured at."""

BOTTLENECK_ATTACKS = ("ignore", "eot", "eot_ignore")
"""Attacks built on ``adaptive_base`` for models with a variational bottleneck (module docstring)."""

AWARE_ATTACKS = ("ats_aware", "topk_aware")
"""Adaptive attacks built on ``adaptive_base`` for ATS rows and for top-k compression rows (module docstring)."""

ADAPTIVE = ("eot", "eot_ignore", "ats_aware", "topk_aware")
"""The adaptive attacks, and the attack each is measured against: its own configuration with one draw, or
the base preset without knowledge of the policy or the compression."""
COUNTERPART = {"eot": None, "eot_ignore": "ignore", "ats_aware": None, "topk_aware": None}  # None: the base

ATS_PREFIX = "ats:"

MEASURES = ("ssim", "ssim_std", "psnr", "psnr_std", "asr", "label_accuracy", "psnr_transformed")
"""What :meth:`MatrixStudy.record` stores per cell (the last two only where they apply)."""


UPDATE_ATTACK = "ig_multistep"
"""The column that attacks each victim's model update after local steps (module docstring)."""


def gradient_presets() -> list[str]:
    """The registered attacks that attack a shared gradient (``ig_multistep`` needs a model update)."""
    return [name for name in ATTACKS.names() if ATTACKS.get(name)().observation in ("any", "gradient")]


def attack_names() -> list[str]:
    """Every valid column: the gradient presets, :data:`BOTTLENECK_ATTACKS`, :data:`AWARE_ATTACKS` and the
    model-update attack."""
    return gradient_presets() + list(BOTTLENECK_ATTACKS) + list(AWARE_ATTACKS) + [UPDATE_ATTACK]


def state_key(state: str) -> str:
    """``partly trained`` -> ``partly_trained`` (result keys have no spaces)."""
    return state.replace(" ", "_")


def cell_key(state: str, defense: str, attack: str, what: str) -> str:
    """``<state>/<defense label>/<attack>/<what>``, e.g. ``trained/cvb/eot_ignore/ssim``."""
    return f"{state_key(state)}/{defense}/{attack}/{what}"


def defense_key(defense: str, what: str) -> str:
    """``<defense label>/accuracy``, ``dp:C1/epsilon``."""
    return f"{defense}/{what}"


# --- rows ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatrixDefense:
    """One row: a defense spec, or a paper-05 transformation policy (``ats:<policy>``)."""

    defense: Defense
    policy: str | None = None

    @classmethod
    def parse(cls, spec: "str | MatrixDefense") -> "MatrixDefense":
        """``"ats:3-1-7"`` -> a policy row; anything else goes to :meth:`Defense.parse`."""
        if isinstance(spec, MatrixDefense):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"a row is a defense spec such as 'dp:sigma0.01' or 'ats:3-1-7', got {spec!r}")
        if spec.strip().lower().startswith(ATS_PREFIX):
            policy = Policy(spec.strip()[len(ATS_PREFIX):])
            if policy.is_identity:
                raise ValueError(f"{spec!r}: the identity policy is the row 'none'")
            return cls(Defense.parse("none"), str(policy))
        return cls(Defense.parse(spec))

    @property
    def label(self) -> str:
        """The canonical spec, the key of every number of the row."""
        return ATS_PREFIX + self.policy if self.policy is not None else self.defense.label

    @property
    def variational(self) -> bool:
        return self.defense.variational

    def describe(self) -> str:
        if self.policy is not None:
            kind = "hybrid" if "+" in self.policy else "policy"
            return f"ATS {kind} {self.policy}"
        return self.defense.describe()


ROW_EXAMPLE = "a defense spec such as 'cvb' or 'dp:C1,sigma1', or 'ats:<policy>' such as 'ats:3-1-7'"


# --- parameters ----------------------------------------------------------------------------------

@dataclass
class MatrixParameters:
    """Notebook 06's parameters cell, whole, checked before anything runs (written to ``results.json``).

    Defaults are the quick tier's shape at smoke size; the tiers are in ``parameters/06_privacy_matrix``.
    """

    tier: str = "smoke"
    seed: int = 0
    dataset: str = "cifar10"
    model: str = "cnn"
    defenses: Sequence[str] = ("none", "gaussian:std0.01", "prune:ratio0.7", "int8", "dp:C1,sigma1", "precode:P3",
                               "cvb", "ats:3-1-7")
    attacks: Sequence[str] = ("ig", "dlg", "idlg", "ats_adam_l2", "ignore", "eot", "eot_ignore", "ats_aware",
                               "topk_aware", "ig_multistep")
    states: Sequence[str] = STATES
    adaptive_base: str = "ig"
    eot_draws: int = 4
    update_steps: int = 3
    update_lr: float = 0.01
    num_clients: int = 4
    samples_per_client: int | None = 64
    test_samples: int | None = 200
    rounds: int = 2
    partial_rounds: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    dp_delta: float = 1e-5
    victims: int = 2
    max_iterations: int = 20
    restarts: int = 1
    grid_images: int = 4
    chunk_size: int | None = None
    fl_workers: int | None = None
    torch_threads: int | None = 1
    device: str = "auto"
    data_root: str | None = None
    results_dir: str = "../reports/smoke/06_privacy_matrix"

    def __post_init__(self) -> None:
        choice("tier", self.tier, TIERS)
        integer("seed", self.seed, 0)
        choice("dataset", self.dataset, KNOWN_DATASETS)
        choice("model", self.model, MODELS.names())
        self.defenses = names("defenses", self.defenses, nonempty=True)
        labels = [parsed(f"defenses[{i}]", spec, MatrixDefense.parse, ROW_EXAMPLE).label
                  for i, spec in enumerate(self.defenses)]
        duplicate = sorted({label for label in labels if labels.count(label) > 1})
        require(not duplicate, "defenses", list(self.defenses), f"each row once; {duplicate} is listed twice")
        self.attacks = names("attacks", self.attacks, attack_names(), nonempty=True, unique=True)
        self.states = names("states", self.states, STATES, nonempty=True, unique=True)
        choice("adaptive_base", self.adaptive_base, gradient_presets())
        for name in ("eot_draws", "update_steps", "num_clients", "rounds", "partial_rounds", "batch_size", "victims",
                     "max_iterations", "restarts", "grid_images"):
            integer(name, getattr(self, name), 1)
        require(self.partial_rounds < self.rounds, "partial_rounds", self.partial_rounds,
                f"expected fewer rounds than rounds = {self.rounds} (the partly trained model is a snapshot "
                "of the same run)")
        for name in ("samples_per_client", "test_samples", "chunk_size", "fl_workers", "torch_threads"):
            integer(name, getattr(self, name), 1, optional=True)
        number("lr", self.lr, 0, low_open=True)
        number("update_lr", self.update_lr, 0, low_open=True)
        number("dp_delta", self.dp_delta, 0, 1, low_open=True, high_open=True)
        device("device", self.device)
        text("data_root", self.data_root, "a folder path", optional=True, empty=True)
        text("results_dir", self.results_dir, "a folder path")

    @property
    def rows(self) -> list[MatrixDefense]:
        return [MatrixDefense.parse(spec) for spec in self.defenses]

    def local_training(self) -> LocalTraining:
        """The victims' local training for the model-update column: ``update_steps`` SGD steps on its image."""
        return LocalTraining(steps=self.update_steps, lr=self.update_lr)

    def fedavg_config(self) -> FedAvgConfig:
        """Paper 04's FedAvg protocol for ``rounds`` rounds, no early stopping."""
        return FedAvgConfig(rounds=self.rounds, local_epochs=1, optimizer="adam", lr=self.lr,
                            batch_size=self.batch_size, patience=None, seed=self.seed, device=self.device,
                            workers=self.fl_workers)


# --- training ------------------------------------------------------------------------------------

@dataclass
class TrainedDefense:
    """One row's FedAvg run: its model at every state, test accuracy (%) after the run, ε for DP."""

    row: MatrixDefense
    states: dict[str, nn.Module]
    accuracy: float
    epsilon: float | None
    seconds: float
    history: list[dict[str, Any]] = field(repr=False, default_factory=list)


def row_trainer(row: MatrixDefense, data: FederatedData, delta: float):
    """The local trainer of a row: DP-SGD, a policy, a gradient defense on every step, or plain (None)."""
    if row.policy is not None:
        return policy_trainer(row.policy, tuple(data.train.mean), tuple(data.train.std))
    defense = row.defense
    if defense.kind == "dp":
        from fedrepro.privacy import DPTrainer

        return DPTrainer(clipping="flat", max_grad_norm=defense["C"], noise_multiplier=defense["sigma"], delta=delta)
    gradient = defense.gradient_defense()
    return None if gradient is None else StandardTrainer(gradient_transform=DefendedStep(gradient))


def train_defense(row: MatrixDefense, model_name: str, data: FederatedData, config: FedAvgConfig,
                  partial_rounds: int, delta: float = 1e-5, progress: bool = False) -> TrainedDefense:
    """FedAvg of the row's defended model; keeps the round-0, round-``partial_rounds`` and final global models."""
    train = data.train
    model = build_defended_model(model_name, row.defense, train.channels, train.num_classes, train.image_size,
                                 config.seed)
    untrained = copy.deepcopy(model)
    captured: dict[str, dict[str, torch.Tensor]] = {}

    def snapshot(round_: int, client: int, global_state: dict[str, torch.Tensor], local: nn.Module) -> None:
        if round_ == partial_rounds + 1 and "state" not in captured:  # the global model after partial_rounds
            captured["state"] = {k: v.detach().clone() for k, v in global_state.items()}

    trainer = row_trainer(row, data, delta)
    result = run_fedavg(model, train, data.test, data.splits, config, trainer=trainer, hooks=(snapshot,),
                        progress=progress)
    partial = copy.deepcopy(untrained)
    partial.load_state_dict(captured["state"])
    epsilon = None
    if row.defense.kind == "dp":
        from fedrepro.privacy import history_epsilons

        found = history_epsilons(result.history)
        epsilon = max(found.values()) if found else math.inf
    device = get_device(config.device)
    states = {"untrained": untrained, "partly trained": partial, "trained": result.model}
    states = {k: m.to(device, memory_format=torch.contiguous_format).train() for k, m in states.items()}
    return TrainedDefense(row, states, 100.0 * result.final_accuracy, epsilon, result.seconds, result.history)


# --- attacks -------------------------------------------------------------------------------------

def attack_config(attack: str, model: nn.Module, *, base: str = "ig", max_iterations: int | None = None,
                  restarts: int | None = 1, draws: int = 4, row: MatrixDefense | None = None) -> AttackConfig | None:
    """The configuration of column ``attack`` against ``model`` (of ``row``); None where it does not apply (a
    :data:`BOTTLENECK_ATTACKS` column on a model without a bottleneck is the base attack itself, ``ats_aware``
    needs an ATS row, ``topk_aware`` a top-k compression row). ``ats_aware`` runs ``restarts`` × the policy's
    possible draws as restarts (one :class:`~fedrepro.defenses.transforms.differentiable.Hypothesis` each)."""
    if attack == UPDATE_ATTACK and row is not None and row.defense.kind == "dp":
        return None
    if attack == "topk_aware":
        if row is None or row.defense.kind != "gc":
            return None
        config = ATTACKS.get(base)().replace(space="topk")
    elif attack == "ats_aware":
        if row is None or row.policy is None:
            return None
        config = ATTACKS.get(base)()
        config = config.replace(restarts=(restarts or config.restarts) * len(hypotheses(row.policy)))
        restarts = None
    elif attack in BOTTLENECK_ATTACKS:
        if not bottlenecks(model):
            return None
        config = ATTACKS.get(base)()
        if attack in ("ignore", "eot_ignore"):
            config = config.replace(layers=matched_layers(model, "decoder_and_after"))
        if attack in ADAPTIVE:
            config = config.replace(draws=draws, draw_mode="gradient")
    else:
        config = ATTACKS.get(attack)()
    changes: dict[str, Any] = {}
    if max_iterations is not None:
        changes["max_iterations"] = max_iterations
    if restarts is not None:
        changes["restarts"] = restarts
    return config.replace(**changes)


@dataclass
class Cell:
    """One attack on one row at one state: per-victim scores and the reconstructions."""

    state: str
    defense: str
    attack: str
    ssim: np.ndarray
    psnr: np.ndarray
    label_accuracy: float | None
    psnr_transformed: np.ndarray | None
    originals: torch.Tensor = field(repr=False)
    reconstructions: torch.Tensor = field(repr=False)
    seconds: float = 0.0

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def asr(self) -> float:
        """Attack success rate (%): victims with SSIM ≥ 0.5."""
        return 100.0 * metrics.attack_success_rate(self.ssim)

    def measures(self) -> dict[str, float]:
        out = {"ssim": self.ssim_mean, "ssim_std": float(np.std(self.ssim)), "psnr": float(np.mean(self.psnr)),
               "psnr_std": float(np.std(self.psnr)), "asr": self.asr}
        if self.label_accuracy is not None:
            out["label_accuracy"] = self.label_accuracy
        if self.psnr_transformed is not None:
            out["psnr_transformed"] = float(np.mean(self.psnr_transformed))
        return out


@dataclass
class VictimUpdate:
    """What one row's victims send at one state, and the images to score the reconstructions against."""

    gradients: dict[str, torch.Tensor]
    originals: torch.Tensor  # clean images in [0, 1]
    transformed: torch.Tensor | None  # what an ATS client really trained on, in [0, 1]
    local: LocalTraining | None = None  # set when ``gradients`` are model updates after these local steps


def victim_update(model: nn.Module, row: MatrixDefense, victims: Victims, mean: Sequence[float], std: Sequence[float],
                  seed: int, state: str, local: LocalTraining | None = None) -> VictimUpdate:
    """Each victim's shared gradient of one training step on its (ATS: transformed) image — or, with
    ``local``, its model update after those local steps — after the row's gradient defense; the bottleneck's
    draw and the defense's noise come from streams named by the row and state, so they do not depend on what
    else is computed."""
    device = next(model.parameters()).device
    raw = (victims.originals * 255).round().to(torch.uint8)
    transformed = None
    if row.policy is not None:
        raw = apply_policy(raw, Policy(row.policy), generator(seed, "matrix-ats", row.label))
        transformed = raw.float() / 255.0
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = ((raw.float() / 255.0 - m) / s).to(device=device, dtype=next(model.parameters()).dtype)
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        kind = () if local is None else ("update",)  # a gradient's streams as before the update column
        torch.manual_seed(derive_seed(seed, "matrix-victim", state, row.label, *kind))
        gradients = client_update(model, x, victims.labels.to(device), images_per_victim=1,
                                  defense=row.defense.gradient_defense(), local=local,
                                  generator=generator(seed, "matrix-defense", state, row.label, *kind))
    return VictimUpdate(gradients, victims.originals, transformed, local)


def attack_stack(model: nn.Module, updates: Sequence[VictimUpdate], labels: torch.Tensor, config: AttackConfig,
                 mean: Sequence[float], std: Sequence[float], *, seed: int = 0, chunk_size: int | None = None,
                 progress: bool = False, transform: PolicyAwareTransform | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """Attack the victims of several rows that share ``model`` in one batched run.

    The rows' gradients are stacked along the victim axis; victim ``i`` of every row starts from the same
    point (``init_keys``), so a row's result does not depend on the others. Returns each row's
    reconstructions in [0, 1] and recovered labels, and the wall time."""
    count = len(labels)
    device = next(model.parameters()).device
    stacked = {k: torch.cat([u.gradients[k] for u in updates]) for k in updates[0].gradients}
    local = updates[0].local
    view = ServerView(model, stacked, num_images=1, image_shape=tuple(updates[0].originals.shape[1:]),
                      mean=tuple(mean), std=tuple(std), labels=labels.to(device).repeat(len(updates))[:, None],
                      kind="gradient" if local is None else "update", local=local)
    started = time.perf_counter()
    result = invert(view, config, seed=seed, chunk_size=chunk_size, progress=progress,
                    init_keys=torch.arange(count).repeat(len(updates)), transform=transform)
    seconds = time.perf_counter() - started
    images = torch.nan_to_num(result.denormalized().cpu(), nan=0.5)
    found = result.labels[:, 0].cpu()
    return list(images.split(count)), list(found.split(count)), seconds


def score(state: str, row: MatrixDefense, attack: str, config: AttackConfig, update: VictimUpdate,
          reconstructions: torch.Tensor, found: torch.Tensor, labels: torch.Tensor, seconds: float) -> Cell:
    scores = metrics.reconstruction_metrics(update.originals, reconstructions)
    recovered = None if config.labels == "known" else metrics.label_accuracy(found, labels)
    transformed = None if update.transformed is None else metrics.psnr(update.transformed, reconstructions)
    return Cell(state, row.label, attack, scores["ssim"], scores["psnr"], recovered, transformed, update.originals,
                reconstructions, seconds)


def describe_attack(attack: str, base: str = "ig", draws: int = 4, steps: int = 3, update_lr: float = 0.01) -> str:
    """One line per column: what it matches, how it optimises, which labels it uses."""
    if attack == "ignore":
        return f"{base} without the bottleneck's decoder and every later layer (paper 04's Ignore attack)"
    if attack == "eot":
        return f"{base} on every gradient, the dummy's gradient averaged over {draws} draws of the bottleneck's noise"
    if attack == "eot_ignore":
        return f"the Ignore attack with the dummy's gradient averaged over {draws} draws of the bottleneck's noise"
    if attack == UPDATE_ATTACK:
        return (f"IG on each victim's model update after {steps} local SGD steps (lr {update_lr:g}) on its image, "
                "the steps unrolled on the dummy (not on DP-SGD rows)")
    if attack == "topk_aware":
        return f"{base} with its dummy gradient compressed as the client's (top-k per tensor), on compression rows"
    if attack == "ats_aware":
        return (f"{base} through a differentiable copy of the row's policy, one restart per possible draw of its "
                "signs, the best match kept (ATS rows)")

    c = ATTACKS.get(attack)()
    labels = {"known": "known labels", "idlg": "labels recovered analytically (iDLG)",
              "joint": "labels optimised jointly (DLG)"}[c.labels]
    extra = (", label regulariser" if c.label_weight else "") + (f", TV {c.tv_weight:g}" if c.tv_weight else "")
    return f"{c.distance} distance, {c.optimizer} lr {c.lr:g}, {c.init} init, {labels}{extra}"


def describe_grid(params: MatrixParameters) -> str:
    """The rows (canonical spec: description) and columns of a run, deterministic text for the notebook."""
    lines = ["defenses:"] + [f"  {row.label}: {row.describe()}" for row in params.rows]
    lines += ["attacks:"] + [f"  {a}: {describe_attack(a, params.adaptive_base, params.eot_draws, params.update_steps, params.update_lr)}"
                             for a in params.attacks]
    lines.append("states: " + ", ".join(f"{s} (round {0 if s == 'untrained' else params.partial_rounds if s == 'partly trained' else params.rounds})"
                                        for s in params.states))
    return "\n".join(lines)


def utility_table(points: Sequence[dict[str, Any]]) -> str:
    """Markdown of :meth:`MatrixStudy.utility_points`, the Pareto-optimal defenses marked."""
    from fedrepro.papers.p06_plots import pareto_front

    front = {p["defense"] for p in pareto_front(points)}
    lines = ["| defense | accuracy (%) | worst-case SSIM | by | at | Pareto |", "|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: p["ssim"]):
        lines.append(f"| {p['defense']} | {p['accuracy']:.1f} | {p['ssim']:.3f} | {p['attack']} | {p['state']} | "
                     f"{'yes' if p['defense'] in front else ''} |")
    return "\n".join(lines)


# --- the study -----------------------------------------------------------------------------------

class MatrixStudy:
    """Trains every row once and attacks it with every column at every state; records every cell.

    ``data`` is loaded from the parameters when not given (tests pass a small in-memory one).
    """

    def __init__(self, params: MatrixParameters, report=None, data: FederatedData | None = None,
                 progress: bool | None = None) -> None:
        p = self.params = params
        self.report = report
        self.progress = (not os.environ.get("TQDM_DISABLE")) if progress is None else progress
        self.data = data if data is not None else load_federated(
            p.dataset, p.num_clients, p.seed, val_fraction=0.1, samples_per_client=p.samples_per_client,
            test_samples=p.test_samples, image_size=32, root=p.data_root)
        self.rows = p.rows
        self.victims = client_victims(self.data, p.victims, p.seed)
        self.mean, self.std = tuple(self.data.train.mean), tuple(self.data.train.std)
        self.trained: dict[str, TrainedDefense] = {}
        self.updates: dict[tuple[str, str, bool], VictimUpdate] = {}
        self.cells: dict[tuple[str, str, str], Cell | None] = {}
        self.log: list[str] = []

    @property
    def labels(self) -> list[str]:
        """The defenses' labels, in row order (the heatmaps' row names)."""
        return [row.label for row in self.rows]

    def describe(self) -> str:
        p = self.params
        return (f"{self.data.describe()}\n{len(self.rows)} defenses × {len(p.attacks)} attacks × {len(p.states)} "
                f"states; {p.victims} victims from client 0, {p.max_iterations} gradient evaluations per attack")

    # training
    def train(self, row: MatrixDefense) -> TrainedDefense:
        if row.label not in self.trained:
            p = self.params
            run = train_defense(row, p.model, self.data, p.fedavg_config(), p.partial_rounds, p.dp_delta,
                                progress=self.progress)
            self.trained[row.label] = run
            eps = "" if run.epsilon is None else f", ε = {run.epsilon:.3g} (δ = {p.dp_delta:g})"
            self.log.append(f"trained {row.label}: {run.accuracy:.1f}% after {p.rounds} rounds{eps}, {run.seconds:.0f} s")
            self._record(defense_key(row.label, "accuracy"), run.accuracy,
                         f"{row.describe()}: test accuracy (%) after {p.rounds} FedAvg rounds")
            if run.epsilon is not None:
                self._record(defense_key(row.label, "epsilon"), run.epsilon,
                             f"{row.describe()}: ε of the DP-SGD training (δ = {p.dp_delta:g})")
        return self.trained[row.label]

    def train_all(self) -> str:
        """Train every row; a Markdown table of accuracy, ε and training time."""
        runs = [self.train(row) for row in self.rows]
        lines = ["| defense | accuracy (%) | ε | training (s) |", "|---|---|---|---|"]
        for run in runs:
            eps = "—" if run.epsilon is None else f"{run.epsilon:.3g}"
            lines.append(f"| {run.row.describe()} | {run.accuracy:.1f} | {eps} | {run.seconds:.0f} |")
        return "\n".join(lines)

    def model(self, row: MatrixDefense, state: str) -> nn.Module:
        """The attacked global model. Untrained rows without a bottleneck share one object (the same
        weights), which lets :meth:`attack_state` stack them."""
        if state == "untrained" and not row.variational:
            return self.train(self.rows_by_kind("plain")[0]).states["untrained"]
        return self.train(row).states[state]

    def rows_by_kind(self, kind: str) -> list[MatrixDefense]:
        return [r for r in self.rows if (not r.variational) == (kind == "plain")]

    def update(self, row: MatrixDefense, state: str, local: bool = False) -> VictimUpdate:
        """What the row's victims send at ``state``: a gradient, or (``local``) a model update."""
        key = (state, row.label, local)
        if key not in self.updates:
            self.updates[key] = victim_update(self.model(row, state), row, self.victims, self.mean, self.std,
                                              self.params.seed, state,
                                              self.params.local_training() if local else None)
        return self.updates[key]

    # attacks
    def attack_state(self, state: str) -> list[Cell]:
        """Every (row, attack) cell at ``state``; rows sharing a model are attacked in one stacked run."""
        p = self.params
        started = time.perf_counter()
        found = []
        for attack in p.attacks:
            groups: dict[tuple[int, str | bool | None], list[MatrixDefense]] = {}
            for row in self.rows:  # a policy-aware attack models one policy: its rows are not stacked
                if (state, row.label, attack) not in self.cells:
                    kind = (row.policy if attack == "ats_aware" else
                            row.defense.kind == "dp" if attack == UPDATE_ATTACK else
                            row.defense.kind == "gc" if attack == "topk_aware" else None)
                    groups.setdefault((id(self.model(row, state)), kind), []).append(row)
            for rows in groups.values():
                found += self.attack_rows(state, attack, rows)
        done = [c for c in found if c is not None]
        self.log.append(f"{state}: {len(done)} cells attacked ({len(found) - len(done)} n/a) in "
                        f"{time.perf_counter() - started:.0f} s")
        return done

    def attack_rows(self, state: str, attack: str, rows: Sequence[MatrixDefense]) -> list[Cell | None]:
        """One attack on rows that share their model at ``state``, stacked into one batched run."""
        p = self.params
        model = self.model(rows[0], state)
        config = attack_config(attack, model, base=p.adaptive_base, max_iterations=p.max_iterations,
                               restarts=p.restarts, draws=p.eot_draws, row=rows[0])
        if config is None:
            for row in rows:
                self.cells[(state, row.label, attack)] = None
            return [None] * len(rows)
        updates = [self.update(row, state, local=attack == UPDATE_ATTACK) for row in rows]
        transform = (PolicyAwareTransform(rows[0].policy, self.mean, self.std)
                     if attack == "ats_aware" else None)
        images, labels, seconds = attack_stack(model, updates, self.victims.labels, config, self.mean, self.std,
                                               seed=p.seed, chunk_size=p.chunk_size, progress=self.progress,
                                               transform=transform)
        out = []
        for row, update, rec, found in zip(rows, updates, images, labels):
            cell = score(state, row, attack, config, update, rec, found, self.victims.labels, seconds / len(rows))
            self.cells[(state, row.label, attack)] = cell
            self.record(cell)
            out.append(cell)
        return out

    def run(self) -> list[Cell]:
        """Train every row and attack every cell."""
        self.train_all()
        return [cell for state in self.params.states for cell in self.attack_state(state)]

    # recording and reading
    def record(self, cell: Cell) -> None:
        for what, value in cell.measures().items():
            self._record(cell_key(cell.state, cell.defense, cell.attack, what), value,
                         f"{cell.state}, {cell.defense}, {cell.attack}: {what}")

    def _record(self, key: str, value: float, setting: str) -> None:
        if self.report is not None:
            self.report.measure(key, value, setting=setting)

    def cell(self, state: str, defense: str, attack: str) -> Cell | None:
        return self.cells.get((state, defense, attack))

    def best(self, state: str, defense: str) -> Cell | None:
        """The attack with the highest mean SSIM on ``defense`` at ``state`` (None if nothing ran)."""
        found = [c for a in self.params.attacks if (c := self.cell(state, defense, a)) is not None]
        return max(found, key=lambda c: c.ssim_mean) if found else None

    def worst_case(self, defense: str) -> Cell | None:
        """The best attack at the state where it does best: the row's privacy in the worst case."""
        found = [c for s in self.params.states if (c := self.best(s, defense)) is not None]
        return max(found, key=lambda c: c.ssim_mean) if found else None

    def worst_cases(self) -> list[Cell]:
        """:meth:`worst_case` of every row that was attacked, in row order."""
        return [c for row in self.rows if (c := self.worst_case(row.label)) is not None]

    def matrices(self, what: str = "ssim") -> dict[str, np.ndarray]:
        """:meth:`matrix` of every state."""
        return {state: self.matrix(state, what) for state in self.params.states}

    def matrix(self, state: str, what: str = "ssim") -> np.ndarray:
        """``(defenses, attacks)`` array of a measure at ``state``; NaN where the attack does not apply."""
        out = np.full((len(self.rows), len(self.params.attacks)), np.nan)
        for i, row in enumerate(self.rows):
            for j, attack in enumerate(self.params.attacks):
                cell = self.cell(state, row.label, attack)
                if cell is not None:
                    out[i, j] = cell.measures().get(what, np.nan)
        return out

    def tables(self) -> str:
        """Markdown: per state, mean SSIM ± std over victims per (defense, attack), best attack in bold,
        with each defense's accuracy."""
        p = self.params
        parts = []
        for state in p.states:
            head = ["defense", "accuracy (%)", *p.attacks]
            lines = [f"**{state}** (mean SSIM ± std over {p.victims} victims; bold: the best attack; n/a: the "
                     "column does not apply to this row: the base attack itself, no policy or compression to adapt to, or "
                     "DP-SGD for the model-update attack)", "",
                     "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for row in self.rows:
                best = self.best(state, row.label)
                cells = []
                for attack in p.attacks:
                    cell = self.cell(state, row.label, attack)
                    if cell is None:
                        cells.append("n/a")
                        continue
                    value = f"{cell.ssim_mean:.2f} ± {np.std(cell.ssim):.2f}"
                    cells.append(f"**{value}**" if best is cell else value)
                accuracy = self.trained[row.label].accuracy if row.label in self.trained else math.nan
                lines.append("| " + " | ".join([row.label, f"{accuracy:.1f}", *cells]) + " |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def utility_points(self) -> list[dict[str, Any]]:
        """Per row: accuracy, the worst-case (best attack, any state) mean SSIM, and that attack and state."""
        points = []
        for row in self.rows:
            worst = self.worst_case(row.label)
            if worst is None or row.label not in self.trained:
                continue
            points.append({"defense": row.label, "accuracy": self.trained[row.label].accuracy,
                           "ssim": worst.ssim_mean, "attack": worst.attack, "state": worst.state})
        return points

    def adaptive_gains(self) -> str:
        """Markdown: each adaptive attack against its non-adaptive counterpart, per bottleneck row and state,
        by the criterion of :mod:`fedrepro.claims` over the victims."""
        p = self.params
        rows = []
        for attack in [a for a in p.attacks if a in ADAPTIVE]:
            plain = COUNTERPART[attack] or p.adaptive_base
            for row in self.rows:
                for state in p.states:
                    a, b = self.cell(state, row.label, attack), self.cell(state, row.label, plain)
                    if a is None or b is None:
                        continue
                    comparison = claims.compare(a.ssim, b.ssim)
                    rows.append((f"{attack} beats {plain} ({row.label}, {state})", comparison.verdict,
                                 f"SSIM {a.ssim_mean:.3f} vs {b.ssim_mean:.3f}: {comparison.estimate()}"))
        if not rows:
            return "No adaptive attack ran beside its counterpart (it needs a PRECODE or CVB row and both columns)."
        return claims.verdict_table(rows, claim="adaptive attack vs its counterpart")

    def seconds(self) -> dict[str, float]:
        """Attack time per state (s) and training time in total."""
        out = {state: sum(c.seconds for (s, _, _), c in self.cells.items() if s == state and c is not None)
               for state in self.params.states}
        out["training"] = sum(run.seconds for run in self.trained.values())
        return out


__all__ = [
    "ADAPTIVE", "AWARE_ATTACKS", "BOTTLENECK_ATTACKS", "UPDATE_ATTACK", "COUNTERPART", "MEASURES", "Cell", "MatrixDefense", "MatrixParameters", "MatrixStudy", "STATES",
    "TrainedDefense", "VictimUpdate", "attack_config", "attack_names", "attack_stack", "cell_key", "defense_key",
    "describe_attack", "describe_grid", "utility_table",
    "gradient_presets", "row_trainer", "score", "state_key", "train_defense", "victim_update",
]
