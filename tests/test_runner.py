from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedrepro.cli import main
from fedrepro.papers import p03_inversion as inversion, p04_cvb as cvb, p05_ats as ats
from fedrepro.validation import names
from fedrepro.runner import (ParameterError, find_notebook, list_notebooks, notebook_parameters,
                             tier_parameters, validate_parameters)
from fedrepro.sweep import SweepSpec

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = list_notebooks(REPO / "notebooks")


def make_notebook(folder: Path, source: str, name: str = "01_demo") -> Path:
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": source, "outputs": [],
            "execution_count": None}
    path = folder / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_parameters_cell_is_read_without_executing_it(tmp_path):
    nb = make_notebook(tmp_path, "seed = 0\nlr: float = 0.1\nname = 'cnn'\nsizes = [1, 2]\nroot = None\n")
    assert notebook_parameters(nb) == {"seed": 0, "lr": 0.1, "name": "cnn", "sizes": [1, 2], "root": None}
    bad = make_notebook(tmp_path, "seed = __import__('os').getpid()\n", name="02_bad")
    with pytest.raises(ParameterError, match="not a literal"):
        notebook_parameters(bad)


def test_unknown_names_and_wrong_types_are_refused_with_the_parameter_list(tmp_path):
    nb = make_notebook(tmp_path, "seed = 0\nlr = 0.1\nuse_dp = False\nroot = None\n")
    assert validate_parameters(nb, {"lr": 1, "root": "/data", "use_dp": True}) == {"lr": 1, "root": "/data", "use_dp": True}
    with pytest.raises(ParameterError, match=r"no parameter\(s\) learning_rate(.|\n)*seed = 0"):
        validate_parameters(nb, {"learning_rate": 0.1})
    with pytest.raises(ParameterError, match="'seed' .* expects int .* got str"):
        validate_parameters(nb, {"seed": "zero"})
    with pytest.raises(ParameterError, match="expects bool"):
        validate_parameters(nb, {"use_dp": 1})
    with pytest.raises(ParameterError, match="expects int"):
        validate_parameters(nb, {"seed": 1.5})


def test_tier_files_must_exist_and_agree(tmp_path):
    nb = make_notebook(tmp_path, "tier = 'smoke'\nrounds = 1\n")
    assert tier_parameters(nb, "smoke") == {}
    with pytest.raises(FileNotFoundError, match="quick.yaml"):
        tier_parameters(nb, "quick")
    folder = tmp_path / "parameters" / "01_demo"
    folder.mkdir(parents=True)
    (folder / "quick.yaml").write_text("tier: paper\nrounds: 5\n")
    with pytest.raises(ParameterError, match="says tier 'paper'"):
        tier_parameters(nb, "quick")
    with pytest.raises(ParameterError, match="unknown tier"):
        tier_parameters(nb, "huge")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_tier_is_valid(notebook):
    params = notebook_parameters(notebook)
    assert {"tier", "seed", "results_dir"} <= set(params) and params["tier"] == "smoke"
    for tier in ("quick", "gpu", "paper"):
        values = tier_parameters(notebook, tier)
        validate_parameters(notebook, values)
        assert yaml.safe_load((REPO / "parameters" / notebook.stem / f"{tier}.yaml").read_text())["tier"] == tier


def test_cli_reports_bad_parameters_with_exit_code_2(capsys):
    code = main(["run", str(NOTEBOOKS[0]), "-p", "no_such_parameter", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no_such_parameter" in err and "seed = 0" in err
    assert main(["run", "99_missing"]) == 2


def test_find_notebook_by_prefix():
    assert find_notebook("00", REPO / "notebooks").name == "00_quickstart.ipynb"
    with pytest.raises(FileNotFoundError, match="available: 00_quickstart"):
        find_notebook("zz", REPO / "notebooks")


def test_reproduce_keeps_going_after_a_failure_and_resume_skips_finished_notebooks(tmp_path, monkeypatch):
    import fedrepro.runner as runner
    from fedrepro.results import Report

    for name in ("00_first", "01_broken", "02_third"):
        make_notebook(tmp_path, "seed = 0\n", name=name)
    calls = []

    def fake_run(notebook, tier, out_dir, progress):
        calls.append(notebook.stem)
        if notebook.stem == "01_broken":
            raise ValueError("boom")
        report = Report(notebook.stem, paper="04", tier=tier, parameters={})
        report.measure("cnn/parameters", 1.0)
        report.write(out_dir)

    monkeypatch.setattr(runner, "run_notebook", fake_run)
    reports = tmp_path / "reports"
    with pytest.raises(RuntimeError, match="01_broken: ValueError: boom"):
        runner.reproduce("quick", tmp_path / "notebooks", reports, progress=False)
    assert calls == ["00_first", "01_broken", "02_third"]
    summary = (reports / "quick" / "summary.md").read_text()
    assert "## 00_first" in summary and "## 02_third" in summary and "commit " in summary

    calls.clear()
    with pytest.raises(RuntimeError):
        runner.reproduce("quick", tmp_path / "notebooks", reports, progress=False, resume=True)
    assert calls == ["01_broken"]  # the finished ones are kept
    calls.clear()
    (reports / "quick" / "02_third" / "results.json").write_text("{not json")  # a run that died while writing
    with pytest.raises(RuntimeError):
        runner.reproduce("quick", tmp_path / "notebooks", reports, progress=False, resume=True)
    assert calls == ["01_broken", "02_third"]


SECTION_LISTS = {"03_inversion": ("experiments", inversion.EXPERIMENTS), "04_cvb": ("tables", cvb.TABLES),
                 "05_transformation_search": ("tables", ats.SECTIONS)}


def test_section_lists_refuse_unknown_names():
    assert names("tables", ("table1", "figure5"), ats.SECTIONS) == ["table1", "figure5"]
    with pytest.raises(ValueError, match=r"^tables\[1\] = 'tabel1' is invalid: choose one of figure5, table1"):
        names("tables", ["table1", "tabel1"], ats.SECTIONS)
    with pytest.raises(ValueError, match="^tables = 'table1' is invalid: expected a list of names"):
        names("tables", "table1", ats.SECTIONS)


@pytest.mark.parametrize("name", sorted(SECTION_LISTS))
def test_every_tier_and_sweep_names_known_sections(name):
    """A typo in a section list would skip that section silently; each parameter set must pass the check."""
    parameter, allowed = SECTION_LISTS[name]
    notebook = REPO / "notebooks" / f"{name}.ipynb"
    sets = [notebook_parameters(notebook)] + [tier_parameters(notebook, tier) for tier in ("quick", "gpu", "paper")]
    for sweep in (REPO / "parameters" / "sweeps").glob(f"{name}_*.yaml"):
        sets += SweepSpec.from_yaml(sweep).expand()
    chosen = [s[parameter] for s in sets if parameter in s]
    assert chosen, f"no parameter set of {name} names its {parameter}"
    for sections in chosen:
        names(parameter, sections, allowed)  # raises on an unknown name
