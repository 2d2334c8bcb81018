"""The online path, top to bottom: noise -> denoise (batched) -> encode -> dispatch -> parse -> log -> statistics.

One `Engine` serves one provider with one decision rule and one query log. For each sample it first asks the
log index whether the sample (provider, settings, image, sigma, denoiser, seed, index, phase) was already paid
for; only missing samples are generated, denoised, encoded and sent. Every answer is appended (and flushed)
to the log the moment it arrives, before it is counted, so a crash loses at most the calls in flight and a
rerun pays for nothing already logged.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from robust_api import smoothing
from robust_api.dispatch import CallOutcome, Dispatcher, RunStats
from robust_api.errors import ConfigError, PermanentProviderError
from robust_api.images import LoadedImage, encode_for, to_uint8
from robust_api.noise import noisy_copies
from robust_api.providers.base import Provider
from robust_api.query_logs import SCHEMA_VERSION, LogIndex, QueryLogWriter, QueryRecord, sample_key
from robust_api.results import ABSTAIN, Certificate, Prediction

MODES = ("fixed", "clean", "sequential")


@dataclasses.dataclass(frozen=True)
class CertifyParams:
    """What a certification run needs. `n0` is unused by modes 'clean' and 'sequential' (the candidate is
    the clean-image label); `max_queries`/`target_radius` are used by 'sequential' only."""

    sigma: float
    n0: int = 20
    n: int = 100
    alpha: float = 0.001
    mode: str = "fixed"
    seed: int = 0
    max_queries: int | None = None
    target_radius: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.sigma > 0:
            raise ConfigError("sigma must be > 0")
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha must be in (0, 1)")
        if self.n < 1 or self.n0 < 0 or (self.mode == "fixed" and self.n0 < 1):
            raise ConfigError("n must be >= 1 and n0 >= 1 in fixed mode")


class Engine:
    """Certify and predict images against one provider.

    rule(response, provider) -> label is the decision rule; `log` (optional) receives every new response;
    `index` holds what is already logged (a cache hit is never sent again). `denoiser` is a torch module
    mapping NCHW float images in [0, 1] to the same; `denoiser_id` ({"name", "sha256"}) enters the cache key.
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
        self.denoiser = denoiser
        self.denoiser_id = denoiser_id if denoiser is not None else None
        # informational (not part of the cache key): the precision the denoiser was served in, see denoisers/speed.py
        precision = getattr(denoiser, "denoiser_precision", None) if denoiser is not None else None
        self._denoiser_notes = {"denoiser_precision": precision} if precision else {}
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
    async def certify(self, image: LoadedImage, params: CertifyParams) -> Certificate:
        """Certify one image (see robust_api.smoothing for each mode's guarantee). A provider's invalid-image
        error is re-raised naming the image."""
        try:
            return await self._certify(image, params)
        except PermanentProviderError as exc:
            if exc.kind != "invalid_image":
                raise
            raise PermanentProviderError(
                exc.provider, exc.kind, f"image {image.name} rejected: {exc.reason}; convert or resize it, or leave it out",
                request_id=exc.request_id, status=exc.status,
            ) from None

    async def _certify(self, image: LoadedImage, params: CertifyParams) -> Certificate:
        started = time.perf_counter()
        tally: dict[str, int] = {}
        extra = {"mode": params.mode, "alpha": params.alpha}
        counts_selection: dict[str, int] = {}
        p_lower = None
        # The clean query goes first, alone: an image the provider rejects (format, size) then costs one call,
        # not 1 + n0 + n. Other images' samples keep the dispatcher busy meanwhile (certify_all).
        clean_label = self.labels(await self.responses(image, "clean", [0], params.sigma, params.seed, extra, tally))[0]
        if params.mode == "fixed":
            # Selection and estimation samples are independent draws: request them all at once.
            selection, estimation = await _gather(
                self.responses(image, "selection", range(params.n0), params.sigma, params.seed, extra, tally),
                self.responses(image, "estimation", range(params.n), params.sigma, params.seed, extra, tally),
            )
            counts_selection = count_labels(self.labels(selection))
            counts_estimation = count_labels(self.labels(estimation))
            label, radius = smoothing.certify(counts_selection, counts_estimation, params.sigma, params.alpha)
            candidate = smoothing.top_label(counts_selection) if counts_selection else None
        elif params.mode == "clean":
            candidate = clean_label
            estimation = await self.responses(image, "estimation", range(params.n), params.sigma, params.seed, extra, tally)
            counts_estimation = count_labels(self.labels(estimation))
            label, radius = smoothing.certify_with_candidate(candidate, counts_estimation, params.sigma, params.alpha)
        else:
            candidate = clean_label
            label, radius, counts_estimation, plan = await self._certify_sequential(image, candidate, params, tally)
            extra = {**extra, "plan": plan}
        n_est = sum(counts_estimation.values())
        if candidate is not None and n_est:
            p_lower = smoothing.lower_confidence_bound(counts_estimation.get(candidate, 0), n_est, params.alpha)
        return Certificate(
            image=image.sha256,
            name=image.name,
            label=None if label == ABSTAIN else label,
            radius_l2=float(radius),
            sigma=params.sigma,
            alpha=params.alpha,
            mode=params.mode,
            clean_label=clean_label,
            p_lower=p_lower,
            counts_selection=counts_selection,
            counts_estimation=counts_estimation,
            calls_paid=tally.get("paid", 0),
            cache_hits=tally.get("hits", 0),
            seconds=time.perf_counter() - started,
            extra=extra,
        )

    async def _certify_sequential(self, image: LoadedImage, candidate: str, params: CertifyParams, tally: dict):
        """Draw estimation samples in rounds (one concurrent round per look of the plan) until the plan
        certifies or abstains; see robust_api.sequential for why any stopping time keeps the guarantee."""
        plan = sequential_plan(params)
        plan_dict = plan.to_dict()
        extra = {"mode": "sequential", "alpha": params.alpha, "plan": plan_dict}
        labels: list[str] = []
        decision = None
        for look in plan.looks:
            records = await self.responses(image, "estimation", range(len(labels), look), params.sigma, params.seed, extra, tally)
            labels += self.labels(records)
            decision = plan.decide(look, sum(1 for label in labels if label == candidate), candidate)
            if decision.done:
                break
        assert decision is not None and decision.done  # the last look always decides
        label = decision.label if decision.action == "certify" else ABSTAIN
        return label, decision.radius, count_labels(labels), plan_dict

    async def predict(self, image: LoadedImage, n: int, sigma: float, alpha: float, seed: int | None = None) -> Prediction:
        """Smoothed prediction by majority vote over n noisy samples (binomial-test abstain at level alpha)."""
        records = await self.responses(image, "estimation", range(n), sigma, seed, {"mode": "predict"})
        counts = count_labels(self.labels(records))
        label = smoothing.predict(counts, alpha)
        return Prediction(label=None if label == ABSTAIN else label, counts=counts, alpha=alpha, image=image.sha256, name=image.name)


async def _gather(*aws):
    """Run awaitables together; let every one finish (so every paid answer is logged), then raise the first error."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def sequential_plan(params: CertifyParams):
    """The plan of looks for a sequential run: budget `max_queries` (default n0 + n, what fixed mode spends)."""
    from robust_api.sequential import SequentialPlan

    budget = params.max_queries if params.max_queries is not None else params.n0 + params.n
    try:
        return SequentialPlan(budget, params.alpha, params.sigma, params.target_radius)
    except ValueError as exc:
        raise ConfigError(f"sequential plan: {exc}") from None


def count_labels(labels: Sequence[str]) -> dict[str, int]:
    """How many times each label occurs."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts
