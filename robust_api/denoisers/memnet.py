"""MemNet denoiser with the reference implementation's layer layout (keys `feature_extractor.*`, `dense_memory.*`).

Input and output are images in [0,1], NCHW; forward returns `x + net(x)`, clamped to [0,1] in eval mode only.
"""
from __future__ import annotations

import torch
from torch import nn


class BNReLUConv(nn.Sequential):
    """BatchNorm -> ReLU -> Conv (no bias); child names `bn`, `relu`, `conv` as in the reference."""

    def __init__(self, in_channels: int, out_channels: int, k: int = 3, s: int = 1, p: int = 1) -> None:
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, k, s, p, bias=False))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu_conv1 = BNReLUConv(channels, channels)
        self.relu_conv2 = BNReLUConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu_conv2(self.relu_conv1(x))


class MemoryBlock(nn.Module):
    """Recursive unit of residual blocks + a 1x1 gate over short-term (this block) and long-term (earlier) memory."""

    def __init__(self, channels: int, num_resblock: int, block_index: int) -> None:
        super().__init__()
        self.recursive_unit = nn.ModuleList([ResidualBlock(channels) for _ in range(num_resblock)])
        # block_index (1-based) earlier outputs reach this gate: the feature extractor's plus block_index - 1 gates
        self.gate_unit = BNReLUConv((num_resblock + block_index) * channels, channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for block in self.recursive_unit:
            x = block(x)
            short_term.append(x)
        return self.gate_unit(torch.cat(short_term + long_term, 1))


class MemNet(nn.Module):
    """MemNet (Tai et al. 2017) as used by the reference: `num_memblock` memory blocks of `num_resblock` residual blocks."""

    def __init__(
        self, in_channels: int = 3, channels: int = 64, num_memblock: int = 3, num_resblock: int = 6
    ) -> None:
        super().__init__()
        self.image_channels = in_channels
        self.clamp_output = True
        self.feature_extractor = BNReLUConv(in_channels, channels)
        self.reconstructor = BNReLUConv(channels, in_channels)
        self.dense_memory = nn.ModuleList(
            [MemoryBlock(channels, num_resblock, i + 1) for i in range(num_memblock)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(x)
        memory = [out]
        for block in self.dense_memory:
            out = block(out, memory)
            memory.append(out)
        out = x + self.reconstructor(out)
        return out if self.training or not self.clamp_output else out.clamp(0.0, 1.0)
