"""The report's statistics against SciPy and statsmodels (test-only dependencies)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)

from gateway.experiments import stats

CASES = [(120, 1000, 150, 1000), (5, 40, 9, 38), (1000, 10000, 1100, 10200),
         (0, 50, 3, 50), (33, 333, 33, 350)]


@pytest.mark.parametrize(("df", "t"), [(1, 0.5), (2.5, -1.7), (10, 2.2), (57.3, 3.1),
                                       (1000, 0.01), (4, 12.0)])
def test_student_t_tail_and_quantile_match_scipy(df: float, t: float) -> None:
    assert stats.t_sf(t, df) == pytest.approx(sp.t.sf(t, df), rel=1e-9, abs=1e-14)
    for q in (0.001, 0.025, 0.5, 0.9, 0.975, 0.9995):
        assert stats.t_ppf(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-8, abs=1e-9)


@pytest.mark.parametrize(("df", "x"), [(1, 0.3), (1, 11.0), (2, 13.8), (4, 1.0), (9, 30.0),
                                       (3, 0.0001), (50, 49.0)])
def test_chi_square_tail_matches_scipy(df: int, x: float) -> None:
    assert stats.chi2_sf(x, df) == pytest.approx(sp.chi2.sf(x, df), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("xc", "nc", "xt", "nt"), CASES)
def test_two_proportion_z_test_and_wald_interval_match_statsmodels(
        xc: int, nc: int, xt: int, nt: int) -> None:
    found = stats.two_proportions(xc, nc, xt, nt, alpha=0.05)
    _, p = proportions_ztest([xt, xc], [nt, nc])
    low, high = confint_proportions_2indep(xt, nt, xc, nc, method="wald", compare="diff",
                                           alpha=0.05)
    assert found.p_value == pytest.approx(p, rel=1e-9)
    assert (found.low, found.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high,
                                                                                   rel=1e-9))
    assert found.difference == pytest.approx(xt / nt - xc / nc)


def test_welch_t_test_and_interval_match_scipy() -> None:
    rng = np.random.default_rng(7)
    for n_c, n_t, shift in ((30, 45, 0.0), (200, 180, 0.4), (12, 9, 2.0)):
        c = rng.normal(10, 3, n_c)
        t = rng.normal(10 + shift, 5, n_t)
        found = stats.welch(c.mean(), c.var(ddof=1), n_c, t.mean(), t.var(ddof=1), n_t, 0.05)
        reference = sp.ttest_ind(t, c, equal_var=False)
        assert found.p_value == pytest.approx(reference.pvalue, rel=1e-8)
        interval = reference.confidence_interval(0.95)
        assert found.low == pytest.approx(interval.low, rel=1e-8)
        assert found.high == pytest.approx(interval.high, rel=1e-8)


def test_holm_matches_statsmodels() -> None:
    for p_values in ([0.01, 0.04, 0.03], [0.2, 0.001], [0.5], [0.02, 0.02, 0.9, 0.011]):
        expected = multipletests(p_values, method="holm")[1]
        assert stats.holm(p_values) == pytest.approx(list(expected), rel=1e-12)


def test_sample_ratio_mismatch_matches_scipy_chisquare() -> None:
    for observed, weights in (([5000, 5100], [50, 50]), ([4800, 5200], [1, 1]),
                              ([900, 2100], [30, 70]), ([340, 330, 330], [1, 1, 1])):
        total = sum(observed)
        expected = [total * w / sum(weights) for w in weights]
        assert stats.sample_ratio_mismatch(observed, weights) == pytest.approx(
            sp.chisquare(observed, expected).pvalue, rel=1e-9)


@pytest.mark.parametrize(("baseline", "mde", "alpha", "power"),
                         [(0.10, 0.02, 0.05, 0.8), (0.5, -0.05, 0.01, 0.9),
                          (0.03, 0.005, 0.05, 0.8), (0.2, 0.1, 0.1, 0.7)])
def test_units_needed_match_statsmodels_normal_ind_power(
        baseline: float, mde: float, alpha: float, power: float) -> None:
    effect = proportion_effectsize(baseline + mde, baseline)
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power,
                                            ratio=1.0, alternative="two-sided")
    assert stats.units_needed(baseline, mde, alpha, power) == math.ceil(expected)


def test_msprt_confidence_sequence_is_where_the_ratio_stays_under_one_over_alpha() -> None:
    found = stats.msprt(difference=0.03, variance=0.0001, tau=0.02, alpha=0.05)
    for edge in (found.low, found.high):
        at_edge = stats.msprt(0.03 - edge, 0.0001, 0.02, 0.05).likelihood_ratio
        assert at_edge == pytest.approx(1 / 0.05, rel=1e-9)
    assert found.p_value == pytest.approx(1 / found.likelihood_ratio)


def test_msprt_peeking_keeps_the_false_positive_rate_under_alpha_where_fixed_tests_do_not(
) -> None:
    """A/A: both arms convert at 10%; a report is read every 200 units per arm up to 6,000.
    Stopping at the first look with p < 0.05 must be wrong in at most 5% of experiments
    with the always-valid p-value; the fixed-horizon z-test read the same way is wrong far
    more often (that contrast shows the simulation can see the inflation)."""
    rng = np.random.default_rng(2024)
    runs, looks, per_look, alpha = 600, 30, 200, 0.05
    sequential_wrong = fixed_wrong = 0
    for _ in range(runs):
        c = rng.binomial(per_look, 0.10, looks).cumsum()
        t = rng.binomial(per_look, 0.10, looks).cumsum()
        seq_hit = fixed_hit = False
        for look in range(looks):
            n = per_look * (look + 1)
            pc, pt = c[look] / n, t[look] / n
            variance = (pc * (1 - pc) + pt * (1 - pt)) / n
            seq_hit |= stats.msprt(pt - pc, variance, tau=0.02, alpha=alpha).p_value < alpha
            fixed_hit |= stats.two_proportions(int(c[look]), n, int(t[look]), n,
                                               alpha).p_value < alpha
        sequential_wrong += seq_hit
        fixed_wrong += fixed_hit
    assert sequential_wrong / runs <= alpha
    assert fixed_wrong / runs > 2 * alpha


def test_quantile_rejects_values_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="0 < q < 1"):
        stats.t_ppf(1.0, 5)
