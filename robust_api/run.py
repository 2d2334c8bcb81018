"""A certification run as the CLI and the demo perform it: images -> certificates -> results TSV + summary.

Builds the provider (or starts its emulator in-process), the dispatcher, the engine and the query log, then
certifies the images with a live progress display (images, billable calls, cache hits, retries, estimated
cost). Library errors propagate as typed RobustAPIError; the CLI turns them into one line.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from robust_api.dispatch import Dispatcher, RunStats
from robust_api.engine import CertifyParams, Engine
from robust_api.errors import ProviderError
from robust_api.results import Certificate, write_results_tsv


@dataclass
class RunConfig:
    """Everything a certification run needs besides the images."""

    api: str
    params: CertifyParams
    endpoint: str | None = None
    emulator: bool = False
    emulator_knobs: Any = None
    denoiser: str | None = None
    log: Path | None = None
    out: Path | None = None
    decision: str = "top1"
    concurrency: int = 16
    rate_per_s: float | None = None
    burst: int = 1
    max_attempts: int = 6
    timeout_s: float = 60.0
    provider_options: dict[str, Any] = field(default_factory=dict)
    fsync: bool = True


@dataclass
class RunResult:
    certificates: list[Certificate]
    stats: RunStats
    price_usd_per_1000: float
    emulator_requests: int | None = None

    @property
    def cost_usd(self) -> float:
        return self.stats.billable_calls * self.price_usd_per_1000 / 1000.0


def run_certification(
    images: Sequence[Any], config: RunConfig, progress: Callable[[str, RunStats, int], None] | None = None
) -> RunResult:
    """Certify `images` (paths, arrays or LoadedImage) under `config`; writes the log and the TSV if asked.

    progress(event, stats, images_done) is called after each image ("image") and at the end ("done").
    """
    from robust_api.decision import rule_from_spec
    from robust_api.images import LoadedImage, load_image
    from robust_api.providers import emulator_class, make_provider, provider_for_emulator
    from robust_api.query_logs import LogIndex, QueryLogWriter

    rule = rule_from_spec(config.decision)
    loaded = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
    denoiser, denoiser_id = _denoiser(config.denoiser, config.params.sigma)
    with contextlib.ExitStack() as stack:
        emulator = None
        if config.emulator and config.api != "local":
            emulator = emulator_class(config.api)(knobs=config.emulator_knobs)
            url = stack.enter_context(emulator.running())
            provider = provider_for_emulator(config.api, url, **config.provider_options)
        else:
            provider = make_provider(config.api, config.endpoint, **config.provider_options)
        index = LogIndex.from_logs([config.log]) if config.log else LogIndex()
        writer = stack.enter_context(QueryLogWriter(config.log, fsync=config.fsync)) if config.log else None
        stats = RunStats()

        async def main() -> list[Certificate]:
            dispatcher = Dispatcher(
                provider,
                concurrency=config.concurrency,
                rate_per_s=config.rate_per_s,
                burst=config.burst,
                max_attempts=config.max_attempts,
                timeout_s=config.timeout_s,
                stats=stats,
            )
            engine = Engine(provider, dispatcher, rule, log=writer, index=index, denoiser=denoiser, denoiser_id=denoiser_id)
            done = 0

            def on_done(cert: Certificate) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress("image", stats, done)

            from robust_api.api import certify_all

            try:
                return await certify_all(engine, loaded, config.params, on_done=on_done)
            finally:
                await provider.aclose()

        try:
            certificates = asyncio.run(main())
        except ProviderError as exc:
            raise _with_next_step(exc, config, stats) from None
        if progress is not None:
            progress("done", stats, len(certificates))
        if config.out is not None:
            write_results_tsv(config.out, certificates)
        return RunResult(
            certificates=certificates,
            stats=stats,
            price_usd_per_1000=provider.pricing.usd_per_1000,
            emulator_requests=emulator.stats.requests if emulator is not None else None,
        )


def _with_next_step(exc: ProviderError, config: RunConfig, stats: RunStats) -> ProviderError:
    """The same error, telling the user how to go on: what was retried, and that a run stopped by the quota
    (or any failure after paid answers) resumes from the log without paying for those answers again."""
    if exc.kind == "auth":
        return exc  # the adapter's message already names the credential to fix; nothing was paid
    steps = ["wait for the quota to reset (or raise it), then rerun"] if exc.kind == "quota" else []
    if exc.retryable:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.failures.items()))
        retries = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.retries.items())) or "none"
        steps.append(f"gave up after {config.max_attempts} attempt(s) per call (--max-attempts); "
                     f"failed calls: {counts or exc.kind}; retries: {retries}")
    if config.log is None:
        if stats.billable_calls or exc.kind == "quota":
            steps.append("pass a query log (--log) so a rerun resumes instead of paying again")
    elif stats.billable_calls:
        steps.append(f"the {stats.billable_calls} answer(s) this run paid for are saved in {config.log}: "
                     "rerun the same command and they are not paid for again")
    if not steps:
        return exc
    return type(exc)(exc.provider, exc.kind, f"{exc.reason}; {'; '.join(steps)}", request_id=exc.request_id,
                     status=exc.status, retry_after_s=exc.retry_after_s)


def _denoiser(spec: str | None, sigma: float):
    """The denoiser module (optimised, on the best device) and its log identity for `spec` at certification
    noise level `sigma` (`tv` takes its weight from it, `ffdnet-color` its noise-level input); (None, None) for none."""
    if spec is None or spec in ("", "none"):
        return None, None
    from robust_api.denoisers.registry import denoiser_identity, load_denoiser
    from robust_api.denoisers.speed import best_device

    # Folded BatchNorm + channels_last: same outputs within 1e-4, ~1.9x faster on CPU (benchmarks/denoiser.py).
    module = load_denoiser(spec, device=best_device(), optimize=True, sigma=sigma)
    return module, denoiser_identity(module)
