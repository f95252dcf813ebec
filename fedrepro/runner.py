"""Run notebooks headlessly with papermill, at a tier, with their parameters checked first.

Tiers: ``smoke`` is the defaults of the notebook's ``parameters`` cell; ``quick`` and ``paper`` are
``parameters/<notebook>/<tier>.yaml`` beside ``notebooks/``. papermill only warns on unknown
parameter names, so every override is checked against the parameters cell — names and types —
before anything runs.
"""
from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from fedrepro.results import PARTIAL_ENV, TIERS, write_summary


class ParameterError(ValueError):
    """An override that the notebook does not declare, of the wrong type, or outside its valid range."""


class NotebookError(RuntimeError):
    """A notebook cell raised: one paragraph saying where and what, and where the full traceback is."""

    def __init__(self, notebook: Path, executed: Path, cell: int, where: str, ename: str, evalue: str) -> None:
        self.notebook, self.executed, self.cell, self.where, self.ename, self.evalue = \
            notebook, executed, cell, where, ename, evalue
        super().__init__(f"{notebook.stem} failed in cell {cell} ({where}): {ename}: {evalue}\n"
                         f"  the executed notebook, with the full traceback, is {executed}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: plain YAML keeps the
    last value silently, so a parameter file that sets ``lr`` twice would run with whichever came second."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *anchor: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # a list or mapping as a key: not hashable, and never a parameter name
                raise yaml.constructor.ConstructorError(None, None, "a key must be a name, not a list or mapping",
                                                        key_node.start_mark) from None
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` (plus: no key twice in a mapping) with a ParameterError that names ``source``,
    the line and the column, and what the parser expected, instead of a traceback from the YAML library."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(part) for part in (getattr(error, "context", None), getattr(error, "problem", None))
                           if part) or str(error).splitlines()[0]
        raise ParameterError(f"{source}{where}: not valid YAML ({problem})") from None


def read_parameter_file(path: str | os.PathLike) -> dict[str, Any]:
    """A ``-f`` file: a YAML mapping of parameter names to values."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"parameter file {path} does not exist")
    values = load_yaml(path.read_text(), str(path))
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ParameterError(f"{path} must be a mapping of parameter names to values, got {type(values).__name__}")
    return values


def find_notebook(name: str | os.PathLike, notebooks_dir: str | os.PathLike = "notebooks") -> Path:
    """A path to an .ipynb, or a name/prefix such as ``00`` or ``00_quickstart`` in ``notebooks_dir``."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path.resolve()
    folder = Path(notebooks_dir)
    matches = sorted(folder.glob(f"{path.stem}*.ipynb")) if folder.is_dir() else []
    if len(matches) == 1:
        return matches[0].resolve()
    available = ", ".join(p.stem for p in sorted(folder.glob("*.ipynb"))) if folder.is_dir() else f"none ({folder} missing)"
    what = "matches several notebooks" if matches else "is not a notebook"
    raise FileNotFoundError(f"{str(name)!r} {what}; available: {available}")


def list_notebooks(notebooks_dir: str | os.PathLike = "notebooks") -> list[Path]:
    return sorted(p.resolve() for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """Names and default values of the cell tagged ``parameters`` (literals only, never executed)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"{notebook} needs exactly one cell tagged 'parameters', found {len(tagged)}")
    source = "".join(tagged[0]["source"])
    defaults: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            raise ParameterError(f"{notebook}: the parameters cell may only assign literals, found: {ast.unparse(node)}")
        try:
            defaults[name] = ast.literal_eval(value)
        except ValueError:
            raise ParameterError(f"{notebook}: parameter {name!r} is not a literal: {ast.unparse(value)}") from None
    return defaults


def tier_parameters(notebook: str | os.PathLike, tier: str) -> dict[str, Any]:
    """The overrides a tier applies: none for smoke, ``parameters/<stem>/<tier>.yaml`` otherwise."""
    if tier not in TIERS:
        raise ParameterError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    if tier == "smoke":
        return {}
    notebook = Path(notebook)
    path = notebook.parent.parent / "parameters" / notebook.stem / f"{tier}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"tier {tier!r} of {notebook.stem} needs {path}")
    values = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(values, dict):
        raise ParameterError(f"{path} must be a mapping of parameter names to values")
    if values.get("tier", tier) != tier:
        raise ParameterError(f"{path} says tier {values['tier']!r}, expected {tier!r}")
    return values | {"tier": tier}


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def validate_parameters(notebook: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of ``overrides`` against the parameters cell; return them unchanged."""
    defaults = notebook_parameters(notebook)
    listing = "\n".join(f"  {k} = {v!r}" for k, v in defaults.items())
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ParameterError(f"{Path(notebook).stem} has no parameter(s) {', '.join(unknown)}. Its parameters:\n{listing}")
    for key, value in overrides.items():
        if not _type_ok(defaults[key], value):
            raise ParameterError(f"parameter {key!r} of {Path(notebook).stem} expects {type(defaults[key]).__name__} "
                                 f"(default {defaults[key]!r}), got {type(value).__name__} {value!r}. Its parameters:\n{listing}")
    return overrides


def parse_cli_value(text: str, name: str = "value") -> Any:
    """``-p key value`` values are YAML scalars/lists: ``3``, ``0.1``, ``true``, ``[1, 2]``, ``cnn``."""
    return load_yaml(text, f"-p {name} {text!r}")


def check_ranges(notebook: str | os.PathLike, parameters: dict[str, Any]) -> None:
    """Check a run's values before its kernel starts, with the notebook's own parameter dataclass
    (:data:`fedrepro.papers.PARAMETERS`): a count of 0 or an unknown dataset then fails in a second,
    naming the parameter and what is valid, instead of deep inside the notebook."""
    from fedrepro.papers import check_parameters

    values = notebook_parameters(notebook) | parameters
    try:
        check_parameters(Path(notebook).stem, values)
    except (ValueError, TypeError) as error:
        raise ParameterError(f"{Path(notebook).stem}: {error}") from None


def run_notebook(notebook: str | os.PathLike, tier: str = "smoke", overrides: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Execute ``notebook`` at ``tier`` (plus ``overrides``) into ``out_dir``; return the output folder.

    The executed notebook and its ``results.json`` land in ``out_dir`` (default
    ``reports/<tier>/<notebook>``); the kernel runs in the notebook's own folder, as in JupyterLab.
    """
    import papermill

    notebook = Path(notebook).resolve()
    parameters = tier_parameters(notebook, tier) | dict(overrides or {})
    out = Path(out_dir or Path("reports") / tier / notebook.stem).resolve()
    parameters["results_dir"] = str(out)
    parameters.setdefault("tier", tier)
    validate_parameters(notebook, parameters)
    check_ranges(notebook, parameters)
    out.mkdir(parents=True, exist_ok=True)
    executed = out / notebook.name
    partial = out / "results.partial.json"  # the kernel inherits the variable: see fedrepro.results.Report
    partial.unlink(missing_ok=True)  # an earlier run's would pass for this one's
    # one run_notebook per process at a time: the variable is process-wide (the sweep's executors keep to that)
    saved = os.environ.get(PARTIAL_ENV)
    os.environ[PARTIAL_ENV] = str(partial)
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                   kernel_name="python3", cwd=str(notebook.parent), progress_bar=progress)
    except papermill.PapermillExecutionError as error:
        raise NotebookError(notebook, executed, error.cell_index, _cell_heading(executed, error.cell_index,
                                                                                 error.source),
                            error.ename, _short(error.evalue)) from error
    finally:
        if saved is None:
            os.environ.pop(PARTIAL_ENV, None)
        else:
            os.environ[PARTIAL_ENV] = saved
    partial.unlink(missing_ok=True)  # complete: results.json holds all of it
    return out


def _cell_heading(executed: Path, index: int, source: str) -> str:
    """The failed cell, as a reader finds it: the heading of the section it is in and its first line."""
    first = next((line.strip() for line in source.splitlines() if line.strip() and not line.startswith("#")),
                 source.strip()[:60])
    first = first if len(first) <= 70 else first[:67] + "..."
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return first
    for cell in reversed(cells[:index]):
        text = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown" and text.lstrip().startswith("#"):
            return f"section '{text.lstrip().splitlines()[0].lstrip('# ').strip()}', {first}"
    return first


def _short(message: str, lines: int = 6) -> str:
    """An exception message of at most ``lines`` lines (fedrepro's own messages say how to fix it there)."""
    kept = [line for line in str(message).splitlines() if line.strip()]
    return "\n".join(kept[:lines]) + ("\n  ..." if len(kept) > lines else "")


def reproduce(tier: str = "quick", notebooks_dir: str | os.PathLike = "notebooks",
              reports_dir: str | os.PathLike = "reports", progress: bool = True, resume: bool = False) -> Path:
    """Run every numbered notebook at ``tier`` and write ``summary.md``/``summary.html``.

    A failing notebook does not stop the others; failures are listed and re-raised at the end. All
    quick tiers take over an hour on a CPU, so ``resume`` keeps a notebook whose ``results.json`` for
    this tier is already there (the summary names the commit each was measured on).
    """
    root = Path(reports_dir) / tier
    failures = []
    for notebook in list_notebooks(notebooks_dir):
        if resume and _finished(root / notebook.stem / "results.json", tier):
            print(f"[fedrepro] {notebook.stem} ({tier}) already done, kept (resume)", flush=True)
            continue
        started = time.perf_counter()
        print(f"[fedrepro] {notebook.stem} ({tier}) ...", flush=True)
        try:
            run_notebook(notebook, tier, out_dir=root / notebook.stem, progress=progress)
            print(f"[fedrepro] {notebook.stem} done in {time.perf_counter() - started:.0f} s", flush=True)
        except Exception as error:  # noqa: BLE001 - one failing notebook must not hide the others
            failures.append(str(error) if isinstance(error, (NotebookError, ParameterError))
                            else f"{notebook.stem}: {type(error).__name__}: {error}")
            print(f"[fedrepro] {notebook.stem} FAILED", flush=True)
    summary = write_summary(root)
    if failures:
        raise RuntimeError("some notebooks failed:\n" + "\n".join(failures) + f"\n(summary of the rest: {summary})")
    return summary


def _finished(results: Path, tier: str) -> bool:
    """A readable ``results.json`` written at ``tier`` (a run that died midway leaves none or another tier's)."""
    try:
        return json.loads(results.read_text()).get("tier") == tier
    except (OSError, ValueError):
        return False
