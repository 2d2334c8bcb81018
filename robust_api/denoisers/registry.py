"""Shipped denoisers as values with metadata (like torchvision's weights enums), and `load_denoiser`.

`load_denoiser("ffdnet64-s0.25")` resolves a registry name to the file inside the package and verifies its sha256;
`diffusion:PATH` is a pretrained diffusion model used as a one-shot denoiser (see `diffusion`); any other string is
a checkpoint path (reference format or ours). `denoiser_identity` gives the {"name", "sha256"} pair the query logs
record, so a cached sample is only reused with the same weights.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_api.errors import CheckpointError
from robust_api.denoisers.checkpoints import load_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class DenoiserWeights:
    """One shipped denoiser: file name inside denoisers/weights/, sha256 of that file, and its metadata."""

    name: str
    filename: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.filename

    @property
    def sigma(self) -> float:
        return float(self.meta.get("sigma", float("nan")))

    @property
    def objective(self) -> str:
        return str(self.meta.get("objective", ""))

    @property
    def arch(self) -> str:
        return str(self.meta.get("arch", ""))

    def load(self, device: str | torch.device | None = None) -> nn.Module:
        """This denoiser as a module (sha256 verified), like torchvision's `weights.get_state_dict()`."""
        return load_denoiser(self.name, device)


def _entries() -> dict[str, DenoiserWeights]:
    from robust_api.denoisers.shipped import SHIPPED

    return {w.name: w for w in SHIPPED}


def list_denoisers() -> list[DenoiserWeights]:
    """Every shipped denoiser, in registry order."""
    return list(_entries().values())


def shipped_denoisers() -> list[DenoiserWeights]:
    """Alias of list_denoisers (every shipped denoiser, in registry order)."""
    return list_denoisers()


def get_weights(name: str) -> DenoiserWeights | None:
    return _entries().get(name)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes; CheckpointError when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read denoiser checkpoint: {exc.strerror}") from exc
    return h.hexdigest()


def resolve_path(name_or_path: str | Path) -> Path:
    """A registry name -> its verified file; anything else -> that path. CheckpointError on sha256 mismatch.

    Names are the shipped denoisers and the pretrained files of other packages (`pretrained.PRETRAINED`).
    `diffusion:PATH` -> PATH once it is a diffusers directory or a guided-diffusion checkpoint with its settings
    file (CheckpointError otherwise; ConfigError when a diffusers directory needs the missing `diffusion` extra).
    """
    from robust_api.denoisers import diffusion
    from robust_api.denoisers.pretrained import PRETRAINED

    if diffusion.split_spec(name_or_path) is not None:
        return diffusion.check_spec(str(name_or_path))

    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        external = PRETRAINED[name_or_path]
        path = external.path()
        actual = file_sha256(path)
        if actual != external.sha256:
            raise CheckpointError(
                f"denoiser {external.name}: sha256 of {path} is {actual[:16]}..., expected {external.sha256[:16]}... "
                f"(a different {external.package} release?)"
            )
        return path
    entry = get_weights(str(name_or_path)) if isinstance(name_or_path, str) else None
    if entry is None:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            known = ", ".join(_entries()) or "none"
            raise CheckpointError(f"{name_or_path}: neither a shipped denoiser (known: {known}) nor an existing file")
        return path
    actual = file_sha256(entry.path)
    if actual != entry.sha256:
        raise CheckpointError(
            f"shipped denoiser {entry.name}: sha256 of {entry.path.name} is {actual[:16]}..., "
            f"expected {entry.sha256[:16]}... (file corrupted or replaced; reinstall robust-api)"
        )
    return entry.path


def load_denoiser(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    *,
    trusted: bool = False,
    optimize: bool = False,
    sigma: float | None = None,
) -> nn.Module:
    """The denoiser (eval mode, on `device` or CPU) for a shipped name or a checkpoint path.

    Images in [0,1] NCHW in and out. The module carries `.denoiser_name` and `.denoiser_sha256` for the query logs.
    `optimize=True` returns `optimize_for_inference(module)` (same outputs within 1e-4, ~1.5-2x faster at 224px).
    `sigma` is the noise level being certified: a denoiser with a noise-level input whose file does not fix it
    (`ffdnet-color`) is told this sigma, and the name it is logged under says so (`ffdnet-color@sigma=0.25`), so
    cached samples are only reused at the same setting. Trained checkpoints keep the level they were trained at.
    Classical denoisers are names too: `tv` (scikit-image TV, weight 0.6 * sigma; ConfigError without a sigma) and
    `tv:W` (weight W), see `classical`; they have no file, and `optimize` leaves them float32.
    `diffusion:PATH` is a pretrained diffusion model denoising in one step at the timestep matching `sigma`
    (ConfigError without a sigma), logged as `diffusion:<name>@t=...,sigma=...,resize=HxW,cfg=...`, see `diffusion`.
    Raises CheckpointError for unknown names, tampered shipped files and non-checkpoint files.
    """
    from robust_api.denoisers import diffusion
    from robust_api.denoisers.pretrained import PRETRAINED

    if diffusion.split_spec(name_or_path) is not None:
        module = diffusion.load_diffusion_denoiser(str(name_or_path), sigma, device, trusted=trusted)
        return diffusion.optimize_diffusion(module) if optimize else module
    if isinstance(name_or_path, str):
        from robust_api.denoisers.classical import parse_classical

        classical = parse_classical(name_or_path, sigma)
        if classical is not None:
            classical = classical.to(device if device is not None else "cpu").eval()
            if optimize:
                from robust_api.denoisers.speed import optimize_for_inference

                return optimize_for_inference(classical)
            return classical
    path = resolve_path(name_or_path)
    loaded = load_checkpoint(path, device=device, trusted=trusted)
    module = loaded.module
    entry = get_weights(str(name_or_path)) if isinstance(name_or_path, str) else None
    external = PRETRAINED.get(str(name_or_path)) if isinstance(name_or_path, str) else None
    module.denoiser_name = entry.name if entry else str(name_or_path)
    module.denoiser_sha256 = entry.sha256 if entry else (external.sha256 if external else file_sha256(path))
    module.denoiser_meta = dict(entry.meta) if entry else dict(external.meta if external else loaded.meta)
    if external is not None and hasattr(module, "noise_level"):
        level = 0.25 if sigma is None else float(sigma)
        module.noise_level = level
        module.denoiser_name = f"{external.name}@sigma={level:g}"
        module.denoiser_meta["sigma"] = level
    if optimize:
        from robust_api.denoisers.speed import optimize_for_inference

        return optimize_for_inference(module)
    return module


def denoiser_identity(
    module_or_name: nn.Module | str | Path | None, *, sigma: float | None = None
) -> dict[str, str] | None:
    """{"name", "sha256"} of a denoiser (module from load_denoiser, shipped name, `tv`/`tv:W`, `diffusion:PATH`, or
    path); None for no denoiser. `sigma` is the certification noise level, needed by `tv` and `diffusion:PATH`
    (ConfigError without it).

    A module not loaded through load_denoiser is identified by the sha256 of its state_dict tensors.
    """
    if module_or_name is None:
        return None
    if isinstance(module_or_name, str):
        from robust_api.denoisers import diffusion
        from robust_api.denoisers.classical import parse_classical

        if diffusion.split_spec(module_or_name) is not None:
            return diffusion.diffusion_identity(module_or_name, sigma)
        classical = parse_classical(module_or_name, sigma)
        if classical is not None:
            return denoiser_identity(classical)
    if isinstance(module_or_name, nn.Module):
        name = getattr(module_or_name, "denoiser_name", None)
        sha = getattr(module_or_name, "denoiser_sha256", None)
        if name and sha:
            return {"name": str(name), "sha256": str(sha)}
        return {"name": type(module_or_name).__name__, "sha256": state_dict_sha256(module_or_name)}
    entry = get_weights(str(module_or_name))
    if entry is not None:
        return {"name": entry.name, "sha256": entry.sha256}
    path = resolve_path(module_or_name)
    return {"name": str(module_or_name), "sha256": file_sha256(path)}


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over (key, dtype, shape, bytes) of every state_dict entry, in key order."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


# -- a denoiser as served: the module and its identity, side by side -------------------------------------------

# A denoiser certifying at a noise level this far (relative) from the one it was trained at is likely a mistake.
SIGMA_MISMATCH = 0.2


@dataclass(frozen=True)
class DenoiserIdentity:
    """What a certification run records about its denoiser: `name` and `sha256` (the query logs' `denoiser`
    field and part of the cache key, see `as_log`), the noise level it was trained for (`sigma`, None when
    unknown), the precision it is served in (informational, outside the cache key) and other `params`."""

    name: str
    sha256: str
    sigma: float | None = None
    precision: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def as_log(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


@dataclass(frozen=True)
class ServedDenoiser:
    """A denoiser ready to serve (NCHW [0,1] -> same) and its identity, carried beside it."""

    module: nn.Module
    identity: DenoiserIdentity


def identity_of(module: nn.Module) -> DenoiserIdentity:
    """The identity of a module from load_denoiser / optimize_for_inference, or of any torch module (named by
    its class and the sha256 of its state_dict)."""
    log_id = denoiser_identity(module)
    assert log_id is not None
    meta = dict(getattr(module, "denoiser_meta", None) or {})
    sigma = meta.get("sigma")
    params = {k: meta[k] for k in ("arch", "objective", "weight", "access") if k in meta}
    return DenoiserIdentity(log_id["name"], log_id["sha256"], float(sigma) if sigma else None,
                            getattr(module, "denoiser_precision", None), params)


def serve_denoiser(
    spec: str | Path | nn.Module | None, sigma: float | None, device: str | torch.device | None = None,
    *, optimize: bool = True,
) -> ServedDenoiser | None:
    """The denoiser for a certification at noise level `sigma`: a name or path is loaded at that level (see
    load_denoiser) and optimised for inference on `device` (default: the best one); a module is served as given.
    None (or "none") -> None. Logs one warning line when `sigma` differs from the level the denoiser was trained
    at by more than 20%. Raises CheckpointError / ConfigError as load_denoiser does."""
    if spec is None or (isinstance(spec, str) and spec in ("", "none")):
        return None
    if isinstance(spec, nn.Module):
        module = spec
    else:
        from robust_api.denoisers.speed import best_device

        module = load_denoiser(spec, device=device if device is not None else best_device(), optimize=optimize, sigma=sigma)
    identity = identity_of(module)
    if sigma is not None and identity.sigma and abs(float(sigma) - identity.sigma) > SIGMA_MISMATCH * identity.sigma:
        import logging

        logging.getLogger(__name__).warning(
            "denoiser %s was trained at sigma %g but certifies at sigma %g: expect fewer certificates "
            "(use a denoiser trained near %g)", identity.name, identity.sigma, float(sigma), float(sigma))
    return ServedDenoiser(module, identity)
