"""The one dispatch layer between the engine and every provider: concurrency cap, rate limit, retries.

- Concurrency: at most `concurrency` provider calls in flight (a semaphore held only while a call waits for
  its send time and runs, never while backing off).
- Rate: requests leave `1/rate_per_s` apart (`Pacer`): each send time is the previous one plus one interval,
  so the rate does not sag by the event loop's wake-up latency; after a stall the schedule starts again
  rather than catching up, so requests never leave in a clump that the provider's own token bucket would
  reject (`burst` > 1 lets that many go back to back after an idle spell).
- Throttling pauses *all* calls to that provider, including those already queued for their send time: until
  its Retry-After has passed, or without one (AWS sends none) for one request interval (the provider's
  bucket then holds a token again), doubling with each further attempt of the throttled image; so a
  throttling storm is not answered by more throttled requests, and one stray throttle costs one interval.
- Retries (tenacity): only RetryableProviderError (throttled, 5xx, timeout, connection reset, unreadable
  body), exponential backoff with jitter (for throttling without Retry-After it starts at two request
  intervals, since calls are paced already), never shorter than the provider's Retry-After, at most
  `max_attempts` attempts per image; per-call timeout. PermanentProviderError (auth, invalid image, bad
  request, quota) fails fast, after one call. Within a batch, only the images that failed are re-sent.
- Fail fast across calls: the very first request goes alone; an auth or quota failure then stops every
  other request before it is sent (also one already waiting for its send time), so wrong credentials cost
  one call, not `concurrency` calls.
- Stats: requests sent, billable images answered, retries and failures per kind.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from robust_api.errors import ProviderError, RetryableProviderError
from robust_api.providers.base import Provider, ProviderResponse

MAX_RETRY_AFTER_S = 300.0  # a Retry-After longer than this is treated as a fault of the provider, not obeyed
FATAL_KINDS = ("auth", "quota")  # failures that concern the account, not one image


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


class Pacer:
    """Request send times spaced `1/rate_per_s` apart, precisely and without clumps.

    Senders take turns (first come, first served); the one whose turn it is sleeps until its send time, which
    is the previous send time plus one interval (a virtual schedule, as in the generic cell rate algorithm).
    A sender the event loop wakes late by at most `catch_up` (a tenth of an interval: timer granularity)
    keeps the schedule, so the rate does not sag by the loop's latency; one woken later (the process was
    stalled) re-bases the schedule on its actual send time, so a stall is never followed by a clump that a
    provider's own token bucket would reject. After an idle spell the first request goes at once and
    `burst` - 1 more may follow back to back (burst=1: none). `hold(t)` puts every later send at or after t,
    also the one asleep for its turn, spaced as usual (no burst after a pause). `clock` and `sleep` are
    injectable so that tests need no real time. A Dispatcher may be given another object with the same
    `interval`, `hold(until)` and `acquire(check)` (the Ray backend's pacer shared by every worker).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.interval = 1.0 / rate_per_s
        self.tolerance = (burst - 1) * self.interval
        self.catch_up = self.interval / 10
        self.clock = clock
        self._sleep = sleep
        self._due = -math.inf  # theoretical send time of the next request when requests queue back to back
        self._turn = asyncio.Lock()  # FIFO: one sender at a time waits for its send time

    def hold(self, until: float) -> None:
        """No request leaves before `until`; the ones after it are spaced by the interval."""
        self._due = max(self._due, until + self.tolerance)

    async def acquire(self, check: Callable[[], None] | None = None) -> float:
        """Wait for this request's send time; returns it (the clock reading when the request may leave).

        `check()` runs when the turn comes and after every sleep; what it raises abandons the turn without
        using up a send time (the dispatcher's fatal-failure check)."""
        async with self._turn:
            while True:
                if check is not None:
                    check()
                delay = self._due - self.tolerance - self.clock()  # re-read: a hold may have come meanwhile
                if delay <= 0:
                    break
                await self._sleep(delay)
            now = self.clock()
            scheduled = self._due - self.tolerance
            # woken a little late: keep the schedule; idle, or stalled for longer: start it again from now
            slot = scheduled if now - scheduled <= self.catch_up else now
            self._due = max(self._due, slot) + self.interval
            return now


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
        pacer: "Pacer | None" = None,
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
        # A pacer shared with other dispatchers (the Ray backend's one rate limit across workers) or our own.
        self._pacer = pacer if pacer is not None else Pacer(self.rate_per_s, burst)
        self._paused_until = 0.0
        self._fatal: ProviderError | None = None  # auth/quota failure: nothing more is sent
        self._probe_started = False
        self._probe_done = asyncio.Event()
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s)
        self._backoff_max_s = backoff_max_s
        # Throttling without Retry-After (AWS sends none): we already pace at the rate limit, so the throttled
        # image's first waits are a few request intervals, doubling from there.
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
        """The failed image's wait before its next attempt; a throttle also pauses every call (see module doc)."""
        exc = state.outcome.exception() if state.outcome else None
        throttled = getattr(exc, "kind", "") == "throttled"
        hint = getattr(exc, "retry_after_s", None)
        obeyed = hint is not None and 0 < hint <= MAX_RETRY_AFTER_S
        if obeyed:
            delay = max(self._backoff(state), hint)
        elif throttled:
            delay = self._throttle_backoff(state)
        else:
            delay = self._backoff(state)
        if throttled:
            self._pause_all(state, hint if obeyed else None, delay)
        return delay

    def _pause_all(self, state: RetryCallState, retry_after_s: float | None, delay: float) -> None:
        """After a throttle, hold every call (also those waiting for their send time): for the obeyed
        Retry-After, or without one for one request interval (the provider's bucket then holds a token
        again), doubling with each further attempt of the same image (a storm backs off fast)."""
        pause = retry_after_s
        if pause is None:
            pause = min(self._pacer.interval * 2 ** (state.attempt_number - 1), self._backoff_max_s)
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        self._pacer.hold(self._paused_until)

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

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold a concurrency slot and the pacer's send time for one request. A pause (throttling) is waited out
        before the semaphore is taken; one that starts later holds the pacer, so it also delays requests
        already queued for their send time. A fatal (auth/quota) failure stops the request before it leaves."""
        self._raise_if_fatal()
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._semaphore:
            await self._pacer.acquire(check=self._raise_if_fatal)
            yield

    async def _send(self, pending, results, attempts, offset, on_answer, indices) -> None:
        async with self._slot():
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
