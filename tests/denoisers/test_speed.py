"""optimize_for_inference computes the same function; denoise_numpy handles batches and single images."""
from __future__ import annotations

import numpy as np
import torch

from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers.speed import denoise_numpy, fold_batchnorm, optimize_for_inference


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
    fast = optimize_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(3, 3, 33, 29)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_optimized_memnet_matches_the_plain_module():
    net = build_denoiser("memnet_custom", channels=8, num_memblock=2, num_resblock=2)
    _randomise_batchnorm(net)
    net.eval()
    fast = optimize_for_inference(net)
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
