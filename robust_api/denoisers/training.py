"""Denoiser training: MSE, Stab through frozen surrogate classifiers, and Stab+MSE (Stab fine-tuning of an MSE model).

MSE:  || D(x + delta) - x ||^2.   Stab: sum over surrogates f of CE(f(D(x + delta)), argmax f(x)).
With `mse_weight` > 0 the Stab objectives add mse_weight * MSE, which keeps a fine-tuned denoiser's output close to
the clean image when the training photos are few (pure Stab then drifts towards whatever the surrogate likes).
Noisy inputs are clipped to [0,1], as the serving path clips them. An FFDNet `--init` with a larger width than
asked for is pruned to that width (largest-norm filters) before training. Batches are random patches of the given
photos with random flips and 90-degree rotations; Adam with a cosine learning-rate decay (a function of the step,
so resuming reproduces the schedule). Checkpoints are written every `checkpoint_every` steps and at the end.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_api.errors import CheckpointError, ConfigError
from robust_api.denoisers.architectures import arch_config, build_denoiser
from robust_api.denoisers.checkpoints import checkpoint_dict, load_checkpoint, read_checkpoint_dict, save_checkpoint

OBJECTIVES = ("mse", "stab", "stab+mse")


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the checkpoint's `meta.train`)."""

    sigma: float
    arch: str = "dncnn"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    objective: str = "mse"
    steps: int = 2000
    batch: int = 32
    patch: int = 48
    lr: float = 1e-3
    lr_final_fraction: float = 0.05
    weight_decay: float = 0.0
    checkpoint_every: int = 200
    seed: int = 0
    min_confidence: float = 0.0
    mse_weight: float = 0.0  # Stab objectives: + mse_weight * MSE (0 = the paper's objective)
    freeze_bn: bool = False  # BatchNorm uses (and keeps) its running statistics, as at inference: for fine-tuning
    rotate: bool = True  # random 90-degree rotations of each patch (flips always); off for Stab through a classifier
    precision: str = "auto"  # forward passes under bfloat16 autocast: "bfloat16", "float32", or "auto" (native only)
    init: str | None = None
    surrogates: list[str] = field(default_factory=list)
    data: str = ""
    recipe: str = ""

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {self.sigma}")
        if self.steps < 1 or self.batch < 1 or self.patch < 8:
            raise ConfigError("steps and batch must be >= 1 and patch >= 8")
        if self.mse_weight < 0:
            raise ConfigError(f"mse_weight must be >= 0, got {self.mse_weight}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if self.objective == "stab+mse" and not self.init:
            raise ConfigError("stab+mse fine-tunes an MSE-trained denoiser: pass its checkpoint with --init")


@dataclass
class TrainResult:
    module: nn.Module
    losses: list[float]
    steps_done: int
    checkpoint: Path
    seconds: float


class PatchSampler:
    """Random `patch` x `patch` crops of the images (each >= patch on both sides), with horizontal flips and, when
    `rotate`, random 90-degree rotations.

    Images are HxWx3 arrays: float in [0,1], or uint8 (0..255, kept as uint8 and scaled per crop). Rotations suit
    MSE (noise and texture have no up); a Stab objective asks a classifier to keep its label of the clean patch,
    and a classifier trained on upright photos labels a sideways one arbitrarily, so Stab runs use rotate=False.
    """

    def __init__(
        self, images: Sequence[np.ndarray], patch: int, generator: torch.Generator, rotate: bool = True
    ) -> None:
        self.patch = patch
        self.rotate = rotate
        # uint8 photos stay uint8 in memory (decoded once; each crop is converted to float when cut)
        self.images = [
            torch.from_numpy(np.array(a, dtype=np.uint8 if a.dtype == np.uint8 else np.float32, copy=True))
            .permute(2, 0, 1).contiguous()
            for a in images
            if a.shape[0] >= patch and a.shape[1] >= patch
        ]
        if not self.images:
            raise ConfigError(f"no training image is at least {patch}x{patch} pixels")
        # sample images in proportion to their number of possible patches, so every pixel is about equally likely
        areas = torch.tensor([(t.shape[1] - patch + 1) * (t.shape[2] - patch + 1) for t in self.images], dtype=torch.float64)
        self.weights = areas / areas.sum()
        self.generator = generator

    def sample(self, batch: int) -> torch.Tensor:
        g = self.generator
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=g).tolist()
        out = torch.empty(batch, 3, self.patch, self.patch)
        for i, j in enumerate(idx):
            img = self.images[j]
            y = int(torch.randint(0, img.shape[1] - self.patch + 1, (1,), generator=g))
            x = int(torch.randint(0, img.shape[2] - self.patch + 1, (1,), generator=g))
            crop = img[:, y:y + self.patch, x:x + self.patch]
            crop = crop.float() / 255.0 if crop.dtype == torch.uint8 else crop
            k = int(torch.randint(0, 4, (1,), generator=g)) if self.rotate else 0
            if k:
                crop = torch.rot90(crop, k, dims=(1, 2))
            if int(torch.randint(0, 2, (1,), generator=g)):
                crop = torch.flip(crop, dims=(2,))
            out[i] = crop
        return out


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + sigma * N(0, I), clipped to [0,1] (the serving path's noise)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + sigma * noise).clamp(0.0, 1.0)


def mse_loss(denoiser: nn.Module, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(denoiser(noisy), clean)


def stab_loss(
    denoiser: nn.Module,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    surrogates: Sequence[nn.Module],
    min_confidence: float = 0.0,
    mse_weight: float = 0.0,
) -> torch.Tensor:
    """Sum over surrogates of CE(f(clip(D(noisy))), argmax f(clean)) (+ mse_weight * MSE(D(noisy), clean));
    surrogates stay frozen, gradients reach D only.

    The classifiers see the denoised image clipped to [0, 1], as serving sends it (the denoiser clamps in eval
    mode, the engine clips again). Fed the raw output, Stab learns to drive pixels far outside [0, 1] (seen: half
    of them, PSNR 7 dB once clipped) and the served, clipped images are not the ones it was trained on.

    With min_confidence > 0, samples whose clean top-1 probability is below it are left out for that surrogate:
    on textures or background the clean label is arbitrary, and asking the denoiser to keep it teaches noise.
    """
    denoised = denoiser(noisy)
    served = denoised.clamp(0.0, 1.0)
    # the zero term keeps the graph when every sample is filtered out (a zero-gradient step)
    total = F.mse_loss(denoised, clean) * mse_weight if mse_weight else denoised.sum() * 0.0
    for f in surrogates:
        with torch.no_grad():
            probs = f(clean).softmax(1)
            confidence, target = probs.max(1)
            keep = confidence >= min_confidence
        if not bool(keep.any()):
            continue
        per_sample = F.cross_entropy(f(served), target, reduction="none")
        total = total + (per_sample * keep).sum() / keep.sum()
    return total


def training_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training: bfloat16 when asked, or for "auto" on a CPU with native bf16 (AMX /
    AVX512-BF16) or a CUDA device that supports it; None (plain float32) otherwise. Weights, the optimizer and the
    loss stay float32 either way. On a CPU without native bf16, bf16 convs are emulated and ~10-20x slower.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    from robust_api.denoisers.speed import native_bfloat16_cpu

    return torch.bfloat16 if native_bfloat16_cpu() else None


def learning_rate(config: TrainConfig, step: int) -> float:
    """Cosine decay from lr to lr * lr_final_fraction over config.steps."""
    final = config.lr * config.lr_final_fraction
    t = min(1.0, step / max(1, config.steps))
    return final + 0.5 * (config.lr - final) * (1.0 + math.cos(math.pi * t))


def _initial_module(config: TrainConfig, device: torch.device) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    if config.init:
        from robust_api.denoisers.registry import resolve_path

        path = resolve_path(config.init)
        loaded = load_checkpoint(path)
        if loaded.arch != config.arch:
            raise ConfigError(f"--init {config.init} is a {loaded.arch!r} denoiser, not {config.arch!r}")
        from robust_api.denoisers.registry import file_sha256

        module, cfg = loaded.module, dict(loaded.config)
        width = config.arch_overrides.get("n_channels")
        if config.arch == "ffdnet" and width and width != cfg.get("n_channels"):
            # a narrower FFDNet than --init: start from its largest-norm filters (structured pruning)
            from robust_api.denoisers.ffdnet import prune_width

            try:
                module = prune_width(module, int(width))
            except ValueError as exc:
                raise ConfigError(f"--init {config.init}: {exc}") from exc
            cfg["n_channels"] = int(width)
        if hasattr(module, "noise_level"):  # FFDNet: its noise-level input is the sigma it is trained at
            module.noise_level = cfg["noise_level"] = float(config.sigma)
        return module.to(device), cfg, {"source": str(config.init), "sha256": file_sha256(path)}
    cfg = arch_config(config.arch, **config.arch_overrides)
    if "noise_level" in cfg:
        cfg["noise_level"] = float(config.sigma)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # same seed, same initial weights: runs are reproducible
        module = build_denoiser(config.arch, **cfg)
    return module.to(device), cfg, None


def train_denoiser(
    config: TrainConfig,
    images: Sequence[np.ndarray],
    out: str | Path,
    *,
    surrogates: Sequence[nn.Module] = (),
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train (or resume training of) a denoiser on random patches of `images` (HxWx3 float arrays in [0,1]).

    Writes `out` every `checkpoint_every` steps and at the end. With `resume=True` and an existing `out`, continues
    from its step count, weights, optimizer and random state (its arch/objective/sigma must match `config`).
    Stab objectives need `surrogates` (frozen classifiers taking [0,1] images). Raises ConfigError / CheckpointError.
    """
    config.validate()
    if config.objective != "mse" and not surrogates:
        raise ConfigError(f"objective {config.objective} needs at least one surrogate classifier")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    surrogates = [s.to(dev) for s in surrogates]

    generator = torch.Generator().manual_seed(config.seed)
    module, cfg, init_identity = _initial_module(config, dev)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    losses: list[float] = []
    elapsed_before = 0.0
    if resume and out.exists():
        ckpt = read_checkpoint_dict(out)
        train_meta = (ckpt.get("meta") or {}).get("train") or {}
        for key in ("arch", "objective", "sigma"):
            if train_meta.get(key) != getattr(config, key):
                raise CheckpointError(
                    f"{out}: cannot resume: checkpoint has {key}={train_meta.get(key)!r}, run has {getattr(config, key)!r}"
                )
        from robust_api.denoisers.checkpoints import module_from_checkpoint

        loaded = module_from_checkpoint(ckpt, name=str(out))
        module.load_state_dict(loaded.module.state_dict())
        if loaded.optimizer:
            optimizer.load_state_dict(loaded.optimizer)
        step = int(ckpt.get("epoch") or 0)
        losses = [float(v) for v in ckpt.get("loss_history", [])]
        if isinstance(ckpt.get("rng_state"), torch.Tensor):
            generator.set_state(ckpt["rng_state"])
        elapsed_before = float((ckpt.get("meta") or {}).get("train_seconds", 0.0))
        init_identity = (ckpt.get("meta") or {}).get("init", init_identity)

    sampler = PatchSampler(images, config.patch, generator, rotate=config.rotate)
    started = time.perf_counter()

    def save() -> None:
        seconds = elapsed_before + time.perf_counter() - started
        window = losses[-max(1, min(len(losses), 50)):]
        meta = {
            "sigma": config.sigma,
            "objective": config.objective,
            "data": config.data,
            "steps": step,
            "surrogates": list(config.surrogates),
            "init": init_identity,
            "recipe": config.recipe,
            "train": asdict(config),
            "train_seconds": round(seconds, 1),
            "train_precision": "bfloat16" if autocast_dtype is not None else "float32",
            "metrics": {"train_loss_last50": float(np.mean(window)) if window else None},
        }
        save_checkpoint(
            out,
            checkpoint_dict(
                module, config.arch, cfg, meta=meta, epoch=step, optimizer=optimizer.state_dict(),
                extra={"loss_history": losses, "rng_state": generator.get_state()},
            ),
        )

    autocast_dtype = training_dtype(config.precision, dev)
    module.train()
    if config.freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        clean = sampler.sample(config.batch).to(dev)
        noisy = add_noise(clean, config.sigma, generator)
        with torch.autocast(device_type=dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            if config.objective == "mse":
                loss = mse_loss(module, clean, noisy)
            else:
                loss = stab_loss(module, clean, noisy, surrogates, config.min_confidence, config.mse_weight)
        loss = loss.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, config.steps, losses[-1])
        if step % config.checkpoint_every == 0 and step < config.steps:
            save()
    save()
    module.eval()
    return TrainResult(module, losses, step, out, elapsed_before + time.perf_counter() - started)
