"""Fault injection through every provider's emulator (its real SDK over loopback): throttling and 503s with
Retry-After, hangs past the per-call timeout, malformed bodies and connection resets. Every run completes,
every sample is counted exactly once, retries stay within budget and are reported per kind.
(benchmarks/fault_matrix.py runs the full provider x fault-mix matrix at a larger n.)"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from robust_api import cli
from robust_api.providers import CLOUD_PROVIDER_NAMES
from robust_api.query_logs import read_log

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_matrix.py"
PROVIDERS = CLOUD_PROVIDER_NAMES  # the registry's cloud providers, each with an emulator


def load_harness():
    spec = importlib.util.spec_from_file_location("fault_matrix_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fault_matrix = load_harness()


@pytest.fixture
def emulator_credentials(monkeypatch):
    for env in fault_matrix.CREDENTIAL_ENV.values():
        for name, value in env.items():
            monkeypatch.setenv(name, value)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_provider_completes_a_fault_storm_counting_each_sample_once(tmp_path, emulator_credentials):
    storm = fault_matrix.MIXES["all"]  # 15% throttled + 15% 503 (Retry-After 0.05 s), 5% hangs, 2% garbled, 3% resets
    assert storm["p_throttle"] + storm["p_server_error"] == pytest.approx(0.30)

    def one(provider):
        workdir = tmp_path / provider
        workdir.mkdir()
        # seed 6: the first 51 fault draws hold every kind, so single-image-per-call providers meet them all
        return fault_matrix.run_with_faults(provider, "all", storm, workdir, images=1, n0=10, n=40, seed=6)

    # The runs mostly sleep (backoff, Retry-After, hangs): run the four providers side by side.
    with concurrent.futures.ThreadPoolExecutor(len(PROVIDERS)) as pool:
        runs = list(pool.map(one, PROVIDERS))
    for run in runs:
        assert run.problems() == [], (run.provider, run.problems())
        assert run.completed and run.records == run.samples_expected == 51
        assert run.samples_lost == 0 and run.duplicates == 0 and run.count_mismatches == 0
        assert 1 <= run.max_attempts_seen <= fault_matrix.MAX_ATTEMPTS
        assert run.failures == {}  # nothing gave up
        assert sum(run.faults.values()) >= 1, run.provider
    for run in runs:
        if run.provider in ("azure", "aws"):  # one image per request: every fault kind was injected and survived
            assert set(run.faults) == {"throttled", "server", "timeout", "malformed", "reset"}, run.faults
            assert set(run.retries) >= {"throttled", "server", "malformed", "connection"}, run.retries


def _summary_numbers(stdout: str) -> tuple[int, int, dict[str, int], str]:
    # the console wraps long lines: the summary is everything from "billable calls" on, rejoined
    line = " ".join(stdout[stdout.index("billable calls"):].split())
    billable = int(re.search(r"billable calls (\d+)", line).group(1))
    requests = int(re.search(r"requests (\d+)", line).group(1))
    retries_text = re.search(r"retries: (.*?), failures: (.*)$", line)
    retries = {} if retries_text.group(1) == "none" else {
        kind: int(count) for kind, count in (item.split() for item in retries_text.group(1).split(", "))
    }
    return billable, requests, retries, retries_text.group(2)


def test_cli_summary_reports_retries_per_kind_and_requests_add_up(tmp_path, capsys, monkeypatch):
    import robust_api.providers.emulator.labeller as labeller_module

    monkeypatch.setattr(labeller_module, "default_labeller", lambda *a, **k: fault_matrix.patch_labeller)
    [image] = fault_matrix.write_images(tmp_path, 1)
    log = tmp_path / "run.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["certify", str(image), "--api", "aws", "--emulator", "--emu-p-reset", "0.15",
                  "--emu-p-malformed", "0.15", "--emu-p-5xx", "0.1", "--n0", "5", "--n", "20", "--alpha", "0.05",
                  "--rate", "1000", "--max-attempts", "12", "--log", str(log), "--no-table", "--seed", "3"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    billable, requests, retries, failures = _summary_numbers(out)
    records = list(read_log(log))
    assert billable == len(records) == 26 and len({(r.phase, r.index) for r in records}) == 26
    # AWS sends one image per request: every request beyond the 26 answered ones was a retried fault.
    assert requests == 26 + sum(retries.values()) and set(retries) <= {"connection", "malformed", "server"}
    assert sum(retries.values()) >= 3 and failures == "none"
    assert sum(r.attempts for r in records) == requests


def test_persistent_5xx_gives_up_after_max_attempts_with_one_line(tmp_path, capsys, emulator_credentials):
    [image] = fault_matrix.write_images(tmp_path, 1)
    log = tmp_path / "run.jsonl"
    knobs = fault_matrix.fault_knobs({"p_server_error": 1.0})
    from robust_api.providers.emulator.aws import AwsEmulator

    emulator = AwsEmulator(labeller=fault_matrix.patch_labeller, knobs=knobs)
    with emulator.running() as url, pytest.raises(SystemExit) as exit_info:
        cli.main(["certify", str(image), "--api", "aws", "--endpoint", url, "--n0", "3", "--n", "6",
                  "--max-attempts", "3", "--rate", "1000", "--log", str(log), "--concurrency", "4"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robust-api: error: aws: server:"), err
    # The one line says what was tried: attempts, failures and retries per kind.
    assert "gave up after 3 attempt(s) per call (--max-attempts)" in lines[0], lines[0]
    failed = int(re.search(r"failed calls: server (\d+)", lines[0]).group(1))
    retried = int(re.search(r"retries: server (\d+)", lines[0]).group(1))
    assert failed >= 1 and retried == 2 * failed == emulator.stats.requests - failed
    assert "Traceback" not in err and "certified" not in out
    # Bounded: no sample was tried more than --max-attempts times, and nothing was answered or logged.
    assert emulator.stats.requests <= 3 * (1 + 3 + 6) and emulator.stats.images_labelled == 0
    assert list(read_log(log)) == []
