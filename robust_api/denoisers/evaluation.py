"""Denoiser evaluation on held-out real photos: PSNR, agreement under noise, and Monte Carlo certified accuracy.

For every image x the base classifier f (default: the offline EfficientNet-Lite0) gives the clean label f(x).
Each method D (no denoiser, TV, a trained denoiser) is run on the *same* noisy samples clip(x + sigma*eps, 0, 1)
(common random numbers make the comparison sharper); the denoised image is quantised to 8 bits, as the provider
path encodes it, and classified. Counts feed `robust_api.smoothing.certify` (Cohen's CERTIFY), and an image
counts as certified at radius r when the certified label equals f(x) with radius >= r (the metric of the paper's
cloud-API experiments). When the images carry their true class (ImageNet photos from a `datasets` folder), the
same counts are also scored against it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from robust_api.errors import ConfigError
from robust_api.smoothing import ABSTAIN, certify

RADII = (0.0, 0.1, 0.25, 0.5)
TV_WEIGHT_PER_SIGMA = 0.6  # DESIGN.md: denoise_tv_chambolle with weight about 0.6 * sigma

DenoiseFn = Callable[[np.ndarray], np.ndarray]  # NHWC float32 in [0,1] -> same


@dataclass
class Method:
    """A denoising method under evaluation: `fn` maps NHWC [0,1] batches to denoised batches."""

    name: str
    fn: DenoiseFn
    meta: dict = field(default_factory=dict)


@dataclass
class MethodResult:
    name: str
    sigma: float
    n_images: int
    psnr_db: float  # mean over samples of PSNR(method output, clean image)
    agreement: float  # fraction of estimation samples whose label equals the clean label
    certified: dict[float, float]  # radius -> certified accuracy (certified label == clean label)
    abstained: float
    seconds: float
    per_image: list[dict] = field(default_factory=list, repr=False)
    # against the true class, when every image has one (None otherwise)
    true_accuracy: float | None = None  # fraction of estimation samples labelled with the true class
    certified_true: dict[float, float] | None = None  # radius -> fraction certified with the true class
    clean_accuracy: float | None = None  # the classifier on the clean images (same for every method)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per image of NHWC arrays in [0,1] (peak 1.0)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def identity_method() -> Method:
    return Method("none", lambda batch: batch)


def tv_method(sigma: float, weight: float | None = None) -> Method:
    """scikit-image's Chambolle TV denoiser, weight 0.6*sigma by default, each colour channel on its own."""
    from robust_api.denoisers.classical import tv_denoise  # the same TV that denoiser="tv" serves

    w = TV_WEIGHT_PER_SIGMA * sigma if weight is None else weight
    return Method(f"tv(w={w:.3g})", lambda batch: tv_denoise(np.asarray(batch, dtype=np.float32), w), {"weight": w})


def module_method(name: str, module: nn.Module, batch_size: int = 16) -> Method:
    from robust_api.denoisers.speed import denoise_numpy

    return Method(name, lambda batch: denoise_numpy(module, batch, batch_size=batch_size), dict(getattr(module, "denoiser_meta", {}) or {}))


class Classifier:
    """Batched argmax labels of a frozen classifier taking NCHW [0,1] images (channels_last, inference mode)."""

    def __init__(self, model: nn.Module, batch_size: int = 32) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        labels = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
                x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(self.device)
                labels.append(self.model(x).argmax(1).cpu().numpy())
        return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def _quantise(batch: np.ndarray) -> np.ndarray:
    return np.round(np.clip(batch, 0.0, 1.0) * 255.0) / 255.0


def _stream(seed: int, image: np.ndarray, phase: str) -> np.random.Generator:
    """Noise stream seeded by (seed, image content, phase): reruns and every method see the same noise."""
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes() + phase.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def evaluate(
    methods: Sequence[Method],
    images: Sequence[tuple[str, np.ndarray]] | Sequence[tuple[str, np.ndarray, int | None]],
    sigma: float,
    classify: Callable[[np.ndarray], np.ndarray],
    *,
    n0: int = 32,
    n: int = 200,
    alpha: float = 0.001,
    seed: int = 0,
    batch: int = 32,
    radii: Sequence[float] = RADII,
    progress: Callable[[int, int], None] | None = None,
) -> list[MethodResult]:
    """Certify every image under every method with n0 selection + n estimation noise samples at `sigma`.

    `classify` maps NHWC [0,1] float32 batches to integer labels. `images` are (name, HxWx3) pairs or
    (name, HxWx3, true_class) triples; when every image has a true class, results also report accuracy against it
    (`true_accuracy`, `certified_true`, `clean_accuracy`). Returns one MethodResult per method, in order.
    """
    if not methods or not images:
        raise ConfigError("evaluation needs at least one method and one image")
    if n0 < 1 or n < 1 or not 0 < alpha < 1 or sigma <= 0:
        raise ConfigError("need n0 >= 1, n >= 1, 0 < alpha < 1, sigma > 0")
    seconds = {m.name: 0.0 for m in methods}
    psnr_sum = {m.name: 0.0 for m in methods}
    details: dict[str, list[dict]] = {m.name: [] for m in methods}
    total_samples = len(images) * (n0 + n)
    done = 0
    truths = [item[2] if len(item) > 2 else None for item in images]
    with_truth = all(t is not None for t in truths)
    for item, true_class in zip(images, truths):
        image_name, clean = item[0], item[1]
        clean = np.asarray(clean, dtype=np.float32)
        clean_label = int(classify(_quantise(clean[None]))[0])
        counts = {m.name: {"selection": {}, "estimation": {}} for m in methods}
        for phase, count in (("selection", n0), ("estimation", n)):
            rng = _stream(seed, clean, phase)
            for start in range(0, count, batch):
                size = min(batch, count - start)
                eps = rng.standard_normal((size, *clean.shape), dtype=np.float32)
                noisy = np.clip(clean[None] + sigma * eps, 0.0, 1.0)
                for m in methods:
                    t0 = time.perf_counter()
                    out = _quantise(m.fn(noisy))
                    labels = classify(out)
                    seconds[m.name] += time.perf_counter() - t0
                    if phase == "estimation":
                        psnr_sum[m.name] += float(psnr(out, clean[None]).sum())
                    bucket = counts[m.name][phase]
                    for lab in labels.tolist():
                        bucket[str(lab)] = bucket.get(str(lab), 0) + 1
                done += size
                if progress is not None:
                    progress(done, total_samples)
        for m in methods:
            sel, est = counts[m.name]["selection"], counts[m.name]["estimation"]
            label, radius = certify(sel, est, sigma, alpha)
            details[m.name].append({
                "image": image_name, "clean_label": clean_label,
                "label": None if label == ABSTAIN else int(label), "radius": float(radius),
                "agreement": est.get(str(clean_label), 0) / n,
                "true_class": None if true_class is None else int(true_class),
                "true_agreement": None if true_class is None else est.get(str(int(true_class)), 0) / n,
            })
    results = []
    for m in methods:
        rows = details[m.name]
        certified = {
            float(r): sum(1 for d in rows if d["label"] == d["clean_label"] and d["radius"] >= r) / len(rows)
            for r in radii
        }
        results.append(MethodResult(
            name=m.name, sigma=sigma, n_images=len(rows),
            psnr_db=psnr_sum[m.name] / (len(rows) * n),
            agreement=float(np.mean([d["agreement"] for d in rows])),
            certified=certified,
            abstained=sum(1 for d in rows if d["label"] is None) / len(rows),
            seconds=seconds[m.name], per_image=rows,
            true_accuracy=float(np.mean([d["true_agreement"] for d in rows])) if with_truth else None,
            certified_true={
                float(r): sum(1 for d in rows if d["label"] == d["true_class"] and d["radius"] >= r) / len(rows)
                for r in radii
            } if with_truth else None,
            clean_accuracy=float(np.mean([d["clean_label"] == d["true_class"] for d in rows])) if with_truth else None,
        ))
    return results


def format_table(results: Sequence[MethodResult], radii: Sequence[float] = RADII) -> str:
    """A Markdown table: method, sigma, PSNR, agreement, certified accuracy at each radius, abstentions."""
    head = ["method", "sigma", "PSNR dB", "agreement"] + [f"cert@{r:g}" for r in radii] + ["abstain", "images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, f"{r.sigma:g}", f"{r.psnr_db:.2f}", f"{r.agreement:.3f}"]
        cells += [f"{r.certified.get(float(x), float('nan')):.3f}" for x in radii]
        cells += [f"{r.abstained:.3f}", str(r.n_images)]
        lines.append("| " + " | ".join(cells) + " |")
    if results and all(r.certified_true is not None for r in results):
        lines += [
            "",
            f"Against the true class (classifier on the clean images: {results[0].clean_accuracy:.3f}):",
            "",
            "| " + " | ".join(["method", "sample accuracy"] + [f"cert(true)@{x:g}" for x in radii]) + " |",
            "|" + "---|" * (2 + len(radii)),
        ]
        for r in results:
            cells = [r.name, f"{r.true_accuracy:.3f}"] + [f"{r.certified_true.get(float(x), float('nan')):.3f}" for x in radii]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
