"""The online path, top to bottom: noise -> denoise (batched) -> encode -> dispatch -> parse -> log -> statistics.

One `Engine` serves one provider with one decision rule and one query log. For each sample it first asks the
log index whether the sample (provider, settings, image, sigma, denoiser, seed, index, phase) was already paid
for; only missing samples are generated, denoised, encoded and sent. Every answer is appended (and flushed)
to the log the moment it arrives, before it is counted, so a crash loses at most the calls in flight and a
rerun pays for nothing already logged.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from robust_api import smoothing
from robust_api.dispatch import CallOutcome, Dispatcher, RunStats
from robust_api.errors import PermanentProviderError
from robust_api.images import LoadedImage, encode_for, to_uint8
from robust_api.modes import CertifyParams, Samples, get_mode
from robust_api.noise import noisy_copies
from robust_api.providers.base import Provider
from robust_api.query_logs import SCHEMA_VERSION, LogIndex, QueryLogWriter, QueryRecord, sample_key
from robust_api.results import ABSTAIN, Certificate, Prediction, certificate_from_verdict

__all__ = ["CertifyParams", "Engine"]  # CertifyParams lives in robust_api.modes; importable here as before

# Encoding (and, without a denoiser, the noise) runs on its own threads, one fewer than the cores: more
# CPU-bound threads than cores starve the event loop that times the sends, and the HTTP threads; sends that
# leave late and then bunched are what a provider's rate limiter throttles (benchmarks/dispatch.py on 2 busy
# cores: 6 encoding threads, 1.37-1.42x the quota-ideal time and ~5 throttles per certification; 1 thread,
# 1.17x and ~1). One thread still encodes 224x224 noisy PNGs at ~100/s, twice the benchmark's rate limit.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
_ENCODE_WORKERS = max(1, _CORES - 1)
_encode_pool: concurrent.futures.ThreadPoolExecutor | None = None
_encode_pool_lock = threading.Lock()


def _encoder() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide encoding pool (created on first use; shared by every engine, so their total is bounded)."""
    global _encode_pool
    with _encode_pool_lock:
        if _encode_pool is None:
            _encode_pool = concurrent.futures.ThreadPoolExecutor(_ENCODE_WORKERS, thread_name_prefix="robust-api-encode")
        return _encode_pool


class Engine:
    """Certify and predict images against one provider.

    rule(response, provider) -> label is the decision rule; `log` (optional) receives every new response;
    `index` holds what is already logged (a cache hit is never sent again). `denoiser` is a ServedDenoiser
    (module + identity, see denoisers.registry.serve_denoiser) or a bare torch module mapping NCHW float images
    in [0, 1] to the same, identified then by `denoiser_id` ({"name", "sha256"}); the identity enters the cache key.
    """

    def __init__(
        self,
        provider: Provider,
        dispatcher: Dispatcher,
        rule: Callable[..., str],
        *,
        log: QueryLogWriter | None = None,
        index: LogIndex | None = None,
        denoiser: Any = None,
        denoiser_id: dict | None = None,
        denoise_batch: int = 16,
        run_id: str | None = None,
    ) -> None:
        self.provider = provider
        self.dispatcher = dispatcher
        self.rule = rule
        self.log = log
        self.index = index if index is not None else LogIndex()
        identity = getattr(denoiser, "identity", None)
        if identity is not None:  # a ServedDenoiser
            denoiser, denoiser_id = denoiser.module, identity.as_log()
            precision = identity.precision
        else:
            precision = getattr(denoiser, "denoiser_precision", None) if denoiser is not None else None
        self.denoiser = denoiser
        self.denoiser_id = denoiser_id if denoiser is not None else None
        # informational (not part of the cache key): the precision the denoiser was served in, see denoisers/speed.py
        self._denoiser_notes = {"denoiser_precision": precision} if precision and denoiser is not None else {}
        self.denoise_batch = max(1, denoise_batch)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.settings = provider.settings()
        self._denoise_lock = asyncio.Lock()

    # Chunks of samples prepared (noised, denoised, encoded) or on the network at once, per `responses` call:
    # enough that the dispatcher never waits for the CPU, few enough to bound memory for large n.
    prepare_ahead: int = 4

    @property
    def stats(self) -> RunStats:
        return self.dispatcher.stats

    # -- samples ----------------------------------------------------------------------------------
    async def responses(
        self,
        image: LoadedImage,
        phase: str,
        indices: Sequence[int],
        sigma: float,
        seed: int | None,
        extra: dict | None = None,
        tally: dict[str, int] | None = None,
    ) -> list[QueryRecord]:
        """The logged record of each requested sample, paying only for those not yet in the log.

        The samples flow through a pipeline so that the rate limit, not the CPU, sets the pace: noise and
        encoding happen ahead of the dispatcher's send times, never while a send time waits for them. Each
        sample is noised and encoded by its own job on the worker threads (queued in index order), and each
        provider batch (one image for most providers) goes to the dispatcher the moment its images are
        encoded. With a denoiser, chunks of `denoise_batch` samples are denoised one after the other (always
        the same chunks, so the same batches and bytes) while the next chunk's noise is drawn and the previous
        chunks are encoded and sent. At most `prepare_ahead` chunks are in the pipeline at once (bounded
        memory). When a send fails for good no further chunk is started; calls already sent finish and are
        logged, then the error is raised. seed=None (serving) never hits the cache.
        """
        records, missing = self.cached(image, phase, indices, sigma, seed, tally)
        chunks = [missing[s : s + self.denoise_batch] for s in range(0, len(missing), self.denoise_batch)]
        denoised = self.denoiser is not None and phase != "clean"
        in_flight: list[asyncio.Task] = []  # one per chunk: its samples' encoding and sending
        noise: asyncio.Task | None = None  # the next chunk's noisy copies, drawn while this chunk is denoised
        try:
            for n, chunk in enumerate(chunks):
                if n >= self.prepare_ahead:
                    await asyncio.wait([in_flight[n - self.prepare_ahead]])
                if any(t.done() and not t.cancelled() and t.exception() is not None for t in in_flight):
                    break  # a send failed for good: the error is raised below, after the others are logged
                if denoised:
                    noise = noise or self._noise(image, phase, chunk, sigma, seed)
                    noisy, noise = await noise, None
                    if n + 1 < len(chunks):
                        noise = self._noise(image, phase, chunks[n + 1], sigma, seed)
                    encoded = self._encode(await self._prepare(noisy))
                else:
                    encoded = self._encode_samples(image, phase, chunk, sigma, seed)
                task = self._send_chunk(image, phase, chunk, encoded, sigma, seed, records, extra, tally)
                in_flight.append(asyncio.create_task(task))
        finally:
            if noise is not None:  # drawn ahead for a chunk never started (an error above): let it finish
                await asyncio.gather(noise, return_exceptions=True)
            # Even when preparing a later chunk failed, calls already sent finish and are logged.
            await _gather(*in_flight)
        return [records[i] for i in indices]

    def cached(
        self, image: LoadedImage, phase: str, indices: Sequence[int], sigma: float, seed: int | None,
        tally: dict[str, int] | None = None,
    ) -> tuple[dict[int, QueryRecord], list[int]]:
        """The logged records of the requested samples (index -> record) and the indices not logged yet, counted
        as cache hits in the run's stats and in `tally`. seed=None (serving) never hits the cache."""
        records: dict[int, QueryRecord] = {}
        missing = []
        for i in indices:
            found = self.index.get(self._key(image, phase, i, sigma, seed)) if seed is not None else None
            if found is not None:
                records[i] = found
            else:
                missing.append(i)
        self.stats.cache_hits += len(indices) - len(missing)
        if tally is not None:  # per-image counts (the run-wide stats mix images certified concurrently)
            tally["hits"] = tally.get("hits", 0) + len(indices) - len(missing)
        return records, missing

    def _key(self, image: LoadedImage, phase: str, index: int, sigma: float, seed: int | None):
        return sample_key(self.provider.name, self.settings, image.sha256, sigma, self.denoiser_id, seed, index, phase)

    def _noise(self, image: LoadedImage, phase: str, chunk: list[int], sigma: float, seed: int | None) -> asyncio.Task:
        """Start drawing the chunk's noisy copies on a worker thread."""
        return asyncio.ensure_future(asyncio.to_thread(noisy_copies, image.array, sigma, seed, image.sha256, phase, chunk))

    async def _prepare(self, noisy: np.ndarray) -> np.ndarray:
        """Denoise a chunk of noisy copies (float NHWC in [0, 1]), one chunk at a time."""
        async with self._denoise_lock:  # one batch at a time: the denoiser already uses every core
            return await asyncio.to_thread(self._denoise, noisy)

    def _encode_samples(self, image: LoadedImage, phase: str, chunk: list[int], sigma: float, seed: int | None
                        ) -> list[asyncio.Future]:
        """Without a denoiser: one encoding-thread job per sample draws its noisy copy (the clean image for phase
        'clean') and encodes it, so the first sample can leave before the chunk's last one is noised. The bytes
        equal those of the chunk-wise path: each sample's noise depends on its index only."""
        loop = asyncio.get_running_loop()
        limits = self.provider.limits

        def job(index: int) -> Any:
            if phase == "clean":
                pixels = image.array
            else:
                pixels = noisy_copies(image.array, sigma, seed, image.sha256, phase, [index])[0]
            return encode_for(to_uint8(pixels), limits)

        return [loop.run_in_executor(_encoder(), job, index) for index in chunk]

    def _encode(self, pixels: np.ndarray) -> list[asyncio.Future]:
        """Start encoding each row on the encoding threads, in row order; one future per sample (the costliest
        step for incompressible noisy PNGs, ~5-10 ms each at 224x224). Submitted at once (not when a coroutine
        first runs), so a chunk's encodes are queued ahead of later chunks' work."""
        loop = asyncio.get_running_loop()
        limits = self.provider.limits
        return [loop.run_in_executor(_encoder(), lambda p=p: encode_for(to_uint8(p), limits)) for p in pixels]

    def denoise(self, pixels: np.ndarray) -> np.ndarray:
        """Denoise noisy copies (float NHWC in [0, 1]) in one batch with this engine's denoiser, clipped to [0, 1]
        (the caller's thread; full access counts through it)."""
        return self._denoise(pixels)

    def _denoise(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        device = next(iter(self.denoiser.parameters()), torch.empty(0)).device
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(device)
            out = self.denoiser(batch).clamp_(0.0, 1.0)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    async def _send_chunk(self, image, phase, chunk, encoded: list[asyncio.Future], sigma, seed, records, extra,
                          tally) -> None:
        """Send the chunk in provider-sized batches (the same batches as one dispatcher call on the whole chunk),
        each the moment its images are encoded; every batch runs to the end, then the first error is raised."""
        size = max(1, self.provider.max_batch)

        async def batch(s: int) -> None:
            ready = await asyncio.gather(*encoded[s : s + size])
            await self._send(image, phase, chunk[s : s + size], ready, sigma, seed, records, extra, tally)

        try:
            await _gather(*(batch(s) for s in range(0, len(chunk), size)))
        finally:
            await asyncio.gather(*encoded, return_exceptions=True)  # no encode outlives the chunk unobserved

    async def _send(self, image, phase, chunk, encoded, sigma, seed, records, extra, tally) -> None:
        def on_answer(j: int, outcome: CallOutcome) -> None:
            index = chunk[j]
            record = self._record(image, phase, index, sigma, seed, outcome, encoded[j], extra)
            if self.log is not None:
                self.log.write(record)  # flushed before the sample counts
            if seed is not None:
                self.index.add(record)
            records[index] = record
            if tally is not None:
                tally["paid"] = tally.get("paid", 0) + 1

        await self.dispatcher.classify([e.data for e in encoded], on_answer=on_answer)

    def _record(self, image, phase, index, sigma, seed, outcome: CallOutcome, encoded, extra) -> QueryRecord:
        response = outcome.response
        notes = {"encoding": list(encoded.notes)} if encoded.notes else {}
        return QueryRecord(
            schema=SCHEMA_VERSION,
            run=self.run_id,
            image=image.sha256,
            provider=self.provider.name,
            model_version=response.model_version,
            settings=self.settings,
            sigma=sigma,
            denoiser=self.denoiser_id,
            seed=seed,
            index=index,
            phase=phase,
            response=response.response,
            label=self._label(response.response),
            latency_ms=round(outcome.latency_ms, 3),
            attempts=outcome.attempts,
            ts=time.time(),
            extra={
                **(extra or {}), **notes, **self._denoiser_notes,
                **({"request_id": response.request_id} if response.request_id else {}),
            },
        )

    def _label(self, response: dict) -> str:
        return self.rule(response, self.provider.name)

    def labels(self, records: Sequence[QueryRecord]) -> list[str]:
        """Labels by the current rule (not the label stored at write time, so a new rule applies to old logs)."""
        return [self._label(r.response) for r in records]

    # -- statistics over samples -----------------------------------------------------------------
    async def certify(self, image: LoadedImage, params: CertifyParams, position: int | None = None) -> Certificate:
        """Certify one image in `params.mode` (robust_api.modes: each mode's guarantee). `position` (the image's
        place in the caller's input, logged in `extra`) lets replay give the rows in input order. A provider's
        invalid-image error is re-raised naming the image."""
        try:
            return await self._certify(image, params, position)
        except PermanentProviderError as exc:
            if exc.kind != "invalid_image":
                raise
            raise PermanentProviderError(
                exc.provider, exc.kind, f"image {image.name} rejected: {exc.reason}; convert or resize it, or leave it out",
                request_id=exc.request_id, status=exc.status,
            ) from None

    async def _certify(self, image: LoadedImage, params: CertifyParams, position: int | None) -> Certificate:
        started = time.perf_counter()
        mode = get_mode(params.mode)
        logged = mode.log_extra(params)
        options = mode.options(params)
        looks, n_selection = mode.looks(params), mode.selection_size(params)
        extra = {**logged, **({"position": position} if position is not None else {})}
        tally: dict[str, int] = {}
        sigma, seed = params.sigma, params.seed
        # The clean query goes first, alone: an image the provider rejects (format, size) then costs one call,
        # not 1 + n0 + n. Other images' samples keep the dispatcher busy meanwhile (certify_all).
        clean_label = self.labels(await self.responses(image, "clean", [0], sigma, seed, extra, tally))[0]
        selection: list[QueryRecord] = []
        estimation: list[QueryRecord] = []
        selection_labels: list[str] = []
        estimation_labels: list[str] = []  # decided once per sample, however many looks follow
        verdict = None
        for look in looks:
            wanted = range(len(estimation), look)
            if look == looks[0] and n_selection:
                # Selection and estimation samples are independent draws: request them all at once.
                selection, est_records = await _gather(
                    self.responses(image, "selection", range(n_selection), sigma, seed, extra, tally),
                    self.responses(image, "estimation", wanted, sigma, seed, extra, tally),
                )
                selection_labels = self.labels(selection)
            else:
                est_records = await self.responses(image, "estimation", wanted, sigma, seed, extra, tally)
            estimation += est_records
            estimation_labels += self.labels(est_records)
            verdict = mode.certify(options, sigma, Samples(clean_label, selection_labels, estimation_labels))
            if verdict.complete:
                break
        assert verdict is not None and verdict.complete  # the last look always decides
        used = selection + estimation[: verdict.n_estimation_used]
        return certificate_from_verdict(
            verdict, image=image.sha256, name=image.name, sigma=sigma, mode=mode.name, clean_label=clean_label,
            calls_paid=tally.get("paid", 0), cache_hits=tally.get("hits", 0),
            # provider time of the samples used, as logged: the TSV "time" column replay reproduces exactly
            seconds=provider_seconds(used), extra={**logged, "wall_seconds": time.perf_counter() - started},
        )

    async def sample_prediction(
        self, image: LoadedImage, n: int, sigma: float, alpha: float | None, seed: int | None = None
    ) -> tuple[Prediction, list[QueryRecord]]:
        """The smoothed prediction over n noisy samples and their records: the majority label when alpha is None,
        else Cohen's PREDICT at level alpha (abstain = label None). seed=None draws fresh noise (no cache)."""
        records = await self.responses(image, "estimation", range(n), sigma, seed, {"mode": "predict"})
        counts = smoothing.count_labels(self.labels(records))
        label = smoothing.smoothed_prediction(counts, alpha)
        prediction = Prediction(label=None if label == ABSTAIN else label, counts=counts, alpha=alpha if alpha is not None else 0.0,
                                image=image.sha256, name=image.name)
        return prediction, records

    async def predict(self, image: LoadedImage, n: int, sigma: float, alpha: float, seed: int | None = None) -> Prediction:
        """Smoothed prediction by majority vote over n noisy samples (binomial-test abstain at level alpha)."""
        return (await self.sample_prediction(image, n, sigma, alpha, seed))[0]


def provider_seconds(records: Sequence[QueryRecord]) -> float:
    """Provider time of the samples, in seconds, summed in the order given from the logged latencies."""
    return sum(r.latency_ms for r in records if r.latency_ms is not None) / 1000.0


async def _gather(*aws):
    """Run awaitables together; let every one finish (so every paid answer is logged), then raise the first error."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
