"""Sample sizes and thresholds for the suite's statistical checks.

Traffic through a Service picks endpoints at random, so a check on where it went can fail a
correct proxy by chance. The suite's rule: every such check fails a correct proxy with
probability at most FALSE_FAILURE, so that a test (or a file of a dozen checks) fails less
than once in a million runs. Each bound here is an upper bound on that probability, computed
with the standard library alone (scipy is not a dependency); tests/test_stats.py checks them
against independent numerical computations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

FALSE_FAILURE = 1e-7


def miss_probability(k: int, n: int) -> float:
    """An upper bound on the chance that n independent uniform picks among k endpoints leave
    one of them out: each is left out with probability (1 - 1/k)^n, and the union bound adds
    the k of them (the coupon collector's tail)."""
    return 0.0 if k <= 1 else k * (1 - 1 / k) ** n


def samples_to_see_all(k: int, p: float = FALSE_FAILURE) -> int:
    """The fewest uniform picks among k endpoints after which a check that all k answered
    fails a correct proxy with probability at most p (see miss_probability)."""
    if k <= 1:
        return 1
    n = max(1, math.ceil(math.log(p / k) / math.log(1 - 1 / k)))
    # The logarithms may round either way: settle on the exact smallest n.
    while miss_probability(k, n) > p:
        n += 1
    while n > 1 and miss_probability(k, n - 1) <= p:
        n -= 1
    return n


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-squared with df degrees of freedom (a positive integer).

    The regularised upper incomplete gamma function Q(df/2, x/2) has a closed form for whole
    and half-integer orders: a Poisson tail sum for even df, the same sum over half-integer
    powers plus erfc for odd df.
    """
    if df < 1:
        raise ValueError(f"df must be a positive integer, not {df}")
    if x <= 0:
        return 1.0
    y = x / 2
    if df % 2 == 0:
        return math.exp(-y) * sum(y**j / math.factorial(j) for j in range(df // 2))
    tail = sum(y ** (j + 0.5) / math.gamma(j + 1.5) for j in range(df // 2))
    return math.erfc(math.sqrt(y)) + math.exp(-y) * tail


def chi2_critical(df: int, p: float = FALSE_FAILURE) -> float:
    """The x with chi2_sf(x, df) == p (to 1e-9 relative), found by bisection: chi2_sf falls
    strictly as x grows."""
    lo, hi = 0.0, 1.0
    while chi2_sf(hi, df) > p:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        if chi2_sf(mid, df) > p:
            lo = mid
        else:
            hi = mid
    return hi


def chi2_even(counts: Iterable[int]) -> float:
    """Pearson's statistic of counts against an even spread over them (len(counts) - 1
    degrees of freedom)."""
    counts = list(counts)
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)
