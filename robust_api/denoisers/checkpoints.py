"""Denoiser checkpoint I/O: the reference format `{arch, state_dict, epoch, optimizer}` unchanged, plus ours.

Ours adds `arch_config` (constructor arguments) and `meta` (sigma, objective, data, steps, metrics, recipe).
Loading uses `torch.load(weights_only=True)`; full unpickling happens only when the caller passes `trusted=True`.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from robust_api.errors import CheckpointError, ConfigError
from robust_api.denoisers.architectures import ARCHITECTURES, arch_config, build_denoiser

FORMAT = "robust-api-denoiser/1"
_DATA_PARALLEL_PREFIX = "module."


@dataclass
class LoadedCheckpoint:
    """A denoiser rebuilt from a checkpoint: the module (eval mode), its arch/config, and the file's extra fields."""

    module: nn.Module
    arch: str
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    optimizer: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def read_checkpoint_dict(source: str | Path | bytes, *, trusted: bool = False) -> dict[str, Any]:
    """The checkpoint's top-level dict on CPU; raises CheckpointError for files that are not torch checkpoints."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    stream: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        obj = torch.load(stream, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{name}: no such file") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{name}: is a directory, not a checkpoint") from exc
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary objects ("Unsupported global"); such a file is only unpickled when trusted.
        # Any other unpickling failure (bad opcode, garbage) means the bytes are not a checkpoint at all.
        refused_object = "global" in str(exc).lower()
        if not trusted and not refused_object:
            raise CheckpointError(f"{name}: not a torch checkpoint (unreadable pickle data)") from exc
        if not trusted:
            raise CheckpointError(
                f"{name}: not a safely loadable denoiser checkpoint ({str(exc).splitlines()[0][:200]}); "
                "if you trust this file, load it with trusted=True"
            ) from exc
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        try:
            obj = torch.load(stream, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure means "not a checkpoint"
            raise CheckpointError(f"{name}: not a torch checkpoint: {type(exc2).__name__}") from exc2
    except Exception as exc:  # noqa: BLE001 - zip/pickle/EOF errors: all mean "not a checkpoint"
        raise CheckpointError(f"{name}: not a torch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: not a denoiser checkpoint (top level is {type(obj).__name__}, not a dict)")
    return obj


def strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the DataParallel `module.` prefix when every key carries it (the reference's ImageNet checkpoints)."""
    keys = list(state_dict)
    if keys and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in keys):
        return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def module_from_checkpoint(ckpt: Mapping[str, Any], *, name: str = "checkpoint") -> LoadedCheckpoint:
    """Rebuild the denoiser a checkpoint dict describes; raises CheckpointError naming what is wrong."""
    from robust_api.denoisers.ffdnet import is_kair_ffdnet, kair_config

    if "arch" not in ckpt and is_kair_ffdnet(ckpt):
        # a bare KAIR FFDNet state dict (e.g. ffdnet_color.pth): its layout names the architecture
        ckpt = {"arch": "ffdnet", "state_dict": dict(ckpt), "arch_config": kair_config(ckpt)}
    arch = ckpt.get("arch")
    if not isinstance(arch, str):
        raise CheckpointError(f"{name}: not a denoiser checkpoint (no 'arch' entry)")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{name}: unknown denoiser architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{name}: 'state_dict' is missing or is not a mapping of tensors")
    try:
        config = arch_config(arch, **dict(ckpt.get("arch_config") or {}))
        module = build_denoiser(arch, **config)
    except ConfigError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
    try:
        module.load_state_dict(strip_data_parallel(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:400]
        raise CheckpointError(f"{name}: weights do not match architecture {arch!r}: {detail}") from exc
    module.eval()
    epoch = ckpt.get("epoch")
    return LoadedCheckpoint(
        module=module,
        arch=arch,
        config=config,
        meta=dict(ckpt.get("meta") or {}),
        epoch=int(epoch) if isinstance(epoch, int) else None,
        optimizer=ckpt.get("optimizer") if isinstance(ckpt.get("optimizer"), dict) else None,
        raw=dict(ckpt),
    )


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = None, *, trusted: bool = False
) -> LoadedCheckpoint:
    """Load a reference-format or robust-api denoiser checkpoint onto `device` (default CPU), in eval mode.

    Raises CheckpointError when the file is missing, is not a torch checkpoint, has no `arch`, names an unknown
    architecture, or its weights do not match that architecture.
    """
    loaded = module_from_checkpoint(read_checkpoint_dict(path, trusted=trusted), name=str(path))
    if device is not None:
        loaded.module.to(device)
    return loaded


def checkpoint_dict(
    module: nn.Module,
    arch: str,
    config: Mapping[str, Any],
    *,
    meta: Mapping[str, Any] | None = None,
    epoch: int = 0,
    optimizer: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint dict in the reference layout (arch, state_dict, epoch, optimizer) plus our fields."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    out: dict[str, Any] = {
        "arch": arch,
        "state_dict": state,
        "epoch": int(epoch),
        "optimizer": dict(optimizer) if optimizer is not None else {},
        "format": FORMAT,
        "arch_config": dict(config),
        "meta": dict(meta or {}),
    }
    if extra:
        out.update(extra)
    return out


def save_checkpoint(path: str | Path, ckpt: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename), so a crash mid-save never leaves a torn checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(ckpt), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
