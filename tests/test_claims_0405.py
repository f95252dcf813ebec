"""The criterion's helpers for proportions, accuracies, correlations and non-inferiority (fedrepro.claims), and
notebooks 04's and 05's claim checks built on them, on synthetic numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedrepro import claims
from fedrepro.claims import (CRITERION, Z, ClaimCheck, Comparison, compare, compare_accuracies, compare_correlation,
                             compare_proportions, non_inferior)
from fedrepro.papers import p04_cvb as cvb
from fedrepro.papers import p05_ats as ats


def victims(mean: float, std: float, n: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` values with exactly this mean and sample std (ddof = 1): a row's per-victim SSIMs or PSNRs."""
    x = np.random.default_rng(seed).normal(size=n)
    return mean + std * (x - x.mean()) / x.std(ddof=1)


# --- fedrepro.claims -------------------------------------------------------------------------------

def test_compare_proportions_uses_each_sides_binomial_error():
    result = compare_proportions(0.6, 100, 0.5, 100)
    assert result.difference == pytest.approx(0.1) and (result.n_a, result.n_b) == (100, 100)
    assert result.standard_error == pytest.approx(math.sqrt(0.6 * 0.4 / 100 + 0.5 * 0.5 / 100))
    assert result.verdict == "inside the spread"  # 0.10 against 2 se = 0.14
    assert compare_proportions(0.6, 10_000, 0.5, 10_000).confirmed
    assert compare_proportions(0.5, 10_000, 0.6, 10_000).verdict == "contradicted"
    assert compare_proportions(1.0, 2, 0.0, 2).confirmed  # the documented limit: the Wald error vanishes at 0 and 1
    for bad in ((60.0, 100, 0.5, 100), (0.6, 100, -0.1, 100)):
        with pytest.raises(ValueError, match="must be a proportion in"):
            compare_proportions(*bad)
    assert compare_proportions(0.6, 0, 0.5, 100).verdict == "no spread"


def test_compare_accuracies_uses_seeds_where_measured_else_the_test_set():
    a, b = [61.0, 62.0, 63.5], [60.0, 60.5, 61.0]
    assert compare_accuracies(a, b, 10_000) == compare(a, b)
    once = compare_accuracies([67.17], [62.53], 10_000)
    binomial = compare_proportions(0.6717, 10_000, 0.6253, 10_000)
    assert once.difference == pytest.approx(4.64) and once.standard_error == pytest.approx(100 * binomial.standard_error)
    assert once.confirmed  # the paper's CVB gain over 10,000 test images: 4.64 against 2 se = 1.3 points
    mixed = compare_accuracies(a, [60.5], 500)  # seeds on one side only: binomial on the mean
    assert mixed.difference == pytest.approx(np.mean(a) - 60.5) and mixed.n_a == mixed.n_b == 500
    with pytest.raises(ValueError, match="no accuracies"):
        compare_accuracies([], [60.0], 500)


def test_fisher_z_bounds_of_a_correlation():
    for n in (5, 20, 100):
        bound = math.tanh(Z / math.sqrt(n - 3))
        assert compare_correlation(bound + 1e-6, n).confirmed
        assert compare_correlation(bound - 1e-6, n).verdict == "inside the spread"
        assert compare_correlation(-bound - 1e-6, n).verdict == "contradicted"
        assert compare_correlation(0.3, n).standard_error == pytest.approx(1 / math.sqrt(n - 3))
    assert compare_correlation(0.697, 100).confirmed  # the paper's Figure 2
    assert compare_correlation(0.35, 5).verdict == "inside the spread"  # the shipped quick run's
    assert compare_correlation(0.99, 3).verdict == "no spread" and compare_correlation(math.nan, 50).verdict == "no spread"
    assert compare_correlation(1.0, 4).confirmed and compare_correlation(-1.0, 4).verdict == "contradicted"
    with pytest.raises(ValueError, match="at least 2 pairs"):
        compare_correlation(0.5, 1)


def test_fisher_z_standard_error_matches_simulated_correlations():
    """atanh(r) of 20 bivariate normal pairs spreads by 1/√17 whatever the true correlation."""
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.7):
        z = []
        for _ in range(4000):
            x = rng.normal(size=20)
            y = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=20)
            z.append(math.atanh(np.corrcoef(x, y)[0, 1]))
        assert np.std(z) == pytest.approx(1 / math.sqrt(17), rel=0.05)


def test_non_inferiority_needs_the_band_above_minus_the_margin():
    assert non_inferior(Comparison(-0.5, 0.2, 3, 3), 1.0).confirmed  # band −0.9 … −0.1, above −1
    assert non_inferior(Comparison(-0.5, 0.3, 3, 3), 1.0).verdict == "inside the spread"  # band reaches −1.1
    assert non_inferior(Comparison(-3.0, 0.5, 3, 3), 1.0).verdict == "contradicted"  # band −4 … −2, below −1
    assert non_inferior(Comparison(-0.5, 0.2, 3, 3), 0.0).verdict == "contradicted"  # margin 0: "no loss at all"
    assert non_inferior(Comparison(0.0, math.nan, 1, 1), 1.0).verdict == "no spread"
    with pytest.raises(ValueError, match="margin"):
        non_inferior(Comparison(0.0, 1.0, 3, 3), -1.0)


def test_scores_are_each_claims_share_of_confirmed_checks():
    checks = [ClaimCheck("claim/a", "x", claims.CONFIRMED, "1"), ClaimCheck("claim/b", "y", claims.INSIDE, "2"),
              ClaimCheck("claim/a", "z", claims.NO_SPREAD, "3")]
    assert claims.scores(checks) == {"claim/a": 0.5, "claim/b": 0.0}
    table = claims.checks_table(checks, claim="claim (paper)")
    assert table.startswith("| claim (paper) | verdict |") and "| y | **inside the spread** | 2 |" in table
    assert table.endswith(CRITERION) and "binomial" in CRITERION and "atanh" in CRITERION


# --- notebook 04 -----------------------------------------------------------------------------------

def row04(defense: str, ssim: np.ndarray | None = None, accuracy: list[float] | None = None,
          test_images: int = 10_000) -> dict:
    """A Table II row as CVBStudy.row builds it: privacy and/or accuracy, with the claim checks' values."""
    row = {"dataset": "cifar10", "model": "cnn", "defense": defense, "label": defense}
    if ssim is not None:
        row.update(ssim=float(np.mean(ssim)), asr=100.0 * float(np.mean(ssim >= 0.5)), ssim_values=ssim)
    if accuracy is not None:
        row.update(accuracy=float(np.mean(accuracy)), accuracy_values=accuracy, test_images=test_images)
    return row


PERCENT = {"precode:P3": 9.31, "precode:P2": 58.22, "precode:P1": 114.1, "cvb": 9.9}


def verdicts(checks) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for check in checks:
        out.setdefault(check.key, []).append(check.verdict)
    return out


def test_p04_clear_effects_are_confirmed():
    rows = [row04("none", victims(0.82, 0.07, 16), [62.5]), row04("precode:P1", victims(0.30, 0.2, 16), [60.2]),
            row04("cvb", victims(0.20, 0.06, 16, seed=1), [63.5])]
    checks = cvb.claim_checks(rows, ["cvb"], PERCENT)
    assert verdicts(checks) == {"claim/undefended_leaks": ["confirmed"], "claim/cvb_defeats_ignore": ["confirmed"],
                                "claim/cvb_accuracy_matches": ["confirmed"],  # +1.0 ± 1.4: above −1 pp
                                "claim/precode_early_costs_accuracy": ["confirmed"],  # 2.3 ± 1.4
                                "claim/precode_early_parameters": ["confirmed"]}
    assert all(c.holds for c in checks) and claims.scores(checks)["claim/cvb_accuracy_matches"] == 1.0
    accuracy = next(c for c in checks if c.key == "claim/cvb_accuracy_matches")
    assert "binomial, 10000 test images" in accuracy.evidence and "must exceed −1 (margin)" in accuracy.evidence
    assert "ASR 0.0 % of 16 victims" in next(c for c in checks if c.key == "claim/cvb_defeats_ignore").evidence


def test_p04_effects_inside_the_spread_are_not_confirmed():
    rows = [row04("none", victims(0.55, 0.2, 4), [62.5], 500), row04("cvb", victims(0.45, 0.2, 4, seed=1), [62.0], 500),
            row04("cvb:klcode", victims(0.2, 0.05, 4, seed=2), [45.9], 500)]
    found = verdicts(cvb.claim_checks(rows, ["cvb", "cvb:klcode", "dp"], {**PERCENT, "cvb:klcode": 9.9}))
    assert found["claim/undefended_leaks"] == ["inside the spread"]  # 0.05 above 0.5 against 2 se = 0.2
    assert found["claim/cvb_defeats_ignore"] == ["inside the spread", "confirmed"]  # one check per CVB, none for dp
    # −0.5 points over 500 test images: 2 se ≈ 6 points, neither confirms nor excludes a 1-point loss; −16.6 does
    assert found["claim/cvb_accuracy_matches"] == ["inside the spread", "contradicted"]
    assert "claim/precode_early_costs_accuracy" not in found  # no PRECODE row measured


def test_p04_accuracy_over_seeds_and_single_victims():
    rows = [row04("none", np.array([0.8]), [60.5, 61.0, 61.5]), row04("cvb", np.array([0.2]), [61.4, 61.5, 61.6]),
            row04("precode:P1", None, [60.9, 61.0, 61.1])]
    checks = cvb.claim_checks(rows, ["cvb"], PERCENT)
    found = verdicts(checks)
    assert found["claim/undefended_leaks"] == found["claim/cvb_defeats_ignore"] == ["no spread"]  # one victim
    matches = next(c for c in checks if c.key == "claim/cvb_accuracy_matches")
    assert matches.verdict == "confirmed" and "(over 3 seeds)" in matches.evidence  # +0.5 ± 0.6 (Welch), above −1
    assert found["claim/precode_early_costs_accuracy"] == ["inside the spread"]  # 0.0 ± 0.6


def test_p04_parameter_claim_is_exact_and_the_undefended_row_is_required():
    rows = [row04("none", victims(0.8, 0.05))]
    assert verdicts(cvb.claim_checks(rows, [], PERCENT))["claim/precode_early_parameters"] == ["confirmed"]
    flat = {**PERCENT, "precode:P2": 120.0}
    check = cvb.check_parameters("claim/precode_early_parameters", "explodes", flat)
    assert check.verdict == "contradicted" and "precode:P1 +114.1 % (exact counts); cvb +9.9 %" in check.evidence
    small = {**PERCENT, "precode:P1": 90.0, "precode:P2": 60.0}
    assert cvb.check_parameters("k", "explodes", small).verdict == "contradicted"  # rises, but stays below 100 %
    with pytest.raises(KeyError):
        cvb.claim_checks([row04("cvb", victims(0.2, 0.05))], ["cvb"], PERCENT)


def test_p04_central_claims_record_each_claims_share():
    from fedrepro.results import Report

    report = Report("04_cvb", paper="04", tier="smoke", parameters={})
    study = cvb.CVBStudy(cvb.StudyConfig(progress=False), report=report)
    rows = [row04("none", victims(0.82, 0.07, 16), [62.5]), row04("cvb", victims(0.20, 0.06, 16), [63.5]),
            row04("cvb:klcode", victims(0.6, 0.06, 16), [63.5])]
    checks = cvb.central_claims(study, rows, ["cvb", "cvb:klcode"])
    m = report.metrics
    assert m["claim/undefended_leaks"] == 1.0 and m["claim/cvb_defeats_ignore"] == 0.5
    assert m["claim/precode_early_parameters"] == 1.0 and "claim/precode_early_costs_accuracy" not in m
    assert report.reported("claim/cvb_accuracy_matches") == 1  # the paper's claim, in paper_results/04.yaml
    table = cvb.claims_table(checks)
    assert table.startswith("| claim (paper 04) |") and table.endswith(CRITERION)
    assert "precode:P3 +9.3 % → precode:P2 +58.2 % → precode:P1 +114.1 %" in table


# --- notebook 05 -----------------------------------------------------------------------------------

def result05(policy: str, psnr: np.ndarray, accuracy: float, test_images: int = 10_000) -> ats.PolicyResult:
    return ats.PolicyResult(policy, psnr, accuracy, test_images)


def test_p05_clear_and_tiny_effects():
    search = {"convnet": {"none": result05("none", victims(13.0, 1.0), 70.1),
                          "best1": result05("21-13-3", victims(5.8, 1.0, seed=1), 70.6),  # +0.5 ± 1.3: above −1 pp
                          "best2": result05("7-4-15", victims(12.8, 1.0, seed=2), 67.0),  # −3.1 ± 1.3: below
                          "hybrid": result05("21-13-3+7-4-15", victims(12.0, 1.5, seed=3), 69.5)}}
    transfer = {"convnet": {"none": result05("none", victims(9.1, 0.5, 100), 94.3),
                            "best1": result05("21-13-3", victims(7.5, 0.5, 100, seed=1), 74.8)}}
    checks = ats.claim_checks(search, transfer, (0.697, 100))
    assert verdicts(checks) == {
        "claim/searched_lowers_psnr": ["confirmed", "inside the spread", "inside the spread"],  # 7.2, 0.2, 1.0 dB
        "claim/accuracy_cost_negligible": ["confirmed", "contradicted", "inside the spread"],
        "claim/spri_predicts_psnr": ["confirmed"], "claim/policies_transfer": ["confirmed"]}
    assert claims.scores(checks) == {"claim/searched_lowers_psnr": pytest.approx(1 / 3),
                                     "claim/accuracy_cost_negligible": pytest.approx(1 / 3),
                                     "claim/spri_predicts_psnr": 1.0, "claim/policies_transfer": 1.0}
    first = checks[0]
    assert first.statement == "best1 21-13-3 lowers the attack's PSNR (convnet)"
    assert first.evidence.startswith("none 13.00 dB − 21-13-3 5.80 dB over 8 victims: +7.2")
    correlation = next(c for c in checks if c.key == "claim/spri_predicts_psnr")
    assert correlation.evidence.startswith("r = +0.697 over 100 policies; atanh r +0.86 ± 0.20 (2 se)")


def test_p05_few_policies_and_sections_not_run():
    assert [c.verdict for c in ats.claim_checks({}, {}, (0.9, 3))] == ["no spread"]  # the smoke tier's 3 policies
    assert [c.verdict for c in ats.claim_checks({}, {}, (-0.48, 5))] == ["inside the spread"]
    assert ats.claim_checks({}, {}, None) == []
    one = {"convnet": {"none": result05("none", victims(12.0, 1.0, 2), 20.0, 200),
                       "best1": result05("3", victims(5.0, 1.0, 2, seed=1), 18.0, 200)}}
    found = verdicts(ats.claim_checks(one, {}, None))
    assert found == {"claim/searched_lowers_psnr": ["confirmed"],  # 7 dB against 2 se = 2 dB over 2 victims
                     "claim/accuracy_cost_negligible": ["inside the spread"]}  # −2 ± 7.8 points over 200 images
