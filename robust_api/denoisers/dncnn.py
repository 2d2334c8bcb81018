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
