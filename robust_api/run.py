"""A certification run as the CLI and the demo perform it: images -> certificates -> results TSV + summary.

Its parts (provider or in-process emulator, dispatcher, query log, denoiser) come from the one composition
root, `robust_api.session`; this module certifies the images with progress callbacks (images, billable calls,
cache hits, retries) and writes the results TSV. Library errors propagate as typed RobustAPIError; the CLI turns them into one line.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from robust_api.dispatch import RunStats
from robust_api.errors import ProviderError
from robust_api.modes import CertifyParams
from robust_api.results import Certificate, write_results_tsv
from robust_api.session import Session, SessionConfig


@dataclass
class RunConfig(SessionConfig):
    """Everything a certification run needs besides the images: the session's parts (SessionConfig), the
    certification parameters and where the results TSV goes."""

    params: CertifyParams = field(kw_only=True)
    out: Path | None = field(default=None, kw_only=True)


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

    progress(event, stats, images_done) is called once before the first call ("start"; `stats` is the run's
    live counters, which keep moving between events), after each image ("image") and at the end ("done").
    """
    from robust_api.images import LoadedImage, load_image

    loaded = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
    with Session(config) as session:
        session.prepare(config.params.sigma)  # load the denoiser before the clock of the first call starts
        done = 0
        if progress is not None:
            progress("start", session.stats, 0)

        def on_done(cert: Certificate) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress("image", session.stats, done)

        async def main() -> list[Certificate]:
            try:
                return await session.certify_all(loaded, config.params, on_done=on_done)
            finally:
                await session.aclose()

        try:
            certificates = asyncio.run(main())
        except ProviderError as exc:
            raise _with_next_step(exc, config, session.stats) from None
        if progress is not None:
            progress("done", session.stats, len(certificates))
        if config.out is not None:
            write_results_tsv(config.out, certificates)
        return RunResult(
            certificates=certificates,
            stats=session.stats,
            price_usd_per_1000=session.provider.pricing.usd_per_1000,
            emulator_requests=session.emulator.stats.requests if session.emulator is not None else None,
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
