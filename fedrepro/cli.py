"""``fedrepro`` command line: run a notebook at a tier, reproduce all, list parameters, make badges."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from fedrepro.results import TIERS
from fedrepro.runner import (NotebookError, ParameterError, find_notebook, list_notebooks, notebook_parameters,
                             parse_cli_value, read_parameter_file, reproduce, run_notebook, tier_parameters)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrepro", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one paragraph per failure (or FEDREPRO_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute one notebook headlessly with papermill")
    run.add_argument("notebook", help="path, or a name/prefix in ./notebooks (e.g. 00 or 00_quickstart)")
    run.add_argument("--tier", choices=TIERS, default="smoke")
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                     help="a YAML mapping of parameters (several allowed, later wins; -p wins over all)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter (VALUE is read as YAML: 3, 0.1, true, [1, 2], cnn)")
    run.add_argument("--out", help="output folder (default reports/<tier>/<notebook>)")

    rep = commands.add_parser("reproduce", help="run every notebook at a tier and write reports/<tier>/summary.md")
    rep.add_argument("--tier", choices=TIERS, default="quick")
    rep.add_argument("--reports", default="reports")
    rep.add_argument("--resume", action="store_true",
                     help="keep notebooks that already have results.json at this tier (continue an interrupted run)")

    params = commands.add_parser("params", help="list a notebook's parameters and a tier's values")
    params.add_argument("notebook")
    params.add_argument("--tier", choices=TIERS, default="smoke")

    sweep = commands.add_parser("sweep", help="run a parameter grid of one notebook (resumable)")
    sweep.add_argument("spec", help="sweep spec YAML (see parameters/sweeps/)")
    sweep.add_argument("--out", help="output folder (default reports/sweeps/<spec name>)")
    sweep.add_argument("--executor", choices=("local", "dask"), default="local")
    sweep.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (implies --executor dask)")
    sweep.add_argument("--workers", type=int, help="parallel runs (default: CPU cores)")
    sweep.add_argument("--retry-failed", action="store_true", help="run failed points again")

    collect = commands.add_parser("collect", help="gather a sweep's results into results.csv / results.md / plots")
    collect.add_argument("sweep_dir")

    compare = commands.add_parser("compare", help="your runs' metrics beside our reference runs' and the paper's")
    compare.add_argument("path", help="a results.json, a run folder, or reports/<tier>")
    compare.add_argument("--reference", help="folder of reference runs (default: the ones fedrepro ships)")

    badges = commands.add_parser("badges", help="print the README's Binder/Colab badge table")
    badges.add_argument("--repository", help="GitHub URL (default: the project's configured Repository URL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            overrides: dict = {}
            for path in args.parameters_file:
                overrides |= read_parameter_file(path)
            overrides |= {name: parse_cli_value(value, name) for name, value in args.parameter}
            out = run_notebook(find_notebook(args.notebook), args.tier, overrides, args.out)
            print(f"wrote {out}")
        elif args.command == "reproduce":
            print(f"wrote {reproduce(args.tier, reports_dir=args.reports, resume=args.resume)}")
        elif args.command == "params":
            notebook = find_notebook(args.notebook)
            values = notebook_parameters(notebook) | tier_parameters(notebook, args.tier)
            for name, value in values.items():
                print(f"{name} = {value!r}")
        elif args.command == "sweep":
            from fedrepro.sweep import SweepSpec, collect, run_sweep

            out = args.out or Path("reports") / "sweeps" / Path(args.spec).stem
            outcome = run_sweep(SweepSpec.from_yaml(args.spec), out, executor=args.executor, workers=args.workers,
                                scheduler=args.scheduler, retry_failed=args.retry_failed)
            print(f"{outcome.done} run, {outcome.skipped} already done or failed before, {len(outcome.failed)} failed now")
            print(f"wrote {collect(out)[1]}")
            return 1 if outcome.failed else 0
        elif args.command == "collect":
            from fedrepro.sweep import collect

            print(f"wrote {', '.join(map(str, collect(args.sweep_dir)))}")
        elif args.command == "compare":
            from fedrepro.reference import REFERENCE_DIR, compare

            print(compare(args.path, args.reference or REFERENCE_DIR), end="")
        elif args.command == "badges":
            from fedrepro.badges import badge_table

            print(badge_table(list_notebooks(), args.repository))
    except (ParameterError, FileNotFoundError, ValueError, NotebookError, RuntimeError) as error:
        if args.debug or os.environ.get("FEDREPRO_DEBUG"):
            traceback.print_exc()
        hint = "" if args.debug else "\n  (--debug shows the full traceback)"
        print(f"fedrepro: {error}{hint if isinstance(error, (NotebookError, RuntimeError)) else ''}", file=sys.stderr)
        return 1 if isinstance(error, (NotebookError, RuntimeError)) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
