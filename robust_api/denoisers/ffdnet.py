"""FFDNet (Zhang, Zuo, Zhang, IEEE TIP 2018) with KAIR's layer layout (state_dict keys `model.<i>.*`).

The image (NCHW, [0,1]) is padded to even size by edge replication, rearranged into 2x2 pixel blocks
(`pixel_unshuffle`: 3 channels -> 12 at half resolution), concatenated with a constant noise-level map, run
through `depth` 3x3 convs (ReLU between them, no BatchNorm), rearranged back and cropped. The network outputs the
clean image directly (not a residual). `noise_level` is the map's value: the noise std on the [0,1] scale the
denoiser is told to remove; a trained/fine-tuned checkpoint fixes it to its training sigma.

KAIR's colour weights (`ffdnet_color.pth`: depth 12, 96 channels, trained for sigma <= 75/255 on unclipped noise)
load key for key: conv i sits at `model.{2i}` and the ReLUs at the odd indices, exactly as KAIR's `B.sequential`
numbers them. KAIR's own PixelUnShuffle orders channels as torch's `pixel_unshuffle` does (c*4 + 2*dy + dx).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class FFDNet(nn.Module):
    """FFDNet on 2x2 pixel-unshuffled input plus a noise-level map; images in [0,1] NCHW in and out."""

    def __init__(
        self,
        depth: int = 12,
        n_channels: int = 96,
        image_channels: int = 3,
        noise_level: float = 0.25,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("FFDNet needs depth >= 2")
        self.image_channels = image_channels
        self.noise_level = float(noise_level)
        self.clamp_output = True
        pad = kernel_size // 2
        blocks = image_channels * 4
        layers: list[nn.Module] = [nn.Conv2d(blocks + 1, n_channels, kernel_size, padding=pad), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(n_channels, n_channels, kernel_size, padding=pad), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(n_channels, blocks, kernel_size, padding=pad))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = h % 2, w % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        z = F.pixel_unshuffle(x, 2)
        level = torch.full((z.shape[0], 1, z.shape[2], z.shape[3]), self.noise_level, dtype=z.dtype, device=z.device)
        z = torch.cat((z, level), 1)
        out = F.pixel_shuffle(self.model(z), 2)[..., :h, :w]
        return out if self.training or not self.clamp_output else out.clamp(0.0, 1.0)


def is_kair_ffdnet(state_dict: Mapping[str, object]) -> bool:
    """Whether a bare state dict has KAIR's FFDNet layout: `model.{0,2,...}.weight/bias` 3x3 convs whose first
    layer takes 4*C + 1 channels and whose last gives 4*C."""
    keys = list(state_dict)
    if not keys or not all(k.startswith("model.") and k.endswith((".weight", ".bias")) for k in keys):
        return False
    first, last = state_dict.get("model.0.weight"), state_dict.get(_last_weight_key(keys))
    if not isinstance(first, torch.Tensor) or not isinstance(last, torch.Tensor) or first.ndim != 4:
        return False
    return first.shape[1] - 1 == last.shape[0] and last.shape[0] % 4 == 0


def _last_weight_key(keys: list[str]) -> str:
    indices = [int(k.split(".")[1]) for k in keys if k.split(".")[1].isdigit()]
    return f"model.{max(indices)}.weight" if indices else ""


def kair_config(state_dict: Mapping[str, torch.Tensor], noise_level: float = 0.25) -> dict:
    """FFDNet constructor arguments read off a KAIR-layout state dict (depth, width, image channels)."""
    keys = list(state_dict)
    depth = sum(1 for k in keys if k.endswith(".weight"))
    first = state_dict["model.0.weight"]
    return {
        "depth": depth,
        "n_channels": int(first.shape[0]),
        "image_channels": int(state_dict[_last_weight_key(keys)].shape[0]) // 4,
        "noise_level": float(noise_level),
        "kernel_size": int(first.shape[-1]),
    }


def prune_width(module: FFDNet, n_channels: int) -> FFDNet:
    """A narrower FFDNet initialised from `module`: each hidden layer keeps the `n_channels` filters with the
    largest L1 norm (in their original order) and the next layer keeps the matching input channels.

    Structured pruning as a starting point for fine-tuning: the pruned network is a worse denoiser until trained,
    but starts far closer to one than a random initialisation. Raises ValueError if `n_channels` is not in
    1..module's width.
    """
    convs = [m for m in module.model if isinstance(m, nn.Conv2d)]
    width = convs[0].out_channels
    if not 1 <= n_channels <= width:
        raise ValueError(f"cannot prune FFDNet of width {width} to {n_channels} channels")
    out = FFDNet(
        depth=len(convs), n_channels=n_channels, image_channels=module.image_channels,
        noise_level=module.noise_level, kernel_size=convs[0].kernel_size[0],
    )
    new_convs = [m for m in out.model if isinstance(m, nn.Conv2d)]
    keep_in = torch.arange(convs[0].in_channels)
    with torch.no_grad():
        for i, (old, new) in enumerate(zip(convs, new_convs)):
            if i < len(convs) - 1:
                norms = old.weight[:, keep_in].abs().sum(dim=(1, 2, 3))
                keep_out = torch.sort(torch.topk(norms, n_channels).indices).values
            else:
                keep_out = torch.arange(old.out_channels)
            new.weight.copy_(old.weight[keep_out][:, keep_in])
            new.bias.copy_(old.bias[keep_out])
            keep_in = keep_out
    return out
