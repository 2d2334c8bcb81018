"""Fixtures shared by the provider tests."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import urllib3.util.connection


@pytest.fixture
def connect_attempts(monkeypatch) -> Counter:
    """Counts the TCP connections the SDKs try to open, by port (every SDK here connects through urllib3).

    Counting attempts, not seconds, is how a test shows an SDK did not retry a refused connection: its own
    backoff would show up as a second attempt at the same port, whatever the machine's speed.
    """
    attempts: Counter = Counter()
    lock = threading.Lock()
    create = urllib3.util.connection.create_connection

    def counting(address, *args, **kwargs):
        with lock:
            attempts[address[1]] += 1
        return create(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return attempts


@pytest.fixture
def sdk_sleeps(monkeypatch) -> list[float]:
    """The seconds of every `time.sleep` call while the test runs (still slept): the sync SDKs here back off
    and honour Retry-After with time.sleep, so an empty list shows they did not wait on their own."""
    import time

    slept: list[float] = []
    sleep = time.sleep

    def recording(seconds: float) -> None:
        slept.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", recording)
    return slept
