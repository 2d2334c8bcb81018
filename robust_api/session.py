"""The one composition root: from a `SessionConfig`, build provider (or emulator + adapter), dispatcher, query
log (cache index + writer) and denoiser, hand out engines, and close it all.

`RobustAPI`, `run_certification` (the CLI and the demo) and any backend build their parts here and nowhere
else. A session serves one provider with one decision rule, one dispatcher (one concurrency cap and rate limit)
and one log; it hands out one engine per noise level, since a denoiser given by name is loaded at the level it
certifies (`tv` takes its weight from it, `ffdnet-color` its noise-level input).

Lifecycle: the constructor starts the emulator (if asked), builds the adapter and opens the log; failures
close what was opened. `aclose()` closes the adapter's network resources from the loop that used them;
`close()` (or the `with` block) flushes the log and stops the emulator. Asyncio primitives bind to the loop
that first uses them, so one session is used from one event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from robust_api.dispatch import Dispatcher, RunStats
from robust_api.engine import Engine
from robust_api.modes import CertifyParams
from robust_api.results import Certificate

__all__ = ["SessionConfig", "Session", "certify_all", "run_images"]


@dataclass
class SessionConfig:
    """Everything a session builds from.

    api: provider name. provider: an already-built adapter (then api/endpoint/emulator are not used to build
    one). emulator: start that provider's emulator in-process (emulator_knobs / emulator_labeller configure it).
    denoiser: None, a name (shipped, `ffdnet-color`, `tv`, `tv:W`), a checkpoint path, or a torch module.
    log: JSONL query log, appended to and read as the cache. decision: rule spec or a callable.
    full_access: certify a model run here (api "local") from label counts per range of samples, logged as count
    records (robust_api.full_access), instead of one record per call: the paper's N = 10^4-10^5 per image.
    backend: "local" (this process, asyncio) or "ray" (images sharded over Ray actors, each a session built from
    this config; see robust_api.backends.ray_backend): `ray_address` joins a cluster (default: RAY_ADDRESS, or an
    embedded local instance), `workers` sets the number of actors (default: one per CPU of the cluster, at
    most one per image). The remaining fields are how a backend builds its workers' sessions:
    `emulator_url` (an emulator already running there; the adapter gets its dummy credential), `pacer` (a
    send-time pacer shared with other sessions, so the rate limit is one across workers) and `sink` (an object
    with write(record) receiving every new record instead of the log file: the driver is the one writer).
    """

    api: str
    endpoint: str | None = None
    emulator: bool = False
    emulator_knobs: Any = None
    emulator_labeller: Any = None
    provider: Any = None
    provider_options: dict[str, Any] = field(default_factory=dict)
    denoiser: Any = None
    log: str | Path | None = None
    fsync: bool = True
    decision: Any = "top1"
    concurrency: int = 16
    rate_per_s: float | None = None
    burst: int = 1
    max_attempts: int = 6
    timeout_s: float = 60.0
    run_id: str | None = None
    backend: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    full_access: bool = False
    emulator_url: str | None = None
    pacer: Any = None
    sink: Any = None


class Session:
    """The parts of a run, built once from a SessionConfig (see the module docstring)."""

    def __init__(self, config: SessionConfig) -> None:
        from robust_api.decision import resolve_rule
        from robust_api.query_logs import LogIndex, QueryLogWriter

        from robust_api.backends import check_backend

        check_backend(config.backend)
        self.config = config
        self.rule = resolve_rule(config.decision)
        self.stats = RunStats()
        self.run_id = config.run_id or uuid.uuid4().hex[:12]  # one run for every noise level's engine
        self.emulator = None
        self._closers = contextlib.ExitStack()
        self._positions = itertools.count()
        self._engines: dict[float | None, Engine] = {}
        self._count_index = None
        self._denoiser_spec, self._denoiser_module = _split_denoiser(config.denoiser)
        try:
            self.provider = self._build_provider()
            self.index = LogIndex.from_logs([config.log]) if config.log is not None else LogIndex()
            if config.sink is not None:
                self.writer = config.sink
            else:
                self.writer = (self._closers.enter_context(QueryLogWriter(config.log, fsync=config.fsync))
                               if config.log is not None else None)
            self.dispatcher = Dispatcher(
                self.provider, concurrency=config.concurrency, rate_per_s=config.rate_per_s, burst=config.burst,
                max_attempts=config.max_attempts, timeout_s=config.timeout_s, stats=self.stats, pacer=config.pacer,
            )
            if config.full_access:
                from robust_api.full_access import check_full_access

                check_full_access(self.provider)
        except BaseException:
            self._closers.close()
            raise

    def _build_provider(self):
        from robust_api.providers import make_provider, provider_for_emulator
        from robust_api.providers.emulator import emulator_class

        config = self.config
        if config.provider is not None:
            return config.provider
        if config.emulator_url is not None:
            return provider_for_emulator(config.api, config.emulator_url, **config.provider_options)
        if config.emulator and config.api != "local":
            self.emulator = emulator_class(config.api)(knobs=config.emulator_knobs, labeller=config.emulator_labeller)
            url = self._closers.enter_context(self.emulator.running())
            return provider_for_emulator(config.api, url, **config.provider_options)
        return make_provider(config.api, config.endpoint, **config.provider_options)

    # -- engines ----------------------------------------------------------------------------------------
    def engine_for(self, sigma: float | None) -> Engine:
        """The engine that samples at noise level `sigma` (cached; all share the dispatcher, log and cache).

        A denoiser given by name or path is loaded at that level, so the log records the denoiser actually used
        (`tv:w=0.15` at 0.25); a module or no denoiser is the same at every level. ConfigError when a denoiser
        name needs a noise level and sigma is None.
        """
        key = None if self._denoiser_spec is None or sigma is None else float(sigma)
        engine = self._engines.get(key)
        if engine is None:
            from robust_api.denoisers.registry import serve_denoiser

            spec = self._denoiser_spec if self._denoiser_spec is not None else self._denoiser_module
            served = serve_denoiser(spec, key if self._denoiser_spec is not None else sigma) if spec is not None else None
            engine = self._engines[key] = Engine(
                self.provider, self.dispatcher, self.rule, log=self.writer, index=self.index, denoiser=served,
                run_id=self.run_id,
            )
        return engine

    def prepare(self, sigma: float | None) -> None:
        """Load what certifying at `sigma` needs before the first call's clock starts (the denoiser); on the
        Ray backend each worker loads its own, so nothing is loaded here."""
        if self.config.backend == "local":
            self.engine_for(sigma)

    @property
    def emulator_url(self) -> str | None:
        """Where this session's in-process emulator listens (None without one)."""
        return self.emulator.url if self.emulator is not None else self.config.emulator_url

    @property
    def count_index(self):
        """The count records (full access) the log holds, read on first use: query_logs.counts.CountIndex."""
        if self._count_index is None:
            from robust_api.query_logs.counts import CountIndex

            self._count_index = CountIndex.from_logs([self.config.log] if self.config.log is not None else [])
        return self._count_index

    def write_counts(self, record: Any) -> None:
        """Log a count record (before it counts) and tally its samples as paid."""
        if self.writer is not None:
            self.writer.write(record)
        self.stats.billable_calls += record.n

    def next_positions(self, count: int) -> list[int]:
        """Input positions for the next `count` images (logged, so replay lists images in input order)."""
        return [next(self._positions) for _ in range(count)]

    async def certify_all(
        self, images: Sequence[Any], params: CertifyParams, *, max_images_in_flight: int = 4,
        on_done: Callable[[Certificate], None] | None = None,
    ) -> list[Certificate]:
        """Certify images at params.sigma (see `certify_all`), positions taken from this session, on this
        session's backend: here, or sharded over Ray workers (same certificates, same log records)."""
        positions = self.next_positions(len(images))
        if self.config.backend == "ray":
            from robust_api.backends.ray_backend import certify_on_ray

            return await certify_on_ray(self, images, params, positions=positions, on_done=on_done,
                                        max_images_in_flight=max_images_in_flight)
        if self.config.full_access:
            from robust_api.full_access import LocalRanges, RangeCounter, certify_counted

            counter = RangeCounter(self.engine_for(params.sigma), self.config.decision)
            compute, identity = LocalRanges(counter), counter.identity()

            async def counted(image, position: int) -> Certificate:
                cert = await certify_counted(image, params, position=position, identity=identity,
                                             index=self.count_index, compute=compute, write=self.write_counts)
                self.stats.cache_hits += cert.cache_hits
                return cert

            return await run_images(images, positions, counted, max_images_in_flight, on_done)
        return await certify_all(self.engine_for(params.sigma), images, params, max_images_in_flight=max_images_in_flight,
                                 on_done=on_done, positions=positions)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the adapter's network resources (call from the loop that used them)."""
        await self.provider.aclose()

    def close(self) -> None:
        """Flush and close the log and stop the emulator, if any. Idempotent."""
        self._closers.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def certify_all(
    engine: Engine, images: Sequence[Any], params: CertifyParams, max_images_in_flight: int = 4,
    on_done: Callable[[Certificate], None] | None = None, positions: Sequence[int] | None = None,
) -> list[Certificate]:
    """Certify images with a few in flight at once (the dispatcher caps provider calls); input order kept.

    Each image's records carry its position (default: its index in `images`) so replay lists the images in
    input order whatever order their calls finished in. Every image runs to completion or failure before the
    first failure is raised, so nothing paid is lost.
    """
    places = list(positions) if positions is not None else list(range(len(images)))

    async def one(image, position: int) -> Certificate:
        return await engine.certify(image, params, position=position)

    return await run_images(images, places, one, max_images_in_flight, on_done)


async def run_images(
    images: Sequence[Any], positions: Sequence[int], certify_one: Callable[[Any, int], Awaitable[Certificate]],
    max_images_in_flight: int = 4, on_done: Callable[[Certificate], None] | None = None,
) -> list[Certificate]:
    """certify_one(image, position) for every image, a few at once, certificates in input order; every image
    runs to completion or failure before the first failure is raised (nothing paid is lost)."""
    from robust_api.images import LoadedImage, load_image

    loaded = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
    gate = asyncio.Semaphore(max_images_in_flight)

    async def one(image, position):
        async with gate:
            cert = await certify_one(image, position)
            if on_done is not None:
                on_done(cert)
            return cert

    results = await asyncio.gather(*(one(im, p) for im, p in zip(loaded, positions)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def _split_denoiser(denoiser: Any) -> tuple[str | Path | None, Any]:
    """(spec loaded per noise level, module used as is). A bad name or tv:W fails here, not at the first call."""
    if isinstance(denoiser, (str, Path)):
        if isinstance(denoiser, str) and denoiser in ("", "none"):
            return None, None
        _check_denoiser_spec(denoiser)
        return denoiser, None
    return None, denoiser


def _check_denoiser_spec(spec: str | Path) -> None:
    """CheckpointError/ConfigError now for a denoiser name or path that could not load at any noise level."""
    from robust_api.denoisers.classical import parse_classical
    from robust_api.denoisers.registry import resolve_path

    if isinstance(spec, str) and (spec.strip() == "tv" or parse_classical(spec, None) is not None):
        return
    resolve_path(spec)
