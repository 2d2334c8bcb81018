"""Property tests of the smoothing statistics: bounds, CERTIFY, PREDICT, radius."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from robust_api.results import ABSTAIN
from robust_api.smoothing import (
    certify,
    certify_with_candidate,
    lower_confidence_bound,
    predict,
    radius_l2,
    top_label,
    upper_confidence_bound,
)

alphas = st.sampled_from([1e-6, 0.001, 0.01, 0.05, 0.1, 0.3, 0.49])


@st.composite
def k_n(draw, max_n=2000):
    n = draw(st.integers(min_value=1, max_value=max_n))
    k = draw(st.integers(min_value=0, max_value=n))
    return k, n


@settings(max_examples=300, deadline=None)
@given(k_n(), alphas)
def test_bounds_equal_statsmodels_clopper_pearson(kn, alpha):
    k, n = kn
    lo, hi = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(lo, abs=1e-9)
    assert upper_confidence_bound(k, n, alpha) == pytest.approx(hi, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(k_n(), alphas)
def test_bounds_are_probabilities_around_the_observed_rate(kn, alpha):
    k, n = kn
    lo, hi = lower_confidence_bound(k, n, alpha), upper_confidence_bound(k, n, alpha)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@settings(max_examples=200, deadline=None)
@given(k_n(), alphas)
def test_bounds_are_monotone_in_k(kn, alpha):
    k, n = kn
    if k < n:
        assert lower_confidence_bound(k, n, alpha) < lower_confidence_bound(k + 1, n, alpha)
        assert upper_confidence_bound(k, n, alpha) < upper_confidence_bound(k + 1, n, alpha)


@settings(max_examples=100, deadline=None)
@given(k_n(max_n=500))
def test_smaller_alpha_gives_wider_bounds(kn):
    k, n = kn
    assert lower_confidence_bound(k, n, 0.001) <= lower_confidence_bound(k, n, 0.01)
    assert upper_confidence_bound(k, n, 0.001) >= upper_confidence_bound(k, n, 0.01)


def test_bound_edges_are_closed_forms():
    assert lower_confidence_bound(0, 50, 0.001) == 0.0
    assert upper_confidence_bound(50, 50, 0.001) == 1.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), abs=1e-12)
    assert upper_confidence_bound(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100), abs=1e-12)
    assert (lower_confidence_bound(0, 0, 0.05), upper_confidence_bound(0, 0, 0.05)) == (0.0, 1.0)


@pytest.mark.parametrize(
    "k, n, alpha",
    [(-1, 5, 0.1), (6, 5, 0.1), (1, -2, 0.1), (1, 5, 0.0), (1, 5, 1.0), (1.5, 5, 0.1), ("1", 5, 0.1), (1, 5, math.nan)],
)
def test_bad_bound_arguments_raise_value_error(k, n, alpha):
    with pytest.raises(ValueError):
        lower_confidence_bound(k, n, alpha)
    with pytest.raises(ValueError):
        upper_confidence_bound(k, n, alpha)


def test_top_label_breaks_ties_by_smallest_label_whatever_the_order():
    assert top_label({"b": 3, "a": 3, "c": 1}) == "a"
    assert top_label({"a": 3, "b": 3}) == "a"
    assert top_label({"zebra": 4, "ant": 2}) == "zebra"
    with pytest.raises(ValueError):
        top_label({})
    with pytest.raises(ValueError):
        top_label({"a": -1})


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1 - 1e-9), st.floats(min_value=0.01, max_value=2.0))
def test_radius_is_sigma_times_inverse_normal(p, sigma):
    assert radius_l2(p, sigma) == pytest.approx(sigma * norm.ppf(p), rel=1e-12, abs=1e-12)


def test_radius_rejects_bad_inputs():
    for p, sigma in [(0.9, 0.0), (0.9, -1.0), (1.2, 0.25), (-0.1, 0.25), (0.9, math.inf)]:
        with pytest.raises(ValueError):
            radius_l2(p, sigma)


def test_certify_returns_cohen_radius_from_estimation_counts():
    label, radius = certify({"cat": 19, "dog": 1}, {"cat": 100}, sigma=0.25, alpha=0.001)
    assert label == "cat"
    # k = n = 100: p_lower = alpha^(1/n); the classic 0.375 ceiling of the reference at sigma = 0.25.
    assert radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100)), abs=1e-12)
    assert round(radius, 3) == 0.375


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 30), min_size=1),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 200)),
    st.sampled_from([0.001, 0.05]),
    st.sampled_from([0.12, 0.25, 0.5, 1.0]),
)
def test_certify_abstains_exactly_when_p_lower_is_below_half(selection, estimation, alpha, sigma):
    label, radius = certify(selection, estimation, sigma, alpha)
    n = sum(estimation.values())
    if sum(selection.values()) == 0:
        assert (label, radius) == (ABSTAIN, 0.0)
        return
    candidate = top_label(selection)
    p_lower = lower_confidence_bound(estimation.get(candidate, 0), n, alpha)
    if p_lower < 0.5:
        assert (label, radius) == (ABSTAIN, 0.0)
    else:
        assert label == candidate
        assert radius == pytest.approx(sigma * norm.ppf(p_lower), abs=1e-12)
        assert radius >= 0.0


def test_certify_abstains_on_empty_counts():
    assert certify({}, {"cat": 100}, 0.25, 0.001) == (ABSTAIN, 0.0)
    assert certify({"cat": 20}, {}, 0.25, 0.001) == (ABSTAIN, 0.0)


def test_certify_uses_the_selection_candidate_not_the_estimation_majority():
    # Selection says "dog"; the estimation majority is "cat": CERTIFY must test "dog" and abstain.
    assert certify({"dog": 11, "cat": 9}, {"cat": 90, "dog": 10}, 0.25, 0.001) == (ABSTAIN, 0.0)


def test_certify_with_candidate_certifies_the_clean_label():
    label, radius = certify_with_candidate("cat", {"cat": 95, "dog": 5}, 0.25, 0.001)
    assert label == "cat" and radius > 0.2
    assert certify_with_candidate("fox", {"cat": 95, "dog": 5}, 0.25, 0.001) == (ABSTAIN, 0.0)


def test_certify_validates_its_arguments():
    with pytest.raises(ValueError):
        certify({"a": 1}, {"a": 1}, sigma=0.0, alpha=0.01)
    with pytest.raises(ValueError):
        certify({"a": 1}, {"a": 1}, sigma=0.25, alpha=1.5)
    with pytest.raises(ValueError):
        certify({"a": 1}, {"a": -3}, sigma=0.25, alpha=0.01)


def test_predict_returns_the_top_label_when_the_binomial_test_rejects():
    assert predict({"cat": 90, "dog": 10}, alpha=0.001) == "cat"
    assert predict({"cat": 20}, alpha=0.001) == "cat"  # 2^-19 < 0.001


def test_predict_abstains_on_close_calls_ties_and_empty_counts():
    assert predict({"cat": 55, "dog": 45}, alpha=0.001) == ABSTAIN
    assert predict({"cat": 50, "dog": 50, "fox": 3}, alpha=0.1) == ABSTAIN
    assert predict({}, alpha=0.05) == ABSTAIN
    assert predict({"cat": 0}, alpha=0.05) == ABSTAIN
    assert predict({"cat": 5}, alpha=0.05) == ABSTAIN  # two-sided p = 2 * 2^-5 = 0.0625


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60), st.sampled_from([0.001, 0.05]))
def test_predict_matches_the_two_sided_binomial_test_of_the_top_two(a, b, c, alpha):
    from scipy.stats import binomtest

    counts = {"a": a, "b": b, "c": c}
    out = predict(counts, alpha)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (top, n1), (_, n2) = ranked[0], ranked[1]
    if n1 == 0 or binomtest(n1, n1 + n2, 0.5).pvalue > alpha:
        assert out == ABSTAIN
    else:
        assert out == top
