"""Full-size Monte Carlo validity check of the certification modes (the fast version is tests/test_validity.py).

For a synthetic classifier whose top class has probability p_A (the other two classes share the rest 70/30),
each mode is run on many independent images; a certificate is wrong when it names another class or its
radius exceeds sigma * Phi^-1(p_A). The table gives the wrong-certificate rate, its one-sided 99.9 %
Clopper-Pearson upper bound, and PASS when the rate is not significantly above alpha (the lower bound is
<= alpha). The invalid variant re-tests at full alpha at every look of the same schedule and should FAIL.

    python benchmarks/validity.py                      # alpha = 0.001, 2,000,000 images per row (~2 min)
    python benchmarks/validity.py --trials 200000      # quicker
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import beta, norm

from robust_api.sequential import SequentialPlan, operating_characteristics
from robust_api.smoothing import lower_confidence_bound, upper_confidence_bound

CHUNK = 250_000


def lcb(k: np.ndarray, n, alpha) -> np.ndarray:
    safe = np.maximum(k, 1)
    return np.where(k > 0, beta.ppf(alpha, safe, np.asarray(n) - safe + 1), 0.0)


def class_probs(p_a: float) -> np.ndarray:
    return np.array([p_a, 0.7 * (1 - p_a), 0.3 * (1 - p_a)])


def wrong_fixed(rng, p_a, trials, sigma, alpha, n0, n):
    probs = class_probs(p_a)
    candidate = rng.multinomial(n0, probs, size=trials).argmax(axis=1)
    estimation = rng.multinomial(n, probs, size=trials)
    p_lower = lcb(estimation[np.arange(trials), candidate], n, alpha)
    radius = sigma * norm.ppf(p_lower)
    return (p_lower >= 0.5) & ((candidate != 0) | (radius > sigma * norm.ppf(p_a)))


def wrong_clean(rng, p_a, trials, sigma, alpha, n):
    k = rng.binomial(n, p_a, size=trials)
    p_lower = lcb(k, n, alpha)
    return (p_lower >= 0.5) & (sigma * norm.ppf(p_lower) > sigma * norm.ppf(p_a))


def wrong_sequential(rng, p_a, trials, plan: SequentialPlan, invalid: bool = False):
    """Votes arrive between looks as binomial increments (the same law as sample-by-sample draws)."""
    true_radius = plan.sigma * norm.ppf(p_a)
    q_target = norm.cdf(plan.target_radius / plan.sigma) if plan.target_radius else 0.5
    k = np.zeros(trials, np.int64)
    alive = np.ones(trials, bool)
    wrong = np.zeros(trials, bool)
    prev = 0
    for (n, certify_from, abstain_to), look_alpha in zip(plan.boundaries, plan.alphas):
        k += rng.binomial(n - prev, p_a, size=trials)
        prev = n
        if invalid:  # full alpha at every look, no futility
            p_lower = lcb(k, n, plan.alpha)
            cert = alive & (p_lower >= (0.5 if n == plan.max_queries else q_target))
            stop = alive & (n == plan.max_queries)
        else:
            cert = alive & (k >= certify_from)
            stop = alive & (k <= abstain_to)
            p_lower = lcb(k, n, look_alpha) if cert.any() else np.zeros(trials)
        wrong |= cert & (plan.sigma * norm.ppf(np.where(cert, p_lower, 0.5)) > true_radius)
        alive &= ~(cert | stop)
    return wrong


def worst_p(plan: SequentialPlan) -> float:
    grid = np.linspace(0.5, 0.999, 500)
    return float(grid[int(np.argmax([operating_characteristics(plan, p)["p_wrong"] for p in grid]))])


def run(rows, trials, alpha, seed):
    print(f"{'mode':<28}{'p_A':>7}{'images':>10}{'wrong':>9}{'rate':>10}{'upper99.9':>11}{'exact':>10}  verdict")
    for i, (name, p_a, sampler, exact) in enumerate(rows):
        rng = np.random.default_rng([seed, i])
        failures = 0
        for start in range(0, trials, CHUNK):
            failures += int(sampler(rng, p_a, min(CHUNK, trials - start)).sum())
        rate = failures / trials
        upper = upper_confidence_bound(failures, trials, 1e-3)
        verdict = "PASS" if lower_confidence_bound(failures, trials, 1e-3) <= alpha else "FAIL"
        exact_s = f"{exact:.2e}" if exact is not None else "-"
        print(f"{name:<28}{p_a:>7.4f}{trials:>10}{failures:>9}{rate:>10.2e}{upper:>11.2e}{exact_s:>10}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--trials", type=int, default=2_000_000)
    parser.add_argument("--target-radius", type=float, default=0.3)
    parser.add_argument("--max-queries", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    alpha, sigma = args.alpha, args.sigma
    plan = SequentialPlan(args.max_queries, alpha, sigma, target_radius=args.target_radius)
    q = float(norm.cdf(args.target_radius / sigma))
    p_worst = worst_p(plan)
    print(f"alpha={alpha} sigma={sigma}; fixed N0=20 N=100; clean N=100; sequential {plan.to_dict()}")
    print(f"sequential worst-case p_A (exact scan) = {p_worst:.4f}; target threshold Phi(r/sigma) = {q:.4f}\n")
    p_grid = sorted({0.45, 0.5, 0.6, round(q - 0.01, 4), round(q, 4), round(p_worst, 4), 0.95, 0.99})
    rows = []
    for p in p_grid:
        rows.append(("fixed (N0=20, N=100)", p, lambda r, p, t: wrong_fixed(r, p, t, sigma, alpha, 20, 100), None))
    for p in p_grid:
        rows.append(("clean selection (N=100)", p, lambda r, p, t: wrong_clean(r, p, t, sigma, alpha, 100), None))
    for p in p_grid:
        exact = operating_characteristics(plan, p)["p_wrong"]
        rows.append(("sequential", p, lambda r, p, t: wrong_sequential(r, p, t, plan), exact))
    for p in (round(q + 0.002, 4), round(p_worst, 4)):
        rows.append(("INVALID full alpha per look", p, lambda r, p, t: wrong_sequential(r, p, t, plan, invalid=True), None))
    started = time.perf_counter()
    run(rows, args.trials, alpha, args.seed)
    print(f"\n{len(rows)} rows x {args.trials} images in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
