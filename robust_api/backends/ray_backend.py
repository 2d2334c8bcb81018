"""The Ray backend: a session's images sharded over Ray actors, with the driver as the one log writer.

How a run goes:
- The driver's `Session` (built from the user's `SessionConfig`) keeps what must be one: the query log (its
  writer and cache index), the emulator if asked for, the run id and the images' input positions.
- Each worker is a Ray actor holding a `Session` built from the *same* config (`worker_config`): provider
  adapter, dispatcher, denoiser (loaded once per noise level, on the worker's GPU where the cluster has
  them), engine. Nothing of the assembly is copied here. Workers outlive a run: later runs in the same
  process reuse them (a new session each), so only the first pays Ray's worker start and imports (~3-5 s).
- Images are handed out one at a time to whichever worker has a free slot (`max_images_in_flight` per
  worker), together with the records the log already holds for that image, so a logged sample is never
  requested again. The worker certifies the image with the same engine code as the local backend and streams
  back every new record the moment its answer arrives, then the certificate. The driver appends each record
  to the log (append + flush + fsync, torn-tail repair: `QueryLogWriter`) and indexes it.
- Noise is a function of (seed, image, phase, index) and labels of the responses, so where an image runs does
  not change its certificate: the results equal the local backend's, row for row (input order), and replay
  of the log reproduces them, `idx` included (records carry the driver's run id and positions).
- Rate limit: one pacer actor holds the send schedule (`dispatch.Pacer`) for every worker, so requests leave
  `1/rate` apart across the cluster and a throttle pauses them all; the concurrency cap is split between
  workers (`concurrency // workers`, at least 1 each).
- A worker that dies (SIGKILL, OOM, node lost) loses at most its calls in flight: Ray restarts it (up to
  `MAX_RESTARTS` times) and the image starts again on it from the records the driver has logged, so nothing
  logged is paid for again. A killed driver leaves a log that a rerun (on either backend) resumes from.

Ray is an optional dependency: `pip install 'robust-api[ray]'`. With no address (`ray_address` or
RAY_ADDRESS) an embedded local instance starts (~6 s) and is reused by later runs in the same process.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from robust_api.dispatch import Pacer
from robust_api.errors import ConfigError, ProviderError, RobustAPIError
from robust_api.images import LoadedImage, load_image
from robust_api.modes import CertifyParams
from robust_api.results import Certificate
from robust_api.session import Session, SessionConfig

T = TypeVar("T")

__all__ = ["certify_on_ray", "connect", "worker_config", "RemotePacer", "MAX_RESTARTS"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 2  # a worker restarted more often than this fails the run (its images' errors are raised)
_DEAD_WORKER_RETRIES = 2  # times one image is started again after its worker died


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray backend needs Ray: pip install 'robust-api[ray]'") from None
    return ray


WORKER_NICENESS_ENV = "RAY_worker_niceness"


def connect(address: str | None = None) -> Any:
    """Connect to Ray once per process: to `address` (or RAY_ADDRESS) when given, else start an embedded local
    instance with this machine's CPUs. Returns the ray module. ConfigError when Ray is missing or the cluster
    cannot be reached.

    The embedded instance runs its workers at the driver's priority: Ray's default niceness 15 starves them on
    a machine that is busy with anything else (measured: resnet20 on one core, 3.9 ms/image in the driver,
    87 ms/image in a default worker while two trainings held both cores). A cluster given by address keeps its
    own setting (`RAY_worker_niceness=0` in the environment of `ray start` does the same there)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # read by the raylet this init starts
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return ray


# -- the one rate limit ------------------------------------------------------------------------------------

class _PacerActor:
    """Holds each run's send schedule, which every worker's dispatcher draws its send times from (an async
    actor, kept for the process's later runs like the workers)."""

    def __init__(self) -> None:
        self.pacers: dict[str, Pacer] = {}

    async def open(self, token: str, rate_per_s: float, burst: int) -> None:
        self.pacers[token] = Pacer(rate_per_s, burst)

    async def close(self, token: str) -> None:
        self.pacers.pop(token, None)

    async def acquire(self, token: str) -> None:
        await self.pacers[token].acquire()

    async def hold_for(self, token: str, seconds: float) -> None:
        self.pacers[token].hold(time.monotonic() + max(0.0, seconds))


class RemotePacer:
    """A worker's view of its run's schedule in the pacer actor, with `dispatch.Pacer`'s interface:
    `acquire(check)` returns when this request may leave; `hold(until)` (a monotonic time on this host) pauses
    every worker's sends. Pauses travel as durations, since hosts' monotonic clocks differ."""

    def __init__(self, actor: Any, token: str, rate_per_s: float) -> None:
        self.actor = actor
        self.token = token
        self.interval = 1.0 / rate_per_s

    def hold(self, until: float) -> None:
        self.actor.hold_for.remote(self.token, until - time.monotonic())

    async def acquire(self, check: Callable[[], None] | None = None) -> float:
        if check is not None:
            check()
        await self.actor.acquire.remote(self.token)
        if check is not None:
            check()  # an auth/quota failure seen while waiting: this request does not leave
        return time.monotonic()


# -- workers ---------------------------------------------------------------------------------------------

class _Router:
    """The worker session's log sink: hands each new record to the stream of the image it belongs to."""

    def __init__(self) -> None:
        self.queues: dict[int, asyncio.Queue] = {}

    def write(self, record: Any) -> None:
        self.queues[record.extra["position"]].put_nowait(record)


class _Worker:
    """A Ray actor holding sessions built from drivers' configs (one per run, by token), certifying the images
    it is handed. Workers outlive a run (`_pool`): the next run in this process reuses them without paying
    Ray's process start and the imports again, and only builds its session."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[Session, _Router]] = {}
        self.counting = asyncio.Lock()

    def pid(self) -> int:
        return os.getpid()

    def open(self, token: str, config: SessionConfig, pacer_name: str, rate_per_s: float) -> BaseException | None:
        """Build this run's session; the error (as the driver should raise it) when it cannot be built. The
        pacer is looked up by name (a handle passed as an argument would live in the object store, which Ray
        cannot promise to keep for a restarted worker)."""
        import ray

        if token in self.runs:
            return None
        try:
            router = _Router()
            pacer = RemotePacer(ray.get_actor(pacer_name), token, rate_per_s)
            self.runs[token] = (Session(dataclasses.replace(config, pacer=pacer, sink=router)), router)
        except Exception as exc:
            return _portable(exc)
        return None

    async def close(self, token: str) -> dict:
        """Close the run's session; its counters (requests, retries, failures); {} for a run this worker does not
        hold (it was restarted and never handed another image of that run)."""
        if token not in self.runs:
            return {}
        session, _ = self.runs.pop(token)
        try:
            await session.aclose()
        finally:
            session.close()
        return session.stats.as_dict()

    async def identity(self, token: str, sigma: float) -> dict:
        """Full access: what keys this run's count records (provider, settings, denoiser id, run)."""
        from robust_api.full_access import RangeCounter

        session, _ = self.runs[token]
        try:
            return RangeCounter(session.engine_for(sigma), session.config.decision).identity()
        except Exception as exc:  # e.g. a denoiser that does not load
            return _portable(exc)

    async def count(self, token: str, image: LoadedImage, params: CertifyParams, phase: str, start: int, stop: int,
                    extra: dict) -> Any:
        """Full access: the count record of samples [start, stop), one range at a time per worker (a second
        one waits here, already delivered, so the worker never idles between ranges)."""
        from robust_api.full_access import RangeCounter

        session, _ = self.runs[token]
        try:
            async with self.counting:
                counter = RangeCounter(session.engine_for(params.sigma), session.config.decision)
                record = await asyncio.to_thread(counter.record, image, params.sigma, params.seed, phase, start,
                                                 stop, extra)
        except Exception as exc:  # the model or denoiser failed: the driver raises it as the local backend would
            return ("error", _portable(exc))
        record.extra["worker"] = f"{socket.gethostname()}:{os.getpid()}"  # informational: where it was counted
        return ("record", record)

    async def certify(self, token: str, image: LoadedImage, position: int, params: CertifyParams, cached: list) -> Any:
        """Stream ("record", QueryRecord) for every sample paid for, then ("certificate", Certificate) or
        ("error", exception)."""
        session, router = self.runs[token]
        for record in cached:
            session.index.add(record)
        queue: asyncio.Queue = asyncio.Queue()
        router.queues[position] = queue
        try:
            engine = session.engine_for(params.sigma)
            task = asyncio.ensure_future(engine.certify(image, params, position=position))
            while not (task.done() and queue.empty()):
                if not queue.empty():
                    yield ("record", queue.get_nowait())
                    continue
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield ("record", getter.result())
                else:
                    getter.cancel()
            error = task.exception()
            yield ("error", _portable(error)) if error is not None else ("certificate", task.result())
        except Exception as exc:  # a denoiser that does not load, a bad config: reported, not a dead worker
            yield ("error", _portable(exc))
        finally:
            router.queues.pop(position, None)


# Workers (and the pacer) started by this process, reused by its later runs (see _Worker); forgotten when
# the Ray connection changes.
_pool: list[Any] = []
_pool_owner: list[Any] = [None]
_pacer: dict[str, Any] = {}


def _own_pool(ray: Any) -> None:
    owner = ray.get_runtime_context().get_job_id()
    if _pool_owner[0] != owner:
        _pool.clear()
        _pacer.clear()
        _pool_owner[0] = owner


def _pacer_actor(ray: Any) -> tuple[Any, str]:
    """The pacer actor and its name (started when missing)."""
    _own_pool(ray)
    if "actor" not in _pacer:
        name = f"robust-api-pacer-{os.getpid()}-{time.monotonic_ns()}"
        _pacer.update(actor=ray.remote(num_cpus=0)(_PacerActor).options(name=name).remote(), name=name)
    return _pacer["actor"], _pacer["name"]


def _workers(ray: Any, count: int, gpus_each: float) -> list[Any]:
    """`count` pool workers (started when missing)."""
    _own_pool(ray)
    actor = ray.remote(num_cpus=1, num_gpus=gpus_each, max_restarts=MAX_RESTARTS, max_task_retries=0)(_Worker)
    while len(_pool) < count:
        _pool.append(actor.remote())
    return _pool[:count]


def _portable(exc: BaseException) -> BaseException:
    """The exception as the driver should raise it (typed robust-api errors keep their type and fields)."""
    if isinstance(exc, ProviderError):
        return type(exc)(exc.provider, exc.kind, exc.reason, request_id=exc.request_id, status=exc.status,
                         retry_after_s=exc.retry_after_s)
    if isinstance(exc, RobustAPIError) and type(exc).__init__ is Exception.__init__:
        return type(exc)(*exc.args)
    return RobustAPIError(f"{type(exc).__name__} on a Ray worker: {exc}")


def worker_config(config: SessionConfig, *, run_id: str, emulator_url: str | None, concurrency: int) -> SessionConfig:
    """The workers' session config: the driver's, less what only the driver holds (the log, the emulator it
    started), plus the driver's run id and its emulator's address."""
    return dataclasses.replace(
        config, backend="local", log=None, emulator=False, emulator_knobs=None, emulator_labeller=None,
        emulator_url=emulator_url, run_id=run_id, concurrency=concurrency, pacer=None, sink=None,
    )


async def _open(worker: Any, token: str, spec: SessionConfig, pacer_name: str, rate: float) -> None:
    """Have the worker build the run's session (a no-op when it holds it); raise what stopped it."""
    error = await worker.open.remote(token, spec, pacer_name, rate)
    if error is not None:
        raise error


_RESTART_WAIT_S = 300.0  # how long a restarting worker may take to answer again before its next attempt


async def _restarted(worker: Any) -> None:
    """Wait until a worker that died answers again (Ray restarts it: ActorUnavailableError meanwhile), so the time
    a restart takes under load never counts as further deaths. Returns early when the actor is gone for good or
    after _RESTART_WAIT_S; the caller's next attempt then fails and counts."""
    import ray
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(ray.exceptions.ActorUnavailableError),
                                           wait=wait_exponential(multiplier=0.05, max=2.0),
                                           stop=stop_after_delay(_RESTART_WAIT_S), reraise=True):
            with attempt:
                await worker.pid.remote()
    except ray.exceptions.RayActorError:
        return


async def _with_restarts(worker: Any, call: Callable[[], Awaitable[T]], *, doing: str, image: str, kept: str) -> T:
    """`call()` (which opens the worker's session first: a restart loses it), again after each death of the
    worker, once Ray has restarted it; RobustAPIError after _DEAD_WORKER_RETRIES + 1 deaths (`kept`: what the
    log keeps for the rerun). `doing` names the work in the warning."""
    import ray

    for attempt in range(_DEAD_WORKER_RETRIES + 1):
        try:
            return await call()
        except ray.exceptions.RayActorError as exc:
            if attempt == _DEAD_WORKER_RETRIES:
                raise RobustAPIError(f"image {image}: its Ray worker died {attempt + 1} times ({exc}); "
                                     f"{kept} kept: rerun to resume") from None
            log.warning("a Ray worker died %s; starting it again from the logged samples", doing)
            await _restarted(worker)
    raise AssertionError("unreachable")


def _drop(workers: list[Any]) -> None:
    """Forget pool workers that are gone for good (restarts used up), so the next run starts new ones."""
    import ray

    for worker in workers:
        try:
            ray.get(worker.pid.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if worker in _pool:
                _pool.remove(worker)


def _worker_count(ray: Any, requested: int | None, images: int) -> int:
    if requested is not None:
        if requested < 1:
            raise ConfigError("workers must be at least 1")
        return requested
    return max(1, min(images, int(ray.cluster_resources().get("CPU", 1))))


# -- the driver ------------------------------------------------------------------------------------------

async def certify_on_ray(
    session: Session, images: Sequence[Any], params: CertifyParams, *, positions: Sequence[int],
    on_done: Callable[[Certificate], None] | None = None, max_images_in_flight: int = 4,
) -> list[Certificate]:
    """Certify `images` on Ray workers built from `session.config`; certificates in input order.

    Every record a worker pays for is written to the session's log and index here, before the certificate it
    belongs to is counted. Like the local backend, every image runs to completion or failure before the first
    failure is raised. Raises ConfigError when Ray is missing or unreachable, the provider errors the workers
    met, and RobustAPIError when a worker died more than MAX_RESTARTS times.
    """
    ray = connect(session.config.ray_address)
    loaded = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
    if not loaded:
        return []
    config = session.config
    workers_n = _worker_count(ray, config.workers, len(loaded))
    rate = session.dispatcher.rate_per_s
    token = f"{session.run_id}-{os.getpid()}-{time.monotonic_ns()}"
    pacer, pacer_name = _pacer_actor(ray)
    await pacer.open.remote(token, rate, config.burst)
    share = max(1, config.concurrency // workers_n)
    spec = worker_config(config, run_id=session.run_id, emulator_url=session.emulator_url, concurrency=share)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    workers = _workers(ray, workers_n, min(1.0, gpus / workers_n) if gpus else 0)
    if config.full_access:
        try:
            return await _certify_counted(ray, session, workers, token, spec, pacer_name, rate, loaded, params,
                                          positions, on_done, max_images_in_flight)
        finally:
            await asyncio.gather(*(w.close.remote(token) for w in workers), return_exceptions=True)
            await pacer.close.remote(token)
    results: list[Certificate | BaseException | None] = [None] * len(loaded)
    pending = asyncio.Queue()
    for i in range(len(loaded)):
        pending.put_nowait(i)

    def write(record: Any) -> None:
        if session.writer is not None:
            session.writer.write(record)  # flushed (and fsynced) before the sample counts
        if record.seed is not None:
            session.index.add(record)
        session.stats.billable_calls += 1

    async def one(worker: Any, i: int) -> Certificate:
        image = loaded[i]

        async def attempt() -> Certificate:
            cached = session.index.for_image(image.sha256)  # after a death: what the lost attempt logged too
            await _open(worker, token, spec, pacer_name, rate)
            async for ref in worker.certify.remote(token, image, positions[i], params, cached):
                kind, value = await ref
                if kind == "record":
                    write(value)
                elif kind == "certificate":
                    return value
                else:
                    raise value
            raise RobustAPIError(f"image {image.name}: its Ray worker ended without a certificate")

        return await _with_restarts(worker, attempt, doing=f"while certifying {image.name}", image=image.name,
                                    kept="what it logged is")

    async def serve(worker: Any) -> None:
        while not pending.empty():
            i = pending.get_nowait()
            try:
                cert = await one(worker, i)
            except Exception as exc:
                results[i] = exc
                continue
            session.stats.cache_hits += cert.cache_hits
            results[i] = cert
            if on_done is not None:
                on_done(cert)

    try:
        await asyncio.gather(*(serve(w) for w in workers for _ in range(max_images_in_flight)))
    finally:
        totals = await asyncio.gather(*(w.close.remote(token) for w in workers), return_exceptions=True)
        for total in totals:
            if isinstance(total, dict) and total:
                session.stats.requests += total["requests"]
                session.stats.retries.update(total["retries"])
                session.stats.failures.update(total["failures"])
            elif isinstance(total, ray.exceptions.RayActorError):
                _drop(workers)
        await pacer.close.remote(token)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


async def _certify_counted(ray: Any, session: Session, workers: list[Any], token: str, spec: SessionConfig,
                           pacer_name: str, rate: float, images: list[LoadedImage], params: CertifyParams,
                           positions: Sequence[int], on_done: Callable[[Certificate], None] | None,
                           max_images_in_flight: int) -> list[Certificate]:
    """Full access on Ray: the driver runs `certify_counted` per image and hands each missing range of samples
    to a free worker, so one image's N samples spread over every worker; the driver logs each count record."""
    from robust_api.full_access import certify_counted
    from robust_api.session import run_images

    free: asyncio.Queue = asyncio.Queue()  # FIFO: ranges go round the workers, even one request at a time
    for _ in range(2):  # two ranges per worker: one counting, one delivered and waiting
        for worker in workers:
            free.put_nowait(worker)
    for worker in workers:
        await _open(worker, token, spec, pacer_name, rate)
    identity = await workers[0].identity.remote(token, params.sigma)
    if isinstance(identity, BaseException):
        raise identity

    async def compute(image: LoadedImage, params: CertifyParams, phase: str, start: int, stop: int, extra: dict):
        worker = await free.get()

        async def attempt():
            await _open(worker, token, spec, pacer_name, rate)
            kind, value = await worker.count.remote(token, image, params, phase, start, stop, extra)
            if kind == "error":
                raise value
            return value

        try:
            return await _with_restarts(worker, attempt, doing=f"counting {image.name} [{start}, {stop})",
                                        image=image.name, kept="the ranges logged are")
        finally:
            free.put_nowait(worker)

    async def counted(image: LoadedImage, position: int) -> Certificate:
        cert = await certify_counted(image, params, position=position, identity=identity, index=session.count_index,
                                     compute=compute, write=session.write_counts)
        session.stats.cache_hits += cert.cache_hits
        return cert

    in_flight = max(max_images_in_flight, 2 * len(workers))
    return await run_images(images, positions, counted, in_flight, on_done)
