"""The one dispatch layer between the engine and every provider: concurrency cap, rate limit, retries.

- Concurrency: at most `concurrency` provider calls in flight (a semaphore held only while a call runs,
  never while backing off).
- Rate: a token bucket (aiolimiter) of `rate_per_s` requests per second with `burst` tokens; a throttling
  reply with Retry-After pauses *all* calls to that provider until it has passed, so a throttling storm is
  not answered by more throttled requests.
- Retries (tenacity): only RetryableProviderError (throttled, 5xx, timeout, connection reset, unreadable
  body), exponential backoff with jitter (for throttling without Retry-After it starts at two request
  intervals, since calls are paced already), never shorter than the provider's Retry-After, at most
  `max_attempts` attempts per image; per-call timeout. PermanentProviderError (auth, invalid image, bad
  request, quota) fails fast, after one call. Within a batch, only the images that failed are re-sent.
- Fail fast across calls: the very first request goes alone; an auth or quota failure then stops every
  other request before it is sent, so wrong credentials cost one call, not `concurrency` calls.
- Stats: requests sent, billable images answered, retries and failures per kind.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from robust_api.errors import ProviderError, RetryableProviderError
from robust_api.providers.base import Provider, ProviderResponse

MAX_RETRY_AFTER_S = 300.0
FATAL_KINDS = ("auth", "quota")  # failures that concern the account, not one image  # a Retry-After longer than this is treated as a fault of the provider, not obeyed


@dataclass
class RunStats:
    """Per-run counters. `billable_calls` counts images the provider answered (what a user pays for);
    `requests` counts HTTP requests sent, including failed attempts; `cache_hits` counts samples found in the log."""

    billable_calls: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: collections.Counter = field(default_factory=collections.Counter)
    failures: collections.Counter = field(default_factory=collections.Counter)

    def as_dict(self) -> dict:
        return {
            "billable_calls": self.billable_calls,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": dict(self.retries),
            "failures": dict(self.failures),
        }


@dataclass(frozen=True)
class CallOutcome:
    """One image's answer: the provider response, the attempts it took, and the latency of the successful call."""

    response: ProviderResponse
    attempts: int
    latency_ms: float


class Dispatcher:
    """Sends encoded images to one provider within its concurrency, rate and retry policy.

    `classify(images)` returns one CallOutcome per image, in order, or raises the PermanentProviderError of the
    first image that failed permanently, or the last RetryableProviderError once `max_attempts` are spent.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        concurrency: int = 16,
        rate_per_s: float | None = None,
        burst: int = 1,
        max_attempts: int = 6,
        timeout_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stats: RunStats | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or burst < 1:
            raise ValueError("concurrency, max_attempts and burst must be >= 1")
        self.provider = provider
        self.concurrency = concurrency
        self.rate_per_s = rate_per_s if rate_per_s is not None else provider.default_rate_per_s
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.stats = stats if stats is not None else RunStats()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._limiter = AsyncLimiter(burst, burst / self.rate_per_s)
        self._paused_until = 0.0
        self._fatal: ProviderError | None = None  # auth/quota failure: nothing more is sent
        self._probe_started = False
        self._probe_done = asyncio.Event()
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s)
        # Throttling without Retry-After (AWS sends none): we already pace at the rate limit, so the first
        # waits are a few request intervals, doubling from there, and every call pauses with the one throttled.
        pace_s = max(2.0 / self.rate_per_s, 0.02)
        self._throttle_backoff = wait_exponential_jitter(multiplier=pace_s, max=backoff_max_s, jitter=pace_s)

    async def classify(
        self, images: Sequence[bytes], on_answer: Callable[[int, CallOutcome], None] | None = None
    ) -> list[CallOutcome]:
        """Classify any number of images, in provider-sized batches sent concurrently.

        `on_answer(i, outcome)` is called the moment image i is answered, before any other image's retry, so a
        caller can log a paid response even when another image of the same call later fails for good. When a
        batch fails, the others still run to completion (their answers reach `on_answer`); then the first
        error is raised.
        """
        size = max(1, self.provider.max_batch)
        starts = range(0, len(images), size)
        results = await asyncio.gather(
            *(self._classify_batch(list(images[s : s + size]), s, on_answer) for s in starts), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [outcome for batch in results for outcome in batch]  # type: ignore[union-attr]

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        throttled = getattr(exc, "kind", "") == "throttled"
        hint = getattr(exc, "retry_after_s", None)
        if hint is not None and 0 < hint <= MAX_RETRY_AFTER_S:
            delay = max(self._backoff(state), hint)
        elif throttled:
            delay = self._throttle_backoff(state)
        else:
            delay = self._backoff(state)
        if throttled:
            self._paused_until = max(self._paused_until, time.monotonic() + (hint if hint and hint <= MAX_RETRY_AFTER_S else delay))
        return delay

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.stats.retries[getattr(exc, "kind", "other")] += 1

    async def _classify_batch(
        self, images: list[bytes], offset: int, on_answer: Callable[[int, CallOutcome], None] | None
    ) -> list[CallOutcome]:
        pending = dict(enumerate(images))
        results: list[CallOutcome | None] = [None] * len(images)
        attempts = [0] * len(images)
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, RetryableProviderError)),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._attempt(pending, results, attempts, offset, on_answer)
        except ProviderError as exc:
            self.stats.failures[exc.kind] += 1
            raise
        return [r for r in results if r is not None]

    async def _attempt(
        self,
        pending: dict[int, bytes],
        results: list,
        attempts: list[int],
        offset: int,
        on_answer: Callable[[int, CallOutcome], None] | None,
    ) -> None:
        indices = list(pending)
        if not self._probe_started:
            self._probe_started = True
            try:
                return await self._send(pending, results, attempts, offset, on_answer, indices)
            finally:
                self._probe_done.set()
        await self._probe_done.wait()
        return await self._send(pending, results, attempts, offset, on_answer, indices)

    async def _send(self, pending, results, attempts, offset, on_answer, indices) -> None:
        if self._fatal is not None:
            raise self._fatal
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._semaphore:
            if self._fatal is not None:
                raise self._fatal
            await self._limiter.acquire()
            for i in indices:
                attempts[i] += 1
            self.stats.requests += 1
            started = time.perf_counter()
            try:
                answers = await asyncio.wait_for(
                    self.provider.classify([pending[i] for i in indices]), timeout=self.timeout_s
                )
            except asyncio.TimeoutError:
                raise RetryableProviderError(
                    self.provider.name, "timeout", f"no answer within {self.timeout_s:g} s"
                ) from None
            except ProviderError as exc:
                if exc.kind in FATAL_KINDS:
                    self._fatal = exc
                raise
            latency_ms = (time.perf_counter() - started) * 1000.0
        if len(answers) != len(indices):
            raise RetryableProviderError(
                self.provider.name, "malformed", f"{len(answers)} answers for {len(indices)} images"
            )
        retryable: ProviderError | None = None
        for i, answer in zip(indices, answers):
            if isinstance(answer, ProviderError):
                if not answer.retryable:
                    if answer.kind in FATAL_KINDS:
                        self._fatal = answer
                    raise answer
                retryable = answer
                continue
            results[i] = CallOutcome(answer, attempts[i], latency_ms)
            del pending[i]
            self.stats.billable_calls += 1
            if on_answer is not None:
                on_answer(offset + i, results[i])
        if retryable is not None:
            raise retryable
