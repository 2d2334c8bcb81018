"""Monte Carlo validity of every certification mode, with a synthetic classifier of known class probabilities.

A certificate is wrong when it names a class other than the smoothed classifier's top class (class 0 here),
or when its radius exceeds the true radius sigma * Phi^-1(p_A). Each mode must issue wrong certificates with
probability <= alpha. The check is a one-sided exact binomial test: it fails only when the Clopper-Pearson
lower bound (at level CHECK) on the wrong-certificate rate exceeds alpha. So that the check is not vacuous,
a deliberately invalid sequential variant (full alpha at every look) must fail it, and the simulated rates
must match the exact ones computed by `operating_characteristics`.

Vectorised with numpy; the library functions themselves (certify, certify_with_candidate,
certify_sequential) are run on a subsample of the same draws and must agree with the vectorised replica.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, norm

from robust_api.results import ABSTAIN
from robust_api.sequential import SequentialPlan, certify_sequential, operating_characteristics
from robust_api.smoothing import certify, certify_with_candidate, lower_confidence_bound

ALPHA = 0.05
SIGMA = 0.25
TRIALS = 20_000
CHECK = 1e-3  # the Monte Carlo test's own error level
CROSS_CHECK = 300  # trials also run through the library functions themselves
LABELS = np.array(["a", "b", "c"])  # class index == lexicographic order, so argmax ties match top_label
TARGET = 0.25
Q_TARGET = float(norm.cdf(TARGET / SIGMA))  # 0.8413: p_A at which the true radius equals the target

# p_A values: 0.5 (any certificate of class 0 is wrong below it), just below/above the target's threshold,
# the sequential plan's worst case (0.845, found by scanning operating_characteristics), and easy ones.
P_AS = [0.45, 0.5, 0.6, Q_TARGET - 0.01, Q_TARGET, 0.845, 0.9, 0.97]


def class_probs(p_a: float) -> np.ndarray:
    rest = 1.0 - p_a
    return np.array([p_a, 0.7 * rest, 0.3 * rest])  # class 0 is the top class for p_a > 0.41


def true_radius(p_a: float) -> float:
    return SIGMA * float(norm.ppf(p_a))


def lcb(k: np.ndarray, n: int | np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Vectorised one-sided Clopper-Pearson lower bound (0 at k = 0)."""
    k = np.asarray(k)
    safe = np.maximum(k, 1)
    return np.where(k > 0, beta.ppf(alpha, safe, np.asarray(n) - safe + 1), 0.0)


def assert_rate_at_most_alpha(wrong: np.ndarray, alpha: float = ALPHA) -> float:
    failures, trials = int(wrong.sum()), wrong.size
    floor = lower_confidence_bound(failures, trials, CHECK)
    assert floor <= alpha, f"wrong-certificate rate {failures / trials:.4f} is above alpha={alpha} (CP lower {floor:.4f})"
    return failures / trials


# -- fixed mode: Cohen's CERTIFY with N0 noisy selection samples ------------------------------------------


@pytest.mark.parametrize("p_a", P_AS)
def test_fixed_mode_wrong_certificates_at_most_alpha(p_a):
    n0, n = 10, 60
    rng = np.random.default_rng([1, int(p_a * 1e6)])
    probs = class_probs(p_a)
    selection = rng.multinomial(n0, probs, size=TRIALS)
    estimation = rng.multinomial(n, probs, size=TRIALS)
    candidate = selection.argmax(axis=1)  # first maximum = lexicographically smallest label
    k = estimation[np.arange(TRIALS), candidate]
    p_lower = lcb(k, n, ALPHA)
    certified = p_lower >= 0.5
    radius = SIGMA * norm.ppf(p_lower)
    wrong = certified & ((candidate != 0) | (radius > true_radius(p_a)))
    assert_rate_at_most_alpha(wrong)

    for i in range(CROSS_CHECK):  # the library's CERTIFY on the same draws
        label, r = certify(dict(zip(LABELS, selection[i].tolist())), dict(zip(LABELS, estimation[i].tolist())), SIGMA, ALPHA)
        if certified[i]:
            assert label == LABELS[candidate[i]] and r == pytest.approx(radius[i], abs=1e-9)
        else:
            assert (label, r) == (ABSTAIN, 0.0)


# -- clean-image selection: the candidate comes from the clean image ------------------------------------


@pytest.mark.parametrize("clean_label", [0, 1], ids=["clean-label-right", "clean-label-wrong"])
@pytest.mark.parametrize("p_a", P_AS)
def test_clean_selection_wrong_certificates_at_most_alpha(p_a, clean_label):
    n = 60
    rng = np.random.default_rng([2, clean_label, int(p_a * 1e6)])
    estimation = rng.multinomial(n, class_probs(p_a), size=TRIALS)
    k = estimation[:, clean_label]
    p_lower = lcb(k, n, ALPHA)
    certified = p_lower >= 0.5
    radius = SIGMA * norm.ppf(p_lower)
    wrong = certified & ((clean_label != 0) | (radius > true_radius(p_a)))
    assert_rate_at_most_alpha(wrong)

    for i in range(CROSS_CHECK):
        label, r = certify_with_candidate(LABELS[clean_label], dict(zip(LABELS, estimation[i].tolist())), SIGMA, ALPHA)
        assert (label != ABSTAIN) == bool(certified[i])
        if certified[i]:
            assert r == pytest.approx(radius[i], abs=1e-9)


# -- sequential mode ------------------------------------------------------------------------------------


def simulate_sequential(plan: SequentialPlan, votes: np.ndarray, full_alpha_everywhere: bool = False):
    """Run `plan` on per-sample candidate votes (trials x max_queries booleans): (certified, radius, n_used).

    With full_alpha_everywhere the plan is replaced by the invalid "re-test at full alpha at every look"
    variant: certify the target at any look at level alpha (and radius >= 0 at the last look), no futility.
    """
    trials = votes.shape[0]
    cumulative = votes.cumsum(axis=1)
    certified = np.zeros(trials, bool)
    radius = np.zeros(trials)
    n_used = np.zeros(trials, int)
    alive = np.ones(trials, bool)
    for (n, certify_from, abstain_to), look_alpha in zip(plan.boundaries, plan.alphas):
        k = cumulative[:, n - 1]
        if full_alpha_everywhere:
            p_lower = lcb(k, n, plan.alpha)
            need = 0.5 if n == plan.max_queries else Q_TARGET
            cert_now, stop_now = alive & (p_lower >= need), alive & (n == plan.max_queries)
        else:
            p_lower = lcb(k, n, look_alpha) if look_alpha > 0 else np.zeros(trials)
            cert_now = alive & (k >= certify_from)
            stop_now = alive & (k <= abstain_to)
        radius[cert_now] = SIGMA * norm.ppf(p_lower[cert_now])
        certified |= cert_now
        done = cert_now | stop_now
        n_used[done] = n
        alive &= ~done
    return certified, radius, n_used


@pytest.fixture(scope="module")
def plan() -> SequentialPlan:
    return SequentialPlan(100, ALPHA, SIGMA, target_radius=TARGET)


@pytest.mark.parametrize("p_a", P_AS)
def test_sequential_wrong_certificates_at_most_alpha_and_match_the_exact_rate(plan, p_a):
    rng = np.random.default_rng([3, int(p_a * 1e6)])
    votes = rng.random((TRIALS, plan.max_queries)) < p_a
    certified, radius, n_used = simulate_sequential(plan, votes)
    wrong = certified & (radius > true_radius(p_a))
    rate = assert_rate_at_most_alpha(wrong)

    exact = operating_characteristics(plan, p_a)
    se = np.sqrt(max(exact["p_wrong"], 1e-4) / TRIALS)
    assert abs(rate - exact["p_wrong"]) < 5 * se
    assert abs(n_used.mean() - exact["expected_calls"]) < 5 * n_used.std() / np.sqrt(TRIALS) + 1e-9

    for i in range(CROSS_CHECK):  # replay through the library on the same sample order
        labels = np.where(votes[i], "a", "b").tolist()
        outcome = certify_sequential(plan, "a", labels)
        assert outcome.n_used == n_used[i]
        assert (outcome.decision.action == "certify") == bool(certified[i])
        if certified[i]:
            assert outcome.decision.radius == pytest.approx(radius[i], abs=1e-9)


@pytest.mark.parametrize("p_b", [0.3, 0.45, 0.49])
def test_sequential_with_a_wrong_clean_label_rarely_certifies_it(plan, p_b):
    # The clean label is class b, which gets fewer than half of the noisy votes: every certificate is wrong.
    rng = np.random.default_rng([4, int(p_b * 1e6)])
    votes = rng.random((TRIALS, plan.max_queries)) < p_b
    certified, _, _ = simulate_sequential(plan, votes)
    assert_rate_at_most_alpha(certified)


def test_sequential_without_target_and_with_min_radius_stay_valid():
    for plan in (SequentialPlan(100, ALPHA, SIGMA), SequentialPlan(100, ALPHA, SIGMA, TARGET, min_radius=0.1)):
        for p_a in (0.55, Q_TARGET, 0.9):
            rng = np.random.default_rng([5, int(p_a * 1e6), plan.looks[0]])
            votes = rng.random((TRIALS, plan.max_queries)) < p_a
            certified, radius, _ = simulate_sequential(plan, votes)
            assert_rate_at_most_alpha(certified & (radius > true_radius(p_a)))


@pytest.mark.parametrize("p_a", [0.84, 0.845])
def test_retesting_at_full_alpha_at_every_look_fails_the_same_check(plan, p_a):
    rng = np.random.default_rng([3, int(p_a * 1e6)])
    votes = rng.random((TRIALS, plan.max_queries)) < p_a
    certified, radius, _ = simulate_sequential(plan, votes, full_alpha_everywhere=True)
    wrong = certified & (radius > true_radius(p_a))
    with pytest.raises(AssertionError, match="above alpha"):
        assert_rate_at_most_alpha(wrong)
    # ...while the valid plan passes on the very same draws.
    certified, radius, _ = simulate_sequential(plan, votes)
    assert_rate_at_most_alpha(certified & (radius > true_radius(p_a)))
