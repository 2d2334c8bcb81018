"""Denoiser architectures by name: the reference's five names plus configurable `dncnn` / `memnet_custom` / `ffdnet`.

`build_denoiser(arch, **config)` returns a freshly initialised module; `arch_config(arch, **overrides)` the full
constructor arguments that a checkpoint records so the same module can be rebuilt.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from robust_api.errors import ConfigError
from robust_api.denoisers.dncnn import DnCNN
from robust_api.denoisers.ffdnet import FFDNet
from robust_api.denoisers.memnet import MemNet

_FAMILY: dict[str, Callable[..., nn.Module]] = {"dncnn": DnCNN, "memnet": MemNet, "ffdnet": FFDNet}

# name -> (family, default constructor arguments); the reference's names and shapes (architectures.py there)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar_dncnn": ("dncnn", {"depth": 17, "n_channels": 64, "image_channels": 3}),
    "cifar_dncnn_wide": ("dncnn", {"depth": 17, "n_channels": 128, "image_channels": 3}),
    "imagenet_dncnn": ("dncnn", {"depth": 17, "n_channels": 64, "image_channels": 3}),
    "memnet": ("memnet", {"in_channels": 3, "channels": 64, "num_memblock": 3, "num_resblock": 6}),
    "imagenet_memnet": ("memnet", {"in_channels": 3, "channels": 64, "num_memblock": 3, "num_resblock": 6}),
    # ours: any depth/width; the shipped weights use depth 10, 32 channels (fast enough for CPU serving)
    "dncnn": ("dncnn", {"depth": 10, "n_channels": 32, "image_channels": 3, "bn_momentum": 0.1}),
    "memnet_custom": ("memnet", {"in_channels": 3, "channels": 32, "num_memblock": 2, "num_resblock": 3}),
    # FFDNet (Zhang et al. 2018) in KAIR's layout; defaults = KAIR's colour model (12 convs x 96 channels)
    "ffdnet": ("ffdnet", {"depth": 12, "n_channels": 96, "image_channels": 3, "noise_level": 0.25}),
}

REFERENCE_ARCHITECTURES = ("cifar_dncnn", "cifar_dncnn_wide", "memnet", "imagenet_dncnn", "imagenet_memnet")


def arch_config(arch: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of `arch` with `overrides` applied; raises ConfigError for unknown names/arguments."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown denoiser architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    family, defaults = ARCHITECTURES[arch]
    unknown = set(overrides) - set(defaults) - {"kernel_size", "bn_momentum"}
    if unknown:
        raise ConfigError(f"{arch}: unknown architecture option(s) {sorted(unknown)}")
    return {**defaults, **{k: v for k, v in overrides.items() if v is not None}}


def build_denoiser(arch: str, **overrides: Any) -> nn.Module:
    """A randomly initialised denoiser of architecture `arch` (images in [0,1] NCHW in and out)."""
    family, _ = ARCHITECTURES.get(arch, (None, None))
    config = arch_config(arch, **overrides)
    try:
        return _FAMILY[family](**config)
    except TypeError as exc:
        raise ConfigError(f"{arch}: bad architecture options {config}: {exc}") from exc
