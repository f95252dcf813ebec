"""Paper 04 (Scheliga et al., *Privacy Preserving FL with Convolutional Variational Bottlenecks*).

Notebook 04 needs only this module (and :mod:`p04_plots` for figures). It holds the notebook's parameters
as one validated dataclass, :class:`CVBParameters`, and re-exports the protocol, one job per module:

* :mod:`p04_training` — defended models (:func:`build_defended_model`, :func:`parameter_row`) and their
  FedAvg (:func:`train_model` → :class:`DefendedRun`); gradient defenses (DP, gradient compression)
  are applied to every local step;
* :mod:`p04_leakage` — victims (:func:`client_victims`), attack configurations (:func:`attack_config`),
  :func:`privacy_leakage` (each victim's shared gradient of one training step, IG or the Ignore attack,
  SSIM / ASR per victim) and Sec. III-A's :func:`gradient_stochasticity`;
* :mod:`p04_study` — :class:`CVBStudy` trains and attacks each (dataset, model, defense) once, whichever
  table asks, and records every number in a :class:`fedrepro.results.Report` under :func:`result_key`;
* :mod:`p04_tables` — the settings of Tables I–VI and Figures 7, 9, 10, their rows, markdown beside
  the paper's numbers (:func:`paper_table`) and the claim checks (:func:`claim_checks`, by the criterion
  of :mod:`fedrepro.claims`).

One defense is a :class:`~fedrepro.defenses.spec.Defense` spec string (``"none"``, ``"precode:P3"``,
``"cvb:k3"``, ``"dp:sigma0.01"``, ``"gc:p0.99"``); the gradient subsets of Table I are
:func:`fedrepro.attacks.ignore.ignored_parameters`.

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

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fedrepro.data import KNOWN_DATASETS
from fedrepro.defenses.spec import Defense
from fedrepro.models import MODELS
from fedrepro.papers.p04_leakage import (ATTACK_NAMES, Leakage, Victims, attack_config, client_victims,
                                         gradient_stochasticity, privacy_leakage, victim_update)
from fedrepro.papers.p04_study import ATTACK_STATES, CVBStudy, StudyConfig, parameter_key, result_key
from fedrepro.papers.p04_tables import (FIGURE_7_LABELS, FIGURE_9, PARAMETER_SETTINGS, PRECODE_POSITIONS,
                                        STOCHASTICITY_SETTINGS, TABLE_I, TABLE_II, TABLE_IV, TABLE_V, TABLE_VI, TABLES,
                                        central_claims, check_accuracy, check_fails, check_leaks, check_parameters,
                                        claim_checks, claims_table, figure_7, figure_9, figure_9_tables, figure_10,
                                        paper_table, parameter_listing, row_leakages, scatter_rows,
                                        stochasticity_panels, table_i, table_ii, table_iii, table_iv, table_v, table_vi)
from fedrepro.papers.p04_training import DefendedRun, build_defended_model, parameter_row, train_model
from fedrepro.results import TIERS
from fedrepro.validation import choice, device, integer, integers, names, number, parsed, require, text

__all__ = [
    "ATTACK_NAMES", "FIGURE_7_LABELS", "FIGURE_9", "PARAMETER_SETTINGS", "PRECODE_POSITIONS", "STOCHASTICITY_SETTINGS",
    "TABLES", "TABLE_I", "TABLE_II", "TABLE_IV", "TABLE_V", "TABLE_VI", "DefendedRun", "Defense", "Leakage",
    "CVBParameters", "CVBStudy", "StudyConfig", "Victims", "attack_config", "build_defended_model",
    "central_claims", "check_accuracy", "check_fails", "check_leaks", "check_parameters", "claim_checks",
    "claims_table", "client_victims", "figure_7", "figure_9", "figure_9_tables", "figure_10",
    "gradient_stochasticity", "paper_table", "parameter_key", "parameter_listing", "parameter_row",
    "privacy_leakage", "result_key", "row_leakages", "scatter_rows", "stochasticity_panels", "table_i",
    "table_ii", "table_iii", "table_iv", "table_v", "table_vi", "train_model", "victim_update",
]

DEFENSE_EXAMPLE = "a defense spec such as 'cvb:k3'"


@dataclass
class CVBParameters:
    """Notebook 04's parameters cell, whole: what a tier or sweep sets, checked before anything runs and
    recorded in ``results.json`` (``dataclasses.asdict``), so a report identifies its run.

    Defaults are the paper's protocol (Sec. V); ``lbfgs_iterations=None`` is the public code's 2,000
    L-BFGS steps of up to 20 evaluations.
    """

    tier: str = "paper"
    seed: int = 0
    tables: Sequence[str] = TABLES
    datasets: Sequence[str] = ("mnist", "cifar10")
    table4_datasets: Sequence[str] = ("mnist", "cifar10")
    attack_state: str = "initial"
    num_clients: int = 10
    rounds: int = 300
    patience: int | None = 40
    samples_per_client: int | None = None
    test_samples: int | None = None
    accuracy_seeds: Sequence[int] = (1, 2)
    victims: int = 128
    max_iterations: int = 20_000
    lbfgs_iterations: int | None = None
    tv_weight: float = 0.01
    table3_attacks: Sequence[str] = ("idlg", "cpl", "ig")
    table4_defenses: Sequence[str] = TABLE_IV
    table5_models: Mapping[str, str] = field(default_factory=TABLE_V.copy)
    table6_datasets: Mapping[str, str] = field(default_factory=TABLE_VI.copy)
    table2_extra: Sequence[str] = ("cvb",)
    figure9_panels: Sequence[str] = tuple(FIGURE_9)
    grid_images: int = 8
    chunk_size: int | None = None
    batched_clients: bool = False
    torch_threads: int | None = None
    device: str = "auto"
    data_root: str | None = None
    results_dir: str = "../reports/paper/04_cvb"

    def __post_init__(self) -> None:
        choice("tier", self.tier, TIERS)
        integer("seed", self.seed, 0)
        names("tables", self.tables, TABLES)
        for name in ("datasets", "table4_datasets"):
            names(name, getattr(self, name), KNOWN_DATASETS)
        choice("attack_state", self.attack_state, ATTACK_STATES)
        for name in ("num_clients", "rounds", "victims", "max_iterations", "grid_images"):
            integer(name, getattr(self, name), 1)
        for name in ("patience", "samples_per_client", "test_samples", "lbfgs_iterations", "chunk_size",
                     "torch_threads"):
            integer(name, getattr(self, name), 1, optional=True)
        integers("accuracy_seeds", self.accuracy_seeds, 0)
        number("tv_weight", self.tv_weight, 0)
        names("table3_attacks", self.table3_attacks, ATTACK_NAMES)
        for name in ("table4_defenses", "table2_extra"):
            for index, spec in enumerate(names(name, getattr(self, name))):
                parsed(f"{name}[{index}]", spec, Defense.parse, DEFENSE_EXAMPLE)
        names("table5_models", list(self.table5_models), MODELS.names())
        names("table6_datasets", list(self.table6_datasets), KNOWN_DATASETS)
        for name in ("table5_models", "table6_datasets"):
            for key, spec in getattr(self, name).items():
                parsed(f"{name}[{key!r}]", spec, Defense.parse, DEFENSE_EXAMPLE)
        names("figure9_panels", self.figure9_panels, FIGURE_9)
        require(isinstance(self.batched_clients, bool), "batched_clients", self.batched_clients, "true or false")
        device("device", self.device)
        text("data_root", self.data_root, "a folder path", optional=True, empty=True)
        text("results_dir", self.results_dir, "a folder path")

    def study_config(self) -> StudyConfig:
        """The :class:`CVBStudy`'s configuration; what the notebook does not set keeps the paper's protocol."""
        return StudyConfig(
            rounds=self.rounds, patience=self.patience, num_clients=self.num_clients,
            samples_per_client=self.samples_per_client, test_samples=self.test_samples,
            accuracy_seeds=tuple(self.accuracy_seeds), victims=self.victims, max_iterations=self.max_iterations,
            lbfgs_iterations=self.lbfgs_iterations, tv_weight=self.tv_weight, attack_state=self.attack_state,
            seed=self.seed, device=self.device, data_root=self.data_root, chunk_size=self.chunk_size,
            batched_clients=self.batched_clients)
