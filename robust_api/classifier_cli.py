"""`robust-api classifier ...`: train and evaluate CIFAR classifiers (a typer sub-app the main CLI mounts).

Importing this module imports only typer; torch is imported inside the commands, so `robust-api --help` stays fast.
Only this module prints and exits; the library functions it calls raise typed errors.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

CLASSIFIER_HELP = "Train and evaluate CIFAR classifiers (ResNets in He et al.'s CIFAR layout)."

classifier_app = typer.Typer(help=CLASSIFIER_HELP, no_args_is_help=True, add_completion=False)


@classifier_app.callback()
def _group() -> None:
    """Train and evaluate CIFAR classifiers (ResNets in He et al.'s CIFAR layout)."""


def _recipe(data: Path, config) -> str:
    """The training command that reproduces `config` on `data`, every setting spelt out (kept in checkpoints)."""
    parts = ["robust-api classifier train --data", shlex.quote(str(data)), "--arch", config.arch, "--epochs",
             str(config.epochs), "--batch", str(config.batch), "--lr", f"{config.lr:g}", "--weight-decay",
             f"{config.weight_decay:g}", "--noise-sd", f"{config.noise_sd:g}", "--seed", str(config.seed),
             "--bf16" if config.bf16 else "--no-bf16"]
    if config.limit_train is not None:
        parts += ["--limit-train", str(config.limit_train)]
    return " ".join(parts)


def _set_threads(threads: Optional[int]) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


@classifier_app.command("train")
def train_command(
    data: Path = typer.Option(..., "--data", help="ImageFolder root holding train/ (and test/, evaluated every epoch)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint file, rewritten atomically after every epoch."),
    arch: str = typer.Option("resnet20", "--arch", help="resnet20, resnet32, resnet44, resnet56 or resnet110 (6n+2)."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Epochs (the learning-rate schedule spans them all)."),
    noise_sd: float = typer.Option(0.0, "--noise-sd", min=0.0, help="Gaussian noise augmentation (Cohen et al.)."),
    batch: int = typer.Option(128, "--batch", min=1, help="Batch size."),
    lr: float = typer.Option(0.1, "--lr", help="Peak learning rate (1 epoch linear warm-up, then cosine to 0)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="Weight decay (not on BatchNorm and biases)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights, the order and the augmentation."),
    bf16: Optional[bool] = typer.Option(
        None, "--bf16/--no-bf16",
        help="bfloat16 autocast for forward and backward (default: where the CPU/GPU computes bf16 natively; "
             "emulated bf16 is ~10x slower than float32)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint at --out (same settings)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda, cuda:1, ..."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep the decoded images here as .npy."),
    mirror: Optional[Path] = typer.Option(None, "--mirror", help="Also copy the checkpoint into this folder after every epoch."),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", min=1, help="Train on the first N images only (tests)."),
) -> None:
    """Train a CIFAR ResNet; one line per epoch: epoch, loss, train and test accuracy, seconds."""
    from robust_api.classifier_training import ClassifierConfig, train_classifier

    _set_threads(threads)
    if bf16 is None:
        from robust_api.classifier_training import device_for, native_bf16

        bf16 = native_bf16(device_for(device))
    config = ClassifierConfig(
        arch=arch, epochs=epochs, batch=batch, lr=lr, weight_decay=weight_decay, noise_sd=noise_sd, bf16=bf16,
        seed=seed, limit_train=limit_train,
    )

    def show(m: dict) -> None:
        test = "-" if m["test_acc"] is None else f"{100 * m['test_acc']:.2f}%"
        typer.echo(
            f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  train acc {100 * m['train_acc']:.2f}%  "
            f"test acc {test}  lr {m['lr']:.4f}  {m['seconds']:.0f} s"
        )
        sys.stdout.flush()

    ckpt = train_classifier(
        data, out, config, resume=resume, device=device, cache_dir=cache_dir, mirror=mirror,
        recipe=_recipe(data, config), on_epoch=show,
    )
    typer.echo(f"wrote {out} (epoch {ckpt['epoch']}/{epochs})")


@classifier_app.command("eval")
def eval_command(
    data: Path = typer.Option(..., "--data", help="ImageFolder tree to evaluate on (e.g. cifar10/test)."),
    model: Path = typer.Option(..., "--model", help="Checkpoint written by `classifier train`."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda, ..."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N images only."),
) -> None:
    """Clean accuracy of a checkpoint on an ImageFolder tree."""
    from robust_api.classifier_training import evaluate_classifier

    _set_threads(threads)
    result = evaluate_classifier(data, model, device=device, limit=limit)
    typer.echo(
        f"{model.name}: {result['arch']} after {result['epoch']} epochs: clean accuracy "
        f"{100 * result['accuracy']:.2f}% on {result['data']}"
    )
