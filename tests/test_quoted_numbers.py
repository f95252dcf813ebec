"""Every number the notebooks' closing texts quote comes from a file the code wrote (issue #20).

The closing text of a notebook is its markdown from the first heading that reads the results ("Reading…",
"Our numbers…", "…claims by tier…", "What … tier…") to the end. Each block of it (a paragraph, a bullet or a
table row) is checked number by number: every decimal number outside code spans must be, at the precision
printed, one of

* a metric of the notebook's reference runs (``fedrepro/reference_results/<tier>/<notebook>.json``), as a
  fraction or in percent, or the difference of two of its metrics whose keys differ in one part only
  (``training/cnn/untrained/psnr`` − ``training/cnn/trained/psnr``), as texts quote gains and costs;
* a number printed by one of those runs' claim checks (``claims``: statement and evidence), a parameter of
  those runs, or their wall time (seconds or minutes);
* a value or setting of the paper (``fedrepro/paper_results``) or of the notebook's tier files (``parameters/``).

Integers are counts and settings (victims, rounds, percent thresholds) and are not checked. A block that
quotes a run we do not ship (a GPU run that was cut short, a one-off sweep, another machine) says so in an
HTML comment ``<!-- unshipped: ... -->`` that names the run; its numbers are then exempt, and the comments
are counted below (a ratchet: shipping a run's file lowers :data:`UNSHIPPED_AT_MOST`, a new unshipped quote
has to raise it on purpose).
"""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["00_quickstart", "01_robustness", "02_clipping", "03_inversion", "04_cvb", "05_transformation_search",
             "06_privacy_matrix"]
CLOSING = re.compile(r"^#+ .*(Reading|Our numbers|claims by tier|What .*tier)", re.IGNORECASE | re.MULTILINE)
UNSHIPPED = re.compile(r"<!--\s*unshipped:[^>]*-->")
DECIMAL = re.compile(r"(?<![\w.+-])[-−+]?(\d+\.\d+)(?![\w.])")
CODE = re.compile(r"`[^`]*`")
UNSHIPPED_AT_MOST = 31  # 2026-12-04: cut-short GPU runs, one-off sweeps, other machines, earlier wall times


def closing_text(notebook: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    first = next(i for i, text in enumerate(markdown) if CLOSING.search(text))
    return "\n\n".join(markdown[first:])


def blocks(text: str) -> list[str]:
    """Paragraphs, bullets and table rows: the unit an ``unshipped`` comment exempts."""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if lines and all(line.lstrip().startswith("|") for line in lines):
            out += lines
            continue
        current: list[str] = []
        for line in lines:
            if re.match(r"\s*[*-] ", line) and current:
                out.append("\n".join(current))
                current = []
            current.append(line)
        out.append("\n".join(current))
    return [b for b in out if b.strip()]


def numbers_in(value: object) -> list[float]:
    """Every number in a parameter value or a printed string (settings such as ``multistep:5,7,10:0.1``)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers_in(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in numbers_in(v)]
    return []


def sources(notebook: str) -> tuple[list[float], list[float]]:
    """(values a quoted number may round from, metric differences of the same kind)."""
    values: list[float] = []
    metrics: list[tuple[list[str], float]] = []
    for path in sorted((ROOT / "fedrepro" / "reference_results").glob(f"*/{notebook}.json")):
        ref = json.loads(path.read_text())
        for key, v in ref["metrics"].items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                values += [v, 100 * v]
                metrics.append((key.split("/"), v))
        values += numbers_in([[c["statement"], c["evidence"]] for c in ref.get("claims", [])])
        values += numbers_in(ref.get("parameters", {}))
        values += [ref.get("wall_seconds", 0.0), ref.get("wall_seconds", 0.0) / 60]
    paper = notebook[:2]
    for path in [ROOT / "fedrepro" / "paper_results" / f"{paper}.yaml", *(ROOT / "parameters" / notebook).glob("*.yaml")]:
        if path.exists():
            loaded = yaml.safe_load(path.read_text()) or {}
            values += numbers_in(loaded)
            values += [100 * x for x in numbers_in(loaded)]
    differences = [d for (ka, a), (kb, b) in itertools.combinations(metrics, 2) if _one_apart(ka, kb)
                   for d in (abs(a - b), 100 * abs(a - b))]
    return values, differences


def _one_apart(a: list[str], b: list[str]) -> bool:
    """Keys that differ in exactly one part (``training/cnn/untrained/psnr`` and ``…/trained/psnr``): the
    pairs whose difference a text calls a gain or a cost."""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def matches(quoted: str, pool: list[float]) -> bool:
    """``quoted`` is some value of ``pool`` rounded to the decimals it is printed with (sign aside)."""
    x, half = float(quoted), 0.5 * 10 ** -len(quoted.split(".")[1]) + 1e-9
    return any(abs(abs(v) - x) <= half for v in pool)


def unmatched(notebook: str) -> list[tuple[str, str]]:
    values, differences = sources(notebook)
    missing = []
    for block in blocks(closing_text(notebook)):
        if UNSHIPPED.search(block):
            continue
        for quoted in DECIMAL.findall(CODE.sub("", block)):
            if not (matches(quoted, values) or matches(quoted, differences)):
                missing.append((quoted, " ".join(block.split())[:160]))
    return missing


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_quoted_number_is_in_a_file_the_code_wrote(notebook: str):
    missing = unmatched(notebook)
    assert not missing, "\n".join(f"{q}: {block}" for q, block in missing)


def test_the_check_catches_a_number_no_run_produced():
    """03's ResNet-18 untrained PSNR is 14.8496 dB: the text once said 14.9, which no file holds."""
    values, differences = sources("03_inversion")
    assert matches("14.8", values) and not matches("14.9", values + differences)
    assert matches("22.0", values) and matches("5.0", differences)  # untrained − trained CNN, 22.0 − 17.0 dB
    assert _one_apart("a/b/c".split("/"), "a/x/c".split("/")) and not _one_apart(["a", "b"], ["x", "y"])
    assert DECIMAL.findall("torch 2.11.0+cu130 at `std0.01`, 4.5 %") == ["4.5"]


def test_quotes_of_unshipped_runs_name_the_run_and_do_not_grow():
    comments = [c for nb in NOTEBOOKS for c in re.findall(r"<!--\s*unshipped:([^>]*)-->", closing_text(nb))]
    assert all(len(c.strip()) >= 10 for c in comments), comments  # says which run, not just "unshipped"
    assert len(comments) <= UNSHIPPED_AT_MOST
