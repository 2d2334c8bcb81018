"""Shared machinery of the local provider emulators: knobs, fault injection, rate limiting, counters.

Each provider's emulator (azure.py, google.py, aws.py, clarifai.py) subclasses `Emulator`, adds the routes
its real SDK calls and says how that provider spells its errors; everything else (latency, throttling,
5xx, timeouts, malformed bodies, connection resets, key checks, the request counter) lives here, so every
emulator injects faults the same way. Servers bind to 127.0.0.1 only.
"""
from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import io
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from aiohttp import web
from PIL import Image

# Wire facts shared with the adapters come from the providers side (never the reverse); EMULATOR_KEY is
# re-exported here for callers that import it with the knobs.
from robust_api.providers.wire import EMULATOR_KEY, format_retry_after

# A labeller maps one decoded RGB image to its labels, best first, scores in [0, 1].
Labeller = Callable[[Image.Image], Sequence[tuple[str, float]]]


@dataclass
class EmulatorKnobs:
    """Behaviour of an emulator. Probabilities are per request and drawn from a seeded RNG.

    latency_ms: mean added latency; latency_jitter_ms: uniform +/- jitter around it.
    rate_per_s / burst: token bucket; a request without a token gets the provider's own throttling error.
    p_throttle / p_server_error / p_timeout / p_malformed / p_reset: injected faults (each independent).
    retry_after_s: value of the Retry-After header sent with throttling and 503 faults (None = no header).
    timeout_hang_s: how long a 'timeout' fault hangs before the connection is dropped.
    api_key: the only credential accepted (None accepts anything). daily_quota: requests before a
    permanent quota-exhausted error. max_labels: labels returned per image.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_per_s: float | None = None
    burst: int = 1
    p_throttle: float = 0.0
    p_server_error: float = 0.0
    p_timeout: float = 0.0
    p_malformed: float = 0.0
    p_reset: float = 0.0
    retry_after_s: float | None = 1.0
    timeout_hang_s: float = 30.0
    api_key: str | None = EMULATOR_KEY
    daily_quota: int | None = None
    max_labels: int = 10
    seed: int | None = 0


@dataclass
class EmulatorStats:
    """What the emulator saw: requests received (every HTTP request on a provider route), images labelled
    (successful per-image answers), and faults injected per kind."""

    requests: int = 0
    images_labelled: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)


class TokenBucket:
    """A token bucket on the monotonic clock (`rate_per_s` tokens per second, at most `burst` stored)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.capacity = max(1, burst)
        self.tokens = float(self.capacity)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def decode_image(data: bytes) -> Image.Image:
    """Decode uploaded bytes to RGB; raises ValueError for bytes that are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types for bad bytes
        raise ValueError(f"not a decodable image ({type(exc).__name__})") from exc


class Emulator(abc.ABC):
    """Base of the provider emulators. Subclasses implement `routes()` and the provider's error bodies."""

    name: str = "emulator"

    def __init__(self, labeller: Labeller | None = None, knobs: EmulatorKnobs | None = None) -> None:
        self.knobs = knobs or EmulatorKnobs()
        self._labeller = labeller
        self.stats = EmulatorStats()
        self._rng = random.Random(self.knobs.seed)
        self._bucket = TokenBucket(self.knobs.rate_per_s, self.knobs.burst) if self.knobs.rate_per_s else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._label_lock = threading.Lock()

    # -- what subclasses provide -------------------------------------------------------------------
    @abc.abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The provider's routes; each handler starts with `err = await self.gate(request)`."""

    @abc.abstractmethod
    def credential_ok(self, request: web.Request) -> bool:
        """Whether the request carries `knobs.api_key` the way this provider's SDK sends it."""

    @abc.abstractmethod
    def error_response(self, kind: str, message: str) -> web.StreamResponse:
        """This provider's wire error for kind in: auth, throttled, server, quota, invalid_image, bad_request."""

    def malformed_response(self) -> web.StreamResponse:
        """A body the SDK cannot parse (default: truncated JSON with the provider's content type)."""
        return web.Response(status=200, body=b'{"truncated": ', content_type="application/json")

    # -- labelling ---------------------------------------------------------------------------------
    @property
    def labeller(self) -> Labeller:
        if self._labeller is None:
            from robust_api.providers.emulator.labeller import default_labeller

            self._labeller = default_labeller()
        return self._labeller

    async def label(self, data: bytes) -> list[tuple[str, float]]:
        """Decode and label one uploaded image off the event loop; raises ValueError for non-images."""
        image = decode_image(data)

        def run() -> list[tuple[str, float]]:
            with self._label_lock:  # torch models are not re-entrant across threads cheaply
                return list(self.labeller(image))[: self.knobs.max_labels]

        labels = await asyncio.to_thread(run)
        self.stats.images_labelled += 1
        return labels

    # -- the gate every request passes -------------------------------------------------------------
    async def gate(self, request: web.Request) -> web.StreamResponse | None:
        """Count the request, then apply auth, quota, rate limit, latency and injected faults in that order.

        Returns the response to send instead of a normal answer, or None to proceed. A 'reset' fault
        closes the connection (the client sees a connection error); a 'timeout' fault hangs first.
        """
        k = self.knobs
        self.stats.requests += 1
        if k.api_key is not None and not self.credential_ok(request):
            self.stats.faults["auth"] += 1
            return self.error_response("auth", "invalid credentials")
        if k.daily_quota is not None and self.stats.requests > k.daily_quota:
            self.stats.faults["quota"] += 1
            return self.error_response("quota", "daily quota exhausted")
        if self._bucket is not None and not self._bucket.take():
            self.stats.faults["throttled"] += 1
            return self.error_response("throttled", "rate limit exceeded")
        delay = k.latency_ms + (self._rng.uniform(-1, 1) * k.latency_jitter_ms if k.latency_jitter_ms else 0.0)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        draw = self._rng.random()
        for kind, p in (
            ("throttled", k.p_throttle),
            ("server", k.p_server_error),
            ("timeout", k.p_timeout),
            ("malformed", k.p_malformed),
            ("reset", k.p_reset),
        ):
            if draw < p:
                self.stats.faults[kind] += 1
                if kind == "timeout":
                    await asyncio.sleep(k.timeout_hang_s)
                    return self._reset(request)
                if kind == "reset":
                    return self._reset(request)
                if kind == "malformed":
                    return self.malformed_response()
                return self.error_response(kind, "injected fault")
            draw -= p
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the client: the socket is gone

    def with_retry_after(self, response: web.StreamResponse) -> web.StreamResponse:
        if self.knobs.retry_after_s is not None:
            response.headers["Retry-After"] = format_retry_after(self.knobs.retry_after_s)
        return response

    # -- serving -----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(self.routes())
        return app

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:port (0 = any free port) in the running loop; returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self, port: int = 0) -> Iterator[str]:
        """Serve in a background thread with its own event loop (for sync SDK callers); yields the base URL."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start(port))
            except BaseException as exc:  # surface bind errors to the caller
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name=f"{self.name}-emulator", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        try:
            yield self.url
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
