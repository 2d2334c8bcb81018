"""Query-cost benchmark, side by side in one run: fixed Cohen (N0=20, N=100) vs clean-image selection (N=100)
vs sequential (max 120 calls, target radius 0.3), same alpha, same sample stream per image.

(a) a synthetic population with a stated mix of p_A (the probability that a noisy sample returns the
    image's clean label); the other votes are spread over 10 other labels;
(b) real held-out photos (224x224 crops) through the local provider with the pretrained EfficientNet-Lite0,
    without and with a shipped denoiser. All three modes read one shared query log, so the sample stream is
    identical; each mode's calls are the samples it needed (paid or found in the log).

Reports mean calls per image (the clean query included in every mode) and certified accuracy at radii
0, 0.1, 0.2, 0.3 ("correct" = certified class equals the clean-image label, as in the paper).
Run: python benchmarks/query_cost.py [--images 2000] [--photos 4 --crops 6] [--skip-real]
"""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from robust_api import smoothing
from robust_api.sequential import SequentialPlan

SIGMA, ALPHA, N0, N, MAX_Q, TARGET = 0.25, 0.001, 20, 100, 120, 0.3
RADII = (0.0, 0.1, 0.2, 0.3)
MIX = (  # (share of the population, p_A values drawn uniformly from this list)
    (0.25, (1.0, 0.995, 0.99)),  # certifiable
    (0.10, (0.6, 0.7, 0.8, 0.9, 0.95, 0.97)),  # in between
    (0.65, (0.1, 0.2, 0.3, 0.4, 0.5)),  # hopeless
)


def population(count: int, rng: np.random.Generator) -> np.ndarray:
    shares = np.array([m[0] for m in MIX])
    groups = rng.choice(len(MIX), size=count, p=shares / shares.sum())
    return np.array([rng.choice(MIX[g][1]) for g in groups])


def stream(p: float, length: int, rng: np.random.Generator) -> list[str]:
    """Labels of `length` noisy samples: 'clean' with probability p, else one of 10 other labels."""
    hit = rng.random(length) < p
    other = rng.integers(10, size=length)
    return ["clean" if h else f"other{o}" for h, o in zip(hit, other)]


def counts(labels) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return out


def fixed(selection, estimation):
    label, radius = smoothing.certify(counts(selection), counts(estimation), SIGMA, ALPHA)
    return label, radius, 1 + len(selection) + len(estimation)


def clean(candidate, estimation):
    label, radius = smoothing.certify_with_candidate(candidate, counts(estimation), SIGMA, ALPHA)
    return label, radius, 1 + len(estimation)


def sequential(plan: SequentialPlan, candidate, labels):
    k = 0
    for n, label in enumerate(labels, start=1):
        k += label == candidate
        if n in plan_looks(plan):
            d = plan.decide(n, k, candidate)
            if d.done:
                return (d.label if d.action == "certify" else smoothing.ABSTAIN), d.radius, 1 + n
    raise AssertionError("plan did not decide")


_LOOKS: dict[int, frozenset] = {}


def plan_looks(plan: SequentialPlan) -> frozenset:
    return _LOOKS.setdefault(id(plan), frozenset(plan.looks))


def summarise(name: str, results: list[tuple], truth: list[str]) -> dict:
    calls = np.mean([r[2] for r in results])
    acc = {r: np.mean([res[0] == t and res[1] >= r for res, t in zip(results, truth)]) for r in RADII}
    return {"mode": name, "calls": calls, "acc": acc}


def print_table(title: str, rows: list[dict]) -> None:
    base = rows[0]
    print(f"\n{title}")
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in RADII)
    print(f"{'mode':<24}{'calls/image':>12}{'x fixed':>9}{head}   accuracy vs fixed, worst radius")
    for row in rows:
        accs = "".join(f"{100 * row['acc'][r]:>8.1f}%" for r in RADII)
        worst = min(row["acc"][r] - base["acc"][r] for r in RADII) * 100  # negative = a loss
        print(f"{row['mode']:<24}{row['calls']:>12.1f}{row['calls'] / base['calls']:>9.3f}{accs}   {worst:+.2f} pp")


def synthetic(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    plan = SequentialPlan(MAX_Q, ALPHA, SIGMA, TARGET)
    ps = population(count, rng)
    res_fixed, res_clean, res_seq = [], [], []
    for p in ps:
        labels = stream(p, N0 + MAX_Q, rng)  # selection samples, then one estimation stream shared by all modes
        selection, estimation = labels[:N0], labels[N0:]
        res_fixed.append(fixed(selection, estimation[:N]))
        res_clean.append(clean("clean", estimation[:N]))
        res_seq.append(sequential(plan, "clean", estimation))
    truth = ["clean"] * count
    mix = "; ".join(f"{100 * s:.0f}% p_A in {list(v)}" for s, v in MIX)
    print_table(f"(a) synthetic population: {count} images ({mix}); sigma {SIGMA}, alpha {ALPHA}",
                [summarise("fixed Cohen N0=20 N=100", res_fixed, truth),
                 summarise("clean selection N=100", res_clean, truth),
                 summarise(f"sequential <=120, r*={TARGET}", res_seq, truth)])


def real(photos: int, crops: int, denoiser: str | None) -> None:
    from robust_api.decision import Top1
    from robust_api.denoisers.photos import eval_images
    from robust_api.dispatch import Dispatcher
    from robust_api.engine import CertifyParams, Engine
    from robust_api.images import load_image
    from robust_api.providers.local import LocalProvider

    images = [load_image(arr, name=name) for name, arr in eval_images(crops)][: photos * crops]
    den = den_id = None
    if denoiser is not None:
        from robust_api.denoisers.registry import denoiser_identity, load_denoiser

        den = load_denoiser(denoiser, sigma=SIGMA)
        den_id = denoiser_identity(den)
    provider = LocalProvider()

    async def run() -> list[list]:
        engine = Engine(provider, Dispatcher(provider, concurrency=2), Top1(), denoiser=den, denoiser_id=den_id)
        out = []
        for mode, params in (
            ("fixed Cohen N0=20 N=100", CertifyParams(SIGMA, N0, N, ALPHA, "fixed")),
            ("clean selection N=100", CertifyParams(SIGMA, N0, N, ALPHA, "clean")),
            (f"sequential <=120, r*={TARGET}", CertifyParams(SIGMA, N0, N, ALPHA, "sequential", max_queries=MAX_Q, target_radius=TARGET)),
        ):
            certs = [await engine.certify(im, params) for im in images]
            out.append((mode, certs))
        return out

    started = time.perf_counter()
    runs = asyncio.run(run())
    rows = []
    truth = None
    for mode, certs in runs:
        truth = [c.clean_label for c in certs]
        results = [(c.label if c.label is not None else smoothing.ABSTAIN, c.radius_l2, c.calls_paid + c.cache_hits) for c in certs]
        rows.append(summarise(mode, results, truth))
    print_table(f"(b) real photos: {len(images)} held-out 224x224 crops, local EfficientNet-Lite0, "
                f"denoiser {denoiser or 'none'} ({time.perf_counter() - started:.0f} s)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--crops", type=int, default=6)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--denoiser", default="auto", help="shipped denoiser for (b), 'auto' = the sigma=0.25 one")
    args = parser.parse_args()
    synthetic(args.images, args.seed)
    if args.skip_real:
        return
    real(args.photos, args.crops, None)
    name = args.denoiser
    if name == "auto":
        from robust_api.demo import pick_denoiser

        name = pick_denoiser(SIGMA)
    if name:
        real(args.photos, args.crops, name)
    else:
        print("\nno shipped denoiser for sigma 0.25: (b) with a denoiser skipped")


if __name__ == "__main__":
    main()
