"""The statistics of an experiment report, in pure Python (no SciPy at run time).

Each function is the textbook test its docstring names; tests/unit/test_experiment_stats.py
checks them against SciPy and statsmodels. The distributions needed are the normal (the
standard library's NormalDist), Student's t (through the regularized incomplete beta
function) and chi-square (through the regularized upper incomplete gamma function), both
by the continued fractions of Numerical Recipes (Press et al., 3rd ed., §6.2 and §6.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()
_EPS = 1e-15
_TINY = 1e-300


# ---------------------------------------------------------------- distributions

def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on the tail; 1e-12 in t)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1, got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_sf(high, df) > 1.0 - q:
        high *= 2.0
    while high - low > 1e-12 * max(1.0, high):
        mid = (low + high) / 2.0
        if t_sf(mid, df) > 1.0 - q:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for chi-square with `df` degrees of freedom: Q(df/2, x/2)."""
    a, x = df / 2.0, x / 2.0
    if x <= 0.0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # the series converges fast here
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    b = x + 1.0 - a  # the continued fraction otherwise (modified Lentz)
    c, d = 1.0 / _TINY, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return math.exp(log_front) * h


def z_quantile(q: float) -> float:
    return _NORMAL.inv_cdf(q)


def normal_two_sided_p(z: float) -> float:
    return 2.0 * (1.0 - _NORMAL.cdf(abs(z))) if abs(z) < 8 else 2.0 * _NORMAL.cdf(-abs(z))


# ---------------------------------------------------------------- comparisons

@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment against control: levels, lift with its interval, and the p-value."""

    control: float  # rate or mean
    treatment: float
    difference: float  # treatment - control: the absolute lift
    relative: float | None  # difference / control; None when control is 0
    low: float  # the (1 - alpha) interval of the difference
    high: float
    p_value: float  # two-sided, or the always-valid one of a sequential test


def _relative(difference: float, control: float) -> float | None:
    return difference / control if control else None


def two_proportions(conversions_c: int, units_c: int, conversions_t: int, units_t: int,
                    alpha: float) -> Comparison:
    """Two-proportion z-test (pooled variance, two-sided) with the Wald interval of the
    difference (unpooled), as statsmodels' proportions_ztest and confint_proportions_2indep
    (method="wald") compute them."""
    pc, pt = conversions_c / units_c, conversions_t / units_t
    difference = pt - pc
    pooled = (conversions_c + conversions_t) / (units_c + units_t)
    se_test = math.sqrt(pooled * (1 - pooled) * (1 / units_c + 1 / units_t))
    p_value = normal_two_sided_p(difference / se_test) if se_test > 0 else 1.0
    se = math.sqrt(pc * (1 - pc) / units_c + pt * (1 - pt) / units_t)
    half = z_quantile(1 - alpha / 2) * se
    return Comparison(pc, pt, difference, _relative(difference, pc), difference - half,
                      difference + half, p_value)


def welch(mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int,
          alpha: float) -> Comparison:
    """Welch's unequal-variance t-test (two-sided) with its interval of the difference, as
    scipy.stats.ttest_ind_from_stats(equal_var=False) computes it. Variances are sample
    variances (ddof 1)."""
    difference = mean_t - mean_c
    a, b = var_c / n_c, var_t / n_t
    se = math.sqrt(a + b)
    if se == 0:
        return Comparison(mean_c, mean_t, difference, _relative(difference, mean_c),
                          difference, difference, 1.0 if difference == 0 else 0.0)
    df = (a + b) ** 2 / (a * a / (n_c - 1) + b * b / (n_t - 1))
    t = difference / se
    half = t_ppf(1 - alpha / 2, df) * se
    return Comparison(mean_c, mean_t, difference, _relative(difference, mean_c),
                      difference - half, difference + half, min(1.0, 2 * t_sf(abs(t), df)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (statsmodels multipletests(method="holm"))."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    m = len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float]) -> float:
    """The p-value of Pearson's chi-square test of observed units against the configured
    weights (scipy.stats.chisquare with expected counts in the weights' proportions)."""
    total, weight = sum(observed), sum(weights)
    if total == 0 or len(observed) < 2:
        return 1.0
    statistic = sum((o - total * w / weight) ** 2 / (total * w / weight)
                    for o, w in zip(observed, weights, strict=True) if w > 0)
    return chi2_sf(statistic, len(observed) - 1)


def units_needed(baseline_rate: float, minimum_detectable_effect: float, alpha: float,
                 power: float) -> int:
    """Units per variant for a two-sided two-proportion test to detect an absolute change of
    `minimum_detectable_effect` from `baseline_rate`: Cohen's h with the normal
    approximation, as statsmodels' NormalIndPower().solve_power(proportion_effectsize(...))
    computes it (ratio 1), rounded up."""
    target = min(max(baseline_rate + minimum_detectable_effect, 0.0), 1.0)
    h = abs(2 * math.asin(math.sqrt(target)) - 2 * math.asin(math.sqrt(baseline_rate)))
    if h == 0:
        raise ValueError("the minimum detectable effect must change the rate")
    z_alpha, z_power = z_quantile(1 - alpha / 2), z_quantile(power)
    n = 2 * ((z_alpha + z_power) / h) ** 2  # the shift is h * sqrt(n / 2) with equal arms
    # solve_power also counts the (tiny) power of the other tail; Newton steps on the exact
    # two-sided power close that gap.
    for _ in range(4):
        shift = h * math.sqrt(n / 2)
        exact = _NORMAL.cdf(shift - z_alpha) + _NORMAL.cdf(-shift - z_alpha)
        slope = (_NORMAL.pdf(shift - z_alpha) - _NORMAL.pdf(-shift - z_alpha)) * h / (
            2 * math.sqrt(2 * n))
        if slope <= 0:
            break
        n -= (exact - power) / slope
    return math.ceil(n - 1e-9)


# ---------------------------------------------------------------- sequential (mSPRT)

@dataclass(frozen=True, slots=True)
class Sequential:
    """Always-valid inference at one look: the mixture likelihood ratio, its p-value (the
    caller keeps the running minimum over looks) and the confidence sequence's interval."""

    likelihood_ratio: float
    p_value: float
    low: float
    high: float


def msprt(difference: float, variance: float, tau: float, alpha: float) -> Sequential:
    """The mixture sequential probability ratio test of Johari, Pekelis and Walsh
    ("Always valid inference", 2017) for a difference of means that is approximately
    normal with `variance` (var_c / n_c + var_t / n_t), mixing over N(0, tau^2) effects.

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))); 1 / Lambda bounds
    the probability of ever seeing so large a ratio under no effect, so p = min(1, 1 /
    Lambda) may be read at any look (the running minimum over looks stays valid), and the
    interval {theta : Lambda(theta) < 1 / alpha} is a confidence sequence."""
    if tau <= 0:
        return Sequential(1.0, 1.0, -math.inf, math.inf)
    if variance <= 0:  # no spread at all: any difference is certain
        return (Sequential(math.inf, 0.0, difference, difference) if difference
                else Sequential(1.0, 1.0, 0.0, 0.0))
    total = variance + tau * tau
    exponent = tau * tau * difference * difference / (2 * variance * total)
    log_ratio = 0.5 * math.log(variance / total) + exponent
    ratio = math.exp(min(log_ratio, 700.0))
    half = math.sqrt(variance * total / (tau * tau)
                     * (2 * math.log(1 / alpha) + math.log(total / variance)))
    return Sequential(ratio, min(1.0, 1.0 / ratio), difference - half, difference + half)
