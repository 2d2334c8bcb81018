"""Sequential certification: draw noisy samples in rounds, stop early to abstain or to certify, stay valid.

Design (alpha spending over a fixed schedule of certification looks, plus free futility checks):

* The candidate class is fixed before the first estimation sample (clean-image selection, or separate
  selection samples), so the candidate's labels X_1, X_2, ... are i.i.d. Bernoulli(p_c) draws.
* A plan fixes, before any sample is drawn, certification looks n_1 < ... < n_K = max_queries with levels
  alpha_1 + ... + alpha_K = alpha. At look j the plan may certify with radius sigma * Phi^-1(L_j), where L_j
  is the one-sided Clopper-Pearson lower bound at level alpha_j from the first n_j samples.
* Between and at looks the plan may stop to abstain for futility at any checkpoint ("checks"): abstaining
  issues no certificate, so it costs no alpha.

Validity proof sketch. Let E_j = {L_j > p_c}: the bound at look j is wrong. E_j depends only on the first n_j
samples and P(E_j) <= alpha_j whatever p_c (Clopper-Pearson). Every certificate the procedure can issue is
sigma * Phi^-1(L_j) for the look j where it stops; it is wrong (radius above sigma * Phi^-1(p_c), the
candidate's true radius by Cohen et al.'s Theorem 1, or a candidate that is not the smoothed classifier's
class, which needs p_c < 1/2 <= L_j) only on E_j. So P(wrong certificate) <= P(E_1 u ... u E_K) <=
sum_j alpha_j = alpha, whatever the stopping rule, futility rule or data-dependent stopping time: the events
are fixed in advance and the stopping rule only chooses which of them we look at.

Why this design rather than an anytime-valid confidence sequence: images whose labels always agree (p_c ~ 1)
can only reach radius r once alpha_j^(1/n) >= Phi(r / sigma), i.e. after n >= ln(1/alpha_j) / -ln Phi(r/sigma)
samples, so the best single look is the first n where that holds. At r = 0.3, sigma = 0.25, alpha = 0.001
spending alpha/2 there certifies unanimous images after 63 samples; a beta-mixture confidence sequence
(Ville's inequality) at the same alpha/2, checked every 5 samples, needs 70-75 and is no cheaper at
p_c = 0.99 (88.5 expected samples against 90). Looking after every sample buys little when samples arrive
in concurrent rounds anyway. Futility checks are free, so hopeless images stop after a round or two.

Futility rule (free, it only abstains): let k* be the smallest candidate count that certifies `min_radius`
at the final look. At each check, with k of n samples for the candidate, the plan takes an optimistic value
p_hi = the upper confidence bound at level `futility_alpha` and abstains when even that p_hi would reach k*
by max_queries with probability below `futility_eps` (this includes "k* is out of reach whatever the
remaining samples say"). An image whose final look would certify with good probability is seldom dropped,
so the rule costs a little power (certified accuracy), never validity.

Recommendation: set `target_radius` to the largest radius you will report (0.3 for the grid 0, 0.1, 0.2, 0.3
at sigma = 0.25) and `max_queries` to the fixed budget you would otherwise spend (N0 + N = 120). The final
look then gets alpha/2 at 120 samples, about as powerful as Cohen's N = 100 at alpha, so images in between
lose nothing; images that reach the target stop at the first look (63 samples when p_c = 1, 90 expected at
p_c = 0.99); hopeless images stop early (expected 6 / 11 / 17 / 31 samples at p_c = 0.1 / 0.3 / 0.4 / 0.5).
Exact figures for any plan and p_c: `operating_characteristics`. Images in between (p_c ~ 0.65-0.97) run to
max_queries, so the savings come from the two ends of the population. `min_radius` > 0 (e.g. = target)
abstains as soon as that radius is out of reach, for users to whom smaller certificates are worthless.
With target_radius=None there is no early certification: all of alpha goes to the final look (the fixed-N
test at max_queries) and only the futility rule saves calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import binom, norm

from robust_api.results import ABSTAIN
from robust_api.smoothing import lower_confidence_bound, radius_l2, upper_confidence_bound

__all__ = ["Decision", "SequentialPlan", "SequentialOutcome", "certify_sequential", "operating_characteristics"]

PLAN_VERSION = 1
ACTIONS = ("continue", "certify", "abstain")


@dataclass(frozen=True)
class Decision:
    """What to do after `n` samples with `k` votes for the candidate: "continue", "certify" (label = the
    candidate passed to `decide` or None, radius and p_lower set) or "abstain" (label ABSTAIN, radius 0.0).
    `reason` says why the plan stopped."""

    action: str
    n: int
    k: int
    label: str | int | None = ABSTAIN
    radius: float = 0.0
    p_lower: float | None = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.action != "continue"


class SequentialPlan:
    """A fixed schedule of looks for sequential certification (see the module docstring for the guarantee).

    `looks` are the sample counts at which the caller must call `decide` (every round ends at one);
    `alphas[i]` is the alpha spent at looks[i] (0.0 for a futility-only check; they sum to at most `alpha`).

    Derived schedule (default): with a target, the first certification look is the smallest n at which
    unanimous samples certify the target at its alpha share, followed by `interim_looks - 1` more (geometric)
    and the final look at max_queries, which gets `final_share` of alpha; the interim looks split the rest
    equally. A target that unanimous samples cannot reach before max_queries (or target_radius=None) leaves
    one certification look: max_queries at full alpha. Futility checks happen every `round_size` samples, the
    first after `first_round` (default round_size // 2). An explicit `looks` + `alphas` schedule overrides
    all that (`from_dict` uses it). Raises ValueError for out-of-range settings.
    """

    def __init__(
        self,
        max_queries: int,
        alpha: float,
        sigma: float,
        target_radius: float | None = None,
        *,
        min_radius: float = 0.0,
        round_size: int = 10,
        first_round: int | None = None,
        interim_looks: int = 1,
        final_share: float = 0.5,
        futility_alpha: float = 0.1,
        futility_eps: float = 0.1,
        looks: Sequence[int] | None = None,
        alphas: Sequence[float] | None = None,
    ) -> None:
        self.max_queries = _positive_int(max_queries, "max_queries")
        self.alpha = _unit(alpha, "alpha")
        self.sigma = _positive(sigma, "sigma")
        self.target_radius = None if target_radius is None else _positive(target_radius, "target_radius")
        if isinstance(min_radius, bool) or not isinstance(min_radius, (int, float)) or not 0.0 <= min_radius < math.inf:
            raise ValueError(f"min_radius must be a finite number >= 0, got {min_radius!r}")
        if self.target_radius is not None and min_radius > self.target_radius:
            raise ValueError("min_radius must not exceed target_radius")
        self.min_radius = float(min_radius)
        self.futility_alpha = _unit(futility_alpha, "futility_alpha")
        self.futility_eps = _unit(futility_eps, "futility_eps")
        if (looks is None) != (alphas is None):
            raise ValueError("give both looks and alphas, or neither")
        if looks is None:
            looks, alphas = self._derive_schedule(round_size, first_round, interim_looks, final_share)
        self.looks: tuple[int, ...] = tuple(_positive_int(n, "look") for n in looks)
        self.alphas: tuple[float, ...] = tuple(float(a) for a in alphas)  # type: ignore[union-attr]
        if list(self.looks) != sorted(set(self.looks)) or self.looks[-1] != self.max_queries:
            raise ValueError("looks must be increasing and end at max_queries")
        if len(self.alphas) != len(self.looks) or not self.alphas[-1] > 0.0 or min(self.alphas) < 0.0:
            raise ValueError("alphas must match looks, be >= 0 and spend some alpha at the final look")
        if sum(self.alphas) > self.alpha * (1.0 + 1e-9):
            raise ValueError("the alphas spent at the looks exceed alpha")
        self._k_final = self._final_threshold()
        self._thresholds = tuple(self._look_thresholds(i) for i in range(len(self.looks)))

    def _derive_schedule(
        self, round_size: int, first_round: int | None, interim_looks: int, final_share: float
    ) -> tuple[list[int], list[float]]:
        n_max, alpha = self.max_queries, self.alpha
        round_size = _positive_int(round_size, "round_size")
        first_round = _positive_int(first_round if first_round is not None else max(1, round_size // 2), "first_round")
        if isinstance(final_share, bool) or not isinstance(final_share, (int, float)) or not 0.0 < final_share <= 1.0:
            raise ValueError(f"final_share must be in (0, 1], got {final_share!r}")
        if isinstance(interim_looks, bool) or not isinstance(interim_looks, int) or interim_looks < 0:
            raise ValueError(f"interim_looks must be an integer >= 0, got {interim_looks!r}")
        cert_looks: dict[int, float] = {n_max: alpha}
        if self.target_radius is not None and interim_looks > 0 and final_share < 1.0:
            interim_alpha = alpha * (1.0 - final_share) / interim_looks
            q = float(norm.cdf(self.target_radius / self.sigma))
            n_first = math.ceil(math.log(interim_alpha) / math.log(q)) if q < 1.0 else n_max
            if n_first < n_max:
                ratio = (n_max / n_first) ** (1.0 / interim_looks)
                interim = {min(n_max - 1, round(n_first * ratio**i)) for i in range(interim_looks)}
                cert_looks = {n: interim_alpha for n in interim}
                # Looks merged by rounding leave their share to the final look: the total stays alpha.
                cert_looks[n_max] = alpha - interim_alpha * len(interim)
        # A futility check within half a round of a certification look would only add a tiny round.
        checks = {c for c in range(first_round, n_max, round_size) if all(2 * abs(c - n) >= round_size for n in cert_looks)}
        looks = sorted(checks | set(cert_looks))
        return looks, [cert_looks.get(n, 0.0) for n in looks]

    def _final_threshold(self) -> int:
        """k*: the smallest candidate count that certifies min_radius (and p_lower >= 1/2) at the final look."""
        n, a = self.max_queries, self.alphas[-1]
        q = max(0.5, float(norm.cdf(self.min_radius / self.sigma)))
        return _smallest_k(n, lambda k: lower_confidence_bound(k, n, a) >= q)

    def _look_thresholds(self, i: int) -> tuple[int, int]:
        """(smallest k that certifies at look i, n + 1 if none; largest k that abstains there, -1 if none)."""
        n, a = self.looks[i], self.alphas[i]
        if n == self.max_queries:
            return self._k_final, self._k_final - 1
        certify_from = n + 1
        if a > 0.0 and self.target_radius is not None:
            q = max(0.5, float(norm.cdf(self.target_radius / self.sigma)))
            certify_from = _smallest_k(n, lambda k: lower_confidence_bound(k, n, a) >= q)
        n_left = self.max_queries - n

        def keeps_going(k: int) -> bool:  # monotone in k: False up to some k, True after
            if k + n_left < self._k_final:
                return False
            optimistic_p = upper_confidence_bound(k, n, self.futility_alpha)
            return float(binom.sf(self._k_final - k - 1, n_left, optimistic_p)) >= self.futility_eps

        abstain_to = _smallest_k(n, keeps_going) - 1
        return certify_from, min(abstain_to, certify_from - 1)

    @property
    def boundaries(self) -> tuple[tuple[int, int, int], ...]:
        """(n, certify_from, abstain_to) per look: `decide` certifies when k >= certify_from and abstains when
        k <= abstain_to (n + 1 / -1 when it never does) -- for vectorised simulation of many images."""
        return tuple((n, c, a) for n, (c, a) in zip(self.looks, self._thresholds))

    # -- the decision ----------------------------------------------------------------------------------------
    def decide(self, n_seen: int, k_candidate: int, candidate: str | None = None) -> Decision:
        """The decision after the first `n_seen` samples (a look of this plan) gave `k_candidate` candidate
        votes. Deterministic: replay of the same labels gives the same decision. Raises ValueError when
        n_seen is not a look or k_candidate is out of range."""
        try:
            i = self.looks.index(n_seen)
        except ValueError:
            raise ValueError(f"{n_seen} is not a look of this plan (looks: {list(self.looks)})") from None
        if not (isinstance(k_candidate, (int, np.integer)) and 0 <= k_candidate <= n_seen):
            raise ValueError(f"k_candidate must be in [0, {n_seen}], got {k_candidate!r}")
        k = int(k_candidate)
        certify_from, abstain_to = self._thresholds[i]
        if k >= certify_from:
            p_lower = lower_confidence_bound(k, n_seen, self.alphas[i])
            final = n_seen == self.max_queries
            reason = "final look" if final else "target radius reached"
            return Decision("certify", n_seen, k, candidate, radius_l2(p_lower, self.sigma), p_lower, reason)
        if k <= abstain_to:
            reason = "final look below min_radius" if n_seen == self.max_queries else "futility"
            return Decision("abstain", n_seen, k, reason=reason)
        return Decision("continue", n_seen, k)

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description that `from_dict` turns back into the identical plan (for the query log)."""
        return {
            "mode": "sequential",
            "version": PLAN_VERSION,
            "max_queries": self.max_queries,
            "alpha": self.alpha,
            "sigma": self.sigma,
            "target_radius": self.target_radius,
            "min_radius": self.min_radius,
            "looks": list(self.looks),
            "alphas": list(self.alphas),
            "futility_alpha": self.futility_alpha,
            "futility_eps": self.futility_eps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SequentialPlan":
        """Rebuild a plan written by `to_dict`; raises ValueError for an unknown version or bad fields."""
        if not isinstance(data, Mapping) or data.get("mode") != "sequential" or data.get("version") != PLAN_VERSION:
            raise ValueError(f"not a version-{PLAN_VERSION} sequential plan")
        try:
            return cls(
                data["max_queries"], data["alpha"], data["sigma"], data["target_radius"],
                min_radius=data["min_radius"], futility_alpha=data["futility_alpha"],
                futility_eps=data["futility_eps"], looks=data["looks"], alphas=data["alphas"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete sequential plan: {exc!r}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SequentialPlan) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.max_queries, self.alpha, self.sigma, self.looks, self.alphas))

    def __repr__(self) -> str:
        return (
            f"SequentialPlan(max_queries={self.max_queries}, alpha={self.alpha:g}, sigma={self.sigma:g}, "
            f"target_radius={self.target_radius}, looks={list(self.looks)})"
        )


@dataclass(frozen=True)
class SequentialOutcome:
    """Result of running a plan over an ordered list of labels: the final decision (action "continue" when
    the labels ran out before the plan decided), the samples used and the counts over those samples."""

    decision: Decision
    n_used: int
    counts: dict[str, int]

    @property
    def complete(self) -> bool:
        return self.decision.done

    def as_tuple(self) -> tuple[str | int, float]:
        """(label, radius), with (ABSTAIN, 0.0) for abstain or an incomplete run."""
        d = self.decision
        return (d.label, d.radius) if d.action == "certify" else (ABSTAIN, 0.0)


def certify_sequential(plan: SequentialPlan, candidate: str, labels: Iterable[str]) -> SequentialOutcome:
    """Replay `plan` on the estimation labels in sample order: the exact online stopping and certificate.
    Labels after the stopping look are ignored. If the labels end before a decision, the outcome is
    incomplete (action "continue", no certificate)."""
    counts: dict[str, int] = {}
    k = n = 0
    looks = iter(plan.looks)
    next_look = next(looks)
    decision = Decision("continue", 0, 0)
    for label in labels:
        n += 1
        counts[label] = counts.get(label, 0) + 1
        k += label == candidate
        if n == next_look:
            decision = plan.decide(n, k, candidate)
            if decision.done:
                break
            next_look = next(looks)
    return SequentialOutcome(decision, n, counts)


def operating_characteristics(plan: SequentialPlan, p: float, radii: Sequence[float] = (0.0,)) -> dict[str, Any]:
    """Exact behaviour of `plan` when each sample votes for the candidate with probability p (no Monte Carlo):
    expected samples, P(certify), P(certified radius >= r) for each r in `radii`, and P(wrong certificate):
    radius above the true radius sigma * Phi^-1(p), which includes any certificate when p < 1/2. The module's
    guarantee is P(wrong certificate) <= alpha for every p.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    true_radius = plan.sigma * float(norm.ppf(p)) if p > 0 else -math.inf
    radii_arr = np.asarray(radii, dtype=float)
    alive = np.array([1.0])  # alive[k] = P(k candidate votes so far and no decision yet)
    prev_n = 0
    expected_n = p_cert = p_wrong = 0.0
    p_at_least = np.zeros(len(radii_arr))
    for (n, certify_from, abstain_to), look_alpha in zip(plan.boundaries, plan.alphas):
        step = n - prev_n
        alive = np.convolve(alive, binom.pmf(np.arange(step + 1), step, p))
        if certify_from <= n:
            ks = np.arange(certify_from, n + 1)
            mass = alive[certify_from:]
            radius = plan.sigma * norm.ppf(beta_dist.ppf(look_alpha, ks, n - ks + 1))
            p_cert += mass.sum()
            p_wrong += mass[radius > true_radius].sum()
            p_at_least += (mass[None, :] * (radius[None, :] >= radii_arr[:, None] - 1e-12)).sum(axis=1)
            expected_n += n * mass.sum()
            alive[certify_from:] = 0.0
        if abstain_to >= 0:
            expected_n += n * alive[: abstain_to + 1].sum()
            alive[: abstain_to + 1] = 0.0
        prev_n = n
    return {
        "expected_calls": float(expected_n),
        "p_certify": float(p_cert),
        "p_radius_at_least": dict(zip(radii, p_at_least.tolist())),
        "p_wrong": float(p_wrong),
    }


# -- helpers -----------------------------------------------------------------------------------------------


def _smallest_k(n: int, ok) -> int:
    """Smallest k in [0, n] with ok(k) for a monotone predicate; n + 1 when none."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def _unit(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {value!r}")
    return float(value)
