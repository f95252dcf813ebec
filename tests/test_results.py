from __future__ import annotations

import json

import pytest

from fedrepro.results import PARTIAL_ENV, Report, paper_values, write_summary


def test_paper_registry_holds_the_quickstart_numbers():
    values = paper_values()
    assert values[("04", "cifar10/cnn/none/accuracy")].value == 62.53
    assert values[("04", "cnn/parameters")].value == 65962
    assert all(v.source and v.setting for v in values.values())


def test_report_compares_against_the_paper_and_writes_results(tmp_path):
    report = Report("00_quickstart", "04", "quick", {"rounds": 30})
    report.measure("cifar10/cnn/none/accuracy", 55.0)
    report.measure("something/new", 1.5, setting="not in the paper")
    assert report.reported("cifar10/cnn/none/accuracy") == 62.53 and report.reported("something/new") is None
    row, extra = report.rows
    assert row["difference"] == pytest.approx(55.0 - 62.53) and row["tier"] == "quick"
    assert extra["paper"] is None and extra["difference"] is None
    table = report.markdown()
    assert "| 62.53 % | 55 % | quick | -7.53 |" in table and "| not in the paper | — | — | 1.5 | quick | — |" in table

    saved = json.loads(report.write(tmp_path / "00").read_text())
    assert saved["tier"] == "quick" and saved["metrics"]["something/new"] == 1.5
    assert saved["environment"]["torch"] and saved["parameters"] == {"rounds": 30}

    summary = write_summary(tmp_path).read_text()
    assert "## 00_quickstart (paper 04)" in summary and "-7.53" in summary
    assert "<td>-7.53</td>" in (tmp_path / "summary.html").read_text()


def test_a_run_cut_short_leaves_what_it_measured(tmp_path, monkeypatch):
    """With the runner's variable set, every measurement rewrites the partial file (marked incomplete)."""
    partial = tmp_path / "run" / "results.partial.json"
    monkeypatch.setenv(PARTIAL_ENV, str(partial))
    report = Report("03_inversion", "03", "gpu", {"seed": 0})
    report.measure("cnn/untrained/psnr", 21.5)  # the first number is written at once
    first = json.loads(partial.read_text())
    assert first["complete"] is False and first["metrics"] == {"cnn/untrained/psnr": 21.5}
    report.measure("cnn/trained/psnr", 17.0)  # within PARTIAL_EVERY_S of the last write: kept for the next
    assert "cnn/trained/psnr" not in json.loads(partial.read_text())["metrics"]
    monkeypatch.setattr(Report, "PARTIAL_EVERY_S", 0.0)
    report.measure("cnn/noise/psnr", 9.0)
    assert json.loads(partial.read_text())["metrics"] == {"cnn/untrained/psnr": 21.5, "cnn/trained/psnr": 17.0,
                                                          "cnn/noise/psnr": 9.0}
    assert "complete" not in json.loads(report.write(tmp_path / "run").read_text())
    assert sorted(p.name for p in partial.parent.iterdir()) == ["results.json", "results.partial.json"]


def test_without_the_variable_nothing_is_written_before_the_end(tmp_path, monkeypatch):
    monkeypatch.delenv(PARTIAL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    Report("00_quickstart", "04", "smoke", {}).measure("x", 1.0)
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_unknown_tier():
    with pytest.raises(ValueError, match="tier"):
        Report("x", "04", "medium", {})


def test_counts_print_in_full_with_separators_and_measurements_with_four_digits():
    from fedrepro.results import _fmt

    assert _fmt(65962.0) == "65,962" and _fmt(75264) == "75,264"  # parameter counts, not 6.596e+04
    assert _fmt(62.53, "%") == "62.53 %" and _fmt(0.123456) == "0.1235" and _fmt(12345.6) == "1.235e+04"
    assert _fmt(None) == "—"


def test_round_axes_have_integer_ticks():
    import matplotlib

    matplotlib.use("Agg")
    from fedrepro.plots import plot_history

    history = [{"round": r, "test_accuracy": 0.1 * r} for r in range(1, 5)]
    fig = plot_history(history)
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_the_commit_can_be_named_where_git_would_be_stale(monkeypatch):
    from fedrepro.results import environment

    monkeypatch.setenv("FEDREPRO_COMMIT", "4be739f")
    assert environment()["git_commit"] == "4be739f"
    monkeypatch.delenv("FEDREPRO_COMMIT")
    assert environment()["git_commit"] != "4be739f"
