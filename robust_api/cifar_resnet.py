"""CIFAR ResNets in He et al.'s (2016) CIFAR layout, and the checkpoints `classifier train` writes.

Layout: a 3x3 conv to 16 channels, three stages of n basic blocks (16, 32, 64 channels; the first block of
stages 2 and 3 halves the resolution), global average pooling, one linear layer: depth = 6n + 2
(resnet20: n = 3, 0.27 M parameters; resnet56: n = 9; resnet110: n = 18, 1.7 M). Shortcuts are option A of the
paper: identity, and where a block halves the resolution and doubles the width, the input subsampled by 2 and
zero-padded to the new width (no parameters), as in the paper's CIFAR experiments.

The network takes RGB images in [0, 1] (what our denoisers output) and normalises them itself with CIFAR-10's
channel mean and standard deviation (the values of Cohen et al.'s `datasets.py`), so no preprocessing is needed
beyond converting a 32x32 image to a tensor.

A checkpoint is a dict: `arch` ("resnet20", ...), `class_names`, `state_dict` (the model's), plus what training
needs to resume (see `robust_api.classifier_training`). `load_classifier(path)` turns one into a
`TorchClassifier` whose model version is a hash of the weights.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robust_api.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
ARCH_PATTERN = re.compile(r"^resnet(\d+)$")
KNOWN_ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def blocks_per_stage(arch: str) -> int:
    """n for `resnet{6n+2}`; ConfigError for any other name."""
    match = ARCH_PATTERN.match(arch)
    depth = int(match.group(1)) if match else 0
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"arch must be resnet<6n+2> (e.g. {', '.join(KNOWN_ARCHS)}), got {arch!r}")
    return (depth - 2) // 6


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an option-A shortcut (identity, or subsample-and-zero-pad when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            half = self.pad_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """resnet{6n+2} for 32x32 RGB inputs in [0, 1] -> `num_classes` logits (normalisation is inside)."""

    def __init__(self, arch: str = "resnet20", num_classes: int = 10) -> None:
        super().__init__()
        n = blocks_per_stage(arch)
        self.arch = arch
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at `path` (weights_only, so a file cannot run code); ConfigError if it is not one of ours."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, Mapping) or not {"arch", "class_names", "state_dict"} <= set(ckpt):
        raise ConfigError(f"{path}: not a CIFAR classifier checkpoint (needs arch, class_names, state_dict)")
    return dict(ckpt)


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> CifarResNet:
    """The network a checkpoint dict describes, with its weights, in eval mode; `model.class_names` names its
    outputs in order."""
    model = CifarResNet(str(ckpt["arch"]), len(ckpt["class_names"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint weights do not fit {ckpt['arch']}: {exc}") from None
    model.class_names = tuple(str(c) for c in ckpt["class_names"])
    return model.eval()


def weights_digest(model: nn.Module) -> str:
    """First 12 hex digits of sha256 over the state_dict's names and raw bytes: new weights, new version."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:12]


def load_classifier(path: str | Path, *, max_batch: int = 256):
    """A `TorchClassifier` serving the checkpoint at `path`: its class names, 32x32 RGB [0, 1] tensors in (images of
    another size are used as they are: the network pools globally), model version `<arch>@<sha256 of weights>`."""
    from robust_api.classifiers import TorchClassifier, tensor_preprocess

    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    names: Sequence[str] = [str(n) for n in ckpt["class_names"]]
    return TorchClassifier(
        model,
        names,
        preprocess=tensor_preprocess,
        max_batch=max_batch,
        model_version=f"{ckpt['arch']}@{weights_digest(model)}",
        channels_last=True,  # NHWC convolutions: ~25% less CPU per image for resnet20 (fp32, AVX2)
    )
