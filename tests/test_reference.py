"""Reference runs and ``fedrepro compare``: a user's run beside ours and the paper's, metric by metric."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrepro import cli
from fedrepro.reference import REFERENCE_DIR, compare, save_reference, trim


def result(notebook: str = "02_clipping", tier: str = "quick", **metrics: float) -> dict:
    return {"notebook": notebook, "paper": "02", "tier": tier, "metrics": metrics,
            "parameters": {"rounds": 5, "runs": ["x" * 100] * 50}, "environment": {"git_commit": "abc1234"},
            "wall_seconds": 12.0, "comparison": []}


def test_shipped_references_are_trimmed_results_of_known_notebooks():
    files = sorted(REFERENCE_DIR.glob("*/*.json"))
    assert {f.stem for f in files} >= {"01_robustness", "02_clipping", "03_inversion"}
    for path in files:
        ref = json.loads(path.read_text())
        assert ref["notebook"] == path.stem and ref["tier"] == path.parent.name and ref["metrics"]
        # small: no run logs, only settings and about 60 bytes a metric (notebook 06 records 1,629)
        assert ref["environment"]["git_commit"] and path.stat().st_size < 20_000 + 100 * len(ref["metrics"])


def test_trim_drops_only_large_parameter_values():
    trimmed = trim(result(a=1.0))
    assert trimmed["parameters"] == {"rounds": 5} and trimmed["omitted"] == ["runs"]
    assert "comparison" not in trimmed and trimmed["metrics"] == {"a": 1.0}


def test_compare_puts_yours_beside_ours_and_the_paper(tmp_path: Path):
    reference = tmp_path / "reference"
    (tmp_path / "ours.json").write_text(json.dumps(result(**{"final/flat/accuracy": 0.232, "only/ours": 1.0})))
    save_reference(tmp_path / "ours.json", reference)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(result(**{"final/flat/accuracy": 0.25, "only/yours": 2.0})))
    text = compare(run, reference)
    assert "| final/flat/accuracy | 0.25 | 0.232 | 0.4 | 0.018 |" in text  # paper 02 reports 0.40 for flat
    assert "| only/yours | 2 | — | — | — |" in text and "| only/ours | — | 1 | — | — |" in text
    assert "0 of 3 metrics identical to ours." in text and "commit abc1234" in text
    (run / "results.json").write_text(json.dumps(result(**{"final/flat/accuracy": 0.232, "only/ours": 1.0})))
    assert "2 of 2 metrics identical to ours." in compare(run, reference)
    other = tmp_path / "smoke"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(result(tier="smoke", a=1.0)))
    assert "No reference run of ours at this tier" in compare(other, reference)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no results.json under"),
    (lambda p: (p / "results.json").write_text("{not json") and p, "is not valid JSON (line 1, column 2)"),
    (lambda p: (p / "results.json").write_text('{"a": 1}') and p, "is not a fedrepro results.json"),
])
def test_compare_on_garbage_is_one_message(capsys, tmp_path, make, fragment):
    code = cli.main(["compare", str(make(tmp_path))])
    output = capsys.readouterr()
    assert code != 0 and fragment in output.err and "Traceback" not in output.err + output.out


def test_seed_repeats_are_compared_in_units_of_their_spread(tmp_path: Path):
    """A sweep's runs that differ only in the seed are one block: mean ± sd over seeds and Δ / sd."""
    reference = tmp_path / "reference"
    (tmp_path / "ours.json").write_text(json.dumps(result(**{"final/flat/accuracy": 0.232, "a": 1.0})))
    save_reference(tmp_path / "ours.json", reference)
    for seed, accuracy in enumerate([0.20, 0.22, 0.24]):
        run = tmp_path / "sweep" / f"seed{seed}"
        run.mkdir(parents=True)
        data = result(**{"final/flat/accuracy": accuracy, "a": 1.0})
        data["parameters"] = {**data["parameters"], "seed": seed, "results_dir": str(run)}
        (run / "results.json").write_text(json.dumps(data))
    other = tmp_path / "sweep" / "rounds9"  # another experiment: its own block
    other.mkdir()
    data = result(**{"final/flat/accuracy": 0.3})
    data["parameters"]["rounds"] = 9
    (other / "results.json").write_text(json.dumps(data))
    text = compare(tmp_path / "sweep", reference)
    assert "02_clipping (quick tier), 3 seeds: [0, 1, 2]" in text
    # mean 0.22, sd 0.02: Δ = 0.22 − 0.232 = −0.012, −0.6 of the seed-to-seed spread
    assert "| final/flat/accuracy | 0.22 ± 0.02 (n = 3) | 0.232 | 0.4 | -0.012 | -0.60 |" in text
    assert "| a | 1 ± 0 (n = 3) | 1 | — | 0 | — |" in text
    assert "Parameters that differ from ours: rounds." in text and "| final/flat/accuracy | 0.3 | 0.232 |" in text
