"""The online path end to end through the local provider: certify, log, cache, resume, replay."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from robust_api import smoothing
from robust_api.api import RobustAPI
from robust_api.decision import Top1
from robust_api.dispatch import Dispatcher
from robust_api.engine import CertifyParams, Engine
from robust_api.images import load_image
from robust_api.providers.local import LocalProvider
from robust_api.query_logs import LogIndex, QueryLogWriter, read_log
from robust_api.replay import replay
from robust_api.results import TSV_HEADER, read_results_tsv, write_results_tsv


class Brightness:
    """A model whose answer depends on the noisy pixels: 'bright' when the mean exceeds a threshold."""

    model_version = "brightness-1"

    def __init__(self, threshold=0.5, fail_after=None):
        self.threshold = threshold
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, image):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("model crashed")
        mean = float(np.asarray(image, dtype=np.float32).mean())
        p = 1.0 / (1.0 + np.exp(-(mean - self.threshold) * 200.0))
        return {"bright": p, "dark": 1.0 - p}


def grey(level: float, size: int = 16):
    return load_image(np.full((size, size, 3), level, dtype=np.float32), name=f"grey{level}")


def make_engine(model, log=None, index=None, denoiser=None):
    provider = LocalProvider(model, input="array", model_name="brightness", model_version="1")
    dispatcher = Dispatcher(provider, concurrency=4)
    writer = QueryLogWriter(log) if log else None
    engine = Engine(provider, dispatcher, Top1(), log=writer, index=index or (LogIndex.from_logs([log]) if log else None),
                    denoiser=denoiser, denoiser_id={"name": "box", "sha256": "0" * 64} if denoiser is not None else None)
    return engine, writer


async def test_certificate_matches_smoothing_and_replay(tmp_path):
    log = tmp_path / "q.jsonl"
    model = Brightness(threshold=0.45)
    engine, writer = make_engine(model, log)
    image = grey(0.52)
    params = CertifyParams(sigma=0.25, n0=10, n=60, alpha=0.01)
    cert = await engine.certify(image, params)
    writer.close()
    assert cert.calls_paid == 1 + 10 + 60 == model.calls
    assert sum(cert.counts_estimation.values()) == 60
    expected = smoothing.certify(cert.counts_selection, cert.counts_estimation, 0.25, 0.01)
    assert (cert.label if cert.label is not None else -1, cert.radius_l2) == expected
    assert cert.label == "bright" and cert.radius_l2 > 0
    records = list(read_log(log))
    assert len(records) == 71 and {r.phase for r in records} == {"clean", "selection", "estimation"}
    [replayed] = replay([log], alpha=0.01)
    assert (replayed.label, replayed.radius_l2, replayed.clean_label) == (cert.label, cert.radius_l2, cert.clean_label)
    out = tmp_path / "r.tsv"
    write_results_tsv(out, [cert])
    assert out.read_text().splitlines()[0].split("\t") == list(TSV_HEADER)
    assert read_results_tsv(out)[0]["predict"] == "bright"


async def test_rerun_pays_for_nothing_already_logged(tmp_path):
    log = tmp_path / "q.jsonl"
    params = CertifyParams(sigma=0.12, n0=5, n=30, alpha=0.05)
    first_model = Brightness()
    engine, writer = make_engine(first_model, log)
    first = await engine.certify(grey(0.6), params)
    writer.close()
    again_model = Brightness()
    engine, writer = make_engine(again_model, log)
    second = await engine.certify(grey(0.6), params)
    writer.close()
    assert again_model.calls == 0 and second.cache_hits == 36 and second.calls_paid == 0
    assert (second.label, second.radius_l2) == (first.label, first.radius_l2)


async def test_interrupted_run_resumes_paying_only_the_rest(tmp_path):
    log = tmp_path / "q.jsonl"
    params = CertifyParams(sigma=0.25, n0=10, n=50, alpha=0.01)
    crashing = Brightness(fail_after=25)
    engine, writer = make_engine(crashing, log)
    with pytest.raises(RuntimeError):
        await engine.certify(grey(0.55), params)
    writer.close()
    logged = len(list(read_log(log)))
    # Answers of calls that returned before the crash are kept (the call that crashed returned none).
    assert 0 < logged <= 25
    resumed = Brightness()
    engine, writer = make_engine(resumed, log)
    cert = await engine.certify(grey(0.55), params)
    writer.close()
    assert resumed.calls == 61 - logged and cert.cache_hits == logged
    fresh = Brightness()
    engine, writer = make_engine(fresh, tmp_path / "fresh.jsonl")
    uninterrupted = await engine.certify(grey(0.55), params)
    writer.close()
    assert (cert.label, cert.radius_l2) == (uninterrupted.label, uninterrupted.radius_l2)


async def test_clean_mode_uses_the_clean_label_and_skips_selection(tmp_path):
    model = Brightness()
    engine, _ = make_engine(model)
    cert = await engine.certify(grey(0.7), CertifyParams(sigma=0.12, n=40, alpha=0.01, mode="clean"))
    assert model.calls == 41 and cert.counts_selection == {} and cert.label == cert.clean_label == "bright"
    assert cert.radius_l2 == pytest.approx(smoothing.certify_with_candidate("bright", cert.counts_estimation, 0.12, 0.01)[1])


async def test_denoiser_runs_on_noisy_samples_only(tmp_path):
    class Flatten(torch.nn.Module):  # replaces every pixel by the image mean: a perfect denoiser for flat images
        def __init__(self):
            super().__init__()
            self.seen = 0
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            self.seen += x.shape[0]
            return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x) * self.scale

    den = Flatten()
    den.denoiser_precision = "bfloat16"  # as optimize_for_inference marks it
    model = Brightness(threshold=0.5)
    engine, writer = make_engine(model, tmp_path / "q.jsonl", denoiser=den)
    cert = await engine.certify(grey(0.55), CertifyParams(sigma=0.5, n0=8, n=40, alpha=0.01))
    writer.close()
    assert den.seen == 48  # clean image is sent as is
    assert cert.counts_estimation == {"bright": 40}  # the mean of noisy copies stays above 0.5
    records = list(read_log(tmp_path / "q.jsonl"))
    assert {r.extra.get("denoiser_precision") for r in records} == {"bfloat16"}  # noted, but not in the cache key
    assert all(r.denoiser == {"name": "box", "sha256": "0" * 64} for r in records)


def test_robustapi_reference_signatures_online_and_offline(tmp_path):
    provider = LocalProvider(Brightness(), input="array", model_name="brightness", model_version="1")
    with RobustAPI("local", provider=provider, log=tmp_path / "q.jsonl") as api:
        label, radius, logs = api.certify(np.full((16, 16, 3), 0.7, np.float32), noise_sd=0.12, N0=5, N=30, alpha=0.01)
        majority, distribution, plogs = api.predict(np.full((16, 16, 3), 0.3, np.float32), N=10, noise_sd=0.12)
    assert label == "bright" and radius > 0 and len(logs) == 35
    assert majority == "dark" and sum(distribution.values()) == 10 and len(plogs) == 10
    offline = RobustAPI("local", online=False)
    assert offline.certify(logs, 0.12, 5, 30, 0.01) == (label, pytest.approx(radius))
    assert offline.predict(logs[5:])[0] == "bright"
    hopeless = [{"predictions": [{"label": name, "score": 1.0}]} for name in ["a", "b"] * 20]
    assert offline.certify(hopeless, 0.25, 10, 30, 0.01) == (-1, 0.0)


async def test_sequential_mode_stops_early_both_ways_and_logs_its_plan(tmp_path):
    from robust_api.sequential import SequentialPlan, certify_sequential

    log = tmp_path / "q.jsonl"
    params = CertifyParams(sigma=0.25, n0=20, n=100, alpha=0.001, mode="sequential", target_radius=0.3)
    easy_model = Brightness(threshold=0.3)
    engine, writer = make_engine(easy_model, log)
    easy = await engine.certify(grey(0.8), params)  # unanimous: certifies at the first look
    rng = np.random.default_rng(0)
    engine.provider._callable = lambda image: {str(rng.integers(4)): 1.0}  # same log; four equally likely labels
    hopeless = await engine.certify(grey(0.5), params)
    writer.close()
    assert easy.label == "bright" and easy.radius_l2 >= 0.3 and easy_model.calls - 1 < 120
    assert hopeless.label is None and hopeless.calls_paid < 40
    records = [r for r in read_log(log) if r.phase == "estimation" and r.image == easy.image]
    plan = SequentialPlan.from_dict(records[0].extra["plan"])
    replayed = certify_sequential(plan, easy.clean_label, [r.label for r in sorted(records, key=lambda r: r.index)])
    assert replayed.as_tuple() == ("bright", pytest.approx(easy.radius_l2))


async def test_per_image_call_counts_are_exact_when_images_run_concurrently():
    from robust_api.api import certify_all

    model = Brightness()
    engine, _ = make_engine(model)
    images = [grey(v) for v in (0.2, 0.4, 0.6, 0.8)]
    params = CertifyParams(sigma=0.12, n0=5, n=20, alpha=0.05)
    certs = await certify_all(engine, images, params)
    assert [c.calls_paid for c in certs] == [26] * 4 and sum(c.cache_hits for c in certs) == 0
    again = await certify_all(engine, images, params)  # same engine: everything is in the index now
    assert [c.cache_hits for c in again] == [26] * 4 and sum(c.calls_paid for c in again) == 0
