"""Canary credentials for all four providers in the environment; certify (accepted and refused), replay and
emulate with DEBUG logging everywhere: no canary, nor a recognisable piece or encoding of one, appears in any
log record, stdout/stderr, log message, exception text or results file."""
from __future__ import annotations

import base64
import logging
import os
import secrets
import string
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_api import cli
from robust_api.engine import CertifyParams
from robust_api.errors import RobustAPIError
from robust_api.providers import CLOUD_PROVIDER_NAMES
from robust_api.providers.emulator import emulator_class
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.run import RunConfig, run_certification

PROVIDERS = CLOUD_PROVIDER_NAMES  # the registry's cloud providers, each with an emulator
_SCRIPT = Path(sys.executable).parent / "robust-api"
# The installed console script (what users run), else the module.
ROBUST_API = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "robust_api.cli"]


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def make_canaries() -> dict[str, str]:
    """Fresh, unique, realistically shaped credentials for every provider (never real, never reused)."""
    upper_digits = string.ascii_uppercase + string.digits
    b64ish = string.ascii_letters + string.digits + "/+"
    return {
        "AZURE_VISION_KEY": secrets.token_hex(16),
        "GOOGLE_API_KEY": "AIza" + _random(string.ascii_letters + string.digits + "-_", 35),
        "AWS_ACCESS_KEY_ID": "AKIA" + _random(upper_digits, 16),
        "AWS_SECRET_ACCESS_KEY": _random(b64ish, 40),
        "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2Vj" + _random(b64ish, 120),
        "CLARIFAI_PAT": secrets.token_hex(16),
    }


# The credential each emulator checks, taken from the canaries (AWS checks the access key id it is signed with).
ACCEPTED = {"azure": "AZURE_VISION_KEY", "google": "GOOGLE_API_KEY", "aws": "AWS_ACCESS_KEY_ID",
            "clarifai": "CLARIFAI_PAT"}


def forms(secret: str) -> set[str]:
    """The canary, its distinctive middle, and its base64 / hex forms (a leak need not be verbatim)."""
    middle = secret[len(secret) // 4 : len(secret) // 4 + 12]
    raw = secret.encode()
    return {secret, middle, base64.b64encode(raw).decode()[4:-4], raw.hex()}


def assert_no_canary(canaries: dict[str, str], where: str, text: str | bytes) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for name, secret in canaries.items():
        for form in forms(secret):
            assert form not in text, f"{name} leaked into {where}"


@pytest.fixture
def canaries(monkeypatch) -> dict[str, str]:
    values = make_canaries()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_VISION_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return values


@pytest.fixture
def debug_everywhere(caplog):
    """Every logger at DEBUG (botocore, urllib3, azure-core, google-auth, ...), captured by pytest."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    logging.getLogger("robust_api").handlers[:] = [
        h for h in logging.getLogger("robust_api").handlers if not getattr(h, "_robust_api_cli", False)
    ]
    logging.getLogger("robust_api").propagate = True
    logging.getLogger("robust_api").setLevel(logging.NOTSET)


def labeller(image):
    mean = float(np.asarray(image, dtype=np.float32).mean()) / 255.0
    return [("bright", 0.9), ("dark", 0.6)] if mean >= 0.5 else [("dark", 0.9), ("bright", 0.6)]


def write_image(directory: Path) -> Path:
    path = directory / "photo.png"
    pixels = (np.random.default_rng(0).uniform(0.3, 0.8, size=(96, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def exception_text(exc: BaseException) -> str:
    """Everything an exception carries: formatted traceback, str/repr/args of it and of every chained one."""
    parts = ["".join(traceback.format_exception(exc))]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts += [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def run_cli(capfd, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    out, err = capfd.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.mark.parametrize("provider", PROVIDERS)
def test_certify_and_replay_with_debug_logging_leak_no_credential(provider, canaries, debug_everywhere, capfd,
                                                                   tmp_path):
    image = write_image(tmp_path)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    # The emulator accepts exactly the canary, and stumbles now and then so error paths log too.
    knobs = EmulatorKnobs(api_key=canaries[ACCEPTED[provider]], p_throttle=0.1, p_server_error=0.1,
                          p_malformed=0.1, p_reset=0.05, retry_after_s=0.05, seed=1)
    emulator = emulator_class(provider)(labeller=labeller, knobs=knobs)
    with emulator.running() as url:
        code, stdout, stderr = run_cli(capfd, "--debug", "certify", str(image), "--api", provider, "--endpoint", url,
                                       "--n0", "3", "--n", "8", "--alpha", "0.05", "--rate", "1000",
                                       "--max-attempts", "12", "--log", str(log), "--out", str(out))
    assert code == 0, stderr
    assert emulator.stats.images_labelled == 12 and emulator.stats.faults.get("auth", 0) == 0
    code, replay_out, replay_err = run_cli(capfd, "--debug", "replay", str(log), "--out", str(tmp_path / "r.tsv"))
    assert code == 0, replay_err
    # Not vacuous: the SDKs' and HTTP libraries' own DEBUG records (request headers among them) were captured.
    assert any(r.levelno == logging.DEBUG and r.name.split(".")[0] in ("botocore", "urllib3", "azure", "clarifai")
               for r in debug_everywhere.records)
    assert_no_canary(canaries, "certify stdout/stderr", stdout + stderr)
    assert_no_canary(canaries, "replay stdout/stderr", replay_out + replay_err)
    assert_no_canary(canaries, "log messages", debug_everywhere.text)
    assert_no_canary(canaries, "log records", "\n".join(repr(r.__dict__) for r in debug_everywhere.records))
    for path in (log, out, tmp_path / "r.tsv"):
        assert_no_canary(canaries, path.name, path.read_bytes())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_refused_credentials_leak_neither_in_the_error_line_nor_the_exception(provider, canaries, debug_everywhere,
                                                                              capfd, tmp_path):
    image = write_image(tmp_path)
    log = tmp_path / "run.jsonl"
    emulator = emulator_class(provider)(labeller=labeller, knobs=EmulatorKnobs(api_key=EMULATOR_KEY))
    with emulator.running() as url:
        code, stdout, stderr = run_cli(capfd, "--debug", "certify", str(image), "--api", provider, "--endpoint", url,
                                       "--n0", "3", "--n", "8", "--log", str(log))
        assert code == cli.EXIT_USER_ERROR and f"error: {provider}: auth" in stderr
        assert "Traceback" in stderr  # --debug shows the traceback: it must be clean too
        config = RunConfig(api=provider, params=CertifyParams(sigma=0.25, n0=3, n=8), endpoint=url, log=log)
        with pytest.raises(RobustAPIError) as caught:
            run_certification([image], config)
    assert emulator.stats.requests == 2  # one refused call per run
    assert_no_canary(canaries, "stdout/stderr", stdout + stderr)
    assert_no_canary(canaries, "exception", exception_text(caught.value))
    assert_no_canary(canaries, "log messages", debug_everywhere.text)
    assert_no_canary(canaries, "query log", log.read_bytes() if log.exists() else b"")


def test_emulate_and_certify_processes_with_debug_leak_no_credential(canaries, tmp_path):
    """Both sides as real processes: `robust-api --debug emulate` (canaries in its environment too) and a
    `robust-api --debug certify` sending the canary to it."""
    image = write_image(tmp_path)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([*ROBUST_API, "--debug", "emulate", "azure", "--port", "0", "--key", ""], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # "azure emulator listening on http://127.0.0.1:PORT (Ctrl-C to stop)"
        url = first.split(" on ")[1].split()[0]
        client = subprocess.run(
            [*ROBUST_API, "--debug", "certify", str(image), "--api", "azure", "--endpoint", url, "--n0", "2",
             "--n", "4", "--alpha", "0.1", "--log", str(log), "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=180,
        )
        replay = subprocess.run([*ROBUST_API, "--debug", "replay", str(log)], env=env, capture_output=True,
                                text=True, timeout=60)
    finally:
        server.terminate()
        try:
            server_out, server_err = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server_out, server_err = server.communicate()
    assert client.returncode == 0, client.stderr
    assert replay.returncode == 0, replay.stderr
    assert_no_canary(canaries, "emulate output", first + server_out + server_err)
    assert_no_canary(canaries, "certify output", client.stdout + client.stderr)
    assert_no_canary(canaries, "replay output", replay.stdout + replay.stderr)
    assert_no_canary(canaries, "query log", log.read_bytes())
    assert_no_canary(canaries, "results", out.read_bytes())
