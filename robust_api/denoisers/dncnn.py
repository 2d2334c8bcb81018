"""DnCNN denoiser with the reference implementation's layer layout (state_dict keys `dncnn.<i>.*`).

Input and output are images in [0,1], NCHW. The network predicts the noise; forward returns `x - net(x)`,
clamped to [0,1] in eval mode only (training keeps the unclamped output so gradients reach every pixel).
"""
from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    """`depth` conv layers of `n_channels` (first: conv+ReLU, middle: conv+BN+ReLU, last: conv), residual output.

    Layer indices inside `self.dncnn` match the reference's `archs/dncnn.py`, so its checkpoints load key for key.
    """

    def __init__(
        self,
        depth: int = 17,
        n_channels: int = 64,
        image_channels: int = 3,
        kernel_size: int = 3,
        bn_momentum: float = 0.95,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("DnCNN needs depth >= 2")
        self.image_channels = image_channels
        self.clamp_output = True
        pad = kernel_size // 2
        layers: list[nn.Module] = [
            nn.Conv2d(image_channels, n_channels, kernel_size, padding=pad, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(n_channels, n_channels, kernel_size, padding=pad, bias=False),
                # eps and momentum as in the reference, so its running statistics mean the same thing here
                nn.BatchNorm2d(n_channels, eps=1e-4, momentum=bn_momentum),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(n_channels, image_channels, kernel_size, padding=pad, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # a zero last layer makes the untrained network the identity: training starts from "no denoiser"
        nn.init.zeros_(convs[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x - self.dncnn(x)
        return out if self.training or not self.clamp_output else out.clamp(0.0, 1.0)


class SpaceToDepthDnCNN(nn.Module):
    """DnCNN run on a `factor` x `factor` space-to-depth rearrangement of the image (FFDNet's layout, without its
    noise-level map): 4x fewer positions per conv at factor 2, so a wider, deeper net with twice the receptive field
    costs what a plain DnCNN costs. Residual output `x - net(x)`; sides that are not multiples of `factor` are
    reflect-padded and cropped back. Not a reference architecture (no reference checkpoint uses it).
    """

    def __init__(
        self, depth: int = 10, n_channels: int = 64, image_channels: int = 3, factor: int = 2,
        kernel_size: int = 3, bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError("factor must be >= 1")
        self.factor = factor
        self.image_channels = image_channels
        self.clamp_output = True
        self.body = DnCNN(depth, n_channels, image_channels * factor * factor, kernel_size, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % f, (-w) % f
        padded = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        noise = nn.functional.pixel_shuffle(self.body.dncnn(nn.functional.pixel_unshuffle(padded, f)), f)
        out = x - noise[..., :h, :w]
        return out if self.training or not self.clamp_output else out.clamp(0.0, 1.0)
