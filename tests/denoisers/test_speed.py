"""optimize_for_inference computes the same function; denoise_numpy handles batches and single images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers import speed
from robust_api.denoisers.registry import load_denoiser
from robust_api.denoisers.speed import denoise_numpy, fold_batchnorm, optimize_for_inference
from robust_api.errors import ConfigError


def _randomise_batchnorm(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.05, generator=g)


def test_optimized_dncnn_matches_the_plain_module():
    net = build_denoiser("dncnn", depth=6, n_channels=16)
    _randomise_batchnorm(net)
    net.eval()
    fast = optimize_for_inference(net, precision="float32")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(3, 3, 33, 29)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_optimized_memnet_matches_the_plain_module():
    net = build_denoiser("memnet_custom", channels=8, num_memblock=2, num_resblock=2)
    _randomise_batchnorm(net)
    net.eval()
    fast = optimize_for_inference(net, precision="float32")
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-4)


def test_fold_counts_every_conv_bn_pair():
    net = build_denoiser("cifar_dncnn")
    assert fold_batchnorm(net) == 15


def test_denoise_numpy_batches_and_single_images_agree():
    net = build_denoiser("dncnn", depth=4, n_channels=8)
    _randomise_batchnorm(net)
    imgs = np.random.default_rng(0).random((5, 12, 12, 3), dtype=np.float32)
    batched = denoise_numpy(net, imgs, batch_size=2)
    single = denoise_numpy(net, imgs[3])
    assert batched.shape == imgs.shape and single.shape == imgs[3].shape
    np.testing.assert_allclose(batched[3], single, atol=1e-6)
    assert batched.min() >= 0 and batched.max() <= 1


def _photo_like(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth colour images (upsampled random fields) and their noisy copies at sigma 0.25."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.nn.functional.interpolate(torch.rand(2, 3, 12, 12, generator=g), size=64, mode="bicubic").clamp(0, 1)
    return clean, (clean + 0.25 * torch.randn(clean.shape, generator=g)).clamp(0, 1)


def test_bfloat16_stays_within_an_8_bit_level_of_float32_for_a_shipped_denoiser():
    net = load_denoiser("ffdnet64-s0.25")
    fp32 = optimize_for_inference(net, precision="float32")
    bf16 = optimize_for_inference(net, precision="bfloat16")
    assert (fp32.denoiser_precision, bf16.denoiser_precision) == ("float32", "bfloat16")
    assert bf16.denoiser_name == "ffdnet64-s0.25" and bf16.denoiser_sha256 == net.denoiser_sha256
    _, noisy = _photo_like()
    with torch.inference_mode():
        a, b = fp32(noisy), bf16(noisy)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert float((a - b).abs().mean()) < 1.0 / 255  # bfloat16 keeps ~3 significant digits through 10 layers
    assert speed.keeps_psnr(fp32, bf16, 0.25, torch.device("cpu"))


def test_auto_precision_follows_the_hardware(monkeypatch):
    net = load_denoiser("ffdnet64-s0.25")
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: False)
    assert optimize_for_inference(net).denoiser_precision == "float32"
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)  # autocast emulates bf16 where not native
    fast = optimize_for_inference(net)
    assert fast.denoiser_precision == "bfloat16" and isinstance(fast, speed.Autocast)


def test_auto_precision_refuses_a_precision_that_costs_psnr(monkeypatch):
    net = load_denoiser("ffdnet64-s0.25")
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)
    monkeypatch.setattr(speed, "keeps_psnr", lambda *a, **k: False)
    assert optimize_for_inference(net).denoiser_precision == "float32"


def test_keeps_psnr_rejects_a_degraded_candidate():
    net = optimize_for_inference(load_denoiser("ffdnet64-s0.25"), precision="float32")

    class Blurred(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(net(x), 5, stride=1, padding=2)

    assert not speed.keeps_psnr(net, Blurred(), 0.25, torch.device("cpu"))
    assert speed.keeps_psnr(net, net, 0.25, torch.device("cpu"))


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision must be one of"):
        optimize_for_inference(build_denoiser("dncnn", depth=3, n_channels=4), precision="int8")


def test_auto_precision_falls_back_when_a_module_fails_in_reduced_precision(monkeypatch):
    class Float32Only(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            if torch.is_autocast_enabled(x.device.type):
                raise RuntimeError("no bf16 kernel")
            return x * self.w

    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)
    fast = optimize_for_inference(Float32Only())
    assert fast.denoiser_precision == "float32"


def test_reference_memnet_runs_in_bfloat16():
    net = build_denoiser("memnet_custom", channels=8, num_memblock=2, num_resblock=2).eval()
    _randomise_batchnorm(net)
    x = torch.rand(1, 3, 24, 24)
    with torch.inference_mode():
        ref = optimize_for_inference(net, precision="float32")(x)
        low = optimize_for_inference(net, precision="bfloat16")(x)
    assert low.dtype == torch.float32 and float((ref - low).abs().max()) < 0.05
