"""The composition root: one session builds every part, and a run replays to the same table row by row."""
from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np
import pytest
import torch

from robust_api.api import RobustAPI
from robust_api.images import load_image
from robust_api.modes import CertifyParams
from robust_api.providers.local import LocalProvider
from robust_api.query_logs import read_log
from robust_api.replay import replay, replay_records
from robust_api.results import write_results_tsv
from robust_api.session import Session, SessionConfig


def brightness(image):
    mean = float(np.asarray(image, dtype=np.float32).mean())
    p = 1.0 / (1.0 + np.exp(-(mean - 0.5) * 200.0))
    return {"bright": p, "dark": 1.0 - p}


class SlowOnDark(LocalProvider):
    """Answers noisy copies of dark images after a delay, so a dark first input's records are logged after the
    next image's (the test's claim holds whatever the order; the delay makes the reordering likely)."""

    async def classify(self, images):
        answers = await super().classify(images)
        dark = any(a.response["predictions"][0]["label"] == "dark" for a in answers if hasattr(a, "response"))
        if dark and len(images) > 1:
            await asyncio.sleep(0.3)
        return answers


def grey(level: float):
    return load_image(np.full((16, 16, 3), level, dtype=np.float32), name=f"grey{level}")


@pytest.mark.parametrize("mode", ["fixed", "sequential"])
def test_images_certified_concurrently_replay_to_the_identical_table(tmp_path, mode):
    log = tmp_path / "q.jsonl"
    provider = SlowOnDark(brightness, input="array", model_name="brightness", model_version="1")
    images = [grey(0.3), grey(0.8), grey(0.35), grey(0.7)]
    kw = {"max_queries": 60, "target_radius": 0.2} if mode == "sequential" else {}
    with RobustAPI("local", provider=provider, log=log) as api:
        certs = api.certify_many(images, noise_sd=0.12, N0=5, N=40, alpha=0.01, mode=mode, **kw)
    write_results_tsv(tmp_path / "online.tsv", certs)
    replayed = replay(log, alpha=0.01)
    write_results_tsv(tmp_path / "replay.tsv", replayed)
    assert [c.image for c in replayed] == [im.sha256 for im in images]
    assert (tmp_path / "online.tsv").read_text() == (tmp_path / "replay.tsv").read_text()
    positions = {r.image: r.extra["position"] for r in read_log(log) if r.phase != "clean"}
    assert [positions[im.sha256] for im in images] == [0, 1, 2, 3]


def test_replay_order_follows_logged_positions_not_file_order(tmp_path):
    log = tmp_path / "q.jsonl"
    provider = LocalProvider(brightness, input="array", model_name="brightness", model_version="1")
    with RobustAPI("local", provider=provider, log=log) as api:
        api.certify_many([grey(0.2), grey(0.9)], noise_sd=0.12, N0=3, N=10, alpha=0.05)
    records = list(read_log(log))
    first = records[0].image
    reordered = [r for r in records if r.image != first] + [r for r in records if r.image == first]
    assert [c.image for c in replay_records(reordered)] == [c.image for c in replay_records(records)]
    # without positions (logs of older versions, legacy imports) the order is first appearance, as before
    bare = [dataclasses.replace(r, extra={k: v for k, v in r.extra.items() if k != "position"}) for r in reordered]
    assert replay_records(bare)[0].image != first


def test_a_resumed_run_keeps_input_order_in_replay(tmp_path):
    log = tmp_path / "q.jsonl"
    provider = LocalProvider(brightness, input="array", model_name="brightness", model_version="1")
    images = [grey(0.2), grey(0.4), grey(0.6), grey(0.8)]
    with RobustAPI("local", provider=provider, log=log) as api:  # a first run that got through two images
        api.certify_many(images[:2], noise_sd=0.12, N0=3, N=10, alpha=0.05)
    with RobustAPI("local", provider=provider, log=log) as api:  # the rerun of the whole job
        certs = api.certify_many(images, noise_sd=0.12, N0=3, N=10, alpha=0.05)
    assert certs[0].calls_paid == 0
    assert [c.image for c in replay(log)] == [im.sha256 for im in images]


def test_session_builds_emulator_provider_log_and_closes_them(tmp_path):
    log = tmp_path / "q.jsonl"
    config = SessionConfig(api="aws", emulator=True, emulator_labeller=lambda image: [("thing", 0.9)], log=log,
                           provider_options={"min_confidence": 1.0})
    with Session(config) as session:
        assert session.emulator is not None and session.provider.name == "aws"
        engine = session.engine_for(0.25)
        assert session.engine_for(0.25) is engine  # one engine per noise level, shared dispatcher and cache
        assert engine.dispatcher is session.dispatcher and engine.index is session.index

        async def go():
            try:
                return await session.certify_all([grey(0.5)], CertifyParams(sigma=0.25, n0=2, n=5, alpha=0.1))
            finally:
                await session.aclose()

        (cert,) = asyncio.run(go())
        assert cert.calls_paid == 8 and session.emulator.stats.requests >= 8
    assert session.writer.closed if hasattr(session.writer, "closed") else True
    assert len(list(read_log(log))) == 8


def test_denoiser_loaded_per_noise_level_carries_its_identity_beside_it(tmp_path):
    provider = LocalProvider(brightness, input="array", model_name="brightness", model_version="1")
    with Session(SessionConfig(api="local", provider=provider, denoiser="tv")) as session:
        low, high = session.engine_for(0.12), session.engine_for(0.25)
        assert low is not high
        assert low.denoiser_id["name"] == "tv:w=0.072" and high.denoiser_id["name"] == "tv:w=0.15"


def test_a_denoiser_trained_at_another_sigma_warns_once_in_one_line(caplog):
    from robust_api.denoisers.registry import list_denoisers, serve_denoiser

    entry = next(w for w in list_denoisers() if w.sigma == 0.25 and w.objective == "mse")
    with caplog.at_level(logging.WARNING):
        serve_denoiser(entry.name, 0.26, device="cpu", optimize=False)  # within 20%: silent
        assert not caplog.records
        served = serve_denoiser(entry.name, 0.5, device="cpu", optimize=False)
    (record,) = caplog.records
    assert "trained at sigma 0.25 but certifies at sigma 0.5" in record.getMessage() and "\n" not in record.getMessage()
    assert served.identity.sigma == 0.25 and served.identity.as_log() == {"name": entry.name, "sha256": entry.sha256}
    assert isinstance(served.module, torch.nn.Module)
