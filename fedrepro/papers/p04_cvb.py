"""Paper 04 (Scheliga et al., *Privacy Preserving FL with Convolutional Variational Bottlenecks*).

Everything notebook 04 runs, so that a test can reach it:

* :class:`Defense` — one defense as a short spec string (``"none"``, ``"precode:P3"``, ``"cvb:k3"``,
  ``"dp:sigma0.01"``, ``"gc:p0.99"``), its canonical label, its model or gradient part;
* :func:`train_model` — FedAvg of a (defended) model with paper 04's protocol; gradient defenses
  (DP, gradient compression) are applied to every local step (``StandardTrainer(gradient_transform=
  DefendedStep(...))``, the step's gradient is the one the client would share);
* :func:`privacy_leakage` — victims compute their shared gradient (one training step on one image,
  with the defense), the server runs IG or the Ignore attack, SSIM / ASR per victim;
* :func:`ignored_parameters` — the gradient subsets of Table I (decoder only, classifier only,
  after the decoder, decoder and everything after = the Ignore attack);
* :class:`Study` — trains and attacks each (dataset, model, defense) once, whichever table asks,
  and records every number in a :class:`fedrepro.results.Report` under the keys of
  ``fedrepro/paper_results/04.yaml``; :func:`paper_table` prints a table beside the paper's.

Decisions (the paper leaves them open):

* **Which model is attacked** (``attack_state``). Section V-B computes the victim gradient "by
  performing a single training step" on the victim data, without saying on which model state. The
  public code's attack configs carry ``ckpt: 0`` and its demo attacks a freshly built model, and the
  paper aims at "an upper bound for privacy leakage", which untrained models give (their gradients
  are largest). Default ``"initial"``: the global model of round 0, the very weights FedAvg starts
  from (same seed); ``"trained"`` attacks the final FedAvg model instead.
* **Labels** are known to the attacker for every attack (Sec. V-B: "we assume label information to
  be generally known irrespective of the defense"), so iDLG and CPL run with the true label.
* **Attacks.** IG and Ignore use the ``ig_cvb`` preset (the paper's Sec. V-B settings). iDLG and CPL
  follow the public code's configs (L-BFGS lr 0.01, L2, plateau ×0.1 after 40 steps, stop after 400
  without progress, 2,000 steps of up to 20 evaluations; CPL's label regulariser weight 0.01);
  ``lbfgs_iterations`` caps their evaluations in small tiers.
* **Ignore for the CVB/PRECODE**: the gradients of the (first) bottleneck's decoder and of every
  later layer are dropped (the public code's ``ignore_gradient_layers``), for every attack.
* **Accuracy** is the test accuracy of the global model in the round with the lowest mean client
  validation loss (the model early stopping keeps). Variational bottlenecks pass μ at test time.
* **DP training** uses the same DP-SGD step as the victim (per-sample clipping to C, Gaussian noise
  σ·C, mean over the batch; :class:`fedrepro.defenses.DPSGD`) inside FedAvg's local steps, with a
  fixed batch order instead of opacus' Poisson sampling; no privacy accounting (the paper reports
  none). Gradient compression prunes each local step's gradient per layer.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedrepro import metrics
from fedrepro.attacks import ATTACKS, AttackConfig, DefendedStep, ServerView, client_update, run_attack
from fedrepro.attacks.ignore import IGNORE, default_ignore, ignored_parameters, matched_layers
from fedrepro.attacks.presets import LBFGS_INNER
from fedrepro.attacks.victims import pick_victims
from fedrepro.data import FederatedData, load_federated
from fedrepro.defenses.spec import Defense, format_value
from fedrepro.defenses.variational import bottlenecks, decoder_name
from fedrepro.fl import FedAvgConfig, FedAvgResult, StandardTrainer, run_fedavg
from fedrepro.models import build_model, count_parameters
from fedrepro.runtime import derive_seed, generator, get_device

# --- defended models ----------------------------------------------------------------------------

def build_defended_model(model_name: str, defense: str | Defense, in_channels: int = 3, num_classes: int = 10,
                         image_size: int = 32, seed: int = 0) -> nn.Module:
    """A fresh model with the defense's bottleneck(s); the base weights depend only on ``seed`` and the
    model name, so every defense of a table starts from the same base network."""
    defense = Defense.parse(defense)
    torch.manual_seed(derive_seed(seed, "model-init", model_name))
    model = build_model(model_name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return defense.apply(model, (in_channels, image_size, image_size))


def parameter_row(model_name: str, defense: str | Defense, in_channels: int = 3, num_classes: int = 10,
                  image_size: int = 32) -> dict[str, Any]:
    """Trainable parameters of the defended model and what the defense adds (absolute and % of the base)."""
    base = count_parameters(build_model(model_name, in_channels=in_channels, num_classes=num_classes,
                                        image_size=image_size))
    total = count_parameters(build_defended_model(model_name, defense, in_channels, num_classes, image_size))
    return {"defense": Defense.parse(defense).label, "parameters": total, "added": total - base,
            "percent": 100.0 * (total - base) / base}


# --- FedAvg with the defense -------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A FedAvg run of one (dataset, model, defense): the round-0 and the trained global model."""

    dataset: str
    model_name: str
    defense: Defense
    initial: nn.Module
    model: nn.Module
    result: FedAvgResult

    @property
    def accuracy(self) -> float:
        """Test accuracy (%) in the round with the lowest mean client validation loss."""
        return 100.0 * self.result.best_accuracy

    @property
    def rounds(self) -> int:
        return len(self.result.history)


def train_model(model_name: str, defense: str | Defense, data: FederatedData, config: FedAvgConfig,
                seed: int | None = None, progress: bool = True) -> TrainedModel:
    """FedAvg of the defended model on ``data`` (paper 04's protocol when ``config`` has its defaults)."""
    defense = Defense.parse(defense)
    seed = config.seed if seed is None else seed
    model = build_defended_model(model_name, defense, data.train.channels, data.train.num_classes,
                                 data.train.image_size, seed)
    initial = copy.deepcopy(model)
    gradient = defense.gradient_defense()
    trainer = StandardTrainer(gradient_transform=DefendedStep(gradient)) if gradient is not None else None
    result = run_fedavg(model, data.train, data.test, data.splits, config, trainer=trainer, progress=progress)
    return TrainedModel(data.train.name, model_name, defense, initial, result.model, result)


# --- the attacks ------------------------------------------------------------------------------

ATTACK_NAMES = ("ig", "idlg", "cpl")


def attack_config(attack: str, max_iterations: int | None = None, lbfgs_iterations: int | None = None,
                  tv_weight: float | None = None) -> AttackConfig:
    """Paper 04's IG (Sec. V-B) and its public code's iDLG / CPL, all with the true labels.

    ``max_iterations`` caps IG (the paper: 20,000); ``lbfgs_iterations`` caps the gradient evaluations
    of iDLG and CPL (the paper's code: 2,000 L-BFGS steps of up to 20 evaluations each).
    """
    if attack == "ig":
        config = ATTACKS.get("ig_cvb")()
        changes: dict[str, Any] = {}
        if max_iterations is not None:
            changes["max_iterations"] = max_iterations
        if tv_weight is not None:
            changes["tv_weight"] = tv_weight
        return config.replace(**changes)
    if attack not in ("idlg", "cpl"):
        raise ValueError(f"attack={attack!r}; choose one of {', '.join(ATTACK_NAMES)}")
    evaluations = lbfgs_iterations if lbfgs_iterations is not None else 2_000 * LBFGS_INNER
    config = ATTACKS.get(attack)(
        lr=0.01, max_iterations=evaluations, labels="known", schedule="plateau", plateau_patience=40 * LBFGS_INNER,
        stop_patience=400 * LBFGS_INNER, stop_loss=1e-5, init="gaussian",
        source=f"paper 04's public {attack} config: L-BFGS lr 0.01, L2, ×0.1 after 40 steps without progress, "
               "stop after 400, 2,000 steps of up to 20 evaluations; true labels")
    if attack == "idlg":
        return config.replace(boxed=True)  # its config clips the dummies; CPL's does not
    return config.replace(label_weight=0.01)


@dataclass
class Victims:
    """The victims of one dataset: indices into the training set, normalised images, labels, [0, 1] originals."""

    dataset: str
    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    originals: torch.Tensor


def client_victims(data: FederatedData, count: int, seed: int, client: int = 0) -> Victims:
    """``count`` images drawn at random from one client's training split (paper 04, Sec. V-B)."""
    if count > len(data.splits[client].train):
        raise ValueError(f"client {client} holds {len(data.splits[client].train)} training images, "
                         f"fewer than {count} victims")
    chosen = pick_victims(data.train, count, seed, "random", pool=data.splits[client].train)
    raw = data.train.images[chosen]
    return Victims(data.train.name, chosen, data.train.normalize(raw), data.train.labels[chosen], raw.float() / 255.0)


@dataclass
class Leakage:
    """Per-victim reconstruction quality of one attack on one model."""

    setting: str
    attack: str
    ignore: str
    ssim: np.ndarray
    psnr: np.ndarray
    mse: np.ndarray
    originals: torch.Tensor
    reconstructions: torch.Tensor
    iterations: torch.Tensor
    seconds: float

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def ssim_std(self) -> float:
        return float(np.std(self.ssim))

    @property
    def asr(self) -> float:
        """Attack success rate in %: victims reconstructed with SSIM >= 0.5."""
        return 100.0 * metrics.attack_success_rate(self.ssim)

    def summary(self) -> str:
        return (f"{self.setting}, {self.attack} (dropped: {self.ignore}): SSIM {self.ssim_mean:.2f} ± {self.ssim_std:.2f}, "
                f"ASR {self.asr:.1f}% over {len(self.ssim)} victims, {float(self.iterations.float().mean()):.0f} "
                f"iterations on average, {self.seconds:.0f} s")


def victim_update(model: nn.Module, victims: Victims, defense: Defense, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each victim's shared gradient: one training step on its own image (training mode, so a variational
    bottleneck samples and its KL term is in the loss), after the defense's gradient part."""
    model.train()
    device = next(model.parameters()).device
    g = generator(seed, "victim-defense", defense.label)
    return client_update(model, victims.images.to(device), victims.labels.to(device), images_per_victim=1,
                         defense=defense.gradient_defense(), generator=g)


def privacy_leakage(model: nn.Module, victims: Victims, mean: Sequence[float], std: Sequence[float], *,
                    defense: str | Defense = "none", attack: str = "ig", ignore: str = "auto",
                    max_iterations: int | None = None, lbfgs_iterations: int | None = None,
                    tv_weight: float | None = None, seed: int = 0, chunk_size: int | None = None,
                    progress: bool = True, setting: str | None = None) -> Leakage:
    """Attack every victim of ``model`` independently; SSIM etc. per victim on [0, 1] images.

    ``ignore="auto"`` drops the decoder-and-after gradients of a model with a variational bottleneck
    (the Ignore attack) and nothing otherwise. ``defense`` contributes only its gradient part here
    (the model must already carry a model defense).
    """
    defense = Defense.parse(defense)
    ignore = default_ignore(model) if ignore == "auto" else ignore
    update = victim_update(model, victims, defense, seed)
    view = ServerView(model, update, num_images=1, image_shape=tuple(victims.images.shape[1:]), mean=tuple(mean),
                      std=tuple(std), labels=victims.labels.to(next(model.parameters()).device)[:, None])
    config = attack_config(attack, max_iterations, lbfgs_iterations, tv_weight).replace(
        layers=matched_layers(model, ignore))
    started = time.perf_counter()
    result = run_attack(view, config, seed=seed, chunk_size=chunk_size, progress=progress)
    seconds = time.perf_counter() - started
    reconstructions = result.denormalized().cpu()
    found = metrics.reconstruction_metrics(victims.originals, reconstructions)
    return Leakage(setting or defense.label, attack, ignore, found["ssim"], found["psnr"], found["mse"],
                   victims.originals, reconstructions, result.iterations.cpu(), seconds)


def gradient_stochasticity(model: nn.Module, image: torch.Tensor, label: torch.Tensor | int, draws: int = 16,
                           seed: int = 0) -> dict[str, float]:
    """Section III's analysis in one number per parameter tensor: the mean pairwise cosine similarity of
    ``draws`` victim gradients of the *same* image (one training step each, fresh bottleneck noise).

    1 means the layer's gradient is deterministic; low values mark the stochastic gradients the Ignore
    attack drops. ``image`` is one normalised image (C, H, W).
    """
    device = next(model.parameters()).device
    x = image.to(device).reshape(-1, *image.shape[-3:])[:1].repeat(draws, 1, 1, 1)
    y = torch.as_tensor(label, device=device).reshape(1).repeat(draws)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grads = client_update(model, x, y, images_per_victim=1)
    out = {}
    for name, g in grads.items():
        flat = torch.nn.functional.normalize(g.flatten(1).double(), dim=1)
        similarity = flat @ flat.T
        out[name] = float((similarity.sum() - similarity.diagonal().sum()) / (draws * (draws - 1)))
    return out


# --- keys of the numbers -----------------------------------------------------------------------

def result_key(dataset: str, model_name: str, defense: str | Defense, what: str, attack: str | None = None,
               ignore: str | None = None) -> str:
    """Key of a number in ``paper_results/04.yaml``: ``<dataset>/<model>/<defense>[/<attack>]/<what>``.

    ``attack`` is ``ig`` / ``idlg`` / ``cpl`` under the default gradient subset (IG on undefended
    models, Ignore on variational ones); an explicit Table I subset appends ``-ignore-<subset>``.
    """
    label = Defense.parse(defense).label
    parts = [dataset, model_name, label]
    if attack is not None:
        parts.append(attack if ignore in (None, "auto") else f"{attack}-ignore-{ignore}")
    return "/".join(parts + [what])


def parameter_key(model_name: str, defense: str | Defense, what: str = "parameters") -> str:
    """``cnn/parameters`` for the base model, ``cnn/<defense>/parameters`` or ``.../added_percent``."""
    label = Defense.parse(defense).label
    return f"{model_name}/{what}" if label == "none" else f"{model_name}/{label}/{what}"


# --- a study: each setting trained and attacked once --------------------------------------------

@dataclass
class StudyConfig:
    """Everything a tier changes. Defaults are paper 04's protocol (Sec. V)."""

    rounds: int = 300
    patience: int | None = 40
    num_clients: int = 10
    val_fraction: float = 0.1
    samples_per_client: int | None = None
    test_samples: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    victims: int = 128
    victim_client: int = 0
    max_iterations: int = 20_000
    lbfgs_iterations: int | None = None
    tv_weight: float = 0.01
    attack_state: str = "initial"
    seed: int = 0
    accuracy_seeds: tuple[int, ...] = ()
    device: str = "auto"
    data_root: str | None = None
    chunk_size: int | None = None
    workers: int | None = None
    progress: bool | None = None  # None: progress bars unless $TQDM_DISABLE is set

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = not os.environ.get("TQDM_DISABLE")
        if self.attack_state not in ("initial", "trained"):
            raise ValueError(f"attack_state must be 'initial' or 'trained', got {self.attack_state!r}")


class Study:
    """Trains and attacks each (dataset, model, defense) once, whichever table asks for it.

    With ``attack_state="initial"`` an attack needs no training (the attacked model is the round-0
    global model, rebuilt from the seed); accuracy needs a FedAvg run. Every number goes into
    ``report`` (if given) under :func:`result_key`.
    """

    def __init__(self, config: StudyConfig, report=None, tier: str = "") -> None:
        self.config, self.report, self.tier = config, report, tier
        self._data: dict[str, FederatedData] = {}
        self._victims: dict[str, Victims] = {}
        self._trained: dict[tuple, TrainedModel] = {}
        self._leakage: dict[tuple, Leakage] = {}
        self.log: list[str] = []

    # data and models
    def data(self, dataset: str) -> FederatedData:
        if dataset not in self._data:
            c = self.config
            self._data[dataset] = load_federated(dataset, c.num_clients, c.seed, val_fraction=c.val_fraction,
                                                 samples_per_client=c.samples_per_client,
                                                 test_samples=c.test_samples, image_size=32, root=c.data_root)
        return self._data[dataset]

    def victims(self, dataset: str) -> Victims:
        if dataset not in self._victims:
            self._victims[dataset] = client_victims(self.data(dataset), self.config.victims, self.config.seed,
                                                  self.config.victim_client)
        return self._victims[dataset]

    def fedavg_config(self) -> FedAvgConfig:
        c = self.config
        return FedAvgConfig(rounds=c.rounds, local_epochs=1, optimizer="adam", lr=c.lr, batch_size=c.batch_size,
                            patience=c.patience, seed=c.seed, device=c.device, workers=c.workers)

    def initial_model(self, dataset: str, model_name: str, defense: str | Defense) -> nn.Module:
        train = self.data(dataset).train
        model = build_defended_model(model_name, defense, train.channels, train.num_classes, train.image_size,
                                     self.config.seed)
        return model.to(get_device(self.config.device))

    def trained(self, dataset: str, model_name: str, defense: str | Defense, seed: int | None = None) -> TrainedModel:
        """The FedAvg run of a setting (``seed`` defaults to the study's; extra seeds only vary the model's
        initialisation and the batch order, not the data split or the victims)."""
        defense = Defense.parse(defense)
        seed = self.config.seed if seed is None else seed
        key = (dataset, model_name, defense.label, seed)
        if key not in self._trained:
            config = dataclasses.replace(self.fedavg_config(), seed=seed)
            run = train_model(model_name, defense, self.data(dataset), config, seed, progress=self.config.progress)
            self._trained[key] = run
            self.log.append(f"trained {dataset}/{model_name}/{defense.label} (seed {seed}): {run.accuracy:.2f}% after "
                            f"{run.rounds} rounds (best round {run.result.best_round}), {run.result.seconds:.0f} s")
        return self._trained[key]

    def accuracy(self, dataset: str, model_name: str, defense: str | Defense) -> tuple[float, float]:
        """Mean and standard deviation of the test accuracy (%) over the study's seed and ``accuracy_seeds``."""
        defense = Defense.parse(defense)
        seeds = [self.config.seed] + [s for s in self.config.accuracy_seeds if s != self.config.seed]
        values = [self.trained(dataset, model_name, defense, s).accuracy for s in seeds]
        mean, std = float(np.mean(values)), float(np.std(values))
        rounds = self.trained(dataset, model_name, defense).rounds
        self._record(result_key(dataset, model_name, defense, "accuracy"), mean,
                     f"{dataset} {model_name}, {defense.describe()}: test accuracy (%), {rounds} rounds"
                     + (f", mean of {len(seeds)} seeds" if len(seeds) > 1 else ""))
        return mean, std

    def attacked_model(self, dataset: str, model_name: str, defense: str | Defense) -> nn.Module:
        if self.config.attack_state == "trained":
            return self.trained(dataset, model_name, defense).model
        return self.initial_model(dataset, model_name, defense)

    def leakage(self, dataset: str, model_name: str, defense: str | Defense, attack: str = "ig",
                ignore: str = "auto") -> Leakage:
        """The attack of a setting, run once per gradient subset (``auto`` and the subset it stands for share
        one run). Recorded under the default key (``.../ig/ssim``) when the subset is the paper's default for
        the model, and under ``.../ig-ignore-<subset>/...`` when a subset is asked for explicitly."""
        defense = Defense.parse(defense)
        model = self.attacked_model(dataset, model_name, defense)
        default = default_ignore(model)
        resolved = default if ignore == "auto" else ignore
        key = (dataset, model_name, defense.label, attack, resolved)
        if key not in self._leakage:
            data = self.data(dataset).train
            c = self.config
            found = privacy_leakage(model, self.victims(dataset), data.mean, data.std, defense=defense, attack=attack,
                                    ignore=resolved, max_iterations=c.max_iterations,
                                    lbfgs_iterations=c.lbfgs_iterations, tv_weight=c.tv_weight, seed=c.seed,
                                    chunk_size=c.chunk_size, progress=c.progress,
                                    setting=f"{dataset}/{model_name}/{defense.label}")
            self._leakage[key] = found
            self.log.append(found.summary())
        found = self._leakage[key]
        short = attack.upper() if attack != "ig" else "IG"
        what = {"none": short, "decoder_and_after": f"{short} (Ignore: decoder and after dropped)"}.get(
            resolved, f"{short} without the {resolved.replace('_', ' ')} gradients")
        name = f"{dataset} {model_name}, {defense.describe()}, {what}"
        for explicit in ([None] if resolved == default else []) + ([ignore] if ignore != "auto" else []):
            self._record(result_key(dataset, model_name, defense, "ssim", attack, explicit), found.ssim_mean,
                         f"{name}: mean SSIM")
            self._record(result_key(dataset, model_name, defense, "asr", attack, explicit), found.asr, f"{name}: ASR (%)")
        return found

    def parameters(self, model_name: str, defense: str | Defense, dataset: str = "cifar10") -> dict[str, Any]:
        train = self.data(dataset).train if dataset in self._data else None
        channels = train.channels if train is not None else (1 if dataset == "mnist" else 3)
        row = parameter_row(model_name, defense, channels)
        if dataset == "cifar10":
            self._record(parameter_key(model_name, defense), row["parameters"], f"{model_name} + {row['defense']}: parameters")
            if row["defense"] != "none":
                self._record(parameter_key(model_name, defense, "added_percent"), row["percent"],
                             f"{model_name} + {row['defense']}: added parameters (%)")
        return row

    def _record(self, key: str, value: float, setting: str) -> None:
        if self.report is not None and key not in self.report.metrics:
            self.report.measure(key, value, setting=setting)

    # rows for tables and plots
    def row(self, dataset: str, model_name: str, defense: str | Defense, attack: str = "ig", ignore: str = "auto",
            accuracy: bool = True, privacy: bool = True, label: str | None = None) -> dict[str, Any]:
        """One table row: privacy (mean/std SSIM, ASR) and/or accuracy of a setting, with its keys."""
        defense = Defense.parse(defense)
        row: dict[str, Any] = {"label": label or defense.label, "dataset": dataset, "model": model_name,
                               "defense": defense.label, "attack": attack, "ignore": ignore}
        if privacy:
            found = self.leakage(dataset, model_name, defense, attack, ignore)
            explicit = None if ignore == "auto" else ignore
            row.update(ssim=found.ssim_mean, ssim_std=found.ssim_std, asr=found.asr,
                       ssim_key=result_key(dataset, model_name, defense, "ssim", attack, explicit),
                       asr_key=result_key(dataset, model_name, defense, "asr", attack, explicit))
        if accuracy:
            mean, std = self.accuracy(dataset, model_name, defense)
            row.update(accuracy=mean, accuracy_std=std, accuracy_key=result_key(dataset, model_name, defense, "accuracy"))
        return row


def paper_table(rows: Iterable[Mapping[str, Any]], report, tier: str, title: str = "",
                columns: Sequence[str] = ("ssim", "asr", "accuracy")) -> str:
    """A markdown table: each measured column beside the paper's value for the same key, with the tier."""
    names = {"ssim": "SSIM ↓", "asr": "ASR [%] ↓", "accuracy": "accuracy [%] ↑", "parameters": "parameters"}
    head = ["setting"]
    for column in columns:
        head += [f"{names.get(column, column)} ours", "paper"]
    head.append("tier")
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["label"])]
        for column in columns:
            value = row.get(column)
            paper = report.reported(row[f"{column}_key"]) if f"{column}_key" in row and report is not None else None
            if column == "ssim" and value is not None:
                ours = f"{value:.2f} ± {row.get('ssim_std', 0):.2f}"
            elif column == "parameters" and value is not None:
                ours = f"{int(value):,}"
            else:
                ours = "—" if value is None else f"{value:.2f}"
            cells += [ours, "—" if paper is None else (f"{int(paper):,}" if column == "parameters" else f"{paper:g}")]
        cells.append(tier)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claim_check(none: Mapping[str, Any], cvb: Mapping[str, Any], accuracy_tolerance: float = 5.0) -> list[str]:
    """The paper's central claim on one dataset, checked on measured rows (no defense vs CVB)."""
    lines = []
    if "ssim" in none and "ssim" in cvb:
        lines.append(f"{'✔' if none['ssim'] >= 0.5 else '✘'} without defense the attack succeeds: SSIM "
                     f"{none['ssim']:.2f}, ASR {none['asr']:.1f}% (paper: high SSIM, ASR ≈ 97–100%)")
        lines.append(f"{'✔' if cvb['ssim'] < 0.5 and cvb['asr'] <= 10 else '✘'} with the CVB the Ignore attack fails: "
                     f"SSIM {cvb['ssim']:.2f}, ASR {cvb['asr']:.1f}% (paper: SSIM ≈ 0.2–0.3, ASR ≈ 0%)")
    if "accuracy" in none and "accuracy" in cvb:
        gap = cvb["accuracy"] - none["accuracy"]
        lines.append(f"{'✔' if gap >= -accuracy_tolerance else '✘'} at similar accuracy: {cvb['accuracy']:.2f}% with "
                     f"the CVB vs {none['accuracy']:.2f}% without ({gap:+.2f} points; paper: +0.05 to +4.64)")
    return lines


# --- the paper's tables as lists of settings ---------------------------------------------------

#: Notebook 04's sections, for its ``tables`` parameter.
TABLES = ("I", "II", "III", "IV", "V", "VI", "fig9")

TABLE_I = {"precode:P3": ("none", "decoder", "classifier", "decoder_and_after"),
           "precode:P2": ("none", "decoder", "classifier", "after_decoder", "decoder_and_after")}
"""Table I: which gradients are dropped, per PRECODE position. Our copy of the paper lost the table's
check marks; the rows are read from the text ("ignore only the gradients of the PRECODE decoder or the
classifier"; "the decoder and all subsequent layers") and its counts of rows: 4 at P = 3, 5 at P = 2."""

TABLE_II = ("none", "precode:P3", "precode:P2", "precode:P1")
TABLE_IV = ("none", "dp:sigma1", "dp:sigma0.1", "dp:sigma0.01", "dp:sigma0.001", "gc:p0.9", "gc:p0.99",
            "precode:P1,K32,beta0.01", "precode:P1,K64,beta0.01", "precode:P1,K128,beta0.01",
            "precode:P1,K256,beta0.01", "precode:P1,K512,beta0.01", "cvb")
TABLE_V = {"cnn": "cvb", "resnet18": "cvb:beta5e-05", "vit": "cvb:k3"}
"""Sec. VI-D: the CVB per architecture (ResNet-18: after the first stage, k_E = 5, K_E = 32, β = 5e-5;
ViT: after the first block, k_E = 3, K_E = 32, β = 0.1)."""
TABLE_VI = {"pneumoniamnist": "cvb:beta0.001", "dermamnist": "cvb:k3", "retinamnist": "cvb:k3,beta0.001",
            "bloodmnist": "cvb"}
"""Sec. VI-E: (k_E, β) per MedMNIST dataset, s_E = ½, P = 1."""

FIGURE_9 = {
    "P": ("position P (k_E = 1)", [("1", "cvb:k1"), ("2", "cvb:P2,k1"), ("3", "cvb:P3,k1"), ("1,2", "cvb:P1+2,k1"),
                                    ("1,3", "cvb:P1+3,k1"), ("2,3", "cvb:P2+3,k1"), ("1,2,3", "cvb:P1+2+3,k1")]),
    "k": ("kernel size k_E", [("1", "cvb:k1"), ("3", "cvb:k3"), ("5", "cvb"), ("7", "cvb:k7")]),
    "s": ("bottleneck scale s_E", [("1/16", "cvb:s0.0625"), ("1/4", "cvb:s0.25"), ("1/2", "cvb"), ("1", "cvb:s1"),
                                   ("2", "cvb:s2"), ("4", "cvb:s4")]),
    "beta": ("weight β", [("1e-5", "cvb:beta1e-05"), ("1e-4", "cvb:beta0.0001"), ("1e-3", "cvb:beta0.001"),
                          ("1e-2", "cvb:beta0.01"), ("1e-1", "cvb")]),
}
"""Sec. VI-A: each panel varies one hyper-parameter of the CVB in the CIFAR-10 CNN; the others are P = 1,
k_E = 5, s_E = ½, β = 0.1, except the position sweep, which uses k_E = 1."""


def table_i(study: Study, dataset: str = "cifar10", subsets: Mapping[str, Sequence[str]] = TABLE_I) -> list[dict]:
    rows = [study.row(dataset, "cnn", "none", accuracy=False, label="CNN, IG (all gradients)")]
    for defense, ignores in subsets.items():
        for ignore in ignores:
            text = "IG (all gradients)" if ignore == "none" else f"dropping {ignore.replace('_', ' ')}"
            position = format_value(Defense.parse(defense)["P"]) if Defense.parse(defense).kind == "precode" else "?"
            rows.append(study.row(dataset, "cnn", defense, ignore=ignore, accuracy=False,
                                  label=f"PRECODE P = {position}: {text}"))
    return rows


def table_ii(study: Study, dataset: str = "cifar10", defenses: Sequence[str] = TABLE_II, accuracy: bool = True,
             extra: Sequence[str] = ("cvb",)) -> list[dict]:
    """Table II's rows (privacy, accuracy, parameters), plus ``extra`` settings for comparison."""
    rows = []
    for defense in list(defenses) + list(extra):
        row = study.row(dataset, "cnn", defense, accuracy=accuracy, label=Defense.parse(defense).describe())
        params = study.parameters("cnn", defense, dataset)
        row.update(parameters=params["parameters"], added_percent=params["percent"],
                   parameters_key=parameter_key("cnn", defense))
        rows.append(row)
    return rows


def table_iii(study: Study, datasets: Sequence[str] = ("mnist", "cifar10"), attacks: Sequence[str] = ("idlg", "cpl", "ig"),
              defenses: Sequence[str] = ("none", "cvb")) -> list[dict]:
    return [study.row(dataset, "cnn", defense, attack=attack, accuracy=False,
                      label=f"{dataset}, {'CVB' if defense != 'none' else 'none'}, {attack.upper() if attack != 'ig' else 'IG'}")
            for dataset in datasets for defense in defenses for attack in attacks]


def table_iv(study: Study, datasets: Sequence[str] = ("mnist", "cifar10"), defenses: Sequence[str] = TABLE_IV) -> list[dict]:
    return [study.row(dataset, "cnn", defense, label=f"{dataset}, {Defense.parse(defense).describe()}")
            for dataset in datasets for defense in defenses]


def table_v(study: Study, datasets: Sequence[str] = ("mnist", "cifar10"), models: Mapping[str, str] = TABLE_V) -> list[dict]:
    return [study.row(dataset, model, defense, label=f"{dataset}, {model}, {'none' if defense == 'none' else defense}")
            for dataset in datasets for model, cvb in models.items() for defense in ("none", cvb)]


def table_vi(study: Study, datasets: Mapping[str, str] = TABLE_VI) -> list[dict]:
    """Table VI's rows. Every MedMNIST dataset is loaded first, so a missing one fails at once, with
    :class:`fedrepro.data.DatasetNotFoundError`'s message on how to provide it, before any training."""
    for dataset in datasets:
        study.data(dataset)
    return [study.row(dataset, "cnn", defense, label=f"{dataset}, {defense}")
            for dataset, cvb in datasets.items() for defense in ("none", cvb)]


def figure_9(study: Study, panels: Sequence[str] = tuple(FIGURE_9), dataset: str = "cifar10") -> dict[str, list[dict]]:
    """Figure 9's panels as rows (x tick label, accuracy, SSIM) for :func:`cvb_plots.plot_hyperparameter_study`."""
    out = {}
    for name in panels:
        title, settings = FIGURE_9[name]
        out[title] = [study.row(dataset, "cnn", defense, label=tick) for tick, defense in settings]
    return out


def scatter_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Settings for Figure 11: no defense or a CVB, with accuracy and the default attack's SSIM, each once."""
    seen, out = set(), []
    for row in rows:
        key = (row["dataset"], row["model"], row["defense"])
        if ("accuracy" not in row or "ssim" not in row or row.get("attack") != "ig" or row.get("ignore") != "auto"
                or not (row["defense"] == "none" or row["defense"].startswith("cvb")) or key in seen):
            continue
        seen.add(key)
        out.append({**row, "label": "/".join(key)})
    return out
