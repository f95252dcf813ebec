"""The criterion's helpers for proportions, accuracies, correlations and non-inferiority (fedrepro.claims), and
notebooks 04's and 05's claim checks built on them, on synthetic numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedrepro import claims
from fedrepro.claims import (CRITERION, Z, ClaimCheck, Comparison, compare, compare_accuracies, compare_correlation,
                             compare_proportions, non_inferior)


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
        with pytest.raises(ValueError, match="fraction in"):
            compare_proportions(*bad)
    with pytest.raises(ValueError, match="at least one trial"):
        compare_proportions(0.6, 0, 0.5, 100)


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
