"""The t-tests behind every "beyond seed noise" verdict (``nlsearch.stats``): Student's t against printed
tables, Welch's test and general contrasts against hand computations from their formulas."""
from __future__ import annotations

import math

import pytest

from nlsearch.stats import contrast, t_two_sided_p, welch


@pytest.mark.parametrize("t, df, p", [(12.7062, 1, 0.05), (2.776445, 4, 0.05), (2.228139, 10, 0.05),
                                      (4.604095, 4, 0.01), (1.0, 1, 0.5), (0.0, 7, 1.0)])
def test_students_t_matches_the_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-5)
    assert t_two_sided_p(-t, df) == pytest.approx(p, abs=2e-5)


def test_welch_against_a_hand_computation():
    # means 0.85 and 0.55, both sample variances 0.0025: se² = 2 · 0.0025/3, t = 0.3 / sqrt(se²) = 7.348,
    # df = se⁴ / (2 · (0.0025/3)² / 2) = 4; the table's one-sided t(0.001, 4) = 7.173, so p < 0.002
    w = welch([0.9, 0.8, 0.85], [0.5, 0.6, 0.55])
    assert w.diff == pytest.approx(0.3)
    assert w.t == pytest.approx(0.3 / math.sqrt(2 * 0.0025 / 3))
    assert w.df == pytest.approx(4.0)
    assert 0.0015 < w.p < 0.002
    # unequal spreads: df by Welch–Satterthwaite, between min(n)-1 and n_a + n_b - 2
    w = welch([1.0, 2.0, 3.0, 4.0], [2.0, 2.1])
    va, vb = (5 / 3) / 4, 0.005 / 2
    assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 1))
    assert math.isnan(welch([1.0], [2.0, 3.0]).p)


def test_a_one_sample_contrast_is_the_t_test_against_a_bound():
    # seeds 0.5, 0.7, 0.9 against 0.6: t = 0.1 / (0.2 / sqrt 3) = 0.866 with 2 degrees of freedom, whose
    # two-sided p is 1 - t / sqrt(2 + t^2) = 0.478
    w = contrast([(1.0, 0.7, 0.2, 3)], constant=0.6)
    t = 0.1 / (0.2 / math.sqrt(3))
    assert (w.diff, w.t, w.df) == (pytest.approx(0.1), pytest.approx(t), pytest.approx(2.0))
    assert w.p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert not w.resolved(0.05) and w.resolved(0.5)


def test_a_four_mean_contrast_uses_welch_satterthwaite():
    # (a - b) - (c - d): estimate 0.4 - 0.1 = 0.3; variances of the means s^2 / n
    terms = [(1.0, 0.9, 0.1, 3), (-1.0, 0.5, 0.2, 4), (-1.0, 0.6, 0.1, 3), (1.0, 0.5, 0.3, 5)]
    v = [0.01 / 3, 0.04 / 4, 0.01 / 3, 0.09 / 5]
    df = sum(v) ** 2 / (v[0] ** 2 / 2 + v[1] ** 2 / 3 + v[2] ** 2 / 2 + v[3] ** 2 / 4)
    w = contrast(terms)
    assert w.diff == pytest.approx(0.3)
    assert w.t == pytest.approx(0.3 / math.sqrt(sum(v)))
    assert w.df == pytest.approx(df)
    assert w.p == pytest.approx(t_two_sided_p(0.3 / math.sqrt(sum(v)), df))
    # the coefficients' signs matter: flipping the last term's changes the estimate, not the variance
    flipped = contrast(terms[:3] + [(-1.0, 0.5, 0.3, 5)])
    assert flipped.diff == pytest.approx(-0.7) and flipped.df == pytest.approx(df)
    # a coefficient scales the mean's standard error by its size: 2 * mean vs 0.8, se = 2 * 0.1 / sqrt 3
    doubled = contrast([(2.0, 0.5, 0.1, 3)], constant=0.8)
    assert doubled.diff == pytest.approx(0.2) and doubled.t == pytest.approx(0.2 / (2 * 0.1 / math.sqrt(3)))


def test_degenerate_samples():
    assert math.isnan(contrast([(1.0, 0.7, math.nan, 1)]).p)            # one seed: no spread to test
    assert math.isnan(contrast([(1.0, math.nan, 0.1, 3)]).p)            # a diverged mean
    assert contrast([(1.0, 0.7, 0.0, 3), (-1.0, 0.6, 0.0, 3)]).p == 0.0   # no spread, different means
    same = contrast([(1.0, 0.7, 0.0, 3), (-1.0, 0.7, 0.0, 3)])
    assert same.p == 1.0 and not same.resolved(0.05)
    rounding = contrast([(1.0, 0.1, 0.0, 3), (1.0, 0.2, 0.0, 3), (-1.0, 0.3, 0.0, 3)])   # 0.1 + 0.2 - 0.3 != 0
    assert rounding.diff == 0.0 and rounding.p == 1.0
