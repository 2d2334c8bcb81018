"""Permanent errors through the CLI against each provider's emulator: wrong credentials, a daily quota
exhausted, an image the provider rejects. Each costs at most one call, ends with one clear line naming the
provider and what to do, exits non-zero, reports nothing as certified and leaves the log valid."""
from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest
from PIL import Image

from robust_api import cli
from robust_api.providers import CLOUD_PROVIDER_NAMES
from robust_api.providers.emulator import emulator_class
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.query_logs import read_log

PROVIDERS = CLOUD_PROVIDER_NAMES  # the registry's cloud providers, each with an emulator
GOOD_CREDENTIALS = {
    "azure": {"AZURE_VISION_KEY": EMULATOR_KEY},
    "google": {"GOOGLE_API_KEY": EMULATOR_KEY},
    "aws": {"AWS_ACCESS_KEY_ID": EMULATOR_KEY, "AWS_SECRET_ACCESS_KEY": "emulator-secret", "AWS_REGION": "us-east-1"},
    "clarifai": {"CLARIFAI_PAT": EMULATOR_KEY},
}
# What the one-line error must point the user at, per provider.
CREDENTIAL_NAMES = {"azure": "AZURE_VISION_KEY", "google": "GOOGLE_API_KEY", "aws": "AWS_ACCESS_KEY_ID",
                    "clarifai": "CLARIFAI_PAT"}
REJECTED_WIDTH = 97  # the emulated provider refuses pictures this wide (noise keeps the size: all copies too)


def wrong_credentials(provider: str) -> dict[str, str]:
    token = secrets.token_hex(16)
    return {
        "azure": {"AZURE_VISION_KEY": token},
        "google": {"GOOGLE_API_KEY": token},
        "aws": {"AWS_ACCESS_KEY_ID": "AKIA" + token[:16].upper(), "AWS_SECRET_ACCESS_KEY": token,
                "AWS_REGION": "us-east-1"},
        "clarifai": {"CLARIFAI_PAT": token},
    }[provider]


class Labeller:
    """Brightness of the centre; refuses REJECTED_WIDTH-wide pictures like a provider refusing a format.
    Counts the refusals (one per rejected image the provider saw)."""

    def __init__(self) -> None:
        self.rejected = 0
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image):
        if image.size[0] == REJECTED_WIDTH:
            with self._lock:
                self.rejected += 1
            raise ValueError("unsupported picture")
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        mean = float(pixels[44:52, 44:52].mean())
        return [("bright", 0.9), ("dark", 0.6)] if mean >= 0.5 else [("dark", 0.9), ("bright", 0.6)]


def write_images(directory, count: int, rejected: int | None = None) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        width = REJECTED_WIDTH if i == rejected else 96
        pixels = (rng.uniform(0.3, 0.9, size=(96, width, 3)) * 255).astype(np.uint8)
        path = directory / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def certify(capsys, url: str, provider: str, images: list[str], log, out, *extra: str):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["certify", *images, "--api", provider, "--endpoint", url, "--n0", "3", "--n", "10", "--alpha", "0.05",
                  "--rate", "1000", "--concurrency", "16", "--log", str(log), "--out", str(out), *extra])
    stdout, stderr = capsys.readouterr()
    return exit_info.value.code, stdout, stderr


def assert_failed_cleanly(code, stdout: str, stderr: str, out, log, provider: str) -> str:
    """Exit 2, one line naming the provider, no traceback, nothing certified, the log readable."""
    assert code == cli.EXIT_USER_ERROR, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith(f"robust-api: error: {provider}: ") and "Traceback" not in stderr
    assert "certified" not in stdout and "Certified accuracy" not in stdout
    assert not out.exists()
    records = list(read_log(log)) if log.exists() else []  # raises if the log were torn or corrupt
    keys = [(r.image, r.phase, r.index) for r in records]
    assert len(keys) == len(set(keys))
    return line


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_credentials_cost_one_call_and_name_the_variable_to_fix(provider, tmp_path, capsys, monkeypatch):
    for name, value in wrong_credentials(provider).items():
        monkeypatch.setenv(name, value)
    emulator = emulator_class(provider)(labeller=Labeller())
    images = write_images(tmp_path, 3)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    with emulator.running() as url:
        code, stdout, stderr = certify(capsys, url, provider, images, log, out)
    line = assert_failed_cleanly(code, stdout, stderr, out, log, provider)
    assert emulator.stats.requests == 1 and emulator.stats.faults == {"auth": 1}
    assert ": auth: " in line and CREDENTIAL_NAMES[provider] in line, line
    assert list(read_log(log)) == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_exhausted_daily_quota_costs_one_call_and_says_to_wait(provider, tmp_path, capsys, monkeypatch):
    for name, value in GOOD_CREDENTIALS[provider].items():
        monkeypatch.setenv(name, value)
    emulator = emulator_class(provider)(labeller=Labeller(), knobs=EmulatorKnobs(daily_quota=0))
    images = write_images(tmp_path, 3)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    with emulator.running() as url:
        code, stdout, stderr = certify(capsys, url, provider, images, log, out)
    line = assert_failed_cleanly(code, stdout, stderr, out, log, provider)
    assert emulator.stats.requests == 1 and emulator.stats.faults == {"quota": 1}
    assert ": quota: " in line and "wait for the quota to reset" in line, line


def test_quota_running_out_mid_run_keeps_every_paid_answer_and_the_rerun_pays_only_the_rest(
    tmp_path, capsys, monkeypatch
):
    for name, value in GOOD_CREDENTIALS["aws"].items():
        monkeypatch.setenv(name, value)
    images = write_images(tmp_path, 2)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    total = 2 * (1 + 3 + 10)
    emulator = emulator_class("aws")(labeller=Labeller(), knobs=EmulatorKnobs(daily_quota=12))
    with emulator.running() as url:
        code, stdout, stderr = certify(capsys, url, "aws", images, log, out)
    line = assert_failed_cleanly(code, stdout, stderr, out, log, "aws")
    logged = len(list(read_log(log)))
    assert logged == emulator.stats.images_labelled == 12  # every paid answer is in the log
    # After the first quota error nothing new is sent; only calls already in flight can still hit it.
    assert 1 <= emulator.stats.faults["quota"] <= 16
    assert f"the 12 answer(s) this run paid for are saved in {log}" in line
    fresh = emulator_class("aws")(labeller=Labeller())  # the next day
    with fresh.running() as url:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["certify", *images, "--api", "aws", "--endpoint", url, "--n0", "3", "--n", "10", "--alpha",
                      "0.05", "--rate", "1000", "--log", str(log), "--out", str(out)])
    assert exit_info.value.code in (0, None)
    assert fresh.stats.images_labelled == fresh.stats.requests == total - 12
    assert len(list(read_log(log))) == total and out.exists()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_image_the_provider_rejects_costs_one_call_and_is_named(provider, tmp_path, capsys, monkeypatch):
    for name, value in GOOD_CREDENTIALS[provider].items():
        monkeypatch.setenv(name, value)
    labeller = Labeller()
    emulator = emulator_class(provider)(labeller=labeller)
    images = write_images(tmp_path, 2, rejected=1)
    log, out = tmp_path / "run.jsonl", tmp_path / "results.tsv"
    with emulator.running() as url:
        code, stdout, stderr = certify(capsys, url, provider, images, log, out)
    line = assert_failed_cleanly(code, stdout, stderr, out, log, provider)
    assert labeller.rejected == 1  # one of the rejected image's 14 samples was sent, no more
    assert ": invalid_image: " in line and "img1.png" in line and "convert or resize it" in line, line
    # The other image's answers were paid for: they are all logged, and the message says so.
    records = list(read_log(log))
    assert len(records) == emulator.stats.images_labelled == 14
    assert "rerun the same command" in line
