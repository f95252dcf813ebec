"""Paper 04's tables and figures: which settings each holds, their rows (measured through a
:class:`~fedrepro.papers.p04_study.CVBStudy`), markdown beside the paper's numbers, and the claim checks.

Notebook 04 calls one function per section; the loops over settings are here, where a test reaches them.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fedrepro import claims, metrics
from fedrepro.attacks.ignore import IGNORE
from fedrepro.claims import ClaimCheck
from fedrepro.defenses.spec import Defense, format_value
from fedrepro.papers.p04_leakage import Leakage, gradient_stochasticity
from fedrepro.papers.p04_study import CVBStudy, parameter_key

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


#: Notebook 04's sections, for its ``tables`` parameter.
TABLES = ("I", "II", "III", "IV", "V", "VI", "fig9")

TABLE_I = {"precode:P3": ("none", "decoder", "classifier", "decoder_and_after"),
           "precode:P2": ("none", "decoder", "classifier", "between", "after_decoder", "decoder_and_after")}
"""Table I: which gradients are dropped, per PRECODE position. Our copy of the paper lost the table's
check marks; the rows are read from the text ("ignore only the gradients of the PRECODE decoder or the
classifier"; "the decoder and all subsequent layers") and its counts of rows with PRECODE: 4 at P = 3
(IG, 3 Ignore), 6 at P = 2 (IG, 5 Ignore). At P = 2 a stochastic layer more lies after the sampling (the
third convolution), so each of the three alone, the two after the decoder and all three are dropped;
at P = 3 there is nothing between the decoder and the classifier, and "after the decoder" is the
classifier, which is why that block has two rows fewer. Every P = 2 row but the last prints ASR 0, so
whichever subsets the lost marks named, the paper's value for each is 0."""

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


def table_i(study: CVBStudy, dataset: str = "cifar10", subsets: Mapping[str, Sequence[str]] = TABLE_I) -> list[dict]:
    rows = [study.row(dataset, "cnn", "none", accuracy=False, label="CNN, IG (all gradients)")]
    for defense, ignores in subsets.items():
        for ignore in ignores:
            text = "IG (all gradients)" if ignore == "none" else f"dropping {IGNORE[ignore]}"
            position = format_value(Defense.parse(defense)["P"]) if Defense.parse(defense).kind == "precode" else "?"
            rows.append(study.row(dataset, "cnn", defense, ignore=ignore, accuracy=False,
                                  label=f"PRECODE P = {position}: {text}"))
    return rows


def table_ii(study: CVBStudy, dataset: str = "cifar10", defenses: Sequence[str] = TABLE_II, accuracy: bool = True,
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


def table_iii(study: CVBStudy, datasets: Sequence[str] = ("mnist", "cifar10"), attacks: Sequence[str] = ("idlg", "cpl", "ig"),
              defenses: Sequence[str] = ("none", "cvb")) -> list[dict]:
    return [study.row(dataset, "cnn", defense, attack=attack, accuracy=False,
                      label=f"{dataset}, {'CVB' if defense != 'none' else 'none'}, {attack.upper() if attack != 'ig' else 'IG'}")
            for dataset in datasets for defense in defenses for attack in attacks]


def table_iv(study: CVBStudy, datasets: Sequence[str] = ("mnist", "cifar10"), defenses: Sequence[str] = TABLE_IV) -> list[dict]:
    return [study.row(dataset, "cnn", defense, label=f"{dataset}, {Defense.parse(defense).describe()}")
            for dataset in datasets for defense in defenses]


def table_v(study: CVBStudy, datasets: Sequence[str] = ("mnist", "cifar10"), models: Mapping[str, str] = TABLE_V) -> list[dict]:
    return [study.row(dataset, model, defense, label=f"{dataset}, {model}, {'none' if defense == 'none' else defense}")
            for dataset in datasets for model, cvb in models.items() for defense in ("none", cvb)]


def table_vi(study: CVBStudy, datasets: Mapping[str, str] = TABLE_VI) -> list[dict]:
    """Table VI's rows. Every MedMNIST dataset is loaded first, so a missing one fails at once, with
    :class:`fedrepro.data.DatasetNotFoundError`'s message on how to provide it, before any training."""
    for dataset in datasets:
        study.data(dataset)
    return [study.row(dataset, "cnn", defense, label=f"{dataset}, {defense}")
            for dataset, cvb in datasets.items() for defense in ("none", cvb)]


def figure_9(study: CVBStudy, panels: Sequence[str] = tuple(FIGURE_9), dataset: str = "cifar10") -> dict[str, list[dict]]:
    """Figure 9's panels as rows (x tick label, accuracy, SSIM) for :func:`~fedrepro.papers.p04_plots.plot_hyperparameter_study`."""
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


# --- what the notebook shows besides the tables ------------------------------------------------

PARAMETER_SETTINGS = {"cnn": ("none", "precode:P3", "precode:P2", "precode:P1", "cvb:k3", "cvb", "cvb:k7",
                              "precode:P1,K32,beta0.01", "precode:P1,K512,beta0.01"),
                      "resnet18": ("none", "cvb:beta5e-05"), "vit": ("none", "cvb:k3")}
"""Models and defenses whose parameter counts the notebook lists: Table II's PRECODE positions, the CVB's
kernel sizes (Sec. IV-B), Table IV's PRECODE sizes and Table V's architectures."""


def parameter_listing(study: CVBStudy, settings: Mapping[str, Sequence[str]] = PARAMETER_SETTINGS) -> str:
    """One line per (model, defense): parameters and what the defense adds. These counts follow from the
    architectures alone, so the notebook checks them exactly."""
    lines = []
    for model_name, defenses in settings.items():
        for defense in defenses:
            row = study.parameters(model_name, defense)
            lines.append(f"{model_name:9} {row['defense']:26} {row['parameters']:>11,} parameters  "
                         f"(+{row['added']:,}, +{row['percent']:.3f} %)")
    return "\n".join(lines)


STOCHASTICITY_SETTINGS = {"no defense": "none", "PRECODE, P = 3": "precode:P3", "CVB, P = 1": "cvb",
                          "CVB, KL summed": "cvb:klsum"}
"""Sec. III-A's analysis: the untrained CNN without defense, with PRECODE, with the CVB, and with the CVB's
KL summed over all latent positions (whose deterministic gradient swamps the layers before the decoder)."""


def stochasticity_panels(study: CVBStudy, settings: Mapping[str, str] = STOCHASTICITY_SETTINGS,
                         dataset: str = "cifar10", draws: int = 16) -> dict[str, dict[str, float]]:
    """Per setting, :func:`~fedrepro.papers.p04_leakage.gradient_stochasticity` of the round-0 CNN on the
    first victim of ``dataset``, for :func:`~fedrepro.papers.p04_plots.plot_gradient_stochasticity`."""
    probe = study.victims(dataset)
    return {label: gradient_stochasticity(study.initial_model(dataset, "cnn", defense), probe.images[0],
                                          probe.labels[0], draws=draws, seed=study.config.seed)
            for label, defense in settings.items()}


FIGURE_7_LABELS = ("none (IG)", "PRECODE P=3", "PRECODE P=2", "PRECODE P=1")
"""Row labels of Figure 7's grid, one per setting of :data:`TABLE_II`."""


def figure_7(study: CVBStudy, extra: Sequence[str] = (), dataset: str = "cifar10") -> tuple[list[Leakage], list[str]]:
    """Figure 7's reconstructions (IG without defense, Ignore on PRECODE at P = 3, 2, 1) and ``extra``
    settings, with their row labels, for :func:`~fedrepro.papers.p04_plots.reconstruction_grid`."""
    leakages = [study.leakage(dataset, "cnn", defense) for defense in list(TABLE_II) + list(extra)]
    return leakages, list(FIGURE_7_LABELS) + list(extra)


def row_leakages(study: CVBStudy, rows: Iterable[Mapping[str, Any]]) -> tuple[list[Leakage], list[str]]:
    """The attack behind each table row, with the row's label (for SSIM spreads and reconstruction grids)."""
    rows = list(rows)
    leakages = [study.leakage(r["dataset"], r["model"], r["defense"], r["attack"], r["ignore"]) for r in rows]
    return leakages, [str(r["label"]) for r in rows]


def figure_10(study: CVBStudy, datasets: Sequence[str], models: Mapping[str, str] = TABLE_V
              ) -> dict[str, tuple[list[Leakage], list[str]]]:
    """Figure 10: per dataset, each architecture's reconstructions without defense and with its CVB."""
    settings = [(model, defense) for model, cvb in models.items() for defense in ("none", cvb)]
    labels = [f"{model} {'none' if defense == 'none' else 'CVB'}" for model, defense in settings]
    return {dataset: ([study.leakage(dataset, model, defense) for model, defense in settings], labels)
            for dataset in datasets}


def figure_9_tables(panels: Mapping[str, Sequence[Mapping[str, Any]]], report, tier: str) -> str:
    """Figure 9's panels as markdown tables beside the values the paper's text gives."""
    return "\n\n".join(paper_table(rows, report, tier, f"Figure 9: {title}") for title, rows in panels.items())


# --- the paper's claims -----------------------------------------------------------------------------

PRECODE_POSITIONS = ("precode:P3", "precode:P2", "precode:P1")
"""Table II's PRECODE rows, from the latest position in the CNN to the earliest."""


def _victims(row: Mapping[str, Any]) -> str:
    return f"ASR {row['asr']:.1f} % of {len(row['ssim_values'])} victims"


def check_leaks(key: str, statement: str, row: Mapping[str, Any]) -> ClaimCheck:
    """The attack reconstructs the row's victims: their mean SSIM exceeds the attack-success threshold (0.5)
    by the criterion, a one-sample comparison (se = s/√n)."""
    comparison = claims.compare_to(row["ssim_values"], metrics.ASR_THRESHOLD)
    return ClaimCheck(key, statement, comparison.verdict, f"{row['defense']}: mean SSIM {row['ssim']:.2f} − "
                      f"{metrics.ASR_THRESHOLD:g}: {comparison.estimate()}; {_victims(row)}")


def check_fails(key: str, statement: str, row: Mapping[str, Any]) -> ClaimCheck:
    """The attack fails on the row's victims: their mean SSIM is below 0.5 by the criterion (se = s/√n).

    ASR, the share of the same victims with SSIM ≥ 0.5, is shown but not tested: its binomial error vanishes
    at 0 %, so "ASR 0 of 2 victims" would confirm as firmly as "0 of 128"; the SSIMs carry the spread.
    """
    comparison = claims.compare_to(-np.asarray(row["ssim_values"], dtype=float), -metrics.ASR_THRESHOLD)
    return ClaimCheck(key, statement, comparison.verdict, f"{row['defense']}: {metrics.ASR_THRESHOLD:g} − mean SSIM "
                      f"{row['ssim']:.2f}: {comparison.estimate()}; {_victims(row)}")


def check_accuracy(key: str, statement: str, better: Mapping[str, Any], worse: Mapping[str, Any],
                   margin: float | None = None) -> ClaimCheck:
    """``better`` is more accurate than ``worse`` by the criterion (:func:`fedrepro.claims.compare_accuracies`:
    the spread over seeds where both rows have 2 or more, else the binomial error over the test images).

    With a ``margin`` the claim is non-inferiority instead, "``better`` matches or beats ``worse``": confirmed
    when better − worse > −margin + Z·se, i.e. the whole band lies above a loss of ``margin`` points
    (:func:`fedrepro.claims.non_inferior`), contradicted when it lies below.
    """
    comparison = claims.compare_accuracies(better["accuracy_values"], worse["accuracy_values"], worse["test_images"])
    verdict = (comparison if margin is None else claims.non_inferior(comparison, margin)).verdict
    seeds = min(len(better["accuracy_values"]), len(worse["accuracy_values"]))
    spread = f"over {seeds} seeds" if seeds > 1 else f"binomial, {worse['test_images']} test images"
    bound = "" if margin is None else f"; must exceed −{margin:g} (margin)"
    return ClaimCheck(key, statement, verdict, f"{better['defense']} {better['accuracy']:.2f} % − {worse['defense']} "
                      f"{worse['accuracy']:.2f} %: {comparison.estimate()} points ({spread}){bound}")


def check_parameters(key: str, statement: str, percent: Mapping[str, float]) -> ClaimCheck:
    """PRECODE's added parameters (% of the base CNN, by defense label) rise as it moves forward, P = 3 → 2 → 1,
    and at P = 1 exceed the base network's own. Parameter counts follow from the architectures exactly: the
    verdict is confirmed or contradicted, never inside a spread."""
    rising = all(percent[a] < percent[b] for a, b in zip(PRECODE_POSITIONS, PRECODE_POSITIONS[1:]))
    holds = rising and percent[PRECODE_POSITIONS[-1]] > 100
    others = [f"{label} +{value:.1f} %" for label, value in percent.items() if label not in PRECODE_POSITIONS]
    evidence = " → ".join(f"{label} +{percent[label]:.1f} %" for label in PRECODE_POSITIONS)
    return ClaimCheck(key, statement, claims.CONFIRMED if holds else claims.CONTRADICTED,
                      f"{evidence} (exact counts)" + (f"; {', '.join(others)}" if others else ""))


def claim_checks(rows: Iterable[Mapping[str, Any]], extra: Sequence[str], percent: Mapping[str, float],
                 dataset: str = "cifar10", margin: float = claims.ACCURACY_MARGIN) -> list[ClaimCheck]:
    """Paper 04's central claims on the CNN of ``dataset``, from Table II's ``rows`` (the last row of a setting
    counts; they need the row without defense) and each defense's added parameters in % (``percent``, by label):

    * ``claim/undefended_leaks``: IG reconstructs the undefended CNN's victims (:func:`check_leaks`);
    * ``claim/cvb_defeats_ignore``: the Ignore attack fails on each CVB among ``extra`` (:func:`check_fails`);
    * ``claim/cvb_accuracy_matches``: each CVB matches or beats the undefended CNN's accuracy, a non-inferiority
      claim: confirmed when CVB − none > −``margin`` + Z·se (:func:`check_accuracy`);
    * ``claim/precode_early_costs_accuracy``: PRECODE at P = 1 is less accurate than the undefended CNN;
    * ``claim/precode_early_parameters``: PRECODE's parameter cost explodes at early positions
      (:func:`check_parameters`).

    Every verdict follows :data:`fedrepro.claims.CRITERION`; a claim tested on several CVBs scores the share of
    them that confirm it (:func:`fedrepro.claims.scores`).
    """
    measured = {r["defense"]: r for r in rows if r["dataset"] == dataset and r["model"] == "cnn"}
    none = measured["none"]
    cvbs = [measured[Defense.parse(d).label] for d in extra if Defense.parse(d).kind == "cvb"]
    checks = []
    if "ssim_values" in none:
        checks.append(check_leaks("claim/undefended_leaks", "without defense IG reconstructs the CNN's victims "
                                  "(mean SSIM above 0.5)", none))
    checks += [check_fails("claim/cvb_defeats_ignore", f"the Ignore attack fails on the {row['defense']} "
                           "(mean SSIM below 0.5)", row) for row in cvbs if "ssim_values" in row]
    if "accuracy_values" in none:
        checks += [check_accuracy("claim/cvb_accuracy_matches", f"the {row['defense']} matches or beats the "
                                  f"undefended CNN's accuracy (at most {margin:g} pp lower)", row, none, margin)
                   for row in cvbs if "accuracy_values" in row]
        early = measured.get(PRECODE_POSITIONS[-1], {})
        if "accuracy_values" in early:
            checks.append(check_accuracy("claim/precode_early_costs_accuracy",
                                         "PRECODE at P = 1 costs accuracy against no defense", none, early))
    checks.append(check_parameters("claim/precode_early_parameters", "PRECODE's parameter cost explodes at early "
                                   "positions (rises to P = 1, where it exceeds the base CNN)", percent))
    return checks


def central_claims(study: CVBStudy, rows: Iterable[Mapping[str, Any]], extra: Sequence[str],
                   dataset: str = "cifar10") -> list[ClaimCheck]:
    """:func:`claim_checks` on the measured ``rows``, with PRECODE's and each CVB's added parameters from
    ``study``; each claim's share of confirmed checks is recorded in the study's report as ``claim/<name>``."""
    labels = [*PRECODE_POSITIONS, *(Defense.parse(d).label for d in extra if Defense.parse(d).kind == "cvb")]
    percent = {label: study.parameters("cnn", label, dataset)["percent"] for label in labels}
    checks = claim_checks(rows, extra, percent, dataset)
    if study.report is not None:
        claims.record(study.report, checks)
    return checks


def claims_table(checks: Sequence[ClaimCheck]) -> str:
    """Markdown: each check's verdict and evidence, then the criterion the verdicts follow."""
    return claims.checks_table(checks, claim="claim (paper 04)")
