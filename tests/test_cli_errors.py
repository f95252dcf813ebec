"""Every mistake a user can make on the command line ends in one message: non-zero exit, no Python
traceback (unless --debug), and the message names the bad value. Most are caught before a kernel starts;
two run a notebook that fails inside a cell."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedrepro import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def in_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # notebook names resolve in ./notebooks


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "bad_yaml": "rounds: [1, 2\n",
        "tagged": "rounds: !!python/object/apply:os.system ['true']\n",
        "a_list": "- rounds\n- 3\n",
        "unknown_name": "roundz: 3\n",
        "wrong_type": "rounds: three\n",
        "bad_range": "lr: -1\n",
        "sweep_bad_yaml": "notebook: 00_quickstart\ngrid: {rounds: [1, 2}\n",
        "sweep_unknown_key": "notebook: 00_quickstart\ngrids: {rounds: [1]}\n",
        "sweep_no_notebook": "grid: {rounds: [1]}\n",
        "sweep_bad_tier": "notebook: 00_quickstart\ntier: huge\ngrid: {rounds: [1]}\n",
        "sweep_empty_grid": "notebook: 00_quickstart\ngrid: {rounds: []}\n",
        "sweep_unknown_parameter": "notebook: 00_quickstart\ngrid: {roundz: [1]}\n",
        "sweep_bad_point": "notebook: 01_robustness\ngrid: {rounds: [2, 0]}\n",
        "sweep_a_list": "- 00_quickstart\n",
        "twice": "rounds: 3\nlr: 0.01\nrounds: 5\n",
    }
    paths = {}
    for name, text in made.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    (tmp_path / "empty_sweep").mkdir()
    return paths


CASES = [  # (argv, a fragment the message must hold)
    (["run", "99_nothing"], "'99_nothing' is not a notebook"),
    (["run", "0"], "matches several notebooks"),
    (["run", "00", "--tier", "huge"], "invalid choice: 'huge'"),
    (["run", "00", "-p", "roundz", "3"], "no parameter(s) roundz"),
    (["run", "00", "-p", "rounds", "three"], "'rounds' of 00_quickstart expects int"),
    (["run", "00", "-p", "rounds", "[1, 2"], "-p rounds '[1, 2', line 1, column"),
    (["run", "00", "-p", "rounds", "!!python/object/apply:os.system ['true']"], "not valid YAML"),
    (["run", "00", "-p", "num_clients", "0"], "num_clients = 0 is invalid"),
    (["run", "00", "-p", "backend", "grpc"], "backend = 'grpc' is invalid: choose one of"),
    (["run", "01", "-p", "rounds", "-3"], "rounds = -3 is invalid"),
    (["run", "01", "-p", "num_clients", "0"], "num_clients = 0 is invalid"),
    (["run", "02", "-p", "lr", "-1"], "lr = -1 is invalid"),
    (["run", "02", "-p", "delta", "1.5"], "delta = 1.5 is invalid"),
    (["run", "02", "-p", "strategies", "[flat, zigzag]"], "zigzag"),
    (["run", "04", "-p", "victims", "0"], "victims = 0 is invalid"),
    (["run", "04", "-p", "table4_defenses", "[dropout]"], "dropout"),
    (["run", "05", "-p", "dataset", "imagenet-xl"], "dataset = 'imagenet-xl' is invalid"),
    (["run", "05", "-p", "lr_schedule", "multistep:30"], "lr_schedule = 'multistep:30' is invalid: expected"),
    (["run", "03", "-p", "experiments", "[trainnig]"], "trainnig"),
    (["run", "00", "-f", "{missing}"], "does not exist"),
    (["run", "00", "-f", "{bad_yaml}"], "bad_yaml.yaml, line 2, column 1: not valid YAML"),
    (["run", "00", "-f", "{tagged}"], "tagged.yaml, line 1"),
    (["run", "00", "-f", "{a_list}"], "must be a mapping"),
    (["run", "00", "-f", "{twice}"], "twice.yaml, line 3, column 1: not valid YAML ('rounds' is given twice)"),
    (["run", "00", "-f", "{unknown_name}"], "no parameter(s) roundz"),
    (["run", "00", "-f", "{wrong_type}"], "expects int"),
    (["run", "02", "-f", "{bad_range}"], "lr = -1 is invalid"),
    (["sweep", "{missing}"], "does not exist"),
    (["sweep", "{sweep_bad_yaml}"], "sweep_bad_yaml.yaml, line 2"),
    (["sweep", "{sweep_unknown_key}"], "got ['grids', 'notebook']"),
    (["sweep", "{sweep_no_notebook}"], "a sweep spec has notebook"),
    (["sweep", "{sweep_bad_tier}"], "unknown tier 'huge'"),
    (["sweep", "{sweep_empty_grid}"], "grid entry 'rounds' must be a non-empty list"),
    (["sweep", "{sweep_unknown_parameter}"], "no parameter(s) roundz"),
    (["sweep", "{sweep_bad_point}"], "rounds = 0 is invalid"),
    (["sweep", "{sweep_a_list}"], "a sweep spec is a mapping"),
    (["collect", "{empty_sweep}"], "holds no sweep runs"),
    (["collect", "{missing}"], "is not a folder"),
    (["params", "99_nothing"], "'99_nothing' is not a notebook"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a)[:48] for a, _ in CASES])
def test_a_bad_input_gets_one_message_naming_it(capsys, tmp_path, argv, fragment):
    paths = {**{k: str(v) for k, v in files(tmp_path).items()}, "missing": str(tmp_path / "missing.yaml"),
             "empty_sweep": str(tmp_path / "empty_sweep")}
    code, output = run(capsys, *[a.format(**paths) for a in argv])
    assert code != 0
    assert "Traceback (most recent call last)" not in output
    assert fragment in output, output


@pytest.mark.parametrize("parameter, value, fragment", [
    ("dataset", "imagenet-xl", "DatasetNotFoundError: dataset 'imagenet-xl'"),
    pytest.param("device", "cuda", "RuntimeError: device 'cuda' requested but no CUDA GPU is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the cell would run")),
])
def test_a_failing_cell_is_one_paragraph_naming_cell_error_and_saved_notebook(capsys, tmp_path, parameter, value,
                                                                              fragment):
    code, output = run(capsys, "run", "00", "-p", parameter, value, "--out", str(tmp_path))
    assert code == 1
    assert "Traceback (most recent call last)" not in output
    assert "00_quickstart failed in cell" in output and fragment in output
    assert str(tmp_path / "00_quickstart.ipynb") in output and (tmp_path / "00_quickstart.ipynb").exists()


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("FEDREPRO_DEBUG", raising=False)
    code, output = run(capsys, "--debug", "run", "01", "-p", "rounds", "-3")
    assert code == 2 and "Traceback (most recent call last)" in output


def test_later_files_win_and_p_wins_over_files(tmp_path, monkeypatch):
    from fedrepro import runner

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("rounds: 2\nseed: 5\n")
    second.write_text("rounds: 3\n")
    seen = {}
    monkeypatch.setattr(cli, "run_notebook", lambda nb, tier, overrides, out: seen.update(overrides) or tmp_path)
    assert cli.main(["run", "00", "-f", str(first), "-f", str(second), "-p", "seed", "7"]) == 0
    assert seen == {"rounds": 3, "seed": 7}
    assert runner.read_parameter_file(first) == {"rounds": 2, "seed": 5}
