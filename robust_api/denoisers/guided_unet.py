"""The ε-predicting UNet of OpenAI's improved-diffusion and guided-diffusion releases, so their checkpoints load
(strict=True) without their code.

Written from the published architecture (Ho et al. 2020, App. B; Nichol & Dhariwal 2021, §3-4; Dhariwal & Nichol
2021, §3 "Architecture improvements"): a UNet whose levels each hold `num_res_blocks` residual blocks conditioned
on a sinusoidal timestep embedding (optionally through an adaptive "scale-shift" group norm), self-attention at
the chosen downsampling factors, and a down/up-sampling step between levels (a strided/nearest conv, or a residual
block that resamples, `resblock_updown`). Parameter names follow the released state dicts (`time_embed.0`,
`input_blocks.N.M`, `middle_block.M`, `output_blocks.N.M`, `out.2`), which is what makes the files load; the
key list of a small configuration is written out in tests/denoisers/test_diffusion.py. Checked once, outside the
test suite, against OpenAI's published unet.py on random weights: identical outputs for four configurations (with
and without resblock_updown, scale-shift norm, learned sigma, either attention order); that code is not a
dependency, so CI does not repeat the comparison.

Class-conditional checkpoints (`label_emb`) are not supported: a denoiser has no class to give them.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps (may be fractional) -> [N, dim]: cosines of t * frequency, then sines, frequencies
    geometrically spaced from 1 to 1/max_period (a zero column pads an odd dim)."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class GroupNorm32(nn.GroupNorm):
    """32-group norm computed in float32 whatever the input dtype (the releases run their fp16 models this way)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """norm-SiLU-conv, add (or scale-shift by) the projected timestep embedding, norm-SiLU-dropout-conv, plus a
    skip (1x1 conv when the width changes). `resample` "up"/"down" resamples both paths between the first norm
    and the first conv."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, scale_shift: bool,
                 resample: str | None = None) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = {"up": _upsample, "down": _downsample, None: None}[resample]
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            h = self.resample(self.in_layers[:-1](x))
            x = self.resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, residual. `head_order` "legacy" splits the 1x1 qkv
    projection into heads first, then each head into q, k, v (improved-diffusion and guided-diffusion's default);
    "qkv" splits q, k, v first (guided-diffusion's use_new_attention_order)."""

    def __init__(self, channels: int, num_heads: int, *, head_order: str = "legacy") -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention width {channels} is not divisible into {num_heads} heads")
        self.num_heads = num_heads
        self.head_order = head_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length, head_width = flat.shape[-1], c // self.num_heads
        if self.head_order == "legacy":
            q, k, v = qkv.reshape(b * self.num_heads, 3 * head_width, length).split(head_width, dim=1)
        else:
            q, k, v = (part.reshape(b * self.num_heads, head_width, length) for part in qkv.chunk(3, dim=1))
        # [B*heads, width, T] -> [B*heads, T, width]: softmax(q k^T / sqrt(width)) v per head
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(attended.transpose(1, 2).reshape(b, c, length))
        return (flat + h).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """A Sequential whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (parameter name `op`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (parameter name `conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_upsample(x))


class GuidedUNet(nn.Module):
    """UNet(x_t [N,3,H,W] in [-1,1]-space, t [N]) -> [N, out_channels, H, W] (ε, then the variance interpolation
    when out_channels is 6). H and W must be divisible by 2**(len(channel_mult) - 1).

    `attention_ds` are downsampling factors (1 = full resolution) where attention blocks sit; a block has
    `num_heads` heads, or width // `num_head_channels` heads when that is not -1 (`num_heads_upsample`, when not
    -1, replaces num_heads in the decoder).
    """

    def __init__(
        self,
        *,
        model_channels: int,
        num_res_blocks: int,
        channel_mult: Sequence[float],
        attention_ds: Iterable[int],
        in_channels: int = 3,
        out_channels: int = 3,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        attention_ds = set(attention_ds)
        self.model_channels = model_channels
        self.levels = len(channel_mult)
        emb_channels = 4 * model_channels
        order = "qkv" if use_new_attention_order else "legacy"
        decoder_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def attention(width: int, heads: int) -> AttentionBlock:
            return AttentionBlock(width, heads if num_head_channels == -1 else width // num_head_channels,
                                  head_order=order)

        def resblock(width_in: int, width_out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(width_in, emb_channels, width_out, scale_shift=use_scale_shift_norm, resample=resample)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        width = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, width, 3, padding=1))])
        skip_widths = [width]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(width, int(mult * model_channels))]
                width = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(width, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_widths.append(width)
            if level != len(channel_mult) - 1:
                down = resblock(width, width, "down") if resblock_updown else Downsample(width)
                self.input_blocks.append(TimestepSequential(down))
                skip_widths.append(width)
                ds *= 2
        self.middle_block = TimestepSequential(resblock(width, width), attention(width, num_heads), resblock(width, width))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(width + skip_widths.pop(), int(mult * model_channels))]
                width = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(width, decoder_heads))
                if level and i == num_res_blocks:
                    layers.append(resblock(width, width, "up") if resblock_updown else Upsample(width))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(sinusoidal_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
