"""Full access: label counts per range of samples through the model we hold, logged as count records.

Against a cheap deterministic torch model (brightness thresholds, so certificates vary), full access gives
the per-call local path's certificates (same noise, same 8-bit pixels, same labels), replay reproduces them,
a killed run resumes from the ranges logged, and a sequential run stops early and replays."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robust_api.errors import ConfigError
from robust_api.images import load_image
from robust_api.modes import CertifyParams
from robust_api.providers.local import LocalProvider
from robust_api.query_logs import read_log
from robust_api.query_logs.counts import read_count_records
from robust_api.replay import replay
from robust_api.results import write_results_tsv
from robust_api.run import RunConfig, run_certification


class Brightness(torch.nn.Module):
    """Logits of 'dark' / 'mid' / 'bright' from the mean pixel: near a threshold, noise splits the votes."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = torch.nn.Parameter(torch.tensor([0.2, 0.5, 0.8]), requires_grad=False)

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))[:, None]
        return -((mean - self.centres) ** 2) * 4000.0


def provider() -> LocalProvider:
    return LocalProvider(Brightness(), ["dark", "mid", "bright"], model_name="brightness")


def images():
    rng = np.random.default_rng(0)
    levels = [0.2, 0.35, 0.5, 0.64]  # clear, borderline (abstains or small radius), clear, borderline
    return [load_image(np.clip(level + rng.normal(0, 0.05, (12, 12, 3)), 0, 1).astype(np.float32), name=f"g{level}")
            for level in levels]


def run(tmp_path, name, *, full_access, params, log=None, imgs=None):
    log = log or tmp_path / f"{name}.jsonl"
    out = tmp_path / f"{name}.tsv"
    config = RunConfig(api="local", provider=provider(), params=params, log=log, out=out, full_access=full_access)
    return log, out, run_certification(imgs or images(), config)


def rows(path):
    return [line.split("\t")[:5] for line in path.read_text().splitlines()]


PARAMS = CertifyParams(sigma=0.12, n0=10, n=120, alpha=0.01, seed=5)


def test_full_access_gives_the_per_call_certificates_and_replays_to_its_table(tmp_path):
    _, per_call_tsv, per_call = run(tmp_path, "calls", full_access=False, params=PARAMS)
    log, tsv, counted = run(tmp_path, "counts", full_access=True, params=PARAMS)
    assert rows(tsv) == rows(per_call_tsv)
    for a, b in zip(per_call.certificates, counted.certificates):
        assert (a.counts_selection, a.counts_estimation, a.clean_label) == (b.counts_selection, b.counts_estimation, b.clean_label)
    radii = [c.radius_l2 for c in counted.certificates]
    assert max(radii) > 0.1 and min(radii) < max(radii)  # clear images certify far, borderline ones less or abstain
    assert list(read_log(log)) == []  # no per-call records: only count records
    records = list(read_count_records(log))
    assert sum(r.n for r in records) == counted.stats.billable_calls == 4 * (1 + 10 + 120)
    write_results_tsv(tmp_path / "replay.tsv", replay(log, alpha=0.01))
    assert (tmp_path / "replay.tsv").read_text() == tsv.read_text()


def test_a_killed_run_resumes_from_the_ranges_it_logged(tmp_path, monkeypatch):
    import robust_api.full_access as fa

    monkeypatch.setattr(fa, "RANGE", 50)  # estimation in 3 ranges per image
    log, tsv, first = run(tmp_path, "full", full_access=True, params=PARAMS)
    lines = log.read_text().splitlines(keepends=True)
    kept = [line for i, line in enumerate(lines) if i % 3 != 1]  # as if a kill lost every third range ...
    torn = lines[1][: len(lines[1]) // 2]  # ... and tore the last write
    log.write_text("".join(kept) + torn)
    lost = sum(json.loads(line)["stop"] - json.loads(line)["start"] for i, line in enumerate(lines) if i % 3 == 1)
    _, again_tsv, again = run(tmp_path, "again", full_access=True, params=PARAMS, log=log)
    assert again.stats.billable_calls == lost  # exactly the lost ranges were computed again
    assert again.stats.cache_hits == first.stats.billable_calls - lost
    assert rows(again_tsv) == rows(tsv)
    assert sorted(r.key() for r in read_count_records(log)) == sorted({r.key() for r in read_count_records(log)})


def test_sequential_full_access_stops_early_and_replays(tmp_path, monkeypatch):
    import robust_api.full_access as fa

    monkeypatch.setattr(fa, "RANGE", 64)
    params = CertifyParams(sigma=0.12, mode="sequential", max_queries=600, target_radius=0.05, alpha=0.01, seed=5)
    log, tsv, result = run(tmp_path, "seq", full_access=True, params=params)
    used = [sum(c.counts_estimation.values()) for c in result.certificates]
    assert min(used) < 600  # a clear image stops at an early look
    assert result.stats.billable_calls < 4 * 601
    _, calls_tsv, _ = run(tmp_path, "calls", full_access=False, params=params)
    assert rows(tsv) == rows(calls_tsv)
    write_results_tsv(tmp_path / "replay.tsv", replay(log))
    assert rows(tmp_path / "replay.tsv") == rows(tsv)


def test_full_access_needs_a_model_run_here():
    from robust_api.session import Session

    with pytest.raises(ConfigError, match="full access needs a model run here"):
        Session(RunConfig(api="aws", emulator=True, params=PARAMS, full_access=True))


def test_robust_api_full_access_certifies_from_counts(tmp_path):
    from robust_api.api import RobustAPI

    image = images()[0]
    with RobustAPI("local", provider=provider(), full_access=True, log=tmp_path / "q.jsonl") as api:
        label, radius, logs = api.certify(image, noise_sd=0.12, N0=10, N=120, alpha=0.01)
    with RobustAPI("local", provider=provider()) as api:
        assert api.certify(image, noise_sd=0.12, N0=10, N=120, alpha=0.01)[:2] == (label, radius)
    assert logs == [] and label == "dark" and radius > 0
    assert sum(r.n for r in read_count_records(tmp_path / "q.jsonl")) == 1 + 10 + 120


MODEL = '''
import numpy as np

def label(image):
    """Brightness thresholds of a PIL image: dark / mid / bright, scores summing to 1."""
    mean = float(np.asarray(image, dtype=np.float32).mean()) / 255.0
    near = np.exp(-((mean - np.array([0.2, 0.5, 0.8])) ** 2) * 400.0)
    return dict(zip(["dark", "mid", "bright"], (near / near.sum()).tolist()))
'''


def test_a_sigkilled_full_access_run_resumes_from_the_ranges_it_logged(tmp_path):
    """The command is SIGKILLed once 3 ranges of 1000 are logged (of 41); the rerun counts only the rest, and its
    table equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    (tmp_path / "brightmodel.py").write_text(MODEL)
    Image.fromarray(np.full((12, 12, 3), 90, dtype=np.uint8)).save(tmp_path / "grey.png")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def command(log, out):
        return [sys.executable, "-c", "from robust_api.cli import main; main()", "certify", str(tmp_path / "grey.png"),
                "--api", "local", "--model", "brightmodel:label", "--full-access", "--sigma", "0.12", "--n0", "10",
                "--n", "40000", "--log", str(log), "--out", str(out), "--no-table"]

    log = tmp_path / "q.jsonl"
    proc = subprocess.Popen(command(log, tmp_path / "killed.tsv"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    logged = sum(r.n for r in read_count_records(log))
    assert 0 < logged < 1 + 10 + 40000
    subprocess.run(command(log, tmp_path / "resumed.tsv"), env=env, check=True, capture_output=True)
    subprocess.run(command(tmp_path / "whole.jsonl", tmp_path / "whole.tsv"), env=env, check=True, capture_output=True)
    assert rows(tmp_path / "resumed.tsv") == rows(tmp_path / "whole.tsv")
    records = list(read_count_records(log))
    assert sum(r.n for r in records) == 1 + 10 + 40000  # each range counted once: nothing logged was redone
    assert len({r.key() for r in records}) == len(records)


def test_counts_decided_by_another_rule_are_not_reused(tmp_path):
    """Count records hold labels, not responses: a rerun with another decision rule counts afresh."""
    log = tmp_path / "q.jsonl"
    imgs = images()[:1]
    for decision, paid in [("top1", 131), ("present:dark:0.5", 131), ("top1", 0)]:
        config = RunConfig(api="local", provider=provider(), params=PARAMS, log=log, full_access=True,
                           decision=decision)
        result = run_certification(imgs, config)
        assert result.stats.billable_calls == paid
    labels: dict[str, set] = {}
    for r in read_count_records(log):
        labels.setdefault(r.decision, set()).update(r.counts)
    assert set(labels) == {"top1", "present:dark:0.5"}
    assert labels["top1"] <= {"dark", "mid", "bright"} and "dark" in labels["top1"]
    assert "mid" not in labels["present:dark:0.5"] and "bright" not in labels["present:dark:0.5"]


def test_replay_of_count_records_uses_complete_plans_and_leaves_out_an_unfinished_image(tmp_path, monkeypatch, caplog):
    import dataclasses
    import logging

    import robust_api.full_access as fa

    monkeypatch.setattr(fa, "RANGE", 50)
    log, tsv, first = run(tmp_path, "full", full_access=True, params=PARAMS)  # n = 120
    run(tmp_path, "more", full_access=True, params=dataclasses.replace(PARAMS, n=170), log=log)
    shas = [c.image for c in first.certificates]
    lines = log.read_text().splitlines(keepends=True)

    def lost(line: str) -> bool:
        r = json.loads(line)
        if r["phase"] != "estimation":
            return False
        # as if the second run were killed after image 0, and the first one after image 3's first range
        return (r["start"] >= 120 and r["image"] != shas[0]) or (r["image"] == shas[3] and r["start"] == 50)

    log.write_text("".join(line for line in lines if not lost(line)))
    with caplog.at_level(logging.WARNING):
        certs = replay(log, alpha=0.01)
    assert [c.image for c in certs] == shas[:3]
    assert sum(certs[0].counts_estimation.values()) == 170  # the larger run finished image 0
    for again, before in zip(certs[1:], first.certificates[1:3]):  # the others replay at the first run's N
        assert (again.label, again.radius_l2, again.counts_estimation) == (before.label, before.radius_l2,
                                                                          before.counts_estimation)
    assert f"image {shas[3][:16]}" in caplog.text and "not certified" in caplog.text
    # clean mode uses no selection samples, so their plan does not hold an image back
    assert [c.image for c in replay(log, alpha=0.01, mode="clean")] == shas[:3]
