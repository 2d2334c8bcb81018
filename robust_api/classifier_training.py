"""Training CIFAR classifiers (the reference's `train_classifier.py`): `train_classifier` and `evaluate_classifier`.

Recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4 (not on BatchNorm and biases), batch 128, learning rate
warmed up linearly over the first epoch to `lr` then cosine-annealed to 0 at the last step (per-step schedule, so
it fits any epoch budget); augmentation: random 32x32 crop of the 4-pixel zero-padded image and a horizontal flip;
with `noise_sd` > 0, Gaussian noise N(0, noise_sd^2) added to every training input (Cohen et al.'s Gaussian
augmentation; not clipped, as in their code). `bf16=True` runs forward and backward under bfloat16 autocast
(native on CPUs with avx512_bf16 / AMX and on recent GPUs); weights and optimizer state stay float32.

Data: an ImageFolder root with `train/` (and optionally `test/`, evaluated after every epoch) is decoded once into a
uint8 tensor held in memory (optionally cached as .npy files in `cache_dir`): decoding 50,000 JPEGs every epoch
would cost more than the training itself.

Checkpoints: after every epoch `out` is rewritten atomically (temp file + os.replace) with the model
(`arch`, `class_names`, `state_dict`, which is all `robust_api.cifar_resnet.load_classifier` needs), the
optimizer, the scheduler, the epoch, the RNG states, the config and the per-epoch metrics; `resume=True` continues
from it and, on CPU, ends with exactly the weights of an uninterrupted run (every random draw comes from one
generator whose state is saved).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robust_api.cifar_resnet import CifarResNet, blocks_per_stage, model_from_checkpoint, read_checkpoint
from robust_api.datasets import decode_uint8, image_folder
from robust_api.errors import ConfigError

CHECKPOINT_FORMAT = 1
PAD = 4
EVAL_BATCH = 500


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that shapes the trained weights (a resumed run must match it field by field)."""

    arch: str = "resnet20"
    epochs: int = 30
    batch: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    noise_sd: float = 0.0
    bf16: bool = True  # the CLI defaults to native_bf16(device)
    seed: int = 0
    limit_train: int | None = None

    def validate(self) -> None:
        blocks_per_stage(self.arch)
        if self.epochs < 1 or self.batch < 1:
            raise ConfigError("epochs and batch must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.noise_sd < 0 or self.warmup_epochs < 0:
            raise ConfigError("lr must be positive; weight decay, noise sd and warmup must not be negative")


@dataclass(frozen=True)
class Split:
    """Decoded images (N x 3 x H x W uint8 tensor), class indices (N int64) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    description: str


def load_split(folder: str | Path, *, limit: int | None = None, cache_dir: str | Path | None = None) -> Split:
    """An ImageFolder tree as tensors (ConfigError for a plain folder: training and accuracy need classes).

    `limit` keeps `limit` images spread evenly over the data-set order (every k-th), so every class stays in."""
    data = image_folder(folder)
    if limit is not None and limit < len(data.files):
        data = image_folder(folder, skip=len(data.files) // limit, max=limit)
    if not data.classes:
        raise ConfigError(f"{folder}: expected an ImageFolder tree (one subfolder per class)")
    pixels = decode_uint8(data, cache_dir=cache_dir)
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    labels = torch.tensor(data.labels, dtype=torch.int64)
    return Split(images, labels, data.classes, data.describe())


def device_for(name: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded uint8 batch, each flipped horizontally with probability 1/2."""
    n, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    crops = torch.stack([padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(offsets.tolist())])
    return torch.where(flips.view(n, 1, 1, 1), crops.flip(3), crops)


def learning_rate_factor(config: ClassifierConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Step -> multiplier of `lr`: linear warm-up over `warmup_epochs`, then cosine to 0 at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv and linear weights
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BatchNorm scales and shifts, biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16/AMX.
    Elsewhere oneDNN emulates bf16 and a step takes ~10x longer than in float32 (AVX2-only CPUs)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from robust_api.denoisers.speed import native_bfloat16_cpu

    return device.type == "cpu" and native_bfloat16_cpu()


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def accuracy(model: nn.Module, split: Split, device: torch.device, *, bf16: bool = False) -> float:
    """Fraction of `split` the model classifies right (eval mode, float32 unless `bf16`)."""
    model.eval()
    correct = 0
    with torch.inference_mode(), _autocast(device, bf16):
        for start in range(0, len(split.labels), EVAL_BATCH):
            x = split.images[start : start + EVAL_BATCH].to(device).float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            predicted = model(x).argmax(1).cpu()
            correct += int((predicted == split.labels[start : start + EVAL_BATCH]).sum())
    return correct / max(1, len(split.labels))


def save_atomically(ckpt: dict[str, Any], path: Path, mirror: Path | None = None) -> None:
    """Write `ckpt` to `path` via a temp file + os.replace (a kill mid-save leaves the old file), then copy it the
    same way into the folder `mirror` if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    if mirror is not None:
        mirror.mkdir(parents=True, exist_ok=True)
        copy_tmp = mirror / f".{path.name}.{os.getpid()}.tmp"
        shutil.copyfile(path, copy_tmp)
        os.replace(copy_tmp, mirror / path.name)


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def train_classifier(
    data: str | Path,
    out: str | Path,
    config: ClassifierConfig,
    *,
    resume: bool = False,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    mirror: str | Path | None = None,
    stop_after_epoch: int | None = None,
    recipe: str = "",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `config.arch` on `data`/train (evaluating on `data`/test when present) and return the last checkpoint.

    With `resume=True` and an existing `out`, continue after its last finished epoch (ConfigError if its config
    differs from `config`). `stop_after_epoch` ends this call after that epoch (the run stays resumable), as a kill
    would. `on_epoch` receives each epoch's metrics: epoch, loss, train_acc, test_acc (None without test/),
    lr, seconds.
    """
    config.validate()
    out = Path(out).expanduser()
    root = Path(data).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ConfigError(f"--data {data}: expected an ImageFolder root with train/ (and test/) inside")
    dev = device_for(device)
    train = load_split(train_dir, limit=config.limit_train, cache_dir=cache_dir)
    test = load_split(root / "test", cache_dir=cache_dir) if (root / "test").is_dir() else None
    if test is not None and test.classes != train.classes:
        raise ConfigError(f"{root}: test/ classes {test.classes} differ from train/ classes {train.classes}")

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = CifarResNet(config.arch, len(train.classes)).to(dev).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        _parameter_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
    )
    steps_per_epoch = math.ceil(len(train.labels) / config.batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config, steps_per_epoch))
    epoch, history = 0, []
    if resume and out.exists():
        ckpt = read_checkpoint(out)
        saved = ckpt.get("config", {})
        # a field added to ClassifierConfig after the checkpoint was written counts as its default
        differing = [f.name for f in fields(config) if saved.get(f.name, f.default) != getattr(config, f.name)]
        if differing:
            defaults = {f.name: f.default for f in fields(config)}
            detail = ", ".join(f"{k}={saved.get(k, defaults[k])!r} (now {getattr(config, k)!r})" for k in differing)
            raise ConfigError(f"{out}: cannot resume: the checkpoint was trained with {detail}")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        epoch, history = int(ckpt["epoch"]), list(ckpt["metrics"])
    elif out.exists() and not resume:
        raise ConfigError(f"{out} exists: pass --resume to continue it, or choose another --out")

    ckpt: dict[str, Any] = {}
    last = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    while epoch < last:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), config.batch):
            index = order[start : start + config.batch]
            x = augment(train.images[index], generator).float().div_(255)
            if config.noise_sd > 0:
                x = x + torch.randn(x.shape, generator=generator) * config.noise_sd
            y = train.labels[index]
            x = x.to(dev).contiguous(memory_format=torch.channels_last)
            y = y.to(dev)
            with _autocast(dev, config.bf16):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        epoch += 1
        metrics = {
            "epoch": epoch,
            "loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_acc": accuracy(model, test, dev) if test is not None else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "arch": config.arch,
            "class_names": list(train.classes),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "rng": _rng_states(generator),
            "config": asdict(config),
            "metrics": history,
            "data": {"train": train.description, "test": test.description if test is not None else None},
            "recipe": recipe,
        }
        save_atomically(ckpt, out, Path(mirror).expanduser() if mirror is not None else None)
        if on_epoch is not None:
            on_epoch(metrics)
    return ckpt or read_checkpoint(out)


def evaluate_classifier(
    data: str | Path, model_path: str | Path, *, device: str = "auto", limit: int | None = None, cache_dir=None
) -> dict[str, Any]:
    """Clean accuracy of the checkpoint at `model_path` on the ImageFolder tree `data` (class names must match)."""
    ckpt = read_checkpoint(model_path)
    split = load_split(data, limit=limit, cache_dir=cache_dir)
    if tuple(ckpt["class_names"]) != split.classes:
        raise ConfigError(f"{data}: classes {split.classes} differ from the checkpoint's {tuple(ckpt['class_names'])}")
    dev = device_for(device)
    model = model_from_checkpoint(ckpt).to(dev).to(memory_format=torch.channels_last)
    return {"accuracy": accuracy(model, split, dev), "images": len(split.labels), "data": split.description,
            "arch": ckpt["arch"], "epoch": ckpt.get("epoch")}
