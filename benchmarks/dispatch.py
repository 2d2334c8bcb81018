"""Dispatch benchmark: one image certified with 120 calls (N0=20, N=100) against the AWS emulator (boto3 over
loopback, in its own process) with 100 ms latency and a 50/s rate limit, side by side in one run:

  ours        concurrency 16, rate 50/s          vs the ideal max(N/R, N*L/C)
  sequential  concurrency 1 (what the reference does: one call after another)
  overlap     with a DnCNN denoiser: total vs max(denoise-only, network-only)

Run: python benchmarks/dispatch.py [--repeat 3]. Prints seconds and ratios; no assertion (noisy machines).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time

import numpy as np

from robust_api.decision import Top1
from robust_api.dispatch import Dispatcher
from robust_api.engine import CertifyParams, Engine
from robust_api.images import load_image
from robust_api.providers.aws import AWSProvider
from robust_api.providers.emulator.aws import AwsEmulator
from robust_api.providers.emulator.base import EmulatorKnobs

N0, N, LATENCY_S, RATE = 20, 100, 0.100, 50.0


def brightness_labeller(image):
    mean = float(np.asarray(image, dtype=np.float32).mean()) / 255.0
    return [("bright", mean), ("dark", 1.0 - mean)] if mean >= 0.5 else [("dark", 1.0 - mean), ("bright", mean)]


def _serve(knobs: EmulatorKnobs, ready, stop, counts) -> None:
    """The emulator in its own process, as a real service is: its CPU work does not compete for our GIL."""

    async def main() -> None:
        emulator = AwsEmulator(labeller=brightness_labeller, knobs=knobs)
        ready.put(await emulator.start())
        while not stop.is_set():
            await asyncio.sleep(0.05)
        counts.put(emulator.stats.requests)
        await emulator.stop()

    asyncio.run(main())


class EmulatorProcess:
    def __init__(self, knobs: EmulatorKnobs) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._counts, self._stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(knobs, self._ready, self._stop, self._counts), daemon=True)

    def __enter__(self) -> "EmulatorProcess":
        self._proc.start()
        self.url = self._ready.get(timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.requests = self._counts.get(timeout=30)
        self._proc.join(timeout=30)


def certify_once(concurrency: int, denoiser=None, seed: int = 0) -> tuple[float, int]:
    """Wall time of one certification (fresh log, so every call is paid) and requests the emulator saw."""
    knobs = EmulatorKnobs(latency_ms=LATENCY_S * 1000, rate_per_s=RATE, burst=2, seed=seed)
    image = load_image(np.random.default_rng(seed).uniform(0.4, 0.9, (224, 224, 3)).astype(np.float32), name="bench")
    with EmulatorProcess(knobs) as emulator:
        provider = AWSProvider.for_emulator(emulator.url, min_confidence=0)

        async def main() -> float:
            dispatcher = Dispatcher(provider, concurrency=concurrency, rate_per_s=RATE)
            engine = Engine(provider, dispatcher, Top1(), denoiser=denoiser,
                            denoiser_id={"name": "bench", "sha256": "0" * 64} if denoiser is not None else None)
            started = time.perf_counter()
            await engine.certify(image, CertifyParams(sigma=0.25, n0=N0, n=N, alpha=0.001, seed=seed))
            elapsed = time.perf_counter() - started
            await provider.aclose()
            return elapsed

        elapsed = asyncio.run(main())
    return elapsed, emulator.requests


def denoise_only(denoiser, count: int) -> float:
    import torch

    from robust_api.noise import noisy_copies

    image = np.random.default_rng(0).uniform(0.4, 0.9, (224, 224, 3)).astype(np.float32)
    started = time.perf_counter()
    for start in range(0, count, 16):
        pixels = noisy_copies(image, 0.25, 0, "ab" * 32, "estimation", list(range(start, min(count, start + 16))))
        with torch.inference_mode():
            denoiser(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    return time.perf_counter() - started


def small_denoiser():
    """The shipped sigma=0.25 denoiser when weights ship, else a DnCNN of the shipped size (10 layers, 32 ch)."""
    try:
        from robust_api.denoisers.registry import list_denoisers, load_denoiser

        for weights in list_denoisers():
            if abs(float(weights.meta.get("sigma", -1)) - 0.25) < 1e-9:
                return load_denoiser(weights.name, optimize=True), weights.name
    except Exception:
        pass
    from robust_api.denoisers.dncnn import DnCNN

    return DnCNN(depth=10, n_channels=32).eval(), "DnCNN-10/32 (random weights)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    calls = 1 + N0 + N
    ideal = max(calls / RATE, calls * LATENCY_S / 16)
    ours = [certify_once(16, seed=i) for i in range(args.repeat)]
    seq = [certify_once(1, seed=i) for i in range(args.repeat)]
    t_ours = statistics.median(t for t, _ in ours)
    t_seq = statistics.median(t for t, _ in seq)
    print(f"calls per certification: {calls} (1 clean + N0={N0} + N={N}); latency {LATENCY_S*1000:.0f} ms; rate {RATE:g}/s")
    print(f"{'run':<34}{'seconds':>9}{'ratio':>10}  requests seen by emulator")
    print(f"{'ideal max(N/R, N*L/C), C=16':<34}{ideal:>9.2f}{1.0:>10.2f}")
    print(f"{'ours (concurrency 16, 50/s)':<34}{t_ours:>9.2f}{t_ours / ideal:>9.2f}x  {[r for _, r in ours]}")
    print(f"{'sequential (concurrency 1)':<34}{t_seq:>9.2f}{t_seq / ideal:>9.2f}x  {[r for _, r in seq]}")
    print(f"speed-up over sequential: {t_seq / t_ours:.2f}x (upper bound here: L*R = {LATENCY_S * RATE:.1f}x, "
          "since the rate limit, not latency, bounds concurrent dispatch)")
    den, den_name = small_denoiser()
    t_den = statistics.median(denoise_only(den, N0 + N) for _ in range(args.repeat))
    both = statistics.median(certify_once(16, denoiser=den, seed=i)[0] for i in range(args.repeat))
    bound = max(t_den, t_ours)
    print(f"\ndenoise + network overlap with {den_name}:")
    print(f"{'denoise only (120 x 224x224)':<34}{t_den:>9.2f}")
    print(f"{'network only (ours, above)':<34}{t_ours:>9.2f}")
    print(f"{'both, pipelined':<34}{both:>9.2f}{both / bound:>9.2f}x of max(denoise, network)")


if __name__ == "__main__":
    main()
