"""When a measured difference confirms a claim: one criterion for every notebook's claim checks.

A claim such as "the untrained network reconstructs better than the trained one" compares two
settings, each measured on several victims (or, in a sweep, several seeds). A difference of means
says nothing unless it is large against how much those means would move with other victims, so an
effect counts only when it clears its standard error by :data:`Z`:

    d = mean(a) − mean(b),   se = √(s_a²/n_a + s_b²/n_b)   (Welch; s² the sample variance, ddof = 1)

    confirmed     when d >  Z·se
    contradicted  when d < −Z·se
    inside the spread otherwise, and "no spread" when either side has fewer than 2 values (s² unknown).

Accuracies are shares of n images scored right (1) or wrong (0), so their s² is the binomial p(1 − p)
(:func:`compare_proportions`); where two models were scored on the same images the per-image differences
give a smaller and still valid error (:func:`compare_paired`). A claim "at most m either way" (int8 changes
accuracy by at most a point) applies the criterion to m − |d| (:func:`within`).

Reconstruction rows (notebook 03) share their victims too, where a paired test would be more sensitive;
the unpaired Welch error is used there because it is conservative and also applies to the means
and standard deviations that ``results.json`` keeps (:func:`compare_summary`), where the pairs are lost.
Z is a normal quantile: with only a few values a side the Student-t one is larger (4.3 at 2 degrees of
freedom), so a confirmation from 2 or 3 victims is weaker than it reads.

Other claims apply the same rule to another estimate and its standard error: a test accuracy measured
once, as a proportion of the test images (:func:`compare_proportions`, :func:`compare_accuracies`); a
correlation, by Fisher's z (:func:`compare_correlation`); "matches or beats", by a non-inferiority
margin (:func:`non_inferior`). :class:`ClaimCheck` carries one verdict to a notebook's table.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

Z = 2.0
"""Standard errors an effect must exceed to count (about a 95% two-sided normal interval)."""

CONFIRMED, CONTRADICTED, INSIDE, NO_SPREAD = "confirmed", "contradicted", "inside the spread", "no spread"
NOT_MONOTONE = "not monotone"

CRITERION = (f"A claim counts as confirmed only when the difference of means exceeds {Z:g} standard errors, "
             "se = √(s_a²/n_a + s_b²/n_b) with sample variances over victims (or seeds), contradicted when it "
             f"is below −{Z:g} se, otherwise inside the spread (a spread claim applies it to the log ratio of "
             "standard deviations); fewer than 2 values on a side give no spread and confirm nothing. "
             "An accuracy measured with one seed has the binomial se √(p(1 − p)/n) over its n test images; a "
             "correlation r over n points is tested as Fisher's atanh r with se = 1/√(n − 3); a \"matches\" "
             "(non-inferiority) claim adds its margin to the difference. Where both sides were scored on the same "
             "images, s² is the variance of the per-image differences; a claim \"at most m either way\" applies "
             "the criterion to m − |d|.")
"""The criterion in words, for notebooks to print under their claim tables."""


@dataclass(frozen=True)
class Comparison:
    """An estimated effect ``difference`` (a − b, positive = the claim's direction) with its standard error.

    ``standard_error`` is NaN when the spread is unknown (fewer than 2 values on a side); ``n_b = 0``
    marks a fixed reference value rather than a sample (:func:`compare_to`).
    """

    difference: float
    standard_error: float
    n_a: int
    n_b: int

    @property
    def verdict(self) -> str:
        """By :data:`Z`: "confirmed", "contradicted", "inside the spread", or "no spread" without a standard error."""
        if math.isnan(self.standard_error) or math.isnan(self.difference):
            return NO_SPREAD
        if self.difference > Z * self.standard_error:
            return CONFIRMED
        if self.difference < -Z * self.standard_error:
            return CONTRADICTED
        return INSIDE

    @property
    def confirmed(self) -> bool:
        return self.verdict == CONFIRMED

    def estimate(self) -> str:
        """``+1.23 ± 0.40 (2 se)``: the band printed with two significant digits, the difference to match."""
        band = Z * self.standard_error
        if not (math.isfinite(band) and math.isfinite(self.difference)) or band == 0:
            spread = "no spread" if math.isnan(band) else f"± {band:.2g} ({Z:g} se)"
            return f"{self.difference:+.3g} ({spread}, n = {self.n_a} vs {self.n_b})"
        decimals = max(0, 1 - math.floor(math.log10(band)))
        return f"{self.difference:+.{decimals}f} ± {band:.{decimals}f} ({Z:g} se)"

    def __str__(self) -> str:
        return f"{self.estimate()}, {self.verdict}"


def _sample(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample variance (ddof = 1; NaN below 2 values) and count."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("no values to compare")
    return float(x.mean()), float(x.var(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def _welch(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    return math.sqrt(var_a / n_a + var_b / n_b) if n_a > 1 and n_b > 1 else math.nan


def compare(better: Sequence[float], worse: Sequence[float]) -> Comparison:
    """The claim "``better`` has the larger mean", from the raw values (per victim or per seed)."""
    mean_a, var_a, n_a = _sample(better)
    mean_b, var_b, n_b = _sample(worse)
    return Comparison(mean_a - mean_b, _welch(var_a, n_a, var_b, n_b), n_a, n_b)


def compare_summary(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int, *,
                    ddof_of_std: int) -> Comparison:
    """:func:`compare` from stored means and standard deviations.

    A std computed with ``ddof`` d is √(SS/(n − d)), so the sample variance is std²·(n − d)/(n − 1):
    fedrepro's per-victim summaries (:func:`fedrepro.metrics.summarize`, ``np.std``) have d = 0, the
    sweep's mean ± std over seeds (``statistics.stdev``) d = 1. Required, since the two differ by n/(n − 1).
    """
    if ddof_of_std not in (0, 1):
        raise ValueError(f"ddof_of_std must be 0 (np.std) or 1 (statistics.stdev), got {ddof_of_std!r}")
    if n_a < 1 or n_b < 1:
        raise ValueError(f"need at least one value on each side, got n_a = {n_a}, n_b = {n_b}")

    def variance(std: float, n: int) -> float:
        return std ** 2 * (n - ddof_of_std) / (n - 1) if n > 1 else math.nan

    return Comparison(mean_a - mean_b, _welch(variance(std_a, n_a), n_a, variance(std_b, n_b), n_b), n_a, n_b)


def compare_to(values: Sequence[float], reference: float) -> Comparison:
    """The claim "the mean of ``values`` exceeds the fixed ``reference``": the Welch error with an
    exactly known second side, se = s/√n."""
    mean, var, n = _sample(values)
    return Comparison(mean - reference, math.sqrt(var / n) if n > 1 else math.nan, n, 0)


def compare_spread(wider: Sequence[float], narrower: Sequence[float]) -> Comparison:
    """The claim "``wider`` varies more than ``narrower``", on the log of the ratio of sample stds.

    For normal samples Var(s²) = 2σ⁴/(n − 1), so by the delta method ln s has standard error
    √(1/(2(n − 1))) whatever σ is; the same criterion then applies to d = ln(s_a/s_b) with
    se = √(1/(2(n_a − 1)) + 1/(2(n_b − 1))). With 8 victims a side the ratio must exceed e^(Z·0.38) ≈ 2.1.
    """
    _, var_a, n_a = _sample(wider)
    _, var_b, n_b = _sample(narrower)
    se = math.sqrt(1 / (2 * (n_a - 1)) + 1 / (2 * (n_b - 1))) if n_a > 1 and n_b > 1 else math.nan
    if math.isnan(se):
        return Comparison(math.nan, se, n_a, n_b)
    if var_a == var_b:  # both 0 included: no difference
        return Comparison(0.0, se, n_a, n_b)
    with np.errstate(divide="ignore"):
        return Comparison(0.5 * float(np.log(var_a) - np.log(var_b)), se, n_a, n_b)


def compare_correlation(r: float, n: int) -> Comparison:
    """The claim "the two quantities correlate positively", from Pearson's r over ``n`` pairs, by Fisher's z.

    z = atanh(r) is about normal with standard error 1/√(n − 3) whatever the true correlation (for
    bivariate normal pairs), so the criterion applies to d = atanh(r) with se = 1/√(n − 3): confirmed when
    atanh(r) > Z/√(n − 3), i.e. r > tanh(Z/√(n − 3)) — 0.89 for 5 pairs, 0.20 for 100 — contradicted below
    the negative bound. Fewer than 4 pairs, or an undefined r (a constant side), give no spread.
    """
    if n < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, got {n}")
    se = 1 / math.sqrt(n - 3) if n > 3 else math.nan
    z = math.nan if math.isnan(r) else math.atanh(r) if abs(r) < 1 else math.copysign(math.inf, r)
    return Comparison(z, se, n, 0)


def non_inferior(comparison: Comparison, margin: float) -> Comparison:
    """The claim "a is at most ``margin`` worse than b" ("matches or beats", "costs negligibly"), from the
    comparison of a with b: d shifted by the margin, so it is confirmed when d > −margin + Z·se (the whole
    band above −margin), contradicted when d < −margin − Z·se, and inside the spread otherwise.

    The rule "not contradicted" (d > −Z·se) would confirm whenever a measurement is too noisy to tell; with a
    margin a confirmation needs the band to be narrow enough to exclude a loss of ``margin``.
    """
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0, got {margin}")
    return Comparison(comparison.difference + margin, comparison.standard_error, comparison.n_a, comparison.n_b)


ACCURACY_MARGIN = 1.0
"""Percentage points of test accuracy a defense may lose and still "match" the undefended model or cost
"negligibly" (:func:`non_inferior`): below the smallest losses paper 04 counts as a cost (PRECODE at P = 1
−2.3, DP-SGD at σ = 0.01 −1.8 points against no defense). Paper 05's own Table 1 loses up to 6.3 points with a
searched policy, which this margin does not call negligible."""


def compare_accuracies(better: Sequence[float], worse: Sequence[float], test_images: int) -> Comparison:
    """The claim "``better`` is more accurate", from test accuracies in % (one value per seed), in points.

    With 2 or more seeds on each side, the spread over seeds (:func:`compare`); otherwise each side's mean
    accuracy as a proportion of ``test_images`` images with its binomial error (:func:`compare_proportions`).
    Both sides are scored on the same test images, whose sampling error then partly cancels in the difference:
    the unpaired binomial error is conservative.
    """
    a, b = np.asarray(better, dtype=float).ravel(), np.asarray(worse, dtype=float).ravel()
    if a.size > 1 and b.size > 1:
        return compare(a, b)
    if a.size == 0 or b.size == 0:
        raise ValueError("no accuracies to compare")
    share = compare_proportions(float(a.mean()) / 100, test_images, float(b.mean()) / 100, test_images)
    return Comparison(100 * share.difference, 100 * share.standard_error, share.n_a, share.n_b)


def compare_proportions(p_a: float, n_a: int, p_b: float, n_b: int) -> Comparison:
    """The claim "proportion ``p_a`` (of ``n_a`` trials) exceeds ``p_b`` (of ``n_b``)", e.g. two test accuracies.

    A trial scored 1 or 0 has variance p(1 − p), so a proportion over n trials has the binomial standard
    error √(p(1 − p)/n), and two measured independently give

        d = p_a − p_b,   se = √(p_a(1 − p_a)/n_a + p_b(1 − p_b)/n_b)

    (the normal approximation, with the observed p: a side at exactly 0 or 1 adds no spread, so it wants
    n·p and n·(1 − p) of at least a few). Two models scored on the same images agree more often than
    independent ones would, so this error is conservative for them; :func:`compare_paired` uses the pairs.
    Fewer than 2 trials on a side give no spread.
    """
    for name, p in (("p_a", p_a), ("p_b", p_b)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a proportion in [0, 1], got {p}")
    for name, n in (("n_a", n_a), ("n_b", n_b)):
        if n < 0:
            raise ValueError(f"{name} must be a count ≥ 0, got {n}")
    return Comparison(p_a - p_b, _welch(p_a * (1 - p_a), n_a, p_b * (1 - p_b), n_b), n_a, n_b)


def compare_paired(better: Sequence[float], worse: Sequence[float]) -> Comparison:
    """The claim "``better`` has the larger mean", from values paired item by item (the same images scored
    by two models, 1 right and 0 wrong).

    d = mean(a_i − b_i),  se = s_d/√n with s_d² the sample variance of the differences (ddof = 1). Items
    both sides score alike add nothing to s_d. Fewer than 2 pairs give no spread.

    Right/wrong scores (differences of one size k: 0 or ±k) are McNemar's case, where that normal
    approximation is too eager when the two sides disagree on only a few images (4 of 500 flipping one way
    would read as 2 se). With b images won and c lost: d = k(b − c)/n, se = k√(b + c)/n, and the continuity
    correction takes one image off |b − c| — 4 flips then give 1.5 se, 6 give 2.04 (exact sign test: p = 0.03).
    """
    a, b = np.asarray(better, dtype=float).ravel(), np.asarray(worse, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same count on both sides, got {a.size} and {b.size}")
    differences = a - b
    steps = np.unique(np.abs(differences[differences != 0]))
    if a.size > 1 and steps.size <= 1:  # 0 or ±k only
        k = float(steps[0]) if steps.size else 0.0
        won, lost = int((differences > 0).sum()), int((differences < 0).sum())
        corrected = max(abs(won - lost) - 1, 0) * (1 if won >= lost else -1)
        return Comparison(k * corrected / a.size, k * math.sqrt(won + lost) / a.size, a.size, a.size)
    one = compare_to(differences, 0.0)
    return Comparison(one.difference, one.standard_error, one.n_a, one.n_a)


def compare_to_single(values: Sequence[float], single: float) -> Comparison:
    """The claim "the mean of ``values`` exceeds ``single``", one value measured in another setting that is
    assumed to spread as ``values`` do (a sweep's single run against several seeds of another point).

    With the sample variance s² of ``values`` standing for both settings, d = mean − single has
    se = s·√(1/n + 1), the error of a new value's distance from a sample mean.
    """
    mean, var, n = _sample(values)
    return Comparison(mean - single, math.sqrt(var * (1 / n + 1)) if n > 1 else math.nan, n, 1)


def compare_effects(larger: Comparison, smaller: Comparison) -> Comparison:
    """The claim "effect ``larger`` exceeds effect ``smaller``" (a difference of differences: what an attacker
    costs a normal model against what it costs a DP one), the two estimated independently:
    d = d_a − d_b, se = √(se_a² + se_b²). The counts kept are each effect's smaller side."""
    return Comparison(larger.difference - smaller.difference,
                      math.hypot(larger.standard_error, smaller.standard_error),
                      min(larger.n_a, larger.n_b), min(smaller.n_a, smaller.n_b))


def within(comparison: Comparison, margin: float) -> Comparison:
    """The claim "the effect is at most ``margin`` either way" (int8 moves accuracy by at most a point).

    The criterion applied to m − |d| with the same se: confirmed when the whole band d ± Z·se lies inside
    ±m (two one-sided tests at Z), contradicted when |d| exceeds m by more than Z·se, inside the spread
    otherwise.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be ≥ 0, got {margin}")
    return Comparison(margin - abs(comparison.difference), comparison.standard_error, comparison.n_a, comparison.n_b)


@dataclass(frozen=True)
class Trend:
    """The claim "the mean falls along a sequence of settings" (e.g. stronger and stronger defenses).

    Confirmed when the last mean is below the first by the criterion (``overall``) and no step rises
    beyond the spread: a step from one setting to the next breaks the trend when the rise exceeds both
    Z standard errors and ``tolerance`` (in the metric's unit: a rise too small to matter in practice).
    Verdicts: "no spread", then "contradicted" (last above first by the criterion), "not monotone", or
    the overall comparison's.
    """

    overall: Comparison  # first − last
    steps: tuple[Comparison, ...]  # each setting − the next
    tolerance: float = 0.0

    def rises(self) -> list[int]:
        """Indices of the steps that rise beyond the spread and the tolerance."""
        return [i for i, step in enumerate(self.steps)
                if step.verdict == CONTRADICTED and -step.difference > self.tolerance]

    @property
    def verdict(self) -> str:
        if NO_SPREAD in (self.overall.verdict, *(step.verdict for step in self.steps)):
            return NO_SPREAD
        if self.overall.verdict == CONTRADICTED:  # the last setting is clearly the best: more than a wobble
            return CONTRADICTED
        return NOT_MONOTONE if self.rises() else self.overall.verdict

    @property
    def confirmed(self) -> bool:
        return self.verdict == CONFIRMED

    def __str__(self) -> str:
        parts = [f"first − last {self.overall.estimate()}"]
        for i in self.rises():
            step = self.steps[i]
            rise = Comparison(-step.difference, step.standard_error, step.n_b, step.n_a)
            parts.append(f"rise at step {i + 1}: {rise.estimate()}")
        return ", ".join([*parts, self.verdict])


def decreasing(series: Sequence[Sequence[float]], tolerance: float = 0.0) -> Trend:
    """:class:`Trend` of the values measured at each setting of ``series``, in order."""
    if len(series) < 2:
        raise ValueError(f"a trend needs at least two settings, got {len(series)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance}")
    return Trend(compare(series[0], series[-1]), tuple(compare(a, b) for a, b in zip(series, series[1:])), tolerance)


def verdict_table(rows: Iterable[tuple[str, str, str]], claim: str = "claim") -> str:
    """Markdown: one line per ``(claim, verdict, evidence)``, anything but "confirmed" in bold, then
    :data:`CRITERION`, so that every table states the rule its verdicts follow."""
    lines = [f"| {claim} | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {statement} | {verdict if verdict == CONFIRMED else f'**{verdict}**'} | {evidence} |"
              for statement, verdict, evidence in rows]
    return "\n".join(lines) + f"\n\n{CRITERION}"


@dataclass(frozen=True)
class ClaimCheck:
    """A paper's qualitative claim tested on one setting (a network, a regime, a strategy) with :data:`CRITERION`."""

    key: str  # claim/<name>: checks sharing a key are one claim tested on several networks or settings
    statement: str
    verdict: str  # "confirmed", "contradicted", "inside the spread", "not monotone" or "no spread"
    evidence: str

    @property
    def holds(self) -> bool:
        """Our numbers confirm the claim: the effect clears the spread, not just its sign."""
        return self.verdict == CONFIRMED


def check(key: str, statement: str, comparison: Comparison, evidence: str) -> ClaimCheck:
    """:class:`ClaimCheck` of ``comparison``: its verdict, and ``evidence`` followed by its estimate."""
    return ClaimCheck(key, statement, comparison.verdict, f"{evidence}: {comparison.estimate()}")


def scores(checks: Iterable[ClaimCheck]) -> dict[str, float]:
    """Each claim's share of its checks that our numbers confirm (1 = all, 0 = none), by key in first-seen order."""
    held: dict[str, list[bool]] = {}
    for c in checks:
        held.setdefault(c.key, []).append(c.holds)
    return {key: sum(values) / len(values) for key, values in held.items()}


def record(report: Any, checks: Sequence[ClaimCheck]) -> Sequence[ClaimCheck]:
    """Measure each key's :func:`scores` value in ``report`` (a :class:`fedrepro.results.Report`) and keep every
    check (statement, verdict, evidence) in its ``claims``, so that results.json holds the numbers a verdict
    table prints; returns ``checks``."""
    report.claims.extend(asdict(c) for c in checks)
    counts = Counter(c.key for c in checks)
    for key, score in scores(checks).items():
        report.measure(key, score, setting=f"share of {counts[key]} check(s) confirmed by the claim criterion")
    return checks


def checks_table(checks: Iterable[ClaimCheck], claim: str = "claim") -> str:
    """:func:`verdict_table` of checks: each one's statement, verdict and evidence, then :data:`CRITERION`."""
    return verdict_table([(c.statement, c.verdict, c.evidence) for c in checks], claim=claim)
