"""The online path, top to bottom: noise -> denoise (batched) -> encode -> dispatch -> parse -> log -> statistics.

One `Engine` serves one provider with one decision rule and one query log. For each sample it first asks the
log index whether the sample (provider, settings, image, sigma, denoiser, seed, index, phase) was already paid
for; only missing samples are generated, denoised, encoded and sent. Every answer is appended (and flushed)
to the log the moment it arrives, before it is counted, so a crash loses at most the calls in flight and a
rerun pays for nothing already logged.
"""
from __future__ import annotations

import asyncio
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

        Chunks of `denoise_batch` samples are noised and denoised one after the other while earlier chunks
        are on the network, so denoising overlaps network I/O. seed=None (serving) never hits the cache.
        """
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
        in_flight: list[asyncio.Task] = []
        try:
            for start in range(0, len(missing), self.denoise_batch):
                chunk = missing[start : start + self.denoise_batch]
                encoded = await self._prepare(image, phase, chunk, sigma, seed)
                task = self._send(image, phase, chunk, encoded, sigma, seed, records, extra, tally)
                in_flight.append(asyncio.create_task(task))
        finally:
            # Even when preparing a later chunk failed, calls already sent finish and are logged.
            await _gather(*in_flight)
        return [records[i] for i in indices]

    def _key(self, image: LoadedImage, phase: str, index: int, sigma: float, seed: int | None):
        return sample_key(self.provider.name, self.settings, image.sha256, sigma, self.denoiser_id, seed, index, phase)

    async def _prepare(self, image: LoadedImage, phase: str, chunk: list[int], sigma: float, seed: int | None):
        if phase == "clean":
            pixels = np.repeat(image.array[None], len(chunk), axis=0)
        else:
            pixels = await asyncio.to_thread(noisy_copies, image.array, sigma, seed, image.sha256, phase, chunk)
            if self.denoiser is not None:
                async with self._denoise_lock:  # one batch at a time: the denoiser already uses every core
                    pixels = await asyncio.to_thread(self._denoise, pixels)
        # One worker-thread task per sample: Pillow's encoders release the GIL, so encoding (the costliest
        # step for incompressible noisy PNGs, ~10 ms each at 224x224) uses every core.
        limits = self.provider.limits
        return await asyncio.gather(*(asyncio.to_thread(lambda p=p: encode_for(to_uint8(p), limits)) for p in pixels))

    def _denoise(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        device = next(iter(self.denoiser.parameters()), torch.empty(0)).device
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(device)
            out = self.denoiser(batch).clamp_(0.0, 1.0)
        return out.permute(0, 2, 3, 1).cpu().numpy()

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
        verdict = None
        for look in looks:
            wanted = range(len(estimation), look)
            if look == looks[0] and n_selection:
                # Selection and estimation samples are independent draws: request them all at once.
                selection, est_records = await _gather(
                    self.responses(image, "selection", range(n_selection), sigma, seed, extra, tally),
                    self.responses(image, "estimation", wanted, sigma, seed, extra, tally),
                )
            else:
                est_records = await self.responses(image, "estimation", wanted, sigma, seed, extra, tally)
            estimation += est_records
            verdict = mode.certify(options, sigma, Samples(clean_label, self.labels(selection), self.labels(estimation)))
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
