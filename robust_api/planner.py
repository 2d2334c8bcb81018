"""Budget planning for certification: calls needed for a radius, radius reachable with a budget, cost, time.

Pure arithmetic on the Clopper-Pearson bound; no provider imports (prices and rates are plain numbers).
`agreement` p is the fraction of noisy samples that return the candidate class: with n estimation samples
the candidate gets k = floor(p * n) votes (1.0 = every sample agrees, the best case). Call counts here are
estimation samples; add the clean query (1) and, in fixed mode, the N0 selection samples for the bill
(`calls_per_image`).
"""
from __future__ import annotations

import math

from scipy.stats import norm

from robust_api.smoothing import lower_confidence_bound, radius_l2

__all__ = [
    "votes_at_agreement",
    "max_radius_for_budget",
    "min_calls_for_radius",
    "calls_per_image",
    "cost_usd",
    "seconds_at_rate",
]

_MAX_SEARCH = 10**7  # no realistic budget is larger; stops a search for an unreachable radius


def _check(sigma: float, alpha: float, agreement: float) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(agreement, (int, float)) and 0 <= agreement <= 1):
        raise ValueError(f"agreement must be in [0, 1], got {agreement!r}")


def votes_at_agreement(n: int, agreement: float) -> int:
    """k = floor(agreement * n), guarded against float rounding (0.29 * 100 is 28.999...96 in floats)."""
    return min(n, math.floor(agreement * n + 1e-9))


def max_radius_for_budget(n: int, sigma: float, alpha: float, agreement: float = 1.0) -> float | None:
    """The certified L2 radius of n estimation samples with the given agreement: sigma * Phi^-1(p_lower),
    p_lower the one-sided Clopper-Pearson bound at alpha; None when CERTIFY would abstain (p_lower < 1/2).
    At alpha = 0.001, sigma = 0.25, full agreement: n = 20 / 100 / 1000 give 0.137 / 0.375 / 0.616."""
    _check(sigma, alpha, agreement)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    p_lower = lower_confidence_bound(votes_at_agreement(n, agreement), n, alpha)
    return None if p_lower < 0.5 else radius_l2(p_lower, sigma)


def min_calls_for_radius(radius: float, sigma: float, alpha: float, agreement: float = 1.0) -> int | None:
    """The fewest estimation samples n whose certificate at this agreement reaches `radius` (>= 0); None when
    no budget can (the radius is at least sigma * Phi^-1(agreement), the limit as n grows).
    At alpha = 0.001, sigma = 0.25, full agreement: r = 0.125 / 0.25 / 0.5 need 19 / 40 / 301."""
    _check(sigma, alpha, agreement)
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    q = float(norm.cdf(radius / sigma))  # the p_lower the radius needs
    if agreement >= 1.0:
        # k = n: p_lower = alpha^(1/n), so n >= ln(alpha) / ln(q); check the neighbours against float error.
        if q >= 1.0:
            return None
        n = max(1, math.ceil(math.log(alpha) / math.log(q)))
        while n > 1 and lower_confidence_bound(n - 1, n - 1, alpha) >= q:
            n -= 1
        while lower_confidence_bound(n, n, alpha) < q:
            n += 1
        return n
    if agreement <= q:
        return None

    def reaches(n: int) -> bool:
        return lower_confidence_bound(votes_at_agreement(n, agreement), n, alpha) >= q

    # floor() makes reaches(n) not quite monotone: find a budget that works by doubling, then the smallest
    # n below it that works (a linear scan over a short final stretch keeps the answer exact).
    hi = 1
    while not reaches(hi):
        hi *= 2
        if hi > _MAX_SEARCH:
            return None
    lo = hi // 2
    while hi - lo > 64:  # bisection on the smooth trend, then scan
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return next(n for n in range(max(1, lo - 64), hi + 1) if reaches(n))


def calls_per_image(n: int, mode: str = "fixed", n0: int = 20) -> int:
    """Provider calls per image for a fixed budget, from the mode registry (robust_api.modes): the clean query,
    plus N0 selection samples in "fixed" mode, plus n estimation samples ("sequential": the worst case,
    max_queries = n). ValueError for an unknown mode."""
    from robust_api.errors import ConfigError
    from robust_api.modes import get_mode

    try:
        return get_mode(mode).calls_per_image(n, n0)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def cost_usd(calls: float, price_per_1000_usd: float, images: int = 1) -> float:
    """Cost of `calls` calls per image for `images` images at a list price in USD per 1,000 calls."""
    if calls < 0 or price_per_1000_usd < 0 or images < 0:
        raise ValueError("calls, price and images must be >= 0")
    return calls * images * price_per_1000_usd / 1000.0


def seconds_at_rate(calls: float, rate_per_s: float, images: int = 1) -> float:
    """Wall time to make `calls` calls per image for `images` images at a sustained rate limit (calls/s)."""
    if calls < 0 or images < 0 or not rate_per_s > 0:
        raise ValueError("calls and images must be >= 0 and rate_per_s > 0")
    return calls * images / rate_per_s
