"""Tests of differences between means of independent seeds, for the verdicts that say whether a margin
is beyond seed noise (a search's confirmation stage, a published claim's check).

Every test here is a t-test of a *contrast*: a linear combination ``sum_i c_i * mean_i - constant`` of
the means of independent samples, each given by its summary (mean, sample std, n). Its standard error
is ``sqrt(sum_i c_i^2 s_i^2 / n_i)`` and its degrees of freedom the Welch-Satterthwaite approximation
``(sum_i v_i)^2 / sum_i v_i^2 / (n_i - 1)`` with ``v_i = c_i^2 s_i^2 / n_i``. Welch's two-sample test is
the contrast (1, -1); a one-sample test against a bound is the contrast (1) with the bound as constant;
"a lead grows from one task to another" is (1, -1, -1, 1) over four means.

p-values come from Student's t through the regularised incomplete beta function (no SciPy needed).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence, Tuple


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class Welch:
    diff: float            # the contrast's estimate (for two samples: mean(a) - mean(b))
    t: float
    df: float
    p: float               # two-sided

    def resolved(self, alpha: float) -> bool:
        """Whether the test rejects a zero contrast at level ``alpha`` (NaN p: never)."""
        return not math.isnan(self.p) and self.p < alpha


Term = Tuple[float, float, float, int]     # (coefficient, mean, sample std, n)


def contrast(terms: Sequence[Term], constant: float = 0.0) -> Welch:
    """The t-test of ``sum c_i mean_i = constant`` over independent samples (module docstring). NaN
    statistics when a sample has fewer than 2 values or a NaN mean; without any spread, t = ±inf (p = 0)
    when the estimate is not zero, and p = 1 when it is (an estimate within rounding of zero is zero)."""
    diff = sum(c * m for c, m, _, _ in terms) - constant if terms else math.nan
    if not terms or any(n < 2 or math.isnan(m) or math.isnan(s) for _, m, s, n in terms):
        return Welch(diff, math.nan, math.nan, math.nan)
    parts = [(c * c * s * s / n, n) for c, _, s, n in terms]
    se2 = sum(v for v, _ in parts)
    if abs(diff) <= 1e-12 * (sum(abs(c * m) for c, m, _, _ in terms) + abs(constant)):
        diff = 0.0                     # equal up to rounding (0.1 + 0.2 - 0.3): no difference to test
    if se2 == 0:
        return Welch(diff, math.copysign(math.inf, diff) if diff else math.nan, math.inf, 0.0 if diff else 1.0)
    df = se2 ** 2 / sum(v * v / (n - 1) for v, n in parts)
    t = diff / math.sqrt(se2)
    return Welch(diff, t, df, t_two_sided_p(t, df))


def summary(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample std, n) of ``values``; NaN where undefined."""
    n = len(values)
    return (statistics.fmean(values) if n else math.nan, statistics.stdev(values) if n > 1 else math.nan, n)


def welch_summaries(a: Tuple[float, float, int], b: Tuple[float, float, int]) -> Welch:
    """Welch's test of mean(a) = mean(b) from each sample's (mean, sample std, n)."""
    return contrast([(1.0, *a), (-1.0, *b)])


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's unequal-variance t-test of mean(a) = mean(b); NaN statistics with fewer than 2 values on
    a side. Two samples without any spread give t = ±inf (p = 0) when their means differ."""
    return welch_summaries(summary(a), summary(b))
