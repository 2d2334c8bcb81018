"""Randomized-smoothing statistics: confidence bounds, PREDICT, CERTIFY and the certified L2 radius.

Pure functions, no I/O, no provider knowledge. Counts are `Mapping[str, int]`: class label -> number of
noisy samples the base classifier gave that label. Abstention is `ABSTAIN` (-1), as in Cohen et al. (2019).
The sequential (early-stopping) procedures live in `robust_api.sequential`.
"""
from __future__ import annotations

import functools
import math
import numbers
import operator
from typing import Iterable, Mapping

from scipy.stats import beta, binomtest, norm

from robust_api.results import ABSTAIN

__all__ = [
    "ABSTAIN",
    "lower_confidence_bound",
    "upper_confidence_bound",
    "top_label",
    "radius_l2",
    "certify",
    "certify_with_candidate",
    "predict",
    "count_labels",
    "smoothed_prediction",
]


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, numbers.Real) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma > 0.0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _as_count(value: object, what: str) -> int:
    # operator.index accepts int and numpy integers but refuses floats and strings.
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {count}")
    return count


def _check_k_n(k: int, n: int) -> tuple[int, int]:
    k, n = _as_count(k, "k"), _as_count(n, "n")
    if k > n:
        raise ValueError(f"k must be <= n, got k={k}, n={n}")
    return k, n


def _total(counts: Mapping[str, int], what: str) -> int:
    return sum(_as_count(v, f"{what}[{label!r}]") for label, v in counts.items())


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on p from k successes in n Bernoulli(p) trials.

    Guarantee: P(bound <= p) >= 1 - alpha for every p. Equals statsmodels
    `proportion_confint(k, n, alpha=2*alpha, method="beta")[0]`; 0.0 when k == 0 (including n == 0).
    """
    k, n = _check_k_n(k, n)
    return _lower_bound(k, n, _check_alpha(alpha))


@functools.lru_cache(maxsize=1 << 16)
def _lower_bound(k: int, n: int, alpha: float) -> float:
    # Memoised: a replay of 10^6 images at n = 100 needs at most 101 beta quantiles per alpha.
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on p from k successes in n Bernoulli(p) trials.

    Guarantee: P(bound >= p) >= 1 - alpha for every p. Equals statsmodels
    `proportion_confint(k, n, alpha=2*alpha, method="beta")[1]`; 1.0 when k == n (including n == 0).
    """
    k, n = _check_k_n(k, n)
    alpha = _check_alpha(alpha)
    if k == n:
        return 1.0
    return float(beta.isf(alpha, k + 1, n - k))


def count_labels(labels: Iterable[str]) -> dict[str, int]:
    """How many times each label occurs, in order of first occurrence."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def top_label(counts: Mapping[str, int]) -> str:
    """The label with the most votes; ties go to the lexicographically smallest label (so the result is
    deterministic whatever the mapping's order). Raises ValueError for empty counts or negative votes."""
    if not counts:
        raise ValueError("top_label of empty counts")
    _total(counts, "counts")
    return min(counts, key=lambda label: (-counts[label], label))


def radius_l2(p_lower: float, sigma: float) -> float:
    """Certified L2 radius sigma * Phi^-1(p_lower) (Cohen et al., Theorem 1; negative when p_lower < 1/2).

    Raises ValueError unless 0 <= p_lower <= 1 and sigma > 0.
    """
    sigma = _check_sigma(sigma)
    if not (isinstance(p_lower, numbers.Real) and 0.0 <= p_lower <= 1.0):
        raise ValueError(f"p_lower must be in [0, 1], got {p_lower!r}")
    return sigma * float(norm.ppf(p_lower))


def certify_with_candidate(
    candidate: str, counts_estimation: Mapping[str, int], sigma: float, alpha: float
) -> tuple[str | int, float]:
    """CERTIFY a candidate class chosen independently of the estimation samples.

    Returns (candidate, radius) or (ABSTAIN, 0.0) when p_A_lower < 1/2. Guarantee: if `candidate` is a fixed
    function of anything independent of the estimation noise -- N0 separate selection samples (Cohen's
    CERTIFY) or the provider's label on the clean image ("clean-image selection") -- then with probability
    >= 1 - alpha over the estimation noise, the smoothed classifier g returns `candidate` everywhere within
    L2 distance `radius` of the image. Proof: conditioned on the candidate, the estimation count of the
    candidate is Binomial(n, p_c) with p_c the smoothed probability of the candidate, so the Clopper-Pearson
    bound satisfies p_lower <= p_c with probability >= 1 - alpha; if p_lower >= 1/2, Cohen et al.'s
    Theorem 1 with p_A = p_lower and p_B = 1 - p_lower gives g = candidate within sigma * Phi^-1(p_lower).
    The clean image is queried anyway (it defines "correct"), so clean-image selection saves the N0 calls.
    """
    sigma = _check_sigma(sigma)
    n = _total(counts_estimation, "counts_estimation")
    k = _as_count(counts_estimation.get(candidate, 0), "candidate count")
    p_lower = lower_confidence_bound(k, n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return candidate, radius_l2(p_lower, sigma)


def certify(
    counts_selection: Mapping[str, int],
    counts_estimation: Mapping[str, int],
    sigma: float,
    alpha: float,
) -> tuple[str | int, float]:
    """Cohen et al.'s CERTIFY: candidate = top_label(counts_selection), then certify_with_candidate.

    Returns (label, radius) or (ABSTAIN, 0.0). Guarantee: with probability >= 1 - alpha over the noise, the
    smoothed classifier returns `label` everywhere within L2 distance `radius` (the selection and estimation
    samples must be independent draws). Empty selection counts abstain.
    """
    sigma, alpha = _check_sigma(sigma), _check_alpha(alpha)
    if not counts_selection or _total(counts_selection, "counts_selection") == 0:
        _total(counts_estimation, "counts_estimation")
        return ABSTAIN, 0.0
    return certify_with_candidate(top_label(counts_selection), counts_estimation, sigma, alpha)


def predict(counts: Mapping[str, int], alpha: float) -> str | int:
    """Cohen et al.'s PREDICT: the top label if a two-sided binomial test of the top two counts (H0: equal
    chance) has p-value <= alpha, else ABSTAIN. Guarantee: the probability of returning a label other than
    the smoothed classifier's prediction g(x) is at most alpha. Empty counts abstain.
    """
    alpha = _check_alpha(alpha)
    _total(counts, "counts")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if not ranked or ranked[0][1] == 0:
        return ABSTAIN
    top, n_top = ranked[0]
    n_second = ranked[1][1] if len(ranked) > 1 else 0
    if binomtest(n_top, n_top + n_second, 0.5).pvalue > alpha:
        return ABSTAIN
    return top


def smoothed_prediction(counts: Mapping[str, int], alpha: float | None = None) -> str | int:
    """The reference's predict: the majority label (top_label; ABSTAIN for no votes) when alpha is None, else
    Cohen's PREDICT at level alpha (see `predict`)."""
    if alpha is not None:
        return predict(counts, alpha)
    return top_label(counts) if counts and _total(counts, "counts") else ABSTAIN
