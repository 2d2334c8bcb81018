"""`RobustAPI`: the public facade, with the reference implementation's signatures (sync wrappers over a session).

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
from pathlib import Path
from typing import Any, Iterable

from robust_api.decision import rule_from_spec
from robust_api.engine import Engine
from robust_api.errors import ConfigError
from robust_api.modes import CertifyParams
from robust_api.results import ABSTAIN, Certificate, Prediction
from robust_api.session import Session, SessionConfig, certify_all


class RobustAPI:
    """Denoised smoothing around one provider ("azure", "google", "aws", "clarifai" or "local").

    denoiser: None, a denoiser's name (shipped, `ffdnet-color`, `tv`, `tv:W`, `diffusion:PATH`), a checkpoint path, or a torch module
    (NCHW [0,1] -> same). A name or path is loaded for each noise level it is used at (`engine_for(noise_sd)`):
    `tv` takes its weight (0.6 * noise_sd) and `ffdnet-color` its noise-level input from the call's noise_sd.
    online: query the provider (True) or replay saved responses (False).
    endpoint: URL override (e.g. a local emulator); emulator=True starts that provider's emulator in-process
    (no credentials needed). log: JSONL query log to append to and to read the cache from. decision: "top1",
    "vocab:PATH" or "present:LABEL[:THRESHOLD]". provider: an already-built Provider instance (e.g. a
    LocalProvider around your own model). backend: "local" (default) or "ray": `certify` and `certify_many`
    shard images over Ray workers (`ray_address`, `workers`: see robust_api.backends.ray_backend), with the same
    certificates and log; `predict` always runs here. full_access (api "local"): certify from label counts
    per range of samples (robust_api.full_access; `certify` then returns no raw responses: logs = []).
    Other keyword options go to the provider adapter.
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
        backend: str = "local",
        ray_address: str | None = None,
        workers: int | None = None,
        full_access: bool = False,
        **provider_options: Any,
    ) -> None:
        self.api_name = api_name
        self.online = online
        self.seed = seed
        self.rule = rule_from_spec(decision)
        self._closers = contextlib.ExitStack()
        self.emulator = None
        self._session: Session | None = None
        self._module = None if isinstance(denoiser, (str, Path)) else denoiser
        self._last_engine: Engine | None = None
        if not online:
            return
        self._session = Session(SessionConfig(
            api=api_name, endpoint=endpoint, emulator=emulator, emulator_labeller=emulator_labeller, provider=provider,
            provider_options=provider_options, denoiser=denoiser, log=log, decision=self.rule, concurrency=concurrency,
            rate_per_s=rate_per_s, max_attempts=max_attempts, timeout_s=timeout_s, backend=backend,
            ray_address=ray_address, workers=workers, full_access=full_access,
        ))
        self._closers.callback(self._session.close)
        self.provider = self._session.provider
        self.emulator = self._session.emulator
        self.stats = self._session.stats
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="robust-api-loop", daemon=True)
        self._thread.start()
        self._closers.callback(self._stop_loop)
        if not isinstance(denoiser, (str, Path)):
            self._last_engine = self.engine_for(None)

    # -- engines ------------------------------------------------------------------------------------
    def engine_for(self, noise_sd: float | None) -> Engine:
        """The engine that samples at noise level `noise_sd` (cached; all share the dispatcher, log and cache).

        A denoiser given by name or path is loaded at that level (`load_denoiser(..., sigma=noise_sd)`), so the
        query log records the denoiser actually used (`tv:w=0.15` at 0.25). A module or no denoiser is the same
        for every level. ConfigError offline, or when a denoiser name needs a noise level and noise_sd is None.
        Call it from the caller's thread, never from the background loop.
        """
        if self._session is None:
            raise ConfigError("offline RobustAPI has no engine")
        self._last_engine = self._session.engine_for(noise_sd)
        return self._last_engine

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
            self._run(self._session.aclose())
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
        prediction, records = self._run(self.engine_for(noise_sd).sample_prediction(image, N, noise_sd, alpha, seed))
        label = ABSTAIN if prediction.label is None else prediction.label
        return label, prediction.counts, [r.response for r in records]

    def certify(self, img_or_logs: Any, noise_sd: float, N0: int, N: int, alpha: float, *, mode: str = "fixed", **kw: Any):
        """Online: (majority_class, radius, logs); offline: certify(logs, noise_sd, N0, N, alpha) -> (class, radius).
        Abstain is (-1, 0.0) as in the reference. logs are the raw responses (selection first, then estimation)."""
        if not self.online:
            from robust_api.replay import certify_responses

            return certify_responses(img_or_logs, noise_sd, N0, N, alpha, rule=self.rule, provider=self.api_name)
        image = _load(img_or_logs)
        params = CertifyParams(sigma=noise_sd, n0=N0, n=N, alpha=alpha, mode=mode, seed=self.seed, **kw)
        engine = self.engine_for(noise_sd)
        assert self._session is not None
        config = self._session.config
        if config.backend == "local" and not config.full_access:
            cert = self._run(engine.certify(image, params, position=self._session.next_positions(1)[0]))
        else:
            cert = self._run(self._session.certify_all([image], params))[0]
        logs = [] if config.full_access else self._run(self._logs(engine, image, params, cert))
        label, radius = cert.as_tuple()
        return label, radius, logs

    async def _logs(self, engine: Engine, image, params: CertifyParams, cert: Certificate) -> list[dict]:
        # Every sample the certificate used is in the index by now: this costs nothing.
        n_selection = sum(cert.counts_selection.values())
        n_estimation = sum(cert.counts_estimation.values())
        sel = await engine.responses(image, "selection", range(n_selection), params.sigma, params.seed)
        est = await engine.responses(image, "estimation", range(n_estimation), params.sigma, params.seed)
        return [r.response for r in sel + est]

    # -- richer, batch API -----------------------------------------------------------------------------
    def certify_many(self, images: Iterable[Any], noise_sd: float, N0: int = 20, N: int = 100, alpha: float = 0.001, *, mode: str = "fixed", **kw: Any) -> list[Certificate]:
        """Certify many images concurrently; returns Certificate objects in input order."""
        params = CertifyParams(sigma=noise_sd, n0=N0, n=N, alpha=alpha, mode=mode, seed=self.seed, **kw)
        loaded = [_load(x) for x in images]
        assert self._session is not None
        if self._session.config.backend == "local":
            self.engine_for(noise_sd)  # loads the denoiser here, in the caller's thread, not on the loop
        return self._run(self._session.certify_all(loaded, params))

    def predict_smoothed(self, img: Any, N: int, noise_sd: float, alpha: float = 0.001, seed: int | None = None) -> Prediction:
        """A Prediction object (label None when the binomial test abstains)."""
        return self._run(self.engine_for(noise_sd).predict(_load(img), N, noise_sd, alpha, seed))


def _load(img: Any):
    from robust_api.images import LoadedImage, load_image

    return img if isinstance(img, LoadedImage) else load_image(img)


__all__ = ["RobustAPI", "certify_all", "ABSTAIN"]
