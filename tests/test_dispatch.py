"""The dispatch layer: bounded retries, Retry-After, fail-fast permanent errors, nothing paid is lost."""
from __future__ import annotations

import asyncio
import time

import pytest

from robust_api.dispatch import Dispatcher
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


async def test_rate_limit_spaces_requests():
    provider = ScriptedProvider()
    d = Dispatcher(provider, rate_per_s=50.0, concurrency=16)
    started = time.monotonic()
    await d.classify([bytes([65 + i]) for i in range(11)])
    # 11 requests at 50/s with a burst of 1 need at least 10 intervals of 20 ms.
    assert time.monotonic() - started >= 0.19


async def test_wrong_credentials_cost_one_call_even_with_many_images_in_flight():
    provider = ScriptedProvider([PermanentProviderError("scripted", "auth", "bad key")], delay_s=0.01)
    d = Dispatcher(provider, concurrency=16)
    with pytest.raises(PermanentProviderError):
        await d.classify([bytes([65 + i]) for i in range(20)])
    assert len(provider.calls) == 1
