"""Crash-safe resume stress: SIGKILL `robust-api certify` at random moments, rerun it, account for every call.

Each trial certifies a few images against one provider's emulator (cycling azure, google, aws, clarifai).
The emulator runs in *this* process (a background thread), so its counters survive the client's death; the
client is the real console script in a subprocess, pointed at the emulator with `--endpoint` and the
emulator's credential in the provider's usual environment variable. A trial:

  1. kills the client 1-3 times at a random moment (at a random fraction of the log written, or at a random
     wall-clock time that may fall during start-up), then reruns it without a kill;
  2. checks, for every run, from the emulator's own record of which noisy image it labelled (a sha256 of the
     decoded pixels, mapped back to (image, phase, index) by recomputing the seeded noise):
     - no sample already in the log is labelled (= billed) again;
     - no sample is labelled twice within one run;
     - samples labelled but not logged (answers lost in flight at the kill) <= concurrency x batch size;
     - the log holds exactly one record per sample, and after the final run every sample;
  3. checks the final rerun completes (exit 0) and its results TSV equals that of an uninterrupted run with
     the same seed (every column but the wall time).

Run: python benchmarks/crash_resume.py [--trials 20] [--seed 0]. Prints one line per trial and a summary;
exits 1 if any check failed. tests/stress/test_crash_resume.py runs a few trials of the same harness.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from aiohttp import web
from PIL import Image

from robust_api.images import load_image, to_uint8
from robust_api.noise import noisy_copies
from robust_api.providers import CLOUD_PROVIDER_NAMES
from robust_api.providers.emulator import emulator_class
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.query_logs import read_log

PROVIDERS = CLOUD_PROVIDER_NAMES  # the registry's cloud providers, each with an emulator
BATCH = {"azure": 1, "google": 16, "aws": 1, "clarifai": 128}  # images per request (adapters' max_batch)
# How each adapter finds its credential when given --endpoint instead of --emulator.
CREDENTIAL_ENV = {
    "azure": {"AZURE_VISION_KEY": EMULATOR_KEY},
    "google": {"GOOGLE_API_KEY": EMULATOR_KEY},
    "aws": {"AWS_ACCESS_KEY_ID": EMULATOR_KEY, "AWS_SECRET_ACCESS_KEY": "emulator-secret", "AWS_REGION": "us-east-1"},
    "clarifai": {"CLARIFAI_PAT": EMULATOR_KEY},
}
SCRUBBED_ENV = ("AZURE_VISION_ENDPOINT", "AZURE_VISION_KEY", "VISION_ENDPOINT", "VISION_KEY", "GOOGLE_API_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "CLARIFAI_PAT")


# -- the labeller: a real function of the pixels, that also records what it was asked to label ------------


def patch_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """'bright' or 'dark' by the mean of the central 4x4 patch: noise moves it, so counts are mixed and
    certificates differ between images. Scores stay above AWS's default MinConfidence (55)."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    h, w = pixels.shape[:2]
    mean = float(pixels[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean())
    p = 1.0 / (1.0 + np.exp(-(mean - 0.5) * 25.0))
    top, other = ("bright", "dark") if p >= 0.5 else ("dark", "bright")
    confidence = 0.6 + 0.4 * abs(p - 0.5) * 2.0
    return [(top, confidence), (other, 0.58)]


def fingerprint(pixels: np.ndarray) -> str:
    """Identity of one uploaded picture: sha256 of its uint8 RGB pixels (what the emulator decodes)."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


class RecordingLabeller:
    """Wraps a labeller; remembers the fingerprint of every image it labelled (= every billable answer)."""

    def __init__(self, inner=patch_labeller) -> None:
        self.inner = inner
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image):
        with self._lock:
            self.seen.append(fingerprint(np.asarray(image.convert("RGB"))))
        return self.inner(image)

    def take(self) -> list[str]:
        with self._lock:
            seen, self.seen = self.seen, []
        return seen


@contextlib.contextmanager
def serving(provider: str, labeller, knobs: EmulatorKnobs | None = None) -> Iterator[tuple[object, str]]:
    """Run `provider`'s emulator in a background thread; yields (emulator, url). The emulator counts the
    requests it is still handling in `.in_flight` (handlers go on after the client dies)."""
    base = emulator_class(provider)

    class Tracked(base):  # type: ignore[misc, valid-type]
        in_flight = 0

        def app(self) -> web.Application:
            app = super().app()

            @web.middleware
            async def track(request, handler):
                self.in_flight += 1
                try:
                    return await handler(request)
                finally:
                    self.in_flight -= 1

            app.middlewares.append(track)
            return app

    # A killed client drops its uploads mid-body; aiohttp logs each such request with a traceback. Expected here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    emulator = Tracked(labeller=labeller, knobs=knobs or EmulatorKnobs(latency_ms=8, latency_jitter_ms=6))
    with emulator.running() as url:
        yield emulator, url


def wait_quiet(emulator, timeout_s: float = 20.0) -> None:
    """Wait until the emulator has finished every request it received (answers to a dead client included)."""
    deadline = time.monotonic() + timeout_s
    while emulator.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.02)


# -- the job: images and the identity of every sample ---------------------------------------------------


@dataclass(frozen=True)
class Job:
    provider: str
    images: tuple[Path, ...]
    sigma: float = 0.25
    n0: int = 10
    n: int = 40
    alpha: float = 0.01
    seed: int = 0
    concurrency: int = 8

    def samples(self) -> dict[str, tuple[str, str, int]]:
        """fingerprint -> (image sha256, phase, index) for every sample the job needs (the clean one too)."""
        out: dict[str, tuple[str, str, int]] = {}
        for path in self.images:
            image = load_image(path)
            out[fingerprint(to_uint8(image.array))] = (image.sha256, "clean", 0)
            for phase, count in (("selection", self.n0), ("estimation", self.n)):
                noisy = noisy_copies(image.array, self.sigma, self.seed, image.sha256, phase, list(range(count)))
                for index, pixels in enumerate(noisy):
                    out[fingerprint(to_uint8(pixels))] = (image.sha256, phase, index)
        return out

    def argv(self, url: str, log: Path, out: Path) -> list[str]:
        return [
            *robust_api_command(), "certify", *map(str, self.images), "--api", self.provider,
            "--endpoint", url, "--sigma", f"{self.sigma:g}", "--n0", str(self.n0), "--n", str(self.n),
            "--alpha", f"{self.alpha:g}", "--seed", str(self.seed), "--log", str(log), "--out", str(out),
            "--concurrency", str(self.concurrency), "--rate", "1000", "--timeout", "20", "--no-table",
        ]


def robust_api_command() -> list[str]:
    """The installed console script next to this interpreter (what users run), else `python -m robust_api.cli`."""
    script = Path(sys.executable).parent / "robust-api"
    return [str(script)] if script.exists() else [sys.executable, "-m", "robust_api.cli"]


# Centre brightness per image: mostly bright (certified, radius < max), mostly dark, a coin flip (abstains).
CENTRES = (0.53, 0.45, 0.5, 0.75)


def write_images(directory: Path, count: int, rng: random.Random) -> tuple[Path, ...]:
    """`count` 96x96 PNGs whose centre brightness sits near the labeller's threshold (mixed noisy labels);
    the background is random texture so every image (and every noisy copy) is distinct."""
    paths = []
    for i in range(count):
        gen = np.random.default_rng(rng.randrange(2**32))
        pixels = gen.uniform(0.2, 0.8, size=(96, 96, 3))
        pixels[44:52, 44:52] = CENTRES[i % len(CENTRES)]
        path = directory / f"img{i}.png"
        Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(path)
        paths.append(path)
    return tuple(paths)


def client_env(provider: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(CREDENTIAL_ENV[provider])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def logged_keys(log: Path) -> list[tuple[str, str, int]]:
    """(image, phase, index) of every record in the log, in file order (duplicates kept)."""
    if not log.exists():
        return []
    return [(r.image, r.phase, r.index) for r in read_log(log)]


def tsv_rows(path: Path) -> list[list[str]]:
    """Results TSV rows without the wall-time column (the only one allowed to differ between runs)."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, name in enumerate(header) if name != "time"]
    return [[row.split("\t")[i] for i in keep] for row in lines]


# -- one trial ------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    killed: bool
    exit_code: int
    labelled: int  # images the emulator labelled during this run (= billed)
    newly_logged: int
    lost_in_flight: int  # labelled but not logged (answers that reached a dead client)
    relabelled_logged: int  # labelled although already in the log: must be 0
    duplicates_in_run: int  # labelled twice within the run: must be 0


@dataclass
class TrialResult:
    provider: str
    samples: int
    runs: list[RunRecord] = field(default_factory=list)
    log_duplicates: int = 0
    missing_at_end: int = 0
    unknown_labelled: int = 0
    matches_uninterrupted: bool = False
    lost_bound: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        final = self.runs[-1] if self.runs else None
        return (
            not self.errors
            and final is not None and not final.killed and final.exit_code == 0 and final.lost_in_flight == 0
            and all(r.relabelled_logged == 0 and r.duplicates_in_run == 0 for r in self.runs)
            and all(r.lost_in_flight <= self.lost_bound for r in self.runs)
            and self.log_duplicates == 0 and self.missing_at_end == 0 and self.unknown_labelled == 0
            and self.matches_uninterrupted
        )


def run_client(job: Job, url: str, log: Path, out: Path, kill_plan: tuple[str, float] | None,
               total_samples: int, timeout_s: float = 180.0) -> tuple[bool, int, str]:
    """Start the client; with kill_plan ("time", seconds) or ("progress", fraction of samples logged), SIGKILL
    it at that moment (if it is still running). Returns (killed, exit code, stderr)."""
    proc = subprocess.Popen(job.argv(url, log, out), env=client_env(job.provider), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    started = time.monotonic()
    killed = False
    if kill_plan is not None:
        how, value = kill_plan
        already = _line_count(log)
        # a fraction of what is still missing, at least one more record: a kill after real progress
        target_lines = max(already + 1, already + int(value * (total_samples - already)))
        while proc.poll() is None and time.monotonic() - started < timeout_s:
            if how == "time" and time.monotonic() - started >= value:
                break
            if how == "progress" and _line_count(log) >= target_lines:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return killed, -9, "timed out"
    return killed, proc.returncode, stderr.decode(errors="replace")


def _line_count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def reference_rows(job: Job, emulator, labeller: RecordingLabeller, url: str, workdir: Path) -> list[list[str]]:
    """Results of an uninterrupted run with the same seed into a fresh log."""
    log, out = workdir / f"ref-{job.provider}.jsonl", workdir / f"ref-{job.provider}.tsv"
    _, code, stderr = run_client(job, url, log, out, None, 0)
    wait_quiet(emulator)
    labeller.take()
    if code != 0:
        raise RuntimeError(f"uninterrupted {job.provider} run failed ({code}): {stderr.strip()[-500:]}")
    return tsv_rows(out)


def trial(job: Job, emulator, labeller: RecordingLabeller, url: str, workdir: Path, rng: random.Random,
          reference: list[list[str]], samples: dict[str, tuple[str, str, int]]) -> TrialResult:
    """Kill the client 1-3 times at random moments, then rerun it to completion; account for every call."""
    log, out = workdir / "trial.jsonl", workdir / "trial.tsv"
    for p in (log, out):
        p.unlink(missing_ok=True)
    result = TrialResult(job.provider, len(samples), lost_bound=job.concurrency * BATCH[job.provider])
    kills = rng.choice([1, 1, 2, 3])
    plans: list[tuple[str, float] | None] = []
    for _ in range(kills):
        plans.append(("time", rng.uniform(0.2, 3.0)) if rng.random() < 0.25 else ("progress", rng.uniform(0.0, 0.95)))
    plans.append(None)
    labeller.take()
    for plan in plans:
        before = set(logged_keys(log))
        killed, code, stderr = run_client(job, url, log, out, plan, len(samples))
        wait_quiet(emulator)
        seen = labeller.take()
        keys_seen = [samples.get(f) for f in seen]
        result.unknown_labelled += sum(1 for k in keys_seen if k is None)
        after_list = logged_keys(log)
        after = set(after_list)
        new = after - before
        seen_set = {k for k in keys_seen if k is not None}
        if not killed and code != 0:
            result.errors.append(f"run exited {code}: {stderr.strip()[-300:]}")
        if not new <= seen_set:
            result.errors.append(f"{len(new - seen_set)} new log records the emulator never labelled")
        result.runs.append(RunRecord(
            killed=killed, exit_code=code, labelled=len(seen), newly_logged=len(new),
            lost_in_flight=len(seen_set - after), relabelled_logged=len(seen_set & before),
            duplicates_in_run=len(seen) - len(set(seen)),
        ))
    final_keys = logged_keys(log)
    result.log_duplicates = len(final_keys) - len(set(final_keys))
    result.missing_at_end = len(set(samples.values()) - set(final_keys))
    result.matches_uninterrupted = out.exists() and tsv_rows(out) == reference
    return result


def run_trials(trials: int, seed: int = 0, workdir: Path | None = None, providers: Sequence[str] = PROVIDERS,
               images: int = 3, n0: int = 10, n: int = 40, progress=None) -> list[TrialResult]:
    """Run `trials` trials, cycling through `providers`; one emulator and one reference run per provider."""
    rng = random.Random(seed)
    results: list[TrialResult] = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crash-resume-")))
        paths = write_images(workdir, images, rng)
        order = [providers[i % len(providers)] for i in range(trials)]
        for provider in dict.fromkeys(order):
            job = Job(provider, paths, n0=n0, n=n, seed=seed)
            samples = job.samples()
            labeller = RecordingLabeller()
            with serving(provider, labeller) as (emulator, url):
                reference = reference_rows(job, emulator, labeller, url, workdir)
                for _ in range(order.count(provider)):
                    result = trial(job, emulator, labeller, url, workdir, rng, reference, samples)
                    results.append(result)
                    if progress is not None:
                        progress(result)
    return results


def describe(result: TrialResult) -> str:
    runs = " | ".join(
        f"{'KILL' if r.killed else 'done' if r.exit_code == 0 else f'exit {r.exit_code}'}: billed {r.labelled}, "
        f"logged +{r.newly_logged}, lost {r.lost_in_flight}, re-billed {r.relabelled_logged}"
        for r in result.runs
    )
    status = "ok" if result.ok else "FAIL " + "; ".join(result.errors)
    return f"{result.provider:8s} {result.samples} samples  {runs}  [{status}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--n0", type=int, default=10)
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run_trials(args.trials, args.seed, images=args.images, n0=args.n0, n=args.n,
                         progress=lambda r: print(describe(r), flush=True))
    runs = [r for t in results for r in t.runs]
    kills = sum(r.killed for r in runs)
    mid_run = sum(1 for r in runs if r.killed and r.labelled)
    print(
        f"\n{len(results)} trials, {kills} SIGKILLs ({mid_run} after the run had paid for answers, the rest during "
        f"start-up), {len(runs)} client runs in {time.monotonic() - started:.0f} s\n"
        f"samples per trial: {results[0].samples if results else 0}; billed in total "
        f"{sum(r.labelled for r in runs)} for {sum(t.samples for t in results)} distinct samples\n"
        f"reruns completed: {sum(1 for t in results if t.runs[-1].exit_code == 0)}/{len(results)}\n"
        f"samples billed again although logged: {sum(r.relabelled_logged for r in runs)}\n"
        f"samples billed twice within a run: {sum(r.duplicates_in_run for r in runs)}\n"
        f"answers lost in flight at kills: {sum(r.lost_in_flight for r in runs)} "
        f"(max per kill {max((r.lost_in_flight for r in runs), default=0)}, bound concurrency x batch)\n"
        f"duplicate log records: {sum(t.log_duplicates for t in results)}, "
        f"samples missing at the end: {sum(t.missing_at_end for t in results)}\n"
        f"final certificates equal to an uninterrupted run: {sum(t.matches_uninterrupted for t in results)}/{len(results)}"
    )
    failed = [t for t in results if not t.ok]
    print("ALL CHECKS PASSED" if not failed else f"{len(failed)} TRIAL(S) FAILED")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
