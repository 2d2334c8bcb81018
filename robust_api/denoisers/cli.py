"""`robust-api denoiser ...`: train, evaluate and list denoisers (a typer sub-app the main CLI mounts).

Only this module prints and exits; the library functions it calls raise typed errors.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from robust_api.errors import ConfigError, RobustAPIError

denoiser_app = typer.Typer(help="Train, evaluate and list denoisers.", no_args_is_help=True, add_completion=False)



@denoiser_app.callback()
def _group() -> None:
    """Train, evaluate and list denoisers."""


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def load_image_dirs(sources: List[str], split: str = "all", limit: Optional[int] = None) -> tuple[list, str]:
    """Training images (pyramid of scales) from directories and/or the token `builtin`, plus a description.

    Folders are read through `datasets.load_folder` with `split` (train | heldout | all: the fixed
    index % 10 == 9 rule) and decoded once into uint8; `limit` keeps the first photos of each folder's split.
    """
    from robust_api.denoisers import datasets, photos

    named: list = []
    described = []
    for src in sources:
        if src == "builtin":
            named += photos.training_photos()
            described.append("builtin:" + ",".join(n for n, _ in photos.training_photos()))
            continue
        if not Path(src).is_dir():
            raise ConfigError(f"--images {src}: not a directory (or the token 'builtin')")
        try:
            found = datasets.load_folder(src, split, limit=limit)
        except ConfigError as exc:
            raise ConfigError(f"--images {exc}") from exc
        named += [(p.name, p.pixels) for p in found]
        described.append(datasets.describe(src, split, found) + (f" (first {limit})" if limit else ""))
    return photos.training_pyramid(named), "; ".join(described)


def _recipe(command: str) -> str:
    """The command line as `robust-api denoiser <command> ...`, whatever entry point ran it (recorded in checkpoints)."""
    argv = sys.argv[1:]
    args = argv[argv.index(command) + 1:] if command in argv else argv
    return f"robust-api denoiser {command} " + " ".join(shlex.quote(a) for a in args)


@denoiser_app.command("train")
def train_cmd(
    images: List[str] = typer.Option(..., "--images", help="Directory of training photos, or 'builtin' (repeatable)."),
    split: str = typer.Option("train", "--split", help="Photos of each --images folder to use: train | heldout | all (index % 10 == 9 is held out)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N photos of each folder's split."),
    sigma: float = typer.Option(..., "--sigma", help="Noise level (std of Gaussian noise on [0,1] images)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (periodically and at the end)."),
    arch: str = typer.Option("dncnn", "--arch", help="cifar_dncnn | cifar_dncnn_wide | imagenet_dncnn | memnet | imagenet_memnet | dncnn | memnet_custom | ffdnet"),
    depth: Optional[int] = typer.Option(None, "--depth", help="Network depth (dncnn, ffdnet)."),
    width: Optional[int] = typer.Option(None, "--width", help="Network width (dncnn, ffdnet; an ffdnet --init wider than this is pruned to it)."),
    objective: str = typer.Option("mse", "--objective", help="mse | stab | stab+mse"),
    surrogate: List[str] = typer.Option([], "--surrogate", help="Frozen classifier for stab (repeatable): efficientnet-lite0/1/2, torchvision:NAME, or a `classifier train` checkpoint (.pt)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this checkpoint / shipped name (required for stab+mse)."),
    steps: int = typer.Option(2000, "--steps"),
    batch: int = typer.Option(32, "--batch"),
    patch: int = typer.Option(48, "--patch", help="Square patch side in pixels."),
    lr: float = typer.Option(1e-3, "--lr"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every"),
    seed: int = typer.Option(0, "--seed"),
    min_confidence: float = typer.Option(0.0, "--min-confidence", help="Stab: skip samples whose clean top-1 probability is lower."),
    mse_weight: float = typer.Option(0.0, "--mse-weight", help="Stab objectives: add this times the MSE loss (0: the paper's)."),
    freeze_bn: bool = typer.Option(False, "--freeze-bn/--no-freeze-bn", help="Keep BatchNorm statistics fixed (fine-tuning)."),
    rotate: bool = typer.Option(True, "--rotate/--no-rotate", help="Random 90-degree patch rotations (use --no-rotate for Stab through a classifier of upright photos)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bfloat16 autocast where the CPU/GPU has native bf16), float32, bfloat16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --out if it exists."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Train a denoiser on random patches of real photos (MSE, Stab through surrogates, or Stab+MSE)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from robust_api.denoisers.surrogates import load_surrogate
    from robust_api.denoisers.training import TrainConfig, train_denoiser

    if threads:
        torch.set_num_threads(threads)
    try:
        data, description = load_image_dirs(images, split, limit)
        overrides = {k: v for k, v in {"depth": depth, "n_channels": width}.items() if v is not None}
        objective_needs = objective in ("stab", "stab+mse")
        surrogate_names = list(surrogate) or (["efficientnet-lite0"] if objective_needs else [])
        config = TrainConfig(
            sigma=sigma, arch=arch, arch_overrides=overrides, objective=objective, steps=steps, batch=batch,
            patch=patch, lr=lr, checkpoint_every=checkpoint_every, seed=seed, init=init, min_confidence=min_confidence,
            mse_weight=mse_weight, freeze_bn=freeze_bn, rotate=rotate, precision=precision,
            surrogates=surrogate_names if objective_needs else [], data=description,
            recipe=_recipe("train"),
        )
        config.validate()
        models = [load_surrogate(n, device) for n in config.surrogates]
        with Progress(
            TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.5f}"), TimeElapsedColumn(), TimeRemainingColumn(),
        ) as bar:
            task = bar.add_task(f"{arch} {objective} sigma={sigma}", total=steps, loss=float("nan"))
            smoothed: list[float] = []

            def report(step: int, total: int, loss: float) -> None:
                smoothed.append(loss)
                window = smoothed[-20:]
                bar.update(task, completed=step, loss=sum(window) / len(window))

            result = train_denoiser(config, data, out, surrogates=models, resume=resume, device=device, progress=report)
    except RobustAPIError as exc:
        _fail(exc)
    typer.echo(f"wrote {result.checkpoint} after {result.steps_done} steps ({result.seconds:.0f} s)")


@denoiser_app.command("list")
def list_cmd() -> None:
    """Show the shipped denoisers with their metadata."""
    from rich.console import Console
    from rich.table import Table

    from robust_api.denoisers.registry import list_denoisers

    table = Table(title="shipped denoisers (load with denoiser=NAME or --denoiser NAME)")
    for col in ("name", "arch", "sigma", "objective", "training data", "held-out PSNR dB", "sha256"):
        table.add_column(col)
    for w in list_denoisers():
        m = w.meta
        cfg = m.get("arch_config", {})
        arch = f"{m.get('arch')} {cfg.get('depth', '')}x{cfg.get('n_channels', '')}".strip()
        surrogates = f" via {','.join(m['surrogates'])}" if m.get("surrogates") else ""
        data = str(m.get("training_data", ""))
        table.add_row(
            w.name, arch, f"{m.get('sigma')}", f"{m.get('objective')}{surrogates}",
            data if len(data) < 40 else data[:37] + "...",
            f"{m.get('heldout_psnr_noisy_db')} -> {m.get('heldout_psnr_db')}", w.sha256[:16],
        )
    Console().print(table)
    for w in list_denoisers():
        typer.echo(f"{w.name} recipe: " + " && ".join(w.meta.get("recipe", [])))


@denoiser_app.command("eval")
def eval_cmd(
    sigma: float = typer.Option(0.25, "--sigma", help="Noise level to evaluate at."),
    denoiser: List[str] = typer.Option([], "--denoiser", help="Shipped name or checkpoint path (repeatable; default: the shipped ones at --sigma)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Include no denoiser and TV."),
    tv_weight: Optional[float] = typer.Option(None, "--tv-weight", help="TV weight (default 0.6 * sigma)."),
    photos_dir: Optional[Path] = typer.Option(None, "--photos", help="Folder of evaluation photos (e.g. imagenet-samples): one centred crop each, true ImageNet class from the file order when the folder has one photo per class."),
    split: str = typer.Option("heldout", "--split", help="With --photos: train | heldout | all (index % 10 == 9 is held out)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Instead of --photos: an ImageFolder tree (e.g. ../shared/data/cifar10/test), images at their own size, true class from their folder."),
    skip: int = typer.Option(1, "--skip", help="With --dataset: every K-th image in data-set order."),
    limit: Optional[int] = typer.Option(None, "--limit", help="With --photos: only the first N photos of the split; with --dataset: at most N images."),
    classifier: str = typer.Option("efficientnet-lite0", "--classifier", help="The base classifier: efficientnet-lite0/1/2, torchvision:NAME, or a `classifier train` checkpoint (.pt, e.g. models/cifar10-resnet20.pt)."),
    crops: int = typer.Option(4, "--crops", help="Without --photos: 224x224 crops per built-in held-out photo (1..12)."),
    n0: int = typer.Option(32, "--n0", help="Selection samples per image."),
    n: int = typer.Option(200, "--n", help="Estimation samples per image."),
    alpha: float = typer.Option(0.001, "--alpha"),
    seed: int = typer.Option(0, "--seed"),
    batch: int = typer.Option(32, "--batch"),
    size: int = typer.Option(224, "--size", help="Evaluation image side (the classifier's input is 224)."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Fold BatchNorm + channels_last + --precision."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16/fp16 where native and PSNR-neutral), float32, bfloat16, float16."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write results (with per-image rows) here."),
) -> None:
    """PSNR, agreement with the clean label, and certified accuracy of a classifier (EfficientNet-Lite0 unless
    --classifier) on held-out photos, every method on the same noise; also accuracy against the true class when
    --photos is a folder with one photo per ImageNet class, or --dataset an ImageFolder tree."""
    import json

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from robust_api.denoisers import datasets
    from robust_api.denoisers import evaluation as ev
    from robust_api.denoisers.photos import eval_images
    from robust_api.denoisers.registry import list_denoisers, load_denoiser
    from robust_api.denoisers.speed import optimize_for_inference
    from robust_api.denoisers.surrogates import load_surrogate

    if threads:
        torch.set_num_threads(threads)
    try:
        names = list(denoiser) or [w.name for w in list_denoisers() if abs(float(w.meta.get("sigma", -1)) - sigma) < 1e-9]
        methods = [ev.identity_method(), ev.tv_method(sigma, tv_weight)] if baselines else []
        for name in names:
            module = load_denoiser(name, sigma=sigma)
            if optimize:
                module = optimize_for_inference(module, precision=precision)
                name = f"{name} [{module.denoiser_precision}]"
            methods.append(ev.module_method(name, module))
        if not methods:
            raise ConfigError("nothing to evaluate: no baselines and no denoiser")
        if photos_dir is not None and dataset is not None:
            raise ConfigError("give --photos or --dataset, not both")
        model = load_surrogate(classifier)
        if dataset is not None:
            # a `classifier train` checkpoint names its outputs; an ImageNet model's are not the folder's classes
            class_names = getattr(model, "class_names", None)
            images, where = datasets.labelled_folder_set(dataset, skip=skip, limit=limit, class_names=class_names)
            if class_names is None:
                images = [(name, pixels, None) for name, pixels, _ in images]
                where += "; no true classes: the classifier names none"
        elif photos_dir is not None:
            images, where = datasets.evaluation_set(photos_dir, split, size, limit=limit)
        else:
            images = eval_images(crops, size)
            where = f"crops of {', '.join(sorted({i.split('#')[0] for i, _ in images}))}"
        classify = ev.Classifier(model, batch_size=batch)
        with Progress(TextColumn("[bold]eval[/] sigma=" + f"{sigma:g}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task("", total=len(images) * (n0 + n))
            results = ev.evaluate(
                methods, images, sigma, classify, n0=n0, n=n, alpha=alpha, seed=seed, batch=batch,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    except RobustAPIError as exc:
        _fail(exc)
    typer.echo(ev.format_table(results))
    typer.echo(
        f"\n{len(images)} images ({where}), "
        f"n0={n0}, n={n}, alpha={alpha}, seed={seed}; classifier {classifier}; "
        f"seconds per method: " + ", ".join(f"{r.name} {r.seconds:.0f}" for r in results)
    )
    if json_out:
        payload = {
            "command": _recipe("eval"),
            "settings": {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "size": size,
                         "classifier": classifier,
                         "photos": where, "crops": None if photos_dir is not None else crops},
            "results": [r.__dict__ for r in results],
        }
        json_out.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")


@denoiser_app.command("show")
def show_cmd(
    images: List[str] = typer.Argument(..., metavar="IMAGE", help="Image files (PNG, JPEG, ...): one row each."),
    sigma: float = typer.Option(..., "--sigma", help="Noise level (std of Gaussian noise on [0,1] images)."),
    denoiser: List[str] = typer.Option([], "--denoiser", help="Shipped name, checkpoint path, ffdnet-color, tv or tv:W (repeatable; default: the shipped ones at --sigma)."),
    classifier: str = typer.Option("efficientnet-lite0", "--classifier", help="ImageNet classifier: efficientnet-lite0/1/2 or torchvision:NAME."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (row i draws its noise from numpy default_rng with seed (SEED, i))."),
    size: int = typer.Option(224, "--size", help="Panel side: centre crop of each image resized to this (the classifier's input is 224)."),
    out: Path = typer.Option(..., "-o", "--out", help="PNG file to write."),
) -> None:
    """A PNG grid, one row per image: clean | noisy | each denoiser's output, with the classifier's top-1
    ImageNet class and probability under each panel and PSNR vs clean under the noisy and denoised ones."""
    from robust_api.denoisers.registry import list_denoisers
    from robust_api.denoisers.show import denoiser_grid
    from robust_api.denoisers.surrogates import load_surrogate
    from robust_api.images import load_image
    from robust_api.classifiers import imagenet_names

    try:
        loaded = [load_image(path) for path in images]
        specs = list(denoiser) or [w.name for w in list_denoisers() if abs(w.sigma - sigma) < 1e-9]
        if not specs:
            raise ConfigError(f"no shipped denoiser at sigma={sigma:g}; pass --denoiser (e.g. ffdnet-color or tv)")
        grid = denoiser_grid(
            [(img.name, img.array) for img in loaded], sigma, specs, load_surrogate(classifier), imagenet_names(),
            seed=seed, size=size, classifier_name=classifier,
        )
        written = grid.save(out)
    except RobustAPIError as exc:
        _fail(exc)
    typer.echo(str(written))
