"""The papers' reported numbers, and each notebook's measured numbers beside them.

``paper_results/<paper>.yaml`` holds every number a paper reports that a notebook reproduces, keyed
by a ``key`` the notebook uses. A notebook builds a :class:`Report`, records what it
measured with :meth:`Report.measure`, shows the side-by-side table and writes ``results.json``
(parameters, metrics, tier, environment, wall time); ``fedrepro reproduce`` collects those files.
"""
from __future__ import annotations

import html
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

TIERS = ("smoke", "quick", "gpu", "paper")


@dataclass(frozen=True)
class PaperValue:
    """One number as a paper reports it."""

    paper: str
    key: str
    source: str  # e.g. "Table II"
    setting: str  # what the number is, in words
    value: float
    unit: str = ""


@cache
def paper_values() -> dict[tuple[str, str], PaperValue]:
    """All reported numbers, by (paper, key); one file per paper in ``fedrepro/paper_results/<paper>.yaml``."""
    values = {}
    for path in sorted(resources.files("fedrepro").joinpath("paper_results").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        paper = path.name.removesuffix(".yaml")
        for key, item in (yaml.safe_load(path.read_text()) or {}).items():
            values[(paper, key)] = PaperValue(paper, key, item["source"], item["setting"],
                                              float(item["value"]), item.get("unit", ""))
    return values


def environment() -> dict[str, Any]:
    """Where a number was measured: enough to judge whether two runs are comparable.

    ``$FEDREPRO_COMMIT``, where set, names the commit instead of git: a copy of the working tree sent to
    another machine (the lent GPU's) can carry a stale ``.git`` that would name an older commit.
    """
    from fedrepro import __version__

    commit = os.environ.get("FEDREPRO_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent,
        check=False).stdout.strip()
    return {
        "fedrepro": __version__,
        "git_commit": commit or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


PARTIAL_ENV = "FEDREPRO_PARTIAL_RESULTS"
"""Where a run's measurements so far are kept (set by :func:`fedrepro.runner.run_notebook` for its kernel)."""


class Report:
    """What one notebook run measured, beside what the paper reports.

    Where ``$FEDREPRO_PARTIAL_RESULTS`` names a file, :meth:`measure` rewrites it with the metrics so far
    (``"complete": false``), at most every :attr:`PARTIAL_EVERY_S` seconds (each rewrite writes all of them,
    so rewriting on every number would cost time quadratic in their count): a run cut short — a GPU lease's
    time limit, a killed job — still leaves what it measured up to a few seconds before, since a notebook
    cell prints its table only when the whole section is done.
    """

    PARTIAL_EVERY_S = 5.0

    def __init__(self, notebook: str, paper: str, tier: str, parameters: dict[str, Any]) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        self.notebook, self.paper, self.tier = notebook, paper, tier
        self.parameters = dict(parameters)
        self.metrics: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []
        self.claims: list[dict[str, str]] = []  # the claim checks behind the claim/* metrics, as printed
        self._started = time.perf_counter()
        self._partial = Path(os.environ[PARTIAL_ENV]) if os.environ.get(PARTIAL_ENV) else None
        self._environment: dict[str, Any] | None = None
        self._partial_written = -math.inf

    def reported(self, key: str) -> float | None:
        """The paper's value for ``key``, or None if the paper does not report it."""
        found = paper_values().get((self.paper, key))
        return found.value if found else None

    def measure(self, key: str, value: float, setting: str | None = None) -> None:
        """Record a measured number; if the paper reports ``key`` it is compared in the table."""
        value = float(value)
        self.metrics[key] = value
        reported = paper_values().get((self.paper, key))
        self.rows.append({
            "key": key,
            "setting": setting or (reported.setting if reported else key),
            "source": reported.source if reported else "",
            "paper": reported.value if reported else None,
            "measured": value,
            "unit": reported.unit if reported else "",
            "tier": self.tier,
            "difference": value - reported.value if reported else None,
        })
        if self._partial is not None and time.perf_counter() - self._partial_written >= self.PARTIAL_EVERY_S:
            self._environment = self._environment or environment()  # one git call per run, not per number
            self._write_json(self._partial, {**self.to_dict(self._environment), "complete": False})
            self._partial_written = time.perf_counter()

    def to_dict(self, env: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "notebook": self.notebook, "paper": self.paper, "tier": self.tier,
            "parameters": self.parameters, "metrics": self.metrics, "claims": self.claims, "comparison": self.rows,
            "environment": env or environment(), "wall_seconds": round(time.perf_counter() - self._started, 2),
        }

    def write(self, directory: str | Path) -> Path:
        """Write ``results.json`` into ``directory`` (created if needed) and return its path."""
        path = Path(directory) / "results.json"
        self._write_json(path, self.to_dict())
        return path

    @staticmethod
    def _write_json(path: Path, content: dict[str, Any]) -> None:
        """Write through a temporary file, so a reader (or a kill) never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(content, indent=2, default=str))
        tmp.replace(path)

    def markdown(self) -> str:
        return comparison_markdown(self.rows)

    def _repr_markdown_(self) -> str:
        return f"**{self.notebook}** — tier **{self.tier}**\n\n" + self.markdown()


COLUMNS = ("setting", "source", "paper", "measured", "tier", "difference")


def _fmt(value: float | None, unit: str = "") -> str:
    """4 significant digits; whole numbers of 10,000 or more (parameter counts) in full with separators."""
    if value is None or math.isnan(value):
        return "—"
    text = f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1e4 else f"{value:.4g}"
    return text + (f" {unit}" if unit else "")


def _cells(row: dict[str, Any]) -> tuple[str, ...]:
    diff = "—" if row["difference"] is None else f"{row['difference']:+.4g}"
    return (row["setting"], row["source"] or "—", _fmt(row["paper"], row["unit"]),
            _fmt(row["measured"], row["unit"]), row["tier"], diff)


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table: setting, source, paper value, measured value, tier, difference."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def comparison_html(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def load_results(directory: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``directory``, sorted by notebook name."""
    found = [json.loads(p.read_text()) for p in sorted(Path(directory).rglob("results.json"))]
    return sorted(found, key=lambda r: r["notebook"])


def write_summary(directory: str | Path) -> Path:
    """``summary.md`` and ``summary.html`` in ``directory`` with every notebook's side-by-side table."""
    directory = Path(directory)
    results = load_results(directory)
    md = ["# fedrepro reproduction summary", ""]
    page = ["<html><head><meta charset='utf-8'><title>fedrepro summary</title></head><body>",
            "<h1>fedrepro reproduction summary</h1>"]
    for result in results:
        env = result["environment"]
        where = (f"tier {result['tier']}, {result['wall_seconds']:.0f} s on {env['device']} (torch {env['torch']}), "
                 f"commit {env.get('git_commit') or 'unknown'}")
        md += [f"## {result['notebook']} (paper {result['paper']})", "", where, "", comparison_markdown(result["comparison"]), ""]
        page += [f"<h2>{html.escape(result['notebook'])} (paper {result['paper']})</h2>", f"<p>{html.escape(where)}</p>",
                 comparison_html(result["comparison"])]
    if not results:
        md.append("No results.json found.")
    page.append("</body></html>")
    (directory / "summary.md").write_text("\n".join(md) + "\n")
    (directory / "summary.html").write_text("\n".join(page) + "\n")
    return directory / "summary.md"
