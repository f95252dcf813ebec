"""Parameter sweeps: many papermill runs of one notebook, on a local process pool or a Dask cluster.

A spec (YAML) names a notebook, a base tier, a grid and seeds::

    notebook: 00_quickstart
    tier: quick
    grid:                 # cartesian product of these values
      lr: [0.001, 0.0003]
      rounds: [10, 30]
    points:               # and/or an explicit list of overrides
      - {optimizer: sgd, lr: 0.05}
    seeds: [0, 1, 2]

The points are the product of ``grid`` followed by the ``points`` list, each run once per seed.
Every run goes to ``<out>/<hash>/`` where the hash is a stable digest of the notebook, tier and
all overrides (independent of key order), so a sweep resumes where it stopped: a point whose
``results.json`` is present and valid is never rerun, and a failing point is recorded in
``error.txt`` without stopping the others (``retry_failed`` runs those again).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import statistics
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from fedrepro.results import TIERS
from fedrepro.runner import (check_ranges, find_notebook, load_yaml, run_notebook, tier_parameters,
                             validate_parameters)


@dataclass
class SweepSpec:
    notebook: str
    tier: str = "smoke"
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepSpec":
        if not Path(path).is_file():
            raise FileNotFoundError(f"sweep spec {path} does not exist")
        raw = load_yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a sweep spec is a mapping with notebook, tier, grid, points, seeds")
        unknown = set(raw) - {"notebook", "tier", "grid", "points", "seeds"}
        if unknown or "notebook" not in raw:
            raise ValueError(f"{path}: a sweep spec has notebook, tier, grid, points, seeds; got {sorted(raw)}")
        spec = cls(**raw)
        if spec.tier not in TIERS:
            raise ValueError(f"{path}: unknown tier {spec.tier!r}")
        for name, values in spec.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{path}: grid entry {name!r} must be a non-empty list")
        return spec

    def expand(self) -> list[dict[str, Any]]:
        """Every run's overrides: product of the grid, then the explicit points, each for every seed."""
        names = list(self.grid)
        combos = [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))] if names else []
        base = combos + [dict(p) for p in self.points] or [{}]
        return [point | {"seed": seed} for point in base for seed in self.seeds]


def point_hash(notebook: str, tier: str, overrides: dict[str, Any]) -> str:
    """A stable 12-hex-digit name for a run, independent of the order of ``overrides``."""
    text = json.dumps({"notebook": notebook, "tier": tier, "overrides": overrides}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_finished(folder: Path) -> bool:
    try:
        return "metrics" in json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return False


def run_point(notebook: str, tier: str, overrides: dict[str, Any], folder: str) -> str:
    """Execute one point (in a worker); returns "done" or raises. Top level so it pickles."""
    run_notebook(notebook, tier, overrides, out_dir=folder, progress=False)
    if not is_finished(Path(folder)):
        raise RuntimeError(f"{notebook} finished without writing a valid results.json in {folder}")
    return "done"


@dataclass
class SweepOutcome:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, executor: str = "local", workers: int | None = None,
              scheduler: str | None = None, retry_failed: bool = False,
              runner: Callable[[str, str, dict[str, Any], str], str] = run_point,
              progress: bool = True) -> SweepOutcome:
    """Run every point of ``spec`` not finished yet; see the module docstring for the layout."""
    notebook = str(find_notebook(spec.notebook))
    base = tier_parameters(notebook, spec.tier)
    for overrides in spec.expand():  # every point's names, types and ranges, before any point runs
        validate_parameters(notebook, base | overrides)
        check_ranges(notebook, base | overrides)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(spec.__dict__, indent=2, default=str))

    todo, outcome = [], SweepOutcome()
    for overrides in spec.expand():
        folder = out / point_hash(Path(notebook).stem, spec.tier, overrides)
        folder.mkdir(exist_ok=True)
        (folder / "point.json").write_text(json.dumps(overrides, indent=2, sort_keys=True, default=str))
        failed_before = (folder / "error.txt").exists()
        if is_finished(folder) or (failed_before and not retry_failed):
            outcome.skipped += 1
            continue
        (folder / "error.txt").unlink(missing_ok=True)
        todo.append((overrides, folder))

    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc=f"sweep {Path(notebook).stem}", unit="run", disable=not progress)
    pool, submit = _executor(executor, workers, scheduler)
    try:
        pending = {submit(runner, notebook, spec.tier, o, str(f)): f for o, f in todo}
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                folder = pending.pop(future)
                try:
                    future.result()
                    outcome.done += 1
                except Exception as error:  # noqa: BLE001 - a failing point is recorded, the rest go on
                    (folder / "error.txt").write_text("".join(traceback.format_exception(error)))
                    outcome.failed.append(folder.name)
                bar.update(1)
                bar.set_postfix(done=outcome.done, running=min(len(pending), workers), failed=len(outcome.failed))
    finally:
        bar.close()
        pool.shutdown()
    return outcome


def _executor(kind: str, workers: int, scheduler: str | None):
    """(handle, submit) for a local process pool or a Dask client; both return concurrent futures."""
    if kind == "local" and scheduler is None:
        pool = ProcessPoolExecutor(max_workers=workers)
        return pool, pool.submit
    if kind not in ("local", "dask"):
        raise ValueError(f"unknown executor {kind!r}; use 'local' or 'dask'")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("the Dask executor needs `pip install 'fedrepro[sweep]'` (dask and distributed)") from None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)

    def submit(fn, *args):
        return _DaskFuture(client.submit(fn, *args, pure=False))

    class Handle:
        def shutdown(self) -> None:
            cluster = client.cluster
            client.close()
            if cluster is not None and not scheduler:
                cluster.close()

    return Handle(), submit


class _DaskFuture:
    """Adapts a Dask future to what :func:`concurrent.futures.wait` needs, via a local future."""

    def __new__(cls, dask_future):
        from concurrent.futures import Future

        local: Future = Future()

        def relay(f) -> None:
            try:
                local.set_result(f.result())
            except Exception as error:  # noqa: BLE001 - passed on to the waiting side
                local.set_exception(error)

        dask_future.add_done_callback(relay)
        return local


def collect(sweep_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Gather every point's overrides and metrics into ``results.csv`` and ``results.md``.

    The Markdown file also has, for each (point without seed, paper-reported metric), the mean and
    standard deviation over seeds beside the paper's value.
    """
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the output folder of a fedrepro sweep")
    if not any(folder.glob("*/point.json")):
        raise FileNotFoundError(f"{folder} holds no sweep runs (no <run>/point.json): give the output folder of "
                                f"a fedrepro sweep (default reports/sweeps/<spec name>)")
    rows, comparisons = [], {}
    for point_file in sorted(folder.glob("*/point.json")):
        overrides = json.loads(point_file.read_text())
        status = "done" if is_finished(point_file.parent) else ("failed" if (point_file.parent / "error.txt").exists() else "missing")
        result = json.loads((point_file.parent / "results.json").read_text()) if status == "done" else {}
        rows.append({"run": point_file.parent.name, "status": status, **overrides, **result.get("metrics", {})})
        for row in result.get("comparison", []):
            if row["paper"] is not None:
                key = (json.dumps({k: v for k, v in overrides.items() if k != "seed"}, sort_keys=True), row["setting"])
                comparisons.setdefault(key, (row["paper"], result["tier"], []))[2].append(row["measured"])
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = folder / "results.csv", folder / "results.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if comparisons:
        lines += ["", "## Beside the paper (mean ± std over seeds)", "",
                  "| point | setting | paper | measured | runs | tier |", "|---|---|---|---|---|---|"]
        for (point, setting), (paper, tier, values) in comparisons.items():
            spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else ""
            lines.append(f"| `{point}` | {setting} | {paper:.4g} | {statistics.mean(values):.4g}{spread} | {len(values)} | {tier} |")
    md_path.write_text("\n".join(lines) + "\n")
    _plot_metrics(folder, rows)
    return csv_path, md_path


def _plot_metrics(folder: Path, rows: list[dict[str, Any]]) -> None:
    """One PNG per metric: its mean over seeds against the first numeric swept parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    points = [json.loads(p.read_text()) for p in sorted(folder.glob("*/point.json"))]
    swept = [k for k in dict.fromkeys(k for p in points for k in p) if k != "seed"]
    numeric = [k for k in swept if all(isinstance(r.get(k), (int, float)) for r in done if k in r)]
    if not done or not numeric:
        return
    x_name, others = numeric[0], [k for k in swept if k != numeric[0]]
    metrics = [k for k in dict.fromkeys(k for r in done for k in r) if k not in swept + ["run", "status", "seed"]]
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        groups: dict[str, dict[float, list[float]]] = {}
        for r in done:
            if isinstance(r.get(metric), (int, float)) and x_name in r:
                label = ", ".join(f"{k}={r.get(k)}" for k in others) or metric
                groups.setdefault(label, {}).setdefault(r[x_name], []).append(r[metric])
        for label, by_x in groups.items():
            xs = sorted(by_x)
            ax.plot(xs, [statistics.mean(by_x[x]) for x in xs], marker="o", label=label)
        ax.set(xlabel=x_name, ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"{metric.replace('/', '_')}.png", dpi=120)
        plt.close(fig)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
