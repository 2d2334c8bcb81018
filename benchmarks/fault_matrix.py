"""Fault matrix: certify through each provider's emulator while it throttles, fails, hangs, garbles and resets.

For every provider (azure, google, aws, clarifai — each through its real SDK over loopback) and every fault
mix, one certification run (run_certification, the CLI's code path, with --endpoint at the emulator) must:
  - complete;
  - count every sample exactly once: one log record per (image, phase, index), nothing missing, selection and
    estimation counts summing to n0 and n, billable calls == log records;
  - stay within its retry budget: every record's attempts <= max_attempts, and each injected fault costs
    exactly one retry (client retries per kind == emulator faults per kind; no SDK-internal retries);
  - report retries and failures per kind in RunStats (what the CLI's summary line prints).

Run: python benchmarks/fault_matrix.py [--n 200] [--mix all]. Prints one table row per (provider, mix):
faults injected per kind, client retries per kind, samples lost (0), duplicates (0), double-billed answers
(labelled by the emulator but not logged: replies the client gave up on), seconds. Exit 1 if a check failed.
tests/test_faults.py runs the combined mix at a small n for each provider through the same function.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from robust_api.engine import CertifyParams
from robust_api.errors import RobustAPIError
from robust_api.providers import CLOUD_PROVIDER_NAMES
from robust_api.providers.emulator import emulator_class
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.query_logs import read_log
from robust_api.run import RunConfig, run_certification

PROVIDERS = CLOUD_PROVIDER_NAMES  # the registry's cloud providers, each with an emulator
CREDENTIAL_ENV = {
    "azure": {"AZURE_VISION_KEY": EMULATOR_KEY},
    "google": {"GOOGLE_API_KEY": EMULATOR_KEY},
    "aws": {"AWS_ACCESS_KEY_ID": EMULATOR_KEY, "AWS_SECRET_ACCESS_KEY": "emulator-secret", "AWS_REGION": "us-east-1"},
    "clarifai": {"CLARIFAI_PAT": EMULATOR_KEY},
}
# Emulator fault kind -> the kind the client reports for it.
CLIENT_KIND = {"throttled": "throttled", "server": "server", "timeout": "timeout", "malformed": "malformed",
               "reset": "connection"}

# Retry-After and hangs are short so the matrix runs in seconds; the per-call timeout sits between a normal
# answer (milliseconds) and the hang, so a hung call is abandoned by the client before the server drops it.
RETRY_AFTER_S = 0.05
HANG_S = 6.0
CALL_TIMEOUT_S = 5.0  # a normal answer on a stalled 2-core CI machine stays far below this
MAX_ATTEMPTS = 12  # P(one sample fails 12 times at 40% faults) ~ 2e-5: a run completes

MIXES: dict[str, dict[str, float]] = {
    "throttle 30%": {"p_throttle": 0.30},
    "503 30%": {"p_server_error": 0.30},
    "timeouts 5%": {"p_timeout": 0.05},
    "malformed 2%": {"p_malformed": 0.02},
    "resets 5%": {"p_reset": 0.05},
    # the storm: 30% throttling/503 with Retry-After, 5% timeouts, 2% malformed, resets
    "all": {"p_throttle": 0.15, "p_server_error": 0.15, "p_timeout": 0.05, "p_malformed": 0.02, "p_reset": 0.03},
}


def patch_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """'bright' or 'dark' by the mean of the central 4x4 patch (noise flips it near 0.5); scores > 0.55."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    h, w = pixels.shape[:2]
    mean = float(pixels[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean())
    top, other = ("bright", "dark") if mean >= 0.5 else ("dark", "bright")
    return [(top, 0.6 + 0.8 * min(0.5, abs(mean - 0.5))), (other, 0.58)]


def write_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct 96x96 PNGs with a centre patch near the labeller's threshold."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.uniform(0.2, 0.8, size=(96, 96, 3))
        pixels[44:52, 44:52] = (0.53, 0.45, 0.75)[i % 3]
        path = directory / f"img{i}.png"
        Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def provider_env(provider: str) -> Iterator[None]:
    """The emulator's credential in the provider's usual environment variables, for the run only."""
    saved = {k: os.environ.get(k) for k in CREDENTIAL_ENV[provider]}
    os.environ.update(CREDENTIAL_ENV[provider])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fault_knobs(mix: dict[str, float], seed: int = 0, latency_ms: float = 3.0) -> EmulatorKnobs:
    return EmulatorKnobs(latency_ms=latency_ms, latency_jitter_ms=latency_ms, retry_after_s=RETRY_AFTER_S,
                         timeout_hang_s=HANG_S, seed=seed, **mix)


@dataclass
class FaultRun:
    provider: str
    mix: str
    completed: bool = False
    error: str = ""
    samples_expected: int = 0
    records: int = 0
    samples_lost: int = 0
    duplicates: int = 0
    count_mismatches: int = 0  # certificates whose selection/estimation counts do not sum to n0/n
    max_attempts_seen: int = 0
    faults: dict = field(default_factory=dict)  # injected by the emulator, per kind
    retries: dict = field(default_factory=dict)  # client retries per kind (RunStats.retries)
    failures: dict = field(default_factory=dict)  # client give-ups per kind (RunStats.failures)
    client_requests: int = 0
    emulator_requests: int = 0
    billable_calls: int = 0
    labelled: int = 0  # images the emulator labelled (what the provider would bill)
    seconds: float = 0.0

    @property
    def double_billed(self) -> int:
        return self.labelled - self.records

    def problems(self, max_attempts: int = MAX_ATTEMPTS) -> list[str]:
        """Every broken promise of this run (empty when all hold)."""
        out = []
        if not self.completed:
            out.append(f"did not complete: {self.error}")
        if self.samples_lost or self.duplicates or self.records != self.samples_expected:
            out.append(f"{self.samples_lost} lost, {self.duplicates} duplicated, {self.records} records "
                       f"for {self.samples_expected} samples")
        if self.count_mismatches:
            out.append(f"{self.count_mismatches} certificate(s) whose counts do not sum to n0/n")
        if self.billable_calls != self.records:
            out.append(f"billable calls {self.billable_calls} != log records {self.records}")
        if self.max_attempts_seen > max_attempts:
            out.append(f"a sample took {self.max_attempts_seen} attempts > {max_attempts}")
        expected_retries = collections.Counter({CLIENT_KIND[k]: v for k, v in self.faults.items()})
        # A hang may end as the client's timeout or as the dropped connection, whichever comes first.
        got = collections.Counter(self.retries)
        if sum(got.values()) != sum(expected_retries.values()) or any(
            got[k] != v for k, v in expected_retries.items() if k not in ("timeout", "connection")
        ):
            out.append(f"retries {dict(got)} do not match faults injected {self.faults}")
        if self.client_requests != self.emulator_requests:
            out.append(f"client sent {self.client_requests} requests, emulator saw {self.emulator_requests} "
                       "(hidden SDK retries?)")
        return out


def run_with_faults(provider: str, mix_name: str, mix: dict[str, float], workdir: Path, *, images: int = 1,
                    n0: int = 10, n: int = 50, concurrency: int = 16, seed: int = 0,
                    max_attempts: int = MAX_ATTEMPTS) -> FaultRun:
    """One certification of `images` images against `provider`'s emulator injecting `mix`; see FaultRun."""
    result = FaultRun(provider, mix_name)
    paths = write_images(workdir, images, seed)
    log = workdir / f"{provider}-{mix_name.replace(' ', '_').replace('%', '')}.jsonl"
    log.unlink(missing_ok=True)
    params = CertifyParams(sigma=0.25, n0=n0, n=n, alpha=0.01, seed=seed)
    emulator = emulator_class(provider)(labeller=patch_labeller, knobs=fault_knobs(mix, seed))
    started = time.perf_counter()
    with emulator.running() as url, provider_env(provider):
        config = RunConfig(api=provider, params=params, endpoint=url, log=log, concurrency=concurrency,
                           rate_per_s=1000.0, max_attempts=max_attempts, timeout_s=CALL_TIMEOUT_S, fsync=False)
        stats = None
        try:
            run = run_certification(paths, config)
            stats = run.stats
            result.completed = True
            result.count_mismatches = sum(
                1 for c in run.certificates
                if sum(c.counts_selection.values()) != n0 or sum(c.counts_estimation.values()) != n
            )
        except RobustAPIError as exc:
            result.error = str(exc)
        time.sleep(HANG_S if mix.get("p_timeout") else 0.05)  # let hung handlers finish before reading counters
    result.seconds = time.perf_counter() - started
    records = list(read_log(log)) if log.exists() else []
    keys = [(r.image, r.phase, r.index) for r in records]
    result.samples_expected = images * (1 + n0 + n)
    result.records = len(records)
    result.duplicates = len(keys) - len(set(keys))
    result.samples_lost = result.samples_expected - len(set(keys))
    result.max_attempts_seen = max((r.attempts for r in records), default=0)
    result.faults = dict(emulator.stats.faults)
    result.emulator_requests = emulator.stats.requests
    result.labelled = emulator.stats.images_labelled
    if stats is not None:
        result.retries = dict(stats.retries)
        result.failures = dict(stats.failures)
        result.client_requests = stats.requests
        result.billable_calls = stats.billable_calls
    return result


def _fmt(counter: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n0", type=int, default=20)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--mix", action="append", choices=list(MIXES), help="Only these mixes (default all).")
    parser.add_argument("--provider", action="append", choices=PROVIDERS, help="Only these providers (default all).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mixes = args.mix or list(MIXES)
    providers = args.provider or list(PROVIDERS)
    header = (f"{'provider':8s} {'mix':13s} {'done':4s} {'samples':>7s} {'lost':>4s} {'dup':>3s} {'2xbill':>6s} "
              f"{'max_att':>7s} {'req':>5s} {'sec':>5s}  faults injected | client retries | failures")
    print(header)
    print("-" * len(header))
    totals: collections.Counter = collections.Counter()
    retry_totals: collections.Counter = collections.Counter()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as tmp:
        for provider in providers:
            for mix_name in mixes:
                workdir = Path(tmp) / f"{provider}-{len(totals)}-{random.random():.6f}"
                workdir.mkdir()
                r = run_with_faults(provider, mix_name, MIXES[mix_name], workdir, images=args.images,
                                    n0=args.n0, n=args.n, seed=args.seed)
                problems = r.problems()
                failed += bool(problems)
                totals.update(r.faults)
                retry_totals.update(r.retries)
                print(f"{provider:8s} {mix_name:13s} {'yes' if r.completed else 'NO':4s} {r.records:7d} "
                      f"{r.samples_lost:4d} {r.duplicates:3d} {r.double_billed:6d} {r.max_attempts_seen:7d} "
                      f"{r.client_requests:5d} {r.seconds:5.1f}  {_fmt(r.faults)} | {_fmt(r.retries)} | "
                      f"{_fmt(r.failures)}" + ("" if not problems else "  FAIL: " + "; ".join(problems)), flush=True)
    print(f"\nfaults injected in total: {_fmt(dict(totals))}")
    print(f"client retries in total:  {_fmt(dict(retry_totals))}")
    print("ALL CHECKS PASSED" if not failed else f"{failed} RUN(S) FAILED")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
