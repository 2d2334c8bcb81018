"""Planner: the issue's exact figures, consistency between the two directions, cost and time helpers."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from robust_api.planner import (
    calls_per_image,
    cost_usd,
    max_radius_for_budget,
    min_calls_for_radius,
    seconds_at_rate,
    votes_at_agreement,
)


@pytest.mark.parametrize("radius, calls", [(0.125, 19), (0.25, 40), (0.5, 301)])
def test_min_calls_reproduce_the_issue_figures(radius, calls):
    assert min_calls_for_radius(radius, sigma=0.25, alpha=0.001) == calls


@pytest.mark.parametrize("n, radius", [(20, 0.137), (100, 0.375), (1000, 0.616)])
def test_max_radius_reproduces_the_issue_figures(n, radius):
    assert round(max_radius_for_budget(n, sigma=0.25, alpha=0.001), 3) == radius


def test_full_agreement_radius_is_the_closed_form():
    # k = n: p_lower = alpha^(1/n), the reference's ceiling sigma * Phi^-1(alpha^(1/N)).
    assert max_radius_for_budget(100, 0.25, 0.001) == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100)), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=0.6),
    st.sampled_from([0.12, 0.25, 0.5]),
    st.sampled_from([0.001, 0.01, 0.05]),
    st.sampled_from([1.0, 0.99, 0.95, 0.9, 0.8]),
)
def test_min_calls_is_the_smallest_budget_that_reaches_the_radius(radius, sigma, alpha, agreement):
    n = min_calls_for_radius(radius, sigma, alpha, agreement)
    if n is None:
        assert radius >= sigma * norm.ppf(agreement) - 1e-9 or agreement < 1.0
        return
    reached = max_radius_for_budget(n, sigma, alpha, agreement)
    assert reached is not None and reached >= radius - 1e-12
    if 1 < n < 400:  # nothing smaller works (a full scan, only where it is cheap)
        for m in range(1, n):
            r = max_radius_for_budget(m, sigma, alpha, agreement)
            assert r is None or r < radius


def test_unreachable_radius_is_none():
    limit = 0.25 * norm.ppf(0.8)
    assert min_calls_for_radius(limit + 0.01, 0.25, 0.001, agreement=0.8) is None
    assert min_calls_for_radius(0.1, 0.25, 0.001, agreement=0.5) is None
    assert max_radius_for_budget(100, 0.25, 0.001, agreement=0.55) is None


def test_agreement_uses_floor_robust_to_float_rounding():
    assert votes_at_agreement(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996
    assert votes_at_agreement(7, 0.5) == 3
    assert votes_at_agreement(10, 1.0) == 10


def test_lower_agreement_needs_more_calls():
    assert min_calls_for_radius(0.25, 0.25, 0.001, 0.95) > min_calls_for_radius(0.25, 0.25, 0.001, 1.0)


def test_bad_arguments_raise_value_error():
    for args in [(0.1, 0.0, 0.001), (0.1, 0.25, 0.0), (0.1, 0.25, 1.0), (-0.1, 0.25, 0.001), (math.nan, 0.25, 0.001)]:
        with pytest.raises(ValueError):
            min_calls_for_radius(*args)
    with pytest.raises(ValueError):
        max_radius_for_budget(0, 0.25, 0.001)
    with pytest.raises(ValueError):
        max_radius_for_budget(10, 0.25, 0.001, agreement=1.5)


def test_cost_and_time():
    assert calls_per_image(100, "fixed", n0=20) == 121  # clean query + N0 + N
    assert calls_per_image(100, "clean") == 101
    assert cost_usd(121, 1.5, images=1000) == pytest.approx(181.5)
    assert seconds_at_rate(120, 10.0, images=50) == pytest.approx(600.0)
    with pytest.raises(ValueError):
        seconds_at_rate(10, 0.0)
    with pytest.raises(ValueError):
        cost_usd(-1, 1.0)
    with pytest.raises(ValueError):
        calls_per_image(10, "magic")
