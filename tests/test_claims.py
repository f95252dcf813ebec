"""The claim criterion (fedrepro.claims) and notebook 03's claim checks built on it."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from fedrepro import claims
from fedrepro.claims import (CRITERION, Z, ClaimCheck, Comparison, Trend, checks_table, compare, compare_effects,
                             compare_paired, compare_proportions, compare_spread, compare_summary, compare_to,
                             compare_to_single, decreasing, scores, verdict_table, within)
from fedrepro.papers.p03_inversion import (InversionRow, check_decreasing, check_order, check_recovered, check_spread,
                                            claim_checks, claims_table)


def victims(mean: float, std: float, n: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` values with exactly this mean and sample std (ddof = 1): a row's per-victim PSNRs."""
    x = np.random.default_rng(seed).normal(size=n)
    return mean + std * (x - x.mean()) / x.std(ddof=1)


def test_a_difference_far_inside_the_victims_spread_is_not_confirmed():
    """Issue #19: trained 17.473 dB vs without augmentation 17.479 dB, victims spread ±2.8 dB."""
    result = compare(victims(17.479, 2.8, seed=1), victims(17.473, 2.8, seed=2))
    assert result.difference == pytest.approx(0.006)
    assert result.standard_error == pytest.approx(2.8 * math.sqrt(2 / 8))
    assert result.verdict == "inside the spread" and not result.confirmed


def test_a_clear_effect_is_confirmed_and_its_opposite_contradicted():
    untrained, trained = victims(22.0, 2.8), victims(17.0, 2.9, seed=3)
    assert compare(untrained, trained).confirmed
    assert compare(trained, untrained).verdict == "contradicted"
    small = compare(victims(1.0, 1.0, n=2), victims(0.0, 1.0, n=2, seed=1))  # 1.0 against 2 se = 2.0
    assert small.standard_error == pytest.approx(1.0) and small.verdict == "inside the spread"


def test_the_welch_standard_error_by_hand():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 0.5, 1.5]
    se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 4)
    result = compare(a, b)
    assert result.difference == pytest.approx(2.0 - 0.5) and result.standard_error == pytest.approx(se)
    assert (result.n_a, result.n_b) == (3, 4)
    assert Comparison(Z * se, se, 3, 4).verdict == "inside the spread"  # strictly more than Z se
    assert Comparison(Z * se + 1e-9, se, 3, 4).confirmed
    assert Comparison(0.5, 0.0, 3, 3).confirmed  # no spread at all on either side: any difference is exact


@pytest.mark.parametrize("better, worse", [([20.0], [10.0, 11.0]), ([20.0, 21.0], [10.0]), ([20.0], [10.0])])
def test_one_value_on_a_side_gives_no_spread(better, worse):
    result = compare(better, worse)
    assert math.isnan(result.standard_error) and result.verdict == "no spread" and not result.confirmed
    assert str(result).endswith("no spread") and f"n = {len(better)} vs {len(worse)}" in str(result)
    with pytest.raises(ValueError, match="no values"):
        compare([], worse)


def test_the_printed_form_states_the_band_and_the_verdict():
    assert str(Comparison(1.23, 0.2, 8, 8)) == "+1.23 ± 0.40 (2 se), confirmed"
    assert str(Comparison(-0.006, 0.006, 8, 8)) == "-0.006 ± 0.012 (2 se), inside the spread"
    assert str(Comparison(-5.0, 1.4, 8, 8)) == "-5.0 ± 2.8 (2 se), contradicted"
    assert "2 standard errors" in CRITERION and "sample variances" in CRITERION


@pytest.mark.parametrize("n_a, n_b", [(8, 8), (2, 5), (16, 3)])
def test_compare_summary_agrees_with_compare_under_either_ddof(n_a, n_b):
    a, b = victims(18.4, 2.9, n_a, seed=4), victims(17.0, 2.8, n_b, seed=5)
    direct = compare(a, b)
    from_np = compare_summary(float(np.mean(a)), float(np.std(a)), n_a, float(np.mean(b)), float(np.std(b)), n_b,
                              ddof_of_std=0)  # fedrepro.metrics.summarize, InversionRow.summary()
    from_stdev = compare_summary(statistics.mean(a), statistics.stdev(a), n_a, statistics.mean(b),
                                 statistics.stdev(b), n_b, ddof_of_std=1)  # fedrepro.sweep over seeds
    for summary in (from_np, from_stdev):
        assert summary.difference == pytest.approx(direct.difference)
        assert summary.standard_error == pytest.approx(direct.standard_error)
        assert summary.verdict == direct.verdict and (summary.n_a, summary.n_b) == (n_a, n_b)
    mixed_up = compare_summary(float(np.mean(a)), float(np.std(a)), n_a, float(np.mean(b)), float(np.std(b)), n_b,
                               ddof_of_std=1)
    assert mixed_up.standard_error < direct.standard_error  # np.std read as a sample std understates the spread


def test_compare_summary_refuses_what_it_cannot_convert():
    assert compare_summary(20.0, 0.0, 1, 10.0, 1.0, 4, ddof_of_std=0).verdict == "no spread"
    with pytest.raises(ValueError, match="ddof_of_std"):
        compare_summary(20.0, 1.0, 4, 10.0, 1.0, 4, ddof_of_std=2)
    with pytest.raises(ValueError, match="at least one value"):
        compare_summary(20.0, 1.0, 0, 10.0, 1.0, 4, ddof_of_std=0)


def test_compare_to_a_fixed_reference():
    ssim = [0.9, 0.8, 0.85, 0.7]
    result = compare_to(ssim, 0.5)
    assert result.difference == pytest.approx(0.3125)
    assert result.standard_error == pytest.approx(statistics.stdev(ssim) / 2) and result.confirmed
    assert compare_to([0.6, 0.2], 0.5).verdict == "inside the spread"
    assert compare_to([0.9], 0.5).verdict == "no spread"


def test_spread_ratio_needs_to_clear_the_log_standard_error():
    base = victims(0.0, 1.0, seed=6)
    wide = compare_spread(10 + 2.5 * base, base)  # same shape: the ratio is exactly 2.5
    assert wide.difference == pytest.approx(math.log(2.5))
    assert wide.standard_error == pytest.approx(math.sqrt(2 / 14)) and wide.confirmed  # needs ratio > e^0.756 ≈ 2.13
    assert compare_spread(1.5 * base, base).verdict == "inside the spread"
    assert compare_spread(base, 3 * base).verdict == "contradicted"
    assert compare_spread(base, np.zeros(8)).confirmed and compare_spread(np.ones(3), np.zeros(3)).difference == 0
    assert compare_spread([1.0], base).verdict == "no spread"


def test_a_decreasing_trend_needs_the_overall_fall_and_no_significant_rise():
    rows = [victims(m, 0.5, seed=i) for i, m in enumerate([20.0, 15.0, 15.3, 8.0])]
    trend = decreasing(rows)
    assert trend.confirmed and trend.rises() == [] and len(trend.steps) == 3  # 0.3 is inside the spread
    rising = [*rows[:2], victims(17.0, 0.5, seed=9), rows[3]]  # +2.0 dB against 2 se = 0.5 dB
    assert decreasing(rising).verdict == "not monotone" and decreasing(rising).rises() == [1]
    assert "rise at step 2: +2.00 ± 0.50 (2 se)" in str(decreasing(rising))
    assert decreasing(rising, tolerance=2.5).confirmed  # a rise must clear both the spread and the tolerance
    assert decreasing([rows[0], victims(19.8, 3.0)]).verdict == "inside the spread"
    assert decreasing([rows[3], rows[0]]).verdict == "contradicted"
    assert decreasing([rows[0], [12.0], rows[3]]).verdict == "no spread"
    assert isinstance(trend, Trend) and str(trend).startswith("first − last +12.0")
    with pytest.raises(ValueError, match="two settings"):
        decreasing([rows[0]])
    with pytest.raises(ValueError, match="tolerance"):
        decreasing(rows, tolerance=-1.0)


def test_verdict_table_marks_all_but_confirmed_and_states_the_criterion():
    table = verdict_table([("a beats b", claims.CONFIRMED, "x"), ("b beats a", claims.INSIDE, "y")])
    lines = table.splitlines()
    assert lines[:2] == ["| claim | verdict | evidence |", "|---|---|---|"]
    assert lines[2] == "| a beats b | confirmed | x |" and lines[3] == "| b beats a | **inside the spread** | y |"
    assert lines[-1] == CRITERION


# --- accuracies over images (notebooks 01 and 02) ------------------------------------------------------

def test_compare_proportions_is_the_binomial_error():
    result = compare_proportions(0.45, 2000, 0.40, 2000)
    assert result.difference == pytest.approx(0.05)
    assert result.standard_error == pytest.approx(math.sqrt(0.45 * 0.55 / 2000 + 0.40 * 0.60 / 2000))  # 0.0155
    assert result.confirmed and (result.n_a, result.n_b) == (2000, 2000)
    assert compare_proportions(0.45, 2000, 0.44, 2000).verdict == "inside the spread"
    assert compare_proportions(0.30, 500, 0.45, 500).verdict == "contradicted"
    assert compare_proportions(0.9, 1, 0.1, 100).verdict == "no spread"
    # the same as compare on the 0/1 scores, whose sample variance (ddof = 1) is p(1 − p)·n/(n − 1)
    scores_a, scores_b = [1.0] * 9 + [0.0] * 11, [1.0] * 4 + [0.0] * 16
    by_values = compare(scores_a, scores_b)
    assert compare_proportions(0.45, 20, 0.20, 20).standard_error == pytest.approx(
        by_values.standard_error * math.sqrt(19 / 20))
    with pytest.raises(ValueError, match="p_a must be a proportion"):
        compare_proportions(45.0, 2000, 0.4, 2000)
    with pytest.raises(ValueError, match="n_b must be a count"):
        compare_proportions(0.45, 2000, 0.4, -1)


def test_the_paired_error_comes_from_the_images_the_two_disagree_on():
    fp32 = np.r_[np.ones(900), np.zeros(1100)]
    int8 = fp32.copy()
    int8[:4], int8[900:902] = 0, 1  # 4 images lost, 2 gained: −0.1 points
    result = compare_paired(int8, fp32)
    assert result.difference == pytest.approx(-1 / 2000)  # |b − c| = 2, less one image of continuity correction
    assert result.standard_error == pytest.approx(math.sqrt(6) / 2000)  # McNemar: √(b + c)/n
    assert (result.n_a, result.n_b) == (2000, 2000)
    scores = np.r_[np.ones(6), np.zeros(494)]
    assert compare_paired(scores[:500] * 0 + np.r_[np.ones(4), np.zeros(496)], np.zeros(500)).verdict == \
        "inside the spread"  # 4 images flipping one way: exact sign test p = 0.125, not 2 se
    assert compare_paired(scores, np.zeros(500)).verdict == "confirmed"  # 6 of 6: p = 0.03
    mixed = np.array([0.0, 50, 100, 50]), np.array([0.0, 0, 0, 100])  # steps of two sizes: the sample error
    assert compare_paired(*mixed).standard_error == pytest.approx(statistics.stdev(mixed[0] - mixed[1]) / 2)
    unpaired = compare_proportions(int8.mean(), 2000, fp32.mean(), 2000)
    assert result.standard_error < unpaired.standard_error / 10
    same = compare_paired(fp32, fp32)  # identical predictions: no difference, exactly
    assert (same.difference, same.standard_error, same.verdict) == (0.0, 0.0, "inside the spread")
    assert compare_paired([1.0], [0.0]).verdict == "no spread"
    with pytest.raises(ValueError, match="same count"):
        compare_paired(fp32, fp32[:10])


def test_within_a_margin_needs_the_whole_band_inside_it():
    assert within(Comparison(0.2, 0.3, 100, 100), 1.0).confirmed  # 0.2 ± 0.6 inside ±1
    assert within(Comparison(-0.2, 0.3, 100, 100), 1.0).confirmed
    assert within(Comparison(-0.5, 0.3, 100, 100), 1.0).verdict == "inside the spread"  # −0.5 − 0.6 < −1
    assert within(Comparison(1.8, 0.3, 100, 100), 1.0).verdict == "contradicted"  # 1.8 − 0.6 > 1
    assert within(Comparison(-1.8, 0.3, 100, 100), 1.0).verdict == "contradicted"
    assert within(Comparison(0.1, math.nan, 1, 1), 1.0).verdict == "no spread"
    assert within(compare_paired(np.ones(50), np.ones(50)), 0.0).verdict == "inside the spread"  # 0 is not < 0
    with pytest.raises(ValueError, match="margin"):
        within(Comparison(0.1, 0.1, 5, 5), -1.0)


def test_a_difference_of_effects_adds_their_errors_in_quadrature():
    normal_drop, dp_drop = Comparison(5.0, 1.5, 2000, 2000), Comparison(0.5, 2.0, 2000, 2000)
    result = compare_effects(normal_drop, dp_drop)
    assert result.difference == pytest.approx(4.5) and result.standard_error == pytest.approx(2.5)
    assert result.verdict == "inside the spread"  # 4.5 against 2 se = 5
    assert compare_effects(Comparison(9.0, 1.5, 2000, 2000), dp_drop).confirmed
    assert compare_effects(normal_drop, Comparison(0.5, math.nan, 1, 1)).verdict == "no spread"


def test_one_run_against_several_seeds_assumes_their_spread():
    seeds = [0.24, 0.25, 0.26]  # s = 0.01
    result = compare_to_single(seeds, 0.20)
    assert result.difference == pytest.approx(0.05)
    assert result.standard_error == pytest.approx(0.01 * math.sqrt(1 / 3 + 1))
    assert result.confirmed and (result.n_a, result.n_b) == (3, 1)
    assert compare_to_single(seeds, 0.24).verdict == "inside the spread"  # 0.01 against 2 se = 0.023
    assert compare_to_single([0.25], 0.20).verdict == "no spread"


def test_checks_are_scored_per_key_and_tabled_with_the_criterion():
    from fedrepro.results import Report

    checks = [ClaimCheck("claim/a", "a (one)", claims.CONFIRMED, "x"), ClaimCheck("claim/a", "a (two)", claims.INSIDE, "y"),
              ClaimCheck("claim/b", "b", claims.CONTRADICTED, "z")]
    assert scores(checks) == {"claim/a": 0.5, "claim/b": 0.0}
    report = Report("01_robustness", paper="01", tier="smoke", parameters={})
    assert claims.record(report, checks) is checks and report.metrics == {"claim/a": 0.5, "claim/b": 0.0}
    assert report.rows[0]["setting"] == "share of 2 check(s) confirmed by the claim criterion"
    kept = report.to_dict(env={})["claims"]  # results.json holds each check as its verdict table prints it
    assert [c["statement"] for c in kept] == ["a (one)", "a (two)", "b"]
    assert kept[2] == {"key": "claim/b", "statement": "b", "verdict": claims.CONTRADICTED, "evidence": "z"}
    table = checks_table(checks, claim="claim (paper 01)").splitlines()
    assert table[0] == "| claim (paper 01) | verdict | evidence |" and table[-1] == CRITERION
    assert table[3] == "| a (two) | **inside the spread** | y |"
    made = claims.check("claim/c", "c", Comparison(1.0, 0.1, 5, 5), "1.5 vs 0.5")
    assert made.holds and made.evidence == "1.5 vs 0.5: +1.00 ± 0.20 (2 se)"


# --- notebook 03's checks on synthetic rows --------------------------------------------------------

def row(setting: str, psnr, ssim=None, model: str | None = None) -> InversionRow:
    psnr = np.asarray(psnr, dtype=float)
    ssim = np.full(len(psnr), 0.1) if ssim is None else np.asarray(ssim, dtype=float)
    image = torch.zeros(len(psnr), 3, 4, 4)
    return InversionRow("e", setting, image, image, 10 ** (-psnr / 10), psnr, ssim, np.zeros(len(psnr)), 0.0,
                        {} if model is None else {"model": model})


def test_p03_augmentation_claim_of_the_issue_is_no_longer_confirmed():
    trained = row("cnn: trained", victims(17.473, 2.8, seed=1), model="cnn")
    plain = row("cnn: trained, no augmentation", victims(17.479, 2.9, seed=2), model="cnn")
    check = check_order("claim/augmentation_hurts", "without augmentation better", plain, trained)
    assert not check.holds and check.verdict == "inside the spread"
    assert "17.5 vs" in check.evidence and "(2 se)" in check.evidence
    rows = {"training": [row("cnn: untrained", victims(22.0, 2.8, seed=3), victims(0.85, 0.08), "cnn"),
                         row("cnn: partially trained", victims(18.6, 2.8, seed=4), model="cnn"), trained, plain]}
    scores = _scores(claim_checks(rows, ["cnn"], "cnn", tolerance=0.5))
    assert scores == {"claim/recovery": 1.0, "claim/untrained_beats_trained": 1.0,
                      "claim/untrained_beats_partially_trained": 1.0, "claim/augmentation_hurts": 0.0}


def test_p03_checks_follow_the_criterion():
    good, bad = row("good", victims(22.0, 1.0)), row("bad", victims(15.0, 1.0, seed=1))
    assert check_order("k", "good beats bad", good, bad).holds
    assert check_order("k", "bad beats good", bad, good).verdict == "contradicted"
    assert check_order("k", "one victim", row("a", [30.0]), row("b", [10.0])).verdict == "no spread"
    assert check_recovered("k", "recovered", row("r", [20, 21, 22], [0.9, 0.8, 0.85])).holds
    half = check_recovered("k", "recovered", row("r", [20, 10], [0.6, 0.2]))  # one victim above 0.5 is not enough
    assert half.verdict == "inside the spread"
    assert "ASR 0.50" in half.evidence
    wide = check_spread("k", "wide varies more", row("wide", victims(14.0, 3.0)), row("narrow", victims(11.0, 1.0)))
    assert wide.holds and "ratio 3" in wide.evidence
    assert not check_spread("k", "similar", row("a", victims(14.0, 1.3)), row("b", victims(11.0, 1.0))).holds
    strengths = [row(s, victims(m, 1.0, seed=i)) for i, (s, m) in enumerate(
        [("none", 17.0), ("25%", 17.6), ("50%", 16.1), ("75%", 12.8)])]
    falls = check_decreasing("k", "degrades", strengths, tolerance=0.5)
    assert falls.holds and "first − last +4.2" in falls.evidence  # +0.6 dB at 25% is inside the spread
    jump = strengths[:1] + [row("25%", victims(21.0, 1.0))] + strengths[2:]
    broken = check_decreasing("k", "degrades", jump, tolerance=0.5)
    assert broken.verdict == "not monotone" and "none → 25% rises 4" in broken.evidence
    with pytest.raises(ValueError, match="two settings"):
        check_decreasing("k", "degrades", strengths[:1])
    table = claims_table([falls, broken])
    assert "| degrades | confirmed |" in table and "**not monotone**" in table and table.endswith(CRITERION)


def _scores(checks):
    """Each claim's share of confirmed checks, from claim_checks' (key, checks) pairs."""
    from fedrepro.claims import scores

    return scores(check for _, results in checks for check in results)
