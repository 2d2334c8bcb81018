"""The dispatch layer: bounded retries, Retry-After, fail-fast permanent errors, nothing paid is lost; send
times paced evenly (on a fake clock: no test here depends on how fast the machine is)."""
from __future__ import annotations

import asyncio
import itertools
import random
import time
from types import SimpleNamespace

import pytest

from robust_api.dispatch import Dispatcher, Pacer
from robust_api.errors import PermanentProviderError, RetryableProviderError
from robust_api.providers.base import ImageLimits, Provider, ProviderResponse


class ScriptedProvider(Provider):
    """A provider whose n-th call fails as scripted (a list of exceptions or None), answering echo labels otherwise."""

    name = "scripted"
    limits = ImageLimits(max_bytes=1 << 20)
    default_rate_per_s = 1000.0

    def __init__(self, script=(), max_batch=1, per_image=None, delay_s=0.0):
        self.script = list(script)
        self.max_batch = max_batch
        self.per_image = per_image or {}
        self.calls: list[list[bytes]] = []
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0

    async def classify(self, images):
        self.calls.append(list(images))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            failure = self.script.pop(0) if self.script else None
            if failure is not None:
                raise failure
            out = []
            for img in images:
                err = self.per_image.get(img)
                if err:
                    out.append(err.pop(0))
                    if not err:
                        del self.per_image[img]
                else:
                    out.append(ProviderResponse({"echo": img.decode()}, model_version="v1"))
            return out
        finally:
            self.in_flight -= 1


def throttled(retry_after=None):
    return RetryableProviderError("scripted", "throttled", "slow down", retry_after_s=retry_after)


async def test_retryable_errors_are_retried_until_success():
    provider = ScriptedProvider([throttled(), RetryableProviderError("scripted", "server", "503"), None])
    d = Dispatcher(provider, backoff_initial_s=0.01, backoff_max_s=0.02)
    [out] = await d.classify([b"a"])
    assert out.response.response == {"echo": "a"} and out.attempts == 3
    assert d.stats.requests == 3 and d.stats.billable_calls == 1
    assert d.stats.retries == {"throttled": 1, "server": 1}


async def test_permanent_error_fails_after_exactly_one_call():
    provider = ScriptedProvider([PermanentProviderError("scripted", "auth", "bad key")])
    d = Dispatcher(provider, backoff_initial_s=0.01)
    with pytest.raises(PermanentProviderError):
        await d.classify([b"a"])
    assert len(provider.calls) == 1 and d.stats.failures == {"auth": 1}


async def test_attempts_are_bounded():
    provider = ScriptedProvider([throttled() for _ in range(10)])
    d = Dispatcher(provider, max_attempts=4, backoff_initial_s=0.001, backoff_max_s=0.002)
    with pytest.raises(RetryableProviderError):
        await d.classify([b"a"])
    assert len(provider.calls) == 4 and d.stats.failures == {"throttled": 1}


async def test_retry_after_is_honoured():
    provider = ScriptedProvider([throttled(retry_after=0.3), None])
    d = Dispatcher(provider, backoff_initial_s=0.001, backoff_max_s=0.002)
    started = time.monotonic()
    await d.classify([b"a"])
    assert time.monotonic() - started >= 0.3


async def test_only_failed_images_of_a_batch_are_resent():
    provider = ScriptedProvider(max_batch=3, per_image={b"b": [throttled()]})
    d = Dispatcher(provider, backoff_initial_s=0.001, backoff_max_s=0.002)
    out = await d.classify([b"a", b"b", b"c"])
    assert [o.response.response["echo"] for o in out] == ["a", "b", "c"]
    assert provider.calls == [[b"a", b"b", b"c"], [b"b"]]
    assert d.stats.billable_calls == 3


async def test_answers_reach_the_caller_before_a_later_permanent_failure():
    bad = PermanentProviderError("scripted", "invalid_image", "bad image")
    provider = ScriptedProvider(max_batch=1, per_image={b"x": [bad]})
    d = Dispatcher(provider)
    seen = {}
    with pytest.raises(PermanentProviderError):
        await d.classify([b"a", b"x", b"c"], on_answer=lambda i, o: seen.setdefault(i, o))
    assert sorted(seen) == [0, 2]  # both paid answers were handed over despite the failure


async def test_concurrency_cap_and_timeout():
    provider = ScriptedProvider(delay_s=0.05)
    d = Dispatcher(provider, concurrency=3)
    await d.classify([bytes([65 + i]) for i in range(12)])
    assert provider.max_in_flight == 3
    slow = ScriptedProvider(delay_s=5.0)
    d = Dispatcher(slow, timeout_s=0.05, max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.002)
    with pytest.raises(RetryableProviderError) as err:
        await d.classify([b"a"])
    assert err.value.kind == "timeout" and len(slow.calls) == 2


async def test_wrong_credentials_cost_one_call_even_with_many_images_in_flight():
    provider = ScriptedProvider([PermanentProviderError("scripted", "auth", "bad key")], delay_s=0.01)
    d = Dispatcher(provider, concurrency=16)
    with pytest.raises(PermanentProviderError):
        await d.classify([bytes([65 + i]) for i in range(20)])
    assert len(provider.calls) == 1


class FakeTime:
    """A clock that only moves when the pacer sleeps: by the delay asked for plus `late()` (how late the event
    loop wakes the sleeper). Each sleep also lets the event loop run a while, as a real one would."""

    def __init__(self, late=lambda: 0.0) -> None:
        self.now = 0.0
        self.late = late
        self.sleeps: list[float] = []
        self.on_sleep = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.on_sleep is not None:
            self.on_sleep()
        self.now += delay + self.late()
        for _ in range(20):
            await asyncio.sleep(0)


async def paced(pacer: Pacer, n: int) -> list[tuple[int, float]]:
    """n senders asking at once; (sender, send time) in the order they were let go."""
    released: list[tuple[int, float]] = []

    async def send(i: int) -> None:
        released.append((i, await pacer.acquire()))

    await asyncio.gather(*(send(i) for i in range(n)))
    return released


async def test_pacer_lets_requests_go_one_interval_apart_first_come_first_served():
    t = FakeTime()
    released = await paced(Pacer(50.0, clock=t.clock, sleep=t.sleep), 6)
    assert [i for i, _ in released] == list(range(6))
    assert [s for _, s in released] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.10])


async def test_pacer_keeps_its_schedule_when_woken_slightly_late():
    # The event loop wakes each sender 1 ms late (timer granularity): the schedule does not drift, so 100
    # requests take 99 intervals (+1 ms), not 99 intervals + 99 ms as with a bucket re-based on every grant.
    t = FakeTime(late=lambda: 0.001)
    released = [s for _, s in await paced(Pacer(50.0, clock=t.clock, sleep=t.sleep), 100)]
    assert released[-1] == pytest.approx(99 * 0.02 + 0.001)
    assert min(b - a for a, b in itertools.pairwise(released)) >= 0.02 - 0.001 - 1e-9


async def test_pacer_never_clumps_after_a_stall():
    # Woken 7 ms late (more than a tenth of the interval): the schedule starts again from the actual send
    # time rather than catching up, so no two requests ever leave less than one interval apart.
    t = FakeTime(late=lambda: 0.007)
    released = [s for _, s in await paced(Pacer(50.0, clock=t.clock, sleep=t.sleep), 10)]
    assert [b - a for a, b in itertools.pairwise(released)] == pytest.approx([0.027] * 9)


async def test_pacer_after_an_idle_spell_sends_at_once_but_never_a_burst_beyond_burst():
    for burst, expected in ((1, [10.0, 10.02, 10.04]), (2, [10.0, 10.0, 10.02, 10.04])):
        t = FakeTime()
        pacer = Pacer(50.0, burst=burst, clock=t.clock, sleep=t.sleep)
        await pacer.acquire()
        t.now = 10.0  # idle for ten seconds: no credit piles up beyond `burst`
        assert [s for _, s in await paced(pacer, len(expected))] == pytest.approx(expected)


async def test_pacer_hold_delays_the_sender_already_asleep_for_its_turn():
    t = FakeTime()
    pacer = Pacer(50.0, clock=t.clock, sleep=t.sleep)
    t.on_sleep = lambda: (pacer.hold(1.0), setattr(t, "on_sleep", None))  # a throttle while sender 1 sleeps
    released = [s for _, s in await paced(pacer, 4)]
    assert released == pytest.approx([0.0, 1.0, 1.02, 1.04])


async def test_paced_sends_fit_a_provider_bucket_of_the_same_rate_with_burst_2_however_late_the_loop():
    """The emulator's (and AWS's) token bucket at the same rate with room for 2 never throttles the pacer's
    sends, whatever the event loop's wake-up latency (here up to three intervals, at random)."""
    rng = random.Random(7)
    for late in (lambda: rng.uniform(0, 0.002), lambda: rng.uniform(0, 0.06), lambda: rng.choice([0, 0, 0.003, 0.03])):
        t = FakeTime(late=late)
        released = [s for _, s in await paced(Pacer(50.0, clock=t.clock, sleep=t.sleep), 300)]
        tokens, stamp, throttled = 2.0, released[0], 0
        for s in released:  # robust_api.providers.emulator.base.TokenBucket, on the send times
            tokens = min(2.0, tokens + (s - stamp) * 50.0)
            stamp = s
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                throttled += 1
        assert throttled == 0


async def test_dispatcher_sends_at_the_pacers_times():
    t = FakeTime()
    provider = ScriptedProvider()
    sent_at = []
    classify = provider.classify
    provider.classify = lambda images: (sent_at.append(t.now), classify(images))[1]
    d = Dispatcher(provider, rate_per_s=50.0, concurrency=16)
    d._pacer = Pacer(50.0, clock=t.clock, sleep=t.sleep)
    await d.classify([bytes([65 + i]) for i in range(11)])
    assert sent_at == pytest.approx([0.02 * k for k in range(11)])


def retry_state(exc: Exception, attempt: int) -> SimpleNamespace:
    return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=attempt)


async def test_a_throttle_pauses_every_call_for_one_interval_doubling_with_the_images_attempts():
    d = Dispatcher(ScriptedProvider(), rate_per_s=50.0, backoff_max_s=0.1)
    for exc, attempt, pause in ((throttled(), 1, 0.02), (throttled(), 3, 0.08), (throttled(), 9, 0.1),
                                (throttled(retry_after=0.3), 1, 0.3)):
        d._paused_until = 0.0
        before = time.monotonic()
        wait = d._wait(retry_state(exc, attempt))
        after = time.monotonic()
        assert before + pause <= d._paused_until <= after + pause
        assert d._pacer._due >= d._paused_until  # also holds senders already queued at the pacer
        assert wait >= pause  # the throttled image itself waits at least as long
    d._paused_until = 0.0
    d._wait(retry_state(RetryableProviderError("scripted", "server", "503"), 1))
    assert d._paused_until == 0.0  # only throttling pauses the other calls


async def test_a_fatal_failure_stops_requests_already_queued_for_their_send_time():
    t = FakeTime()
    provider = ScriptedProvider([None, PermanentProviderError("scripted", "quota", "daily quota exhausted")])
    d = Dispatcher(provider, rate_per_s=50.0, concurrency=16)
    d._pacer = Pacer(50.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(PermanentProviderError):
        await d.classify([bytes([65 + i]) for i in range(10)])
    assert len(provider.calls) == 2  # the probe and the call that met the quota; the 8 queued never left
    assert t.now == pytest.approx(0.04)  # the queued ones gave up at once (one was already asleep for its turn)
