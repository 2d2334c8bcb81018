"""`RobustAPI`: the public facade, with the reference implementation's signatures (sync wrappers over the engine).

    api = RobustAPI("aws", denoiser="ffdnet64-s0.25", online=True)
    label, radius, logs = api.certify(img, noise_sd=0.25, N0=20, N=100, alpha=0.001)

Online calls run on a private event loop in a background thread, so they work the same in scripts and in
Jupyter (which already runs a loop). Offline (`online=False`), `predict(logs)` / `certify(logs, ...)` replay
saved responses (the reference's response lists, legacy-pickle contents, or our JSONL records).
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

from robust_api import smoothing
from robust_api.decision import rule_from_spec
from robust_api.dispatch import Dispatcher, RunStats
from robust_api.engine import CertifyParams, Engine, count_labels
from robust_api.errors import ConfigError
from robust_api.results import ABSTAIN, Certificate, Prediction


class RobustAPI:
    """Denoised smoothing around one provider ("azure", "google", "aws", "clarifai" or "local").

    denoiser: None, a denoiser's name (shipped, `ffdnet-color`, `tv`, `tv:W`), a checkpoint path, or a torch module
    (NCHW [0,1] -> same). A name or path is loaded for each noise level it is used at (`engine_for(noise_sd)`):
    `tv` takes its weight (0.6 * noise_sd) and `ffdnet-color` its noise-level input from the call's noise_sd.
    online: query the provider (True) or replay saved responses (False).
    endpoint: URL override (e.g. a local emulator); emulator=True starts that provider's emulator in-process
    (no credentials needed). log: JSONL query log to append to and to read the cache from. decision: "top1",
    "vocab:PATH" or "present:LABEL[:THRESHOLD]". provider: an already-built Provider instance (e.g. a
    LocalProvider around your own model). Other keyword options go to the provider adapter.
    """

    def __init__(
        self,
        api_name: str,
        denoiser: Any = None,
        online: bool = True,
        *,
        endpoint: str | None = None,
        emulator: bool = False,
        log: str | Path | None = None,
        decision: str = "top1",
        concurrency: int = 16,
        rate_per_s: float | None = None,
        max_attempts: int = 6,
        timeout_s: float = 60.0,
        seed: int = 0,
        provider: Any = None,
        emulator_labeller: Any = None,
        **provider_options: Any,
    ) -> None:
        self.api_name = api_name
        self.online = online
        self.seed = seed
        self.rule = rule_from_spec(decision)
        self._closers = contextlib.ExitStack()
        self.emulator = None
        self._denoiser_spec: str | Path | None = None
        self._module: Any = None
        self._last_engine: Engine | None = None
        if not online:
            return
        from robust_api.providers import emulator_class, make_provider, provider_for_emulator
        from robust_api.query_logs import LogIndex, QueryLogWriter

        if provider is None:
            if emulator:
                self.emulator = emulator_class(api_name)(labeller=emulator_labeller)
                url = self._closers.enter_context(self.emulator.running())
                provider = provider_for_emulator(api_name, url, **provider_options)
            else:
                provider = make_provider(api_name, endpoint, **provider_options)
        self.provider = provider
        if isinstance(denoiser, (str, Path)):
            _check_denoiser_spec(denoiser)  # an unknown name or a bad tv:W fails here, not at the first call
            self._denoiser_spec, denoiser = denoiser, None
        self._module = denoiser
        self._engines: dict[float | None, Engine] = {}
        self._run_id = uuid.uuid4().hex[:12]  # one run for every noise level's engine
        self._index = LogIndex.from_logs([log]) if log is not None else LogIndex()
        self._writer = QueryLogWriter(log) if log is not None else None
        if self._writer is not None:
            self._closers.callback(self._writer.close)
        self.stats = RunStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="robust-api-loop", daemon=True)
        self._thread.start()
        self._closers.callback(self._stop_loop)

        async def build() -> Dispatcher:  # the dispatcher's semaphore and limiter belong to our loop
            return Dispatcher(
                provider, concurrency=concurrency, rate_per_s=rate_per_s, max_attempts=max_attempts,
                timeout_s=timeout_s, stats=self.stats,
            )

        self._dispatcher = self._run(build())
        if self._denoiser_spec is None:
            self._last_engine = self.engine_for(None)

    # -- engines ------------------------------------------------------------------------------------
    def engine_for(self, noise_sd: float | None) -> Engine:
        """The engine that samples at noise level `noise_sd` (cached; all share the dispatcher, log and cache).

        A denoiser given by name or path is loaded at that level (`load_denoiser(..., sigma=noise_sd)`), so the
        query log records the denoiser actually used (`tv:w=0.15` at 0.25). A module or no denoiser is the same
        for every level. ConfigError when a denoiser name needs a noise level and noise_sd is None.
        Call it from the caller's thread, never from the background loop.
        """
        key = None if self._denoiser_spec is None else (None if noise_sd is None else float(noise_sd))
        engine = self._engines.get(key)
        if engine is None:
            denoiser, denoiser_id = self._module, None
            if self._denoiser_spec is not None or denoiser is not None:
                from robust_api.denoisers.registry import denoiser_identity, load_denoiser
                from robust_api.denoisers.speed import best_device

                if self._denoiser_spec is not None:
                    denoiser = load_denoiser(self._denoiser_spec, device=best_device(), optimize=True, sigma=key)
                denoiser_id = denoiser_identity(denoiser)

            async def build() -> Engine:
                return Engine(self.provider, self._dispatcher, self.rule, log=self._writer, index=self._index,
                              denoiser=denoiser, denoiser_id=denoiser_id, run_id=self._run_id)

            engine = self._engines[key] = self._run(build())
        self._last_engine = engine
        return engine

    @property
    def engine(self) -> Engine:
        """The engine of the most recent call (the only one unless the denoiser was given by name; then see
        engine_for). ConfigError offline, and before the first call when the denoiser was given by name."""
        if self._last_engine is None:
            raise ConfigError("no engine yet: offline, or the denoiser was given by name and is loaded per noise "
                              "level (use engine_for(noise_sd))")
        return self._last_engine

    @property
    def denoiser(self) -> Any:
        """The denoiser module of the most recent call (None for no denoiser, or before the first call when the
        denoiser was given by name)."""
        return self._last_engine.denoiser if self._last_engine is not None else self._module

    # -- lifecycle ----------------------------------------------------------------------------------
    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.provider.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def close(self) -> None:
        """Flush and close the log, stop the background loop and any emulator started by this object."""
        self._closers.close()

    def __enter__(self) -> "RobustAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reference's signatures ------------------------------------------------------------------
    def predict(self, img_or_logs: Any, N: int | None = None, noise_sd: float | None = None, *, alpha: float | None = None, seed: int | None = None):
        """Online: (majority_class, distribution, logs) over N noisy samples (fresh OS randomness unless seed is
        given). Offline: predict(logs) -> (majority_class, distribution). With alpha, the class is -1 (abstain)
        unless a two-sided binomial test of the top two counts rejects at level alpha."""
        if not self.online:
            from robust_api.replay import predict_responses

            return predict_responses(img_or_logs, rule=self.rule, provider=self.api_name, alpha=alpha)
        if N is None or noise_sd is None:
            raise ConfigError("online predict needs N and noise_sd")
        image = _load(img_or_logs)
        engine = self.engine_for(noise_sd)
        records = self._run(engine.responses(image, "estimation", range(N), noise_sd, seed, {"mode": "predict"}))
        counts = count_labels(engine.labels(records))
        label = smoothing.predict(counts, alpha) if alpha is not None else smoothing.top_label(counts)
        return label, counts, [r.response for r in records]

    def certify(self, img_or_logs: Any, noise_sd: float, N0: int, N: int, alpha: float, *, mode: str = "fixed", **kw: Any):
        """Online: (majority_class, radius, logs); offline: certify(logs, noise_sd, N0, N, alpha) -> (class, radius).
        Abstain is (-1, 0.0) as in the reference. logs are the raw responses (selection first, then estimation)."""
        if not self.online:
            from robust_api.replay import certify_responses

            return certify_responses(img_or_logs, noise_sd, N0, N, alpha, rule=self.rule, provider=self.api_name)
        image = _load(img_or_logs)
        params = CertifyParams(sigma=noise_sd, n0=N0, n=N, alpha=alpha, mode=mode, seed=self.seed, **kw)
        engine = self.engine_for(noise_sd)
        cert = self._run(engine.certify(image, params))
        logs = self._run(self._logs(engine, image, params))
        label, radius = cert.as_tuple()
        return label, radius, logs

    async def _logs(self, engine: Engine, image, params: CertifyParams) -> list[dict]:
        # Every sample is in the index by now: this costs nothing.
        n0 = params.n0 if params.mode == "fixed" else 0
        sel = await engine.responses(image, "selection", range(n0), params.sigma, params.seed)
        est = await engine.responses(image, "estimation", range(self._n_spent(engine, image, params)), params.sigma, params.seed)
        return [r.response for r in sel + est]

    def _n_spent(self, engine: Engine, image, params: CertifyParams) -> int:
        if params.mode != "sequential":
            return params.n
        from robust_api.query_logs import sample_key

        n = 0
        while sample_key(self.provider.name, engine.settings, image.sha256, params.sigma, engine.denoiser_id, params.seed, n, "estimation") in engine.index:
            n += 1
        return n

    # -- richer, batch API -----------------------------------------------------------------------------
    def certify_many(self, images: Iterable[Any], noise_sd: float, N0: int = 20, N: int = 100, alpha: float = 0.001, *, mode: str = "fixed", **kw: Any) -> list[Certificate]:
        """Certify many images concurrently; returns Certificate objects in input order."""
        params = CertifyParams(sigma=noise_sd, n0=N0, n=N, alpha=alpha, mode=mode, seed=self.seed, **kw)
        loaded = [_load(x) for x in images]
        return self._run(certify_all(self.engine_for(noise_sd), loaded, params))

    def predict_smoothed(self, img: Any, N: int, noise_sd: float, alpha: float = 0.001, seed: int | None = None) -> Prediction:
        """A Prediction object (label None when the binomial test abstains)."""
        return self._run(self.engine_for(noise_sd).predict(_load(img), N, noise_sd, alpha, seed))


async def certify_all(engine: Engine, images: Sequence[Any], params: CertifyParams, max_images_in_flight: int = 4, on_done=None) -> list[Certificate]:
    """Certify images with a few in flight at once (the dispatcher caps provider calls); input order kept.
    Every image runs to completion or failure before the first failure is raised, so nothing paid is lost."""
    gate = asyncio.Semaphore(max_images_in_flight)

    async def one(image):
        async with gate:
            cert = await engine.certify(image, params)
            if on_done is not None:
                on_done(cert)
            return cert

    results = await asyncio.gather(*(one(im) for im in images), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def _check_denoiser_spec(spec: str | Path) -> None:
    """CheckpointError/ConfigError now for a denoiser name or path that could not load at any noise level."""
    from robust_api.denoisers.classical import parse_classical
    from robust_api.denoisers.registry import resolve_path

    if isinstance(spec, str) and (spec.strip() == "tv" or parse_classical(spec, None) is not None):
        return
    resolve_path(spec)


def _load(img: Any):
    from robust_api.images import LoadedImage, load_image

    return img if isinstance(img, LoadedImage) else load_image(img)


__all__ = ["RobustAPI", "certify_all", "ABSTAIN"]
