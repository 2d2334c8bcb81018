"""Full-access certification: a model this machine runs, counted in ranges instead of logged call by call.

With a local model (`--api local --full-access`) the paper's protocol is affordable (N0 = 100, N = 10^4-10^5 per
image), but a response record per sample is not. So the data path is: noisy copies of samples [a, b) (the
same noise as the per-call path: a function of seed, image, phase and index) -> denoiser in batches -> 8-bit
RGB (the pixels the per-call path encodes losslessly as PNG) -> `LocalProvider.respond` -> the session's
decision rule -> label counts, logged as one `CountRecord` per range (query_logs.counts). The labels are
therefore exactly the per-call path's, and so are the certificates.

`certify_counted` is the statistics driver, the same for every backend: it asks for the clean label, the
selection range and the estimation ranges look by look (`modes`: fixed has one look, sequential stops early),
takes every range the log already holds (`CountIndex.cover`) and has only the gaps computed, by the
backend's `compute(phase, start, stop)`: in this process (`LocalRanges`) or on Ray workers. Ranges are cut on
a grid of `RANGE` samples and at every look, so a killed run loses at most the ranges in flight and a
sequential run's counts at each look are exact.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Awaitable, Callable

import numpy as np

from robust_api.errors import ConfigError
from robust_api.images import LoadedImage, to_uint8
from robust_api.modes import CertifyParams, Samples, get_mode
from robust_api.noise import noisy_copies
from robust_api.query_logs.counts import CountIndex, CountRecord, labels_of, range_key
from robust_api.results import Certificate, certificate_from_verdict

__all__ = ["RANGE", "RangeCounter", "LocalRanges", "certify_counted", "check_full_access"]

RANGE = 1000  # samples per count record
BATCH = 32  # noisy copies denoised and classified at once


def check_full_access(provider: Any) -> None:
    """ConfigError unless the provider is a model this process runs (it needs `respond`)."""
    if not callable(getattr(provider, "respond", None)):
        raise ConfigError(f"full access needs a model run here (--api local), not the {provider.name} API; "
                          "cloud providers are certified call by call")


class RangeCounter:
    """Counts labels of sample ranges through one engine's provider, denoiser and rule (see module doc)."""

    def __init__(self, engine: Any, decision: Any = "top1", batch: int = BATCH) -> None:
        check_full_access(engine.provider)
        self.engine = engine
        # the rule's spec ("top1", "vocab:PATH", "present:cat:0.5"); a rule object by its name or class
        self.decision = decision if isinstance(decision, str) else (
            getattr(decision, "name", None) or f"{type(decision).__module__}.{type(decision).__qualname__}")
        self.batch = max(1, batch)

    def identity(self) -> dict[str, Any]:
        """What keys this counter's ranges: provider name, settings, denoiser id, decision rule; and model
        version and run."""
        e = self.engine
        return {"provider": e.provider.name, "settings": e.settings, "denoiser": e.denoiser_id,
                "decision": self.decision, "model_version": getattr(e.provider, "model_version", None), "run": e.run_id}

    def counts(self, image: LoadedImage, sigma: float, seed: int | None, phase: str, start: int, stop: int) -> dict[str, int]:
        engine = self.engine
        tally: Counter = Counter()
        for a in range(start, stop, self.batch):
            indices = list(range(a, min(stop, a + self.batch)))
            if phase == "clean":
                pixels = np.repeat(image.array[None].astype(np.float32), len(indices), axis=0)
            else:
                pixels = noisy_copies(image.array, sigma, seed, image.sha256, phase, indices)
                if engine.denoiser is not None:
                    pixels = engine.denoise(pixels)
            from PIL import Image

            responses = engine.provider.respond([Image.fromarray(to_uint8(p)) for p in pixels])
            tally.update(engine.rule(r.response, engine.provider.name) for r in responses)
        return dict(sorted(tally.items()))

    def record(self, image: LoadedImage, sigma: float, seed: int | None, phase: str, start: int, stop: int,
               extra: dict[str, Any]) -> CountRecord:
        """The count record of samples [start, stop) of `phase` (computed now)."""
        started = time.perf_counter()
        counts = self.counts(image, sigma, seed, phase, start, stop)
        ident = self.identity()
        clean = phase == "clean"
        return CountRecord(
            run=ident["run"], image=image.sha256, provider=ident["provider"], model_version=ident["model_version"],
            settings=ident["settings"], sigma=0.0 if clean else sigma, denoiser=None if clean else ident["denoiser"],
            seed=None if clean else seed, phase=phase, start=start, stop=stop, counts=counts,
            decision=self.decision,
            seconds=round(time.perf_counter() - started, 4), ts=time.time(), extra=dict(extra),
        )


class LocalRanges:
    """The local backend's `compute`: one range at a time in a worker thread (the model uses every core)."""

    def __init__(self, counter: RangeCounter) -> None:
        self.counter = counter
        self._lock = asyncio.Lock()

    async def __call__(self, image: LoadedImage, params: CertifyParams, phase: str, start: int, stop: int,
                       extra: dict) -> CountRecord:
        async with self._lock:
            return await asyncio.to_thread(self.counter.record, image, params.sigma, params.seed, phase, start, stop, extra)


Compute = Callable[[LoadedImage, CertifyParams, str, int, int, dict], Awaitable[CountRecord]]


async def certify_counted(
    image: LoadedImage, params: CertifyParams, *, position: int | None, identity: dict[str, Any], index: CountIndex,
    compute: Compute, write: Callable[[CountRecord], None],
) -> Certificate:
    """Certify one image from label counts: logged ranges are reused, gaps computed by `compute` and passed to
    `write` (log + index) before they count. `identity` is RangeCounter.identity() of the counting side."""
    started = time.perf_counter()
    mode = get_mode(params.mode)
    logged = mode.log_extra(params)
    options = mode.options(params)
    looks, n_selection = mode.looks(params), mode.selection_size(params)
    extra = {**logged, "full_access": True, **({"position": position} if position is not None else {})}
    sigma, seed = params.sigma, params.seed
    tally = {"paid": 0, "hits": 0}

    async def ranges(phase: str, start: int, stop: int, cuts: list[int]) -> list[CountRecord]:
        clean = phase == "clean"
        group = range_key(identity["provider"], identity["settings"], image.sha256, sigma,
                          None if clean else identity["denoiser"], None if clean else seed, phase, identity["decision"],
                          0, 1).group()
        grid = list(range(0, stop, RANGE)) + cuts
        pieces = index.cover(group, start, stop, grid)

        async def piece(a: int, b: int, found: CountRecord | None) -> CountRecord:
            if found is not None:
                tally["hits"] += found.n
                return found
            record = await compute(image, params, phase, a, b, extra)
            write(record)
            index.add(record)
            tally["paid"] += record.n
            return record

        return list(await asyncio.gather(*(piece(a, b, found) for a, b, found in pieces)))

    clean_records = await ranges("clean", 0, 1, [])
    clean_label = labels_of(clean_records)[0]
    selection = await ranges("selection", 0, n_selection, []) if n_selection else []
    selection_labels = labels_of(selection)
    estimation: list[CountRecord] = []
    estimation_labels: list[str] = []
    verdict = None
    done = 0
    for look in looks:
        more = await ranges("estimation", done, look, list(looks))
        estimation += more
        estimation_labels += labels_of(more)
        done = look
        verdict = mode.certify(options, sigma, Samples(clean_label, selection_labels, estimation_labels))
        if verdict.complete:
            break
    assert verdict is not None and verdict.complete
    # as on the per-call path, the time of the selection and estimation samples the certificate used
    used = selection + [r for r in estimation if r.stop <= verdict.n_estimation_used]
    return certificate_from_verdict(
        verdict, image=image.sha256, name=image.name, sigma=sigma, mode=mode.name, clean_label=clean_label,
        calls_paid=tally["paid"], cache_hits=tally["hits"], seconds=round(sum(r.seconds for r in used), 4),
        extra={**logged, "full_access": True, "wall_seconds": time.perf_counter() - started},
    )
