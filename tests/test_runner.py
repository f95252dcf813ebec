from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fedrepro.cli import main
from fedrepro.papers import p03_inversion as inversion, p04_cvb as cvb, p05_ats as ats
from fedrepro.validation import names
from fedrepro.runner import (ParameterError, check_ranges, find_notebook, list_notebooks, notebook_parameters,
                             parse_cli_value, tier_parameters, validate_parameters)
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


#: Parameters of a section that do not start with its name (``multistep_lrs``, ``training_models``, ``table2_attacks``
#: and ``figure2_policies`` do), with the sections (any one of them) that use them.
SECTION_OF = {
    "03_inversion": {"no_augmentation_models": ("training",), "defense_model": ("noise", "pruning"),
                     "defense_state": ("noise", "pruning")},
    "04_cvb": {"grid_images": ("II", "V")},
    "05_transformation_search": {"random_policies": ("table1",), "published_policies": ("table1",),
                                 "transfer_dataset": ("table4",)},
}
ROMAN = ("", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")  # notebook 04's table names


def sections_of(notebook: str, parameter: str) -> tuple[str, ...]:
    """The sections ``parameter`` configures (any one running uses it), or () for a shared parameter.

    A prefix ``table<N>_`` or ``figure<N>_`` names a section, also as notebook 04 spells them (``IV``, ``fig9``); a
    prefix that is a section name (``multistep_``) names that section."""
    allowed = SECTION_LISTS[notebook][1]
    if parameter in SECTION_OF.get(notebook, {}):
        return SECTION_OF[notebook][parameter]
    prefix = parameter.split("_")[0]
    numbered = re.fullmatch(r"(table|figure)(\d+)", prefix)
    if numbered:
        kind, number = numbered.groups()
        spellings = {prefix, ROMAN[int(number)] if kind == "table" else f"fig{number}"}
        found = tuple(s for s in allowed if s in spellings)
        assert found, f"{notebook}: {parameter} names a section {prefix!r} that is not one of {', '.join(allowed)}"
        return found
    return (prefix,) if prefix in allowed and parameter != SECTION_LISTS[notebook][0] else ()


def unrun_sections(notebook: str, values: dict) -> list[str]:
    """The parameters ``values`` sets for a section its own selector list (``experiments``/``tables``) leaves out."""
    selector = SECTION_LISTS[notebook][0]
    chosen = set(values[selector])
    return [f"{name} configures {' or '.join(sections)}, which {selector} {sorted(chosen)} leaves out"
            for name in values if (sections := sections_of(notebook, name)) and not chosen & set(sections)]


def test_every_notebook_with_a_section_list_is_known():
    """A new notebook with ``experiments`` or ``tables`` must be listed above, or its tiers go unchecked."""
    with_lists = {nb.stem for nb in NOTEBOOKS if {"experiments", "tables"} & set(notebook_parameters(nb))}
    assert with_lists == set(SECTION_LISTS)


TIER_FILES = [path for name in sorted(SECTION_LISTS) for path in sorted((REPO / "parameters" / name).glob("*.yaml"))
              if path.stem != "smoke"]


@pytest.mark.parametrize("path", TIER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_tier_runs_the_sections_it_configures(path):
    """A tier file (quick, paper, a future gpu.yaml) that sets a section's parameters but leaves the section out
    of its selector list would skip that section silently (paper.yaml of 03 once configured multistep_* without
    running it)."""
    name = path.parent.name
    selector = SECTION_LISTS[name][0]
    tier = yaml.safe_load(path.read_text())
    default = notebook_parameters(REPO / "notebooks" / f"{name}.ipynb")[selector]  # a file may keep the default list
    assert unrun_sections(name, {selector: default} | tier) == []


def test_a_configured_but_unrun_section_is_found():
    old_03_paper = {"experiments": ["training", "architectures", "noise", "pruning"], "architectures": ["resnet18"],
                    "multistep_model": "resnet18", "multistep_steps": [1, 5], "restarts": 8}
    assert unrun_sections("03_inversion", old_03_paper) == [
        "multistep_model configures multistep, which experiments ['architectures', 'noise', 'pruning', 'training'] "
        "leaves out",
        "multistep_steps configures multistep, which experiments ['architectures', 'noise', 'pruning', 'training'] "
        "leaves out"]
    assert unrun_sections("04_cvb", {"tables": ["I", "II"], "table3_attacks": ["ig"], "figure9_panels": ["P"],
                                     "grid_images": 4}) == [
        "table3_attacks configures III, which tables ['I', 'II'] leaves out",
        "figure9_panels configures fig9, which tables ['I', 'II'] leaves out"]
    assert unrun_sections("05_transformation_search", {"tables": ["table1"], "figure2_attack_iterations": 2500,
                                                        "transfer_dataset": "mnist"}) == [
        "figure2_attack_iterations configures figure2, which tables ['table1'] leaves out",
        "transfer_dataset configures table4, which tables ['table1'] leaves out"]
    with pytest.raises(AssertionError, match="table7_rows names a section 'table7'"):
        unrun_sections("04_cvb", {"tables": ["I"], "table7_rows": 3})


def header_overrides(path: Path) -> list[dict]:
    """The ``-p NAME VALUE`` overrides a tier file's header comment shows: one set per ``fedrepro run`` command
    (its continuation lines included) and one per quoted `` `-p NAME VALUE` ``."""
    header = " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#"))
    commands = re.findall(r"fedrepro run \S+ --tier \S+((?:\s+(?:-p \S+ \S+|--out \S+))*)", header)
    commands += re.findall(r"`(-p \S+ [^`]+)`", header)
    return [{name: parse_cli_value(value, name) for name, value in re.findall(r"-p (\S+) (\S+)", command)}
            for command in commands]


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "parameters").glob("[0-9][0-9]_*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_overrides_a_tier_header_shows_are_valid(path):
    """A command a header tells readers to run must pass the CLI's checks (``-p delta 1e-4`` once did not:
    YAML 1.1 reads 1e-4 as a string)."""
    notebook = REPO / "notebooks" / f"{path.parent.name}.ipynb"
    for overrides in header_overrides(path):
        values = tier_parameters(notebook, path.stem) | overrides
        validate_parameters(notebook, values)
        check_ranges(notebook, values)


def test_header_overrides_are_found(tmp_path):
    header = tmp_path / "paper.yaml"
    header.write_text("# run: fedrepro run 01 --tier paper -p model_name resnet18\n#      -p delta 0.0001 --out x\n"
                      "# or `-p restarts 1`; not fedrepro run at 55aacc9\ntier: paper\n")
    assert header_overrides(header) == [{"model_name": "resnet18", "delta": 0.0001}, {"restarts": 1}]


def test_quickstart_parameters_mirror_its_parameters_cell():
    """Notebook 00 has no dataclass of its own in the notebook: the one the runner checks must not drift from it."""
    import dataclasses

    from fedrepro.papers.p00_quickstart import QuickstartParameters

    cell = notebook_parameters(REPO / "notebooks" / "00_quickstart.ipynb")
    assert dataclasses.asdict(QuickstartParameters()) == {k: v for k, v in cell.items() if k != "results_dir"}


def test_parameter_yaml_is_safe_refuses_repeated_keys_and_keeps_merge_keys():
    from fedrepro.runner import load_yaml

    assert load_yaml("base: &b {lr: 0.1, rounds: 3}\nrun: {<<: *b, rounds: 5}\n", "f.yaml")["run"] == \
        {"lr": 0.1, "rounds": 5}  # a merged key may be overridden: that is not a repetition
    for text, message in [("lr: 0.1\nrounds: 3\nlr: 0.2\n", "f.yaml, line 3, column 1: not valid YAML ('lr' is given twice)"),
                          ("? [1, 2]\n: 3\n", "not a list or mapping"),
                          ("!!python/object/apply:os.system ['true']\n", "could not determine a constructor")]:
        with pytest.raises(ParameterError, match=re.escape(message)):
            load_yaml(text, "f.yaml")
