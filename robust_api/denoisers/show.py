"""A "look, don't read" grid of clean | noisy | denoised images with the classifier's answer under each panel.

Like `visualize.py` of Salman et al.'s denoised smoothing: one row per image, columns clean, noisy at sigma, then
each denoiser's output; under every panel the classifier's top-1 ImageNet class with its softmax probability, and
for the noisy and denoised panels the PSNR (dB) against the clean panel.

What each panel shows is what the provider path sends: the clean image is centre-cropped (the full short side)
and resized to `size` x `size` through 8 bits; the noisy copy is clip(x + sigma * eps, 0, 1) with eps drawn from a
numpy Generator seeded with (seed, row index), so the same call draws the same picture; the denoiser sees that
float noisy copy, and every panel is quantised to 8 bits (`images.to_uint8`) before it is classified, measured
and drawn. The figure uses matplotlib's object API with the Agg canvas (as `robust_api.report` does), so it never
opens a window or changes a notebook's backend.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from robust_api.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Panel", "GridRow", "DenoiserGrid", "prepare_image", "denoiser_grid"]

PANEL_WIDTH_IN = 2.4  # figure inches per column
PANEL_HEIGHT_IN = 3.0  # figure inches per row (image plus the two text lines under it)
HEADER_IN = 0.45  # the figure title
DPI = 100
_WRAP = 26  # characters per line of a class name under a panel


@dataclass(frozen=True)
class Panel:
    """One panel of the grid: its column `title`, the classifier's top-1 `label` (ImageNet index), `class_name`,
    softmax `probability`, and `psnr_db` against the clean panel (None for the clean panel itself).
    `pixels` (uint8 HxWx3, exactly what was classified and drawn) is left out of equality and repr."""

    title: str
    label: int
    class_name: str
    probability: float
    psnr_db: float | None
    pixels: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class GridRow:
    """One image's row: its name and panels (clean, noisy, then one per denoiser, in column order)."""

    image: str
    panels: tuple[Panel, ...]


@dataclass
class DenoiserGrid:
    """The figure and the numbers drawn in it. `columns` are the panel titles in order."""

    figure: "Figure"
    rows: list[GridRow]
    columns: list[str]
    sigma: float
    seed: int

    def data(self) -> list[dict]:
        """The grid's numbers as JSON-ready dicts, one per panel: image, column, label, class_name, probability,
        psnr_db."""
        return [
            {"image": row.image, "column": p.title, "label": p.label, "class_name": p.class_name,
             "probability": p.probability, "psnr_db": p.psnr_db}
            for row in self.rows for p in row.panels
        ]

    def save(self, path: str | Path) -> Path:
        """Write the figure as a PNG at `path` and return it; ConfigError when the file cannot be written."""
        out = Path(path)
        try:
            self.figure.savefig(out, format="png")
        except OSError as exc:
            raise ConfigError(f"cannot write grid to {out}: {exc.strerror or exc}") from None
        return out


def prepare_image(pixels: np.ndarray, size: int = 224, name: str | None = None) -> np.ndarray:
    """`pixels` (HxW or HxWxC, uint8/uint16/float in [0,1], as `images.load_image` accepts) -> the centred square
    of its full short side resized to size x size (bicubic, through 8 bits): float32 HxWx3 on the 8-bit grid.
    ImageError for arrays load_image rejects (NaN, out of range, bad shape); ConfigError for size < 8."""
    from robust_api.denoisers.photos import center_square, resize
    from robust_api.images import from_uint8, load_image, to_uint8

    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    square = center_square(load_image(np.asarray(pixels), name=name).array)
    if square.shape[0] == size:
        return from_uint8(to_uint8(square))
    return resize(square, size, size)


def _load(spec: nn.Module | str | Path, sigma: float) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec.eval()
    from robust_api.denoisers.registry import load_denoiser

    return load_denoiser(str(spec) if isinstance(spec, Path) else spec, sigma=sigma, optimize=True)


def _title(module: nn.Module) -> str:
    return str(getattr(module, "denoiser_name", None) or type(module).__name__)


def _classify(
    classifier: nn.Module, batch: np.ndarray, n_classes: int, batch_size: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 labels, their softmax probabilities) of NHWC float32 [0,1] images; ConfigError when the classifier
    does not give `n_classes` logits per image.

    One image per forward pass by default: convolution kernels pick different summation orders for different batch
    sizes, so a batched probability would change in the 7th digit with the other panels of the grid; one at a time,
    a panel's numbers depend only on its own pixels."""
    device = next(classifier.parameters(), torch.empty(0)).device
    classifier.eval()
    labels, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[start:start + batch_size])).permute(0, 3, 1, 2)
            logits = classifier(x.to(device))
            if logits.ndim != 2 or logits.shape[1] != n_classes:
                raise ConfigError(
                    f"the classifier gives outputs of shape {tuple(logits.shape[1:])} but {n_classes} class names "
                    "were given"
                )
            p = torch.softmax(logits.float(), dim=1)
            top = p.max(dim=1)
            labels.append(top.indices.cpu().numpy())
            probs.append(top.values.cpu().numpy())
    return np.concatenate(labels), np.concatenate(probs)


def _caption(panel: Panel) -> str:
    name = "\n".join(textwrap.wrap(panel.class_name, _WRAP)[:2]) or "?"
    detail = f"{panel.probability:.0%}"
    if panel.psnr_db is not None:
        detail += f"  ·  PSNR {panel.psnr_db:.1f} dB"
    return f"{name}\n{detail}"


def _figure(rows: list[GridRow], columns: list[str], title: str) -> "Figure":
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("the grid needs matplotlib: pip install 'robust-api[notebooks]'") from None
    n_rows, n_cols = len(rows), len(columns)
    fig = Figure(
        figsize=(n_cols * PANEL_WIDTH_IN, n_rows * PANEL_HEIGHT_IN + HEADER_IN), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row.panels):
            ax = axes[r][c]
            ax.imshow(panel.pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_xlabel(_caption(panel), fontsize=8, linespacing=1.25)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(columns[c], _WRAP)[:2]), fontsize=9)
            if c == 0:
                ax.set_ylabel(row.image, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def denoiser_grid(
    images: Sequence[tuple[str, np.ndarray]],
    sigma: float,
    denoisers: Sequence[nn.Module | str | Path],
    classifier: nn.Module,
    class_names: Sequence[str],
    *,
    seed: int = 0,
    size: int = 224,
    classifier_name: str | None = None,
) -> DenoiserGrid:
    """The clean | noisy | denoised grid of `images` at noise level `sigma`, with the numbers drawn in it.

    `images`: (name, pixels) pairs, pixels HxWx3 float in [0,1] (anything `images.load_image` accepts), each
    prepared with `prepare_image(pixels, size)`. `denoisers`: modules (NCHW [0,1] in and out, used as given) or
    specs for `load_denoiser(spec, sigma=sigma, optimize=True)` — shipped names, checkpoint paths, `ffdnet-color`,
    `tv` / `tv:W`; a column is titled with the module's `denoiser_name` (else its class name). An empty list gives
    clean | noisy only. `classifier`: NCHW [0,1] in, logits over `class_names` out (e.g.
    `surrogates.load_surrogate("efficientnet-lite0")` with `classifiers.imagenet_names()`); `classifier_name` is
    only printed in the figure title.

    Row i's noise is drawn from numpy's default_rng([seed, i]), so equal arguments give equal grids (data and
    pixels; each panel is classified on its own, so its numbers do not depend on the other panels or rows).
    Every panel is quantised to 8 bits before it is classified, measured (PSNR vs the clean panel) and drawn.
    Raises ConfigError for no images, sigma <= 0 (or not finite), seed < 0, size < 8, or class_names not
    matching the classifier's outputs; ImageError for unusable pixels; load_denoiser's errors pass through.
    """
    from robust_api.denoisers.evaluation import psnr
    from robust_api.denoisers.speed import denoise_numpy
    from robust_api.images import from_uint8, to_uint8

    if not images:
        raise ConfigError("the grid needs at least one image")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    names = [str(n) for n in class_names]
    modules = [_load(spec, sigma) for spec in denoisers]
    columns = ["clean", f"noisy (σ={sigma:g})"] + [_title(m) for m in modules]

    cleans = np.stack([prepare_image(pixels, size, name=str(name)) for name, pixels in images])
    noisy = np.empty_like(cleans)
    for i, clean in enumerate(cleans):
        eps = np.random.default_rng([seed, i]).standard_normal(clean.shape, dtype=np.float32)
        noisy[i] = np.clip(clean + np.float32(sigma) * eps, 0.0, 1.0)
    # one image per pass, like the classifier below: a row's pixels do not depend on the other rows
    outputs = [cleans, noisy] + [denoise_numpy(m, noisy, batch_size=1) for m in modules]
    quantised = np.stack([to_uint8(out) for out in outputs], axis=1)  # (rows, columns, H, W, 3): what is sent

    flat = from_uint8(quantised.reshape(-1, *quantised.shape[2:]))
    labels, probs = _classify(classifier, flat, len(names))
    labels = labels.reshape(quantised.shape[:2])
    probs = probs.reshape(quantised.shape[:2])

    rows = []
    for i, (name, _) in enumerate(images):
        clean_f = from_uint8(quantised[i, 0])[None]
        panels = []
        for c, title in enumerate(columns):
            db = None if c == 0 else float(psnr(from_uint8(quantised[i, c])[None], clean_f)[0])
            label = int(labels[i, c])
            panels.append(Panel(title, label, names[label], float(probs[i, c]), db, quantised[i, c]))
        rows.append(GridRow(str(name), tuple(panels)))

    who = f"{classifier_name} " if classifier_name else "classifier "
    title = (f"σ = {sigma:g}, seed {seed}, {size}×{size}: {who}top-1 (probability); "
             "PSNR vs clean after 8-bit quantisation")
    return DenoiserGrid(_figure(rows, columns, title), rows, columns, float(sigma), int(seed))
