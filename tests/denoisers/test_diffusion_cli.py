"""`robust-api certify photo.png --api aws --emulator --denoiser diffusion:./tiny-unet` end to end: a tiny random
UNet2DModel saved with save_pretrained denoises every noisy copy (a 96x96 photo, resized to the model's 32x32 and
back), the AWS SDK sends them to the emulator, the log names the diffusion denoiser, `replay` recounts the same
certificates, and a rerun pays for nothing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robust_api import cli
from robust_api.denoisers.registry import file_sha256
from robust_api.query_logs import read_log
from robust_api.results import read_results_tsv


def centre_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """'bright' or 'dark' by the mean of the central 8x8 patch: fast and sensitive to what the denoiser did."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    h, w = pixels.shape[:2]
    mean = float(pixels[h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4].mean())
    top, other = ("bright", "dark") if mean >= 0.5 else ("dark", "bright")
    return [(top, 0.6 + 0.8 * min(0.5, abs(mean - 0.5))), (other, 0.58)]


def run(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    return " ".join(out.split())


def rows(path) -> list[tuple[str, ...]]:
    return [(r["idx"], r["label"], r["predict"], r["radius"], r["correct"]) for r in read_results_tsv(path)]


def test_certify_with_a_tiny_diffusion_unet_through_the_aws_emulator_replays_identically(tmp_path, capsys,
                                                                                          monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    import torch

    import robust_api.providers.emulator.labeller as labeller_module

    monkeypatch.setattr(labeller_module, "default_labeller", lambda *a, **k: centre_labeller)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ).save_pretrained("tiny-unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained("tiny-unet")
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.3, 0.9, size=(96, 96, 3))
    pixels[40:56, 40:56] = 0.8
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save("photo.png")

    certify = ("certify", "photo.png", "--api", "aws", "--emulator", "--denoiser", "diffusion:./tiny-unet",
               "--n0", "5", "--n", "20", "--alpha", "0.05", "--rate", "1000", "--seed", "0", "--no-table",
               "--log", "run.jsonl")
    first = run(capsys, *certify, "--out", "certify.tsv")
    assert "billable calls 26" in first
    records = list(read_log(tmp_path / "run.jsonl"))
    assert len(records) == 26
    denoised = [r for r in records if r.phase != "clean"]
    assert denoised and all(r.denoiser["name"].startswith("diffusion:tiny-unet@t=144,sigma=0.25,resize=32x32,cfg=")
                            and r.denoiser["sha256"] == file_sha256("tiny-unet/diffusion_pytorch_model.safetensors")
                            for r in denoised)

    run(capsys, "replay", "run.jsonl", "--alpha", "0.05", "--out", "replay.tsv")
    assert rows("replay.tsv") == rows("certify.tsv") and len(rows("certify.tsv")) == 1

    again = run(capsys, *certify, "--out", "again.tsv")  # the denoiser reloads with the same identity: all cached
    assert "billable calls 0" in again and "cache hits 26" in again
    assert rows("again.tsv") == rows("certify.tsv")
    assert len(list(read_log(tmp_path / "run.jsonl"))) == 26
