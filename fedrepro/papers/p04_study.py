"""Paper 04's study: each (dataset, model, defense) trained and attacked once, whichever table asks, and
every number recorded under the keys of ``fedrepro/paper_results/04.yaml``.

Keys: ``<dataset>/<model>/<defense>/accuracy``, ``<dataset>/<model>/<defense>/<attack>/{ssim,asr}`` (``ig`` =
IG on undefended models, the Ignore attack on PRECODE/CVB models; ``ig-ignore-<subset>`` = Table I's
gradient subsets), ``<model>/<defense>/{parameters,added_percent}``, ``<defense>`` as a
:class:`~fedrepro.defenses.spec.Defense` label, and ``claim/<name>`` (the share of a claim's checks that our
numbers confirm, :func:`~fedrepro.papers.p04_tables.claim_checks`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedrepro.attacks.ignore import IGNORE, default_ignore
from fedrepro.data import FederatedData, load_federated
from fedrepro.defenses.spec import Defense
from fedrepro.fl import FedAvgConfig
from fedrepro.papers.p04_leakage import Leakage, Victims, client_victims, privacy_leakage
from fedrepro.papers.p04_training import DefendedRun, build_defended_model, parameter_row, train_model
from fedrepro.runtime import get_device
from fedrepro.validation import choice


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


ATTACK_STATES = ("initial", "trained")  # the round-0 global model, or the trained one


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
    batched_clients: bool = False  # where a run allows it (fedrepro.batched_clients); the others train sequentially
    progress: bool | None = None  # None: progress bars unless $TQDM_DISABLE is set

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = not os.environ.get("TQDM_DISABLE")
        choice("attack_state", self.attack_state, ATTACK_STATES)


class CVBStudy:
    """Trains and attacks each (dataset, model, defense) once, whichever table asks for it.

    With ``attack_state="initial"`` an attack needs no training (the attacked model is the round-0
    global model, rebuilt from the seed); accuracy needs a FedAvg run. Every number goes into
    ``report`` (if given) under :func:`result_key`.
    """

    def __init__(self, config: StudyConfig, report=None, tier: str = "") -> None:
        self.config, self.report, self.tier = config, report, tier
        self._data: dict[str, FederatedData] = {}
        self._victims: dict[str, Victims] = {}
        self._trained: dict[tuple, DefendedRun] = {}
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
                            patience=c.patience, seed=c.seed, device=c.device, workers=c.workers,
                            batched_clients=c.batched_clients)

    def initial_model(self, dataset: str, model_name: str, defense: str | Defense) -> nn.Module:
        train = self.data(dataset).train
        model = build_defended_model(model_name, defense, train.channels, train.num_classes, train.image_size,
                                     self.config.seed)
        return model.to(get_device(self.config.device))

    def trained(self, dataset: str, model_name: str, defense: str | Defense, seed: int | None = None) -> DefendedRun:
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

    def accuracies(self, dataset: str, model_name: str, defense: str | Defense) -> list[float]:
        """The test accuracy (%) for the study's seed and each of ``accuracy_seeds``: the claim checks'
        spread over seeds."""
        defense = Defense.parse(defense)
        seeds = [self.config.seed] + [s for s in self.config.accuracy_seeds if s != self.config.seed]
        return [self.trained(dataset, model_name, defense, s).accuracy for s in seeds]

    def accuracy(self, dataset: str, model_name: str, defense: str | Defense) -> tuple[float, float]:
        """Mean and standard deviation of the test accuracy (%) over the study's seed and ``accuracy_seeds``."""
        defense = Defense.parse(defense)
        values = self.accuracies(dataset, model_name, defense)
        mean, std = float(np.mean(values)), float(np.std(values))
        rounds = self.trained(dataset, model_name, defense).rounds
        self._record(result_key(dataset, model_name, defense, "accuracy"), mean,
                     f"{dataset} {model_name}, {defense.describe()}: test accuracy (%), {rounds} rounds"
                     + (f", mean of {len(values)} seeds" if len(values) > 1 else ""))
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
            resolved, f"{short} without the {IGNORE[resolved]} gradients")
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
        """One table row: privacy (mean/std SSIM, ASR) and/or accuracy of a setting, with its keys, and the
        values the claim checks need: each victim's SSIM, each seed's accuracy and the test set's size."""
        defense = Defense.parse(defense)
        row: dict[str, Any] = {"label": label or defense.label, "dataset": dataset, "model": model_name,
                               "defense": defense.label, "attack": attack, "ignore": ignore}
        if privacy:
            found = self.leakage(dataset, model_name, defense, attack, ignore)
            explicit = None if ignore == "auto" else ignore
            row.update(ssim=found.ssim_mean, ssim_std=found.ssim_std, asr=found.asr, ssim_values=found.ssim,
                       ssim_key=result_key(dataset, model_name, defense, "ssim", attack, explicit),
                       asr_key=result_key(dataset, model_name, defense, "asr", attack, explicit))
        if accuracy:
            mean, std = self.accuracy(dataset, model_name, defense)
            row.update(accuracy=mean, accuracy_std=std, accuracy_key=result_key(dataset, model_name, defense, "accuracy"),
                       accuracy_values=self.accuracies(dataset, model_name, defense),
                       test_images=len(self.data(dataset).test))
        return row
