"""The statistical test support (tests/support/stats.py), checked against independent computations:
exact combinatorics for the coupon collector, numerical integration of the density and
published table values for chi-squared."""

from __future__ import annotations

import math

import pytest

from tests.support.stats import (
    FALSE_FAILURE,
    chi2_critical,
    chi2_even,
    chi2_sf,
    miss_probability,
    samples_to_see_all,
)


def exact_miss_probability(k: int, n: int) -> float:
    """P(n uniform picks among k leave one out), by inclusion-exclusion over the left-out set."""
    return sum((-1) ** (j + 1) * math.comb(k, j) * (1 - j / k) ** n for j in range(1, k))


def chi2_tail_by_integration(x: float, df: int, steps: int = 20_000) -> float:
    """Simpson's rule over the chi-squared density from x to x + 400 (the rest is below
    e^-200)."""
    log_norm = (df / 2) * math.log(2) + math.lgamma(df / 2)

    def density(t: float) -> float:
        return math.exp((df / 2 - 1) * math.log(t) - t / 2 - log_norm)

    h = 400 / steps
    total = density(x) + density(x + 400)
    for i in range(1, steps):
        total += (4 if i % 2 else 2) * density(x + i * h)
    return total * h / 3


@pytest.mark.parametrize("k", [2, 3, 4, 6, 10])
def test_samples_to_see_all_is_the_fewest_that_bound_the_miss_probability(k: int) -> None:
    n = samples_to_see_all(k)
    assert miss_probability(k, n) <= FALSE_FAILURE < miss_probability(k, n - 1)
    # The union bound is an upper bound on the exact probability, and a close one.
    assert exact_miss_probability(k, n) <= miss_probability(k, n)
    assert exact_miss_probability(k, n) > 0.99 * miss_probability(k, n)


def test_the_sample_counts_the_end_to_end_tests_use() -> None:
    assert [samples_to_see_all(k) for k in (1, 2, 3, 6)] == [1, 25, 43, 99]
    # The flaky check this replaced: 30 UDP packets over 6 endpoints missed one 2.5% of runs.
    assert exact_miss_probability(6, 30) == pytest.approx(0.0252, abs=1e-4)
    assert samples_to_see_all(6, p=1e-3) == 48


@pytest.mark.parametrize("df", range(1, 9))
@pytest.mark.parametrize("x", [0.5, 3.0, 12.0, 35.0, 60.0])
def test_chi2_sf_agrees_with_integrating_the_density(df: int, x: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(chi2_tail_by_integration(x, df), rel=1e-6)


@pytest.mark.parametrize(
    ("df", "p", "table"),
    [(1, 0.05, 3.841), (2, 0.01, 9.210), (3, 1e-4, 21.108), (4, 0.001, 18.467), (5, 0.05, 11.070)],
)
def test_chi2_critical_matches_published_tables(df: int, p: float, table: float) -> None:
    assert chi2_critical(df, p) == pytest.approx(table, abs=1e-3)


@pytest.mark.parametrize("df", [1, 3, 5, 9])
def test_chi2_critical_inverts_chi2_sf_far_out_in_the_tail(df: int) -> None:
    x = chi2_critical(df)
    assert chi2_sf(x, df) == pytest.approx(FALSE_FAILURE, rel=1e-6)
    assert chi2_tail_by_integration(x, df) == pytest.approx(FALSE_FAILURE, rel=1e-4)


def test_chi2_even_is_pearsons_statistic_against_an_even_spread() -> None:
    assert chi2_even([25, 25, 25, 25]) == 0
    assert chi2_even([30, 20, 25, 25]) == pytest.approx((25 + 25) / 25)
