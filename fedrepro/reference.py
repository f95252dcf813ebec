"""Our measured runs, committed as small files, so a user can check *their* run against *ours* and the paper's.

``fedrepro/reference_results/<tier>/<notebook>.json`` (package data) is the ``results.json`` of the run a notebook's closing text quotes
(see each file's ``environment``: commit, torch, device), trimmed of parameter values over 2 KB (the
per-run histories some notebooks store; their names stay listed under ``omitted``). ``fedrepro compare
PATH`` puts every metric of the runs under PATH beside ours and the paper's.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from fedrepro.results import paper_values

REFERENCE_DIR = Path(__file__).resolve().parent / "reference_results"
LARGEST_PARAMETER = 2048  # bytes of JSON; larger values are run logs, not settings


def trim(result: dict[str, Any]) -> dict[str, Any]:
    """A results.json without its large parameter values (their names listed under ``omitted``)."""
    parameters, omitted = {}, []
    for name, value in result.get("parameters", {}).items():
        if len(json.dumps(value, default=str)) > LARGEST_PARAMETER:
            omitted.append(name)
        else:
            parameters[name] = value
    keep = {k: result[k] for k in ("notebook", "paper", "tier", "metrics", "claims", "environment", "wall_seconds") if k in result}
    return {**keep, "parameters": parameters, "omitted": omitted}


def save_reference(results_json: str | Path, directory: str | Path = REFERENCE_DIR) -> Path:
    """Copy a run's results.json, trimmed, to ``<directory>/<tier>/<notebook>.json``."""
    result = read_results(Path(results_json))
    path = Path(directory) / result["tier"] / f"{result['notebook']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trim(result), indent=1, sort_keys=False, default=str) + "\n")
    return path


def read_results(path: Path) -> dict[str, Any]:
    """One results.json, or a ValueError naming the file and what is wrong with it."""
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): "
                         f"not a fedrepro results.json") from None
    if not isinstance(result, dict) or not {"notebook", "tier", "metrics"} <= set(result):
        raise ValueError(f"{path} is not a fedrepro results.json (it needs notebook, tier and metrics)")
    return result


def find_runs(path: str | Path) -> list[dict[str, Any]]:
    """The runs at ``path``: a results.json, a run folder, or a folder of run folders (reports/<tier>)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a results.json or the folder fedrepro run wrote")
    files = [path] if path.is_file() else sorted(path.rglob("results.json"))
    if not files:
        raise FileNotFoundError(f"no results.json under {path}; give the folder fedrepro run or reproduce wrote "
                                f"(e.g. reports/quick)")
    return [read_results(f) for f in files]


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4g}"


IGNORED_PARAMETERS = ("seed", "results_dir", "data_root")
"""Parameters that do not make two runs different experiments: runs differing only in these are seed repeats."""


def seed_groups(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped by notebook, tier and every parameter but the seed (a sweep's repeats), in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        settings = {k: v for k, v in run.get("parameters", {}).items() if k not in IGNORED_PARAMETERS}
        key = json.dumps([run["notebook"], run["tier"], settings], sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def compare(path: str | Path, reference_dir: str | Path = REFERENCE_DIR) -> str:
    """Markdown: for each run under ``path``, every metric beside our reference run's and the paper's.

    ``Δ`` is yours − ours. A metric with no reference (another tier, a notebook we have not recorded)
    shows ``—`` there; runs at other parameters than ours differ for that reason alone, so the
    parameters that differ are listed first. Runs that differ only in their seed (a sweep's ``seeds``)
    are one block: their mean ± standard deviation over the seeds, and ``Δ / sd``, the difference in units
    of that seed-to-seed spread — about 1 or less is what another seed of ours would give.
    """
    paper = paper_values()
    blocks = []
    for group in seed_groups(find_runs(path)):
        run = group[0]
        reference_path = Path(reference_dir) / run["tier"] / f"{run['notebook']}.json"
        ours = read_results(reference_path) if reference_path.exists() else None
        seeds = sorted(r.get("parameters", {}).get("seed", "?") for r in group)
        head = f"## {run['notebook']} ({run['tier']} tier)" + (f", {len(group)} seeds: {seeds}" if len(group) > 1 else "")
        if ours is None:
            blocks.append(f"{head}\n\nNo reference run of ours at this tier ({reference_path}).")
            continue
        env = ours.get("environment", {})
        lines = [head, "", f"Ours: commit {env.get('git_commit') or 'unknown'}, torch {env.get('torch')}, "
                           f"{env.get('device')}, {ours.get('wall_seconds', float('nan')):.0f} s."]
        ignored = IGNORED_PARAMETERS if len(group) > 1 else ("results_dir", "data_root")  # one run: say its seed
        differing = sorted(k for k, v in ours.get("parameters", {}).items()
                           if k not in ignored and run.get("parameters", {}).get(k, v) != v)
        if differing:
            lines.append(f"Parameters that differ from ours: {', '.join(differing)}.")
        keys = list(dict.fromkeys(k for r in group for k in r["metrics"]))
        keys += [k for k in ours["metrics"] if k not in keys]
        if len(group) > 1:
            lines += ["", "| metric | yours (mean ± sd over seeds) | ours | paper | Δ (mean − ours) | Δ / sd |",
                      "|---|---|---|---|---|---|"]
        else:
            lines += ["", "| metric | yours | ours | paper | Δ (yours − ours) |", "|---|---|---|---|---|"]
        same = 0
        for key in keys:
            values = [r["metrics"][key] for r in group if r["metrics"].get(key) is not None]
            theirs = ours["metrics"].get(key)
            reported = paper.get((run.get("paper", ""), key))
            paper_cell = _number(reported.value) if reported else "—"
            if len(group) == 1:
                mine = values[0] if values else None
                delta = mine - theirs if mine is not None and theirs is not None else None
                same += delta == 0
                lines.append(f"| {key} | {_number(mine)} | {_number(theirs)} | {paper_cell} | "
                             f"{'same' if delta == 0 else _number(delta)} |")
                continue
            if len(values) < 2:
                lines.append(f"| {key} | {_number(values[0]) if values else '—'} (1 seed) | {_number(theirs)} | "
                             f"{paper_cell} | — | — |")
                continue
            mean, sd = statistics.mean(values), statistics.stdev(values)  # sample sd over seeds (ddof = 1)
            delta = mean - theirs if theirs is not None else None
            units = "—" if delta is None or sd == 0 else f"{delta / sd:+.2f}"
            lines.append(f"| {key} | {_number(mean)} ± {_number(sd)} (n = {len(values)}) | {_number(theirs)} | "
                         f"{paper_cell} | {_number(delta)} | {units} |")
        if len(group) == 1:
            lines += ["", f"{same} of {len(keys)} metrics identical to ours."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
