"""Dispatch benchmark: one image certified with 121 calls (1 clean + N0=20 + N=100) against the AWS emulator
(boto3 over loopback, in its own process) with 100 ms latency and a server-side rate limit of 50/s with a
burst of 2, side by side in one run:

  previous    the dispatch before issue 12 item 8, reproduced here (PreviousDispatcher, PreviousEngine): an
              aiolimiter token bucket, a throttle pausing every call for the throttled image's whole backoff,
              each chunk of 16 samples noised and encoded on the default thread pool before any is sent
  ours        concurrency 16, rate 50/s: paced send times, noise + encoding ahead of them on the encoding
              threads, each sample sent the moment it is encoded
              -- both vs the ideal max(calls/R, calls*L/C), with the throttled retries each saw
  sequential  concurrency 1 (what the reference does: one call after another)
  overlap     with a denoiser: total vs max(denoise-only, network-only)

Run: python benchmarks/dispatch.py [--repeat 3]. "previous" and "ours" alternate, repeat times each; medians
are printed. Seconds and ratios only, no assertion (noisy machines).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import statistics
import time

import numpy as np
from aiolimiter import AsyncLimiter

from robust_api.decision import Top1
from robust_api.dispatch import Dispatcher
from robust_api.engine import CertifyParams, Engine, _gather
from robust_api.images import encode_for, load_image, to_uint8
from robust_api.noise import noisy_copies
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


class PreviousDispatcher(Dispatcher):
    """The dispatch policy before issue 12 item 8, for comparison: an aiolimiter token bucket (each token one
    interval after the previous one was *taken*, so every late wake-up of the event loop slows the run),
    waited for inside the semaphore; a throttle pauses every call not yet queued at the bucket for the
    throttled image's whole backoff (two to four request intervals on a first throttle)."""

    def __init__(self, provider, *, burst: int = 1, **options) -> None:
        super().__init__(provider, burst=burst, **options)
        self._limiter = AsyncLimiter(burst, burst / self.rate_per_s)

    def _pause_all(self, state, retry_after_s, delay) -> None:
        # the whole backoff of the throttled image, and only calls not yet queued at the bucket wait for it
        pause = retry_after_s if retry_after_s is not None else delay
        self._paused_until = max(self._paused_until, time.monotonic() + pause)

    @contextlib.asynccontextmanager
    async def _slot(self):
        self._raise_if_fatal()
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._semaphore:
            self._raise_if_fatal()
            await self._limiter.acquire()
            yield


class PreviousEngine(Engine):
    """The sample pipeline before issue 12 item 8, for comparison: each chunk of `denoise_batch` samples is
    noised (and denoised), then all its samples are encoded on the default thread pool (cores + 4 threads),
    and only then is the chunk handed to the dispatcher; the next chunk starts after that."""

    async def responses(self, image, phase, indices, sigma, seed, extra=None, tally=None):
        records, missing = self.cached(image, phase, indices, sigma, seed, tally)
        in_flight = []
        try:
            for start in range(0, len(missing), self.denoise_batch):
                chunk = missing[start : start + self.denoise_batch]
                encoded = await self._prepare_chunk(image, phase, chunk, sigma, seed)
                in_flight.append(asyncio.create_task(
                    self._send(image, phase, chunk, encoded, sigma, seed, records, extra, tally)))
        finally:
            await _gather(*in_flight)
        return [records[i] for i in indices]

    async def _prepare_chunk(self, image, phase, chunk, sigma, seed):
        if phase == "clean":
            pixels = np.repeat(image.array[None], len(chunk), axis=0)
        else:
            pixels = await asyncio.to_thread(noisy_copies, image.array, sigma, seed, image.sha256, phase, chunk)
            if self.denoiser is not None:
                async with self._denoise_lock:
                    pixels = await asyncio.to_thread(self._denoise, pixels)
        limits = self.provider.limits
        return await asyncio.gather(*(asyncio.to_thread(lambda p=p: encode_for(to_uint8(p), limits)) for p in pixels))


def certify_once(concurrency: int, denoiser=None, seed: int = 0, previous: bool = False) -> tuple[float, int, int]:
    """Wall time of one certification (fresh log, so every call is paid), requests the emulator saw, and
    throttled retries. previous=True: the policy before issue 12 item 8 (PreviousDispatcher, PreviousEngine)."""
    knobs = EmulatorKnobs(latency_ms=LATENCY_S * 1000, rate_per_s=RATE, burst=2, seed=seed)
    image = load_image(np.random.default_rng(seed).uniform(0.4, 0.9, (224, 224, 3)).astype(np.float32), name="bench")
    with EmulatorProcess(knobs) as emulator:
        provider = AWSProvider.for_emulator(emulator.url, min_confidence=0)

        async def main() -> tuple[float, int]:
            dispatcher = (PreviousDispatcher if previous else Dispatcher)(provider, concurrency=concurrency, rate_per_s=RATE)
            engine = (PreviousEngine if previous else Engine)(
                provider, dispatcher, Top1(), denoiser=denoiser,
                denoiser_id={"name": "bench", "sha256": "0" * 64} if denoiser is not None else None)
            started = time.perf_counter()
            await engine.certify(image, CertifyParams(sigma=0.25, n0=N0, n=N, alpha=0.001, seed=seed))
            elapsed = time.perf_counter() - started
            await provider.aclose()
            return elapsed, dispatcher.stats.retries.get("throttled", 0)

        elapsed, throttled = asyncio.run(main())
    return elapsed, emulator.requests, throttled


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
    ours, previous = [], []
    for i in range(args.repeat):  # alternate, so that a change in the machine's load hits both alike
        previous.append(certify_once(16, seed=i, previous=True))
        ours.append(certify_once(16, seed=i))
    seq = [certify_once(1, seed=i) for i in range(args.repeat)]
    t_ours = statistics.median(t for t, _, _ in ours)
    t_prev = statistics.median(t for t, _, _ in previous)
    t_seq = statistics.median(t for t, _, _ in seq)
    print(f"calls per certification: {calls} (1 clean + N0={N0} + N={N}); latency {LATENCY_S*1000:.0f} ms; "
          f"rate {RATE:g}/s (server bucket: burst 2); medians of {args.repeat}")
    print(f"{'run':<42}{'seconds':>8}{'ratio':>8}  {'throttled retries':<19}requests seen by emulator")
    print(f"{'ideal max(calls/R, calls*L/C), C=16':<42}{ideal:>8.2f}{1.0:>7.2f}x")
    for name, t, runs in (("previous (token bucket, chunk then send)", t_prev, previous),
                          ("ours (paced, prepared ahead)", t_ours, ours),
                          ("sequential (concurrency 1)", t_seq, seq)):
        print(f"{name:<42}{t:>8.2f}{t / ideal:>7.2f}x  {[r for _, _, r in runs]!s:<19}{[q for _, q, _ in runs]}")
    print(f"ours vs previous: {t_prev / t_ours:.2f}x faster; speed-up over sequential: {t_seq / t_ours:.2f}x "
          f"(upper bound here: L*R = {LATENCY_S * RATE:.1f}x, since the rate limit, not latency, bounds concurrent dispatch)")
    den, den_name = small_denoiser()
    t_den = statistics.median(denoise_only(den, N0 + N) for _ in range(args.repeat))
    both = statistics.median(certify_once(16, denoiser=den, seed=i)[0] for i in range(args.repeat))
    bound = max(t_den, t_ours)
    print(f"\ndenoise + network overlap with {den_name}:")
    print(f"{'denoise only (120 x 224x224)':<42}{t_den:>8.2f}")
    print(f"{'network only (ours, above)':<42}{t_ours:>8.2f}")
    print(f"{'both, pipelined':<42}{both:>8.2f}{both / bound:>7.2f}x of max(denoise, network)")


if __name__ == "__main__":
    main()
