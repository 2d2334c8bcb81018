"""The README's first command: certify bundled real photos against a local emulator, with and without a
shipped denoiser, then replay the query log offline and show that replay reproduces the online certificates.

Photos: held-out photos that ship offline inside scikit-image / scikit-learn / matplotlib (see
robust_api.denoisers.photos for each one's licence), centre-cropped to 224x224. The emulator speaks the
provider's real wire format and is backed by the offline pretrained EfficientNet-Lite0 ImageNet classifier;
the adapter talks to it through the provider's real SDK. No credentials, no network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_api.engine import CertifyParams
from robust_api.results import Certificate


@dataclass
class DemoRun:
    denoiser: str | None
    certificates: list[Certificate]
    billable_calls: int
    cache_hits: int
    replay_matches: bool


def demo_images(count: int = 6, size: int = 224) -> list[tuple[str, np.ndarray]]:
    """`count` held-out photos, centre-cropped to size x size (float32 HWC in [0,1])."""
    from robust_api.denoisers.photos import crops, heldout_photos, training_photos

    photos = heldout_photos() + training_photos()  # held-out first; top up if the held-out set is small
    return [(name, crops(arr, 1, size)[0]) for name, arr in photos[:count]]


def pick_denoiser(sigma: float) -> str | None:
    """The shipped denoiser for this sigma (Stab+MSE preferred over MSE), or None when none ships."""
    from robust_api.denoisers.registry import list_denoisers

    matching = [w for w in list_denoisers() if abs(float(w.meta.get("sigma", -1.0)) - sigma) < 1e-9]
    matching.sort(key=lambda w: 0 if "stab" in str(w.meta.get("objective", "")) else 1)
    return matching[0].name if matching else None


def _demo_options(api: str) -> dict:
    # Rekognition drops labels under MinConfidence (default 55); the emulator's ImageNet probabilities are
    # lower than Rekognition's confidences, so the demo asks for every label, as a user may (MinConfidence=1).
    return {"min_confidence": 1.0} if api == "aws" else {}


def run_demo(out_dir: Path, api: str = "aws", sigma: float = 0.25, n0: int = 20, n: int = 100, alpha: float = 0.001,
             count: int = 6, denoiser: str | None = "auto", progress=None) -> list[DemoRun]:
    """Certify `count` photos with no denoiser and with `denoiser` ('auto' = the shipped one for sigma);
    each run writes out_dir/<run>.jsonl and out_dir/<run>.tsv and is replayed offline for comparison."""
    from robust_api.images import load_image
    from robust_api.replay import replay
    from robust_api.run import RunConfig, run_certification

    out_dir.mkdir(parents=True, exist_ok=True)
    images = [load_image(arr, name=name) for name, arr in demo_images(count)]
    params = CertifyParams(sigma=sigma, n0=n0, n=n, alpha=alpha)
    chosen = pick_denoiser(sigma) if denoiser == "auto" else denoiser
    runs = []
    for spec in [None] + ([chosen] if chosen else []):
        tag = f"{api}-{'no-denoiser' if spec is None else spec}"
        log = out_dir / f"{tag}.jsonl"
        config = RunConfig(api=api, params=params, emulator=True, denoiser=spec, log=log, out=out_dir / f"{tag}.tsv",
                           provider_options=_demo_options(api))
        result = run_certification(images, config, progress=progress)
        replayed = {c.image: c for c in replay([log], sigma=sigma, n0=n0, n=n, alpha=alpha)}
        matches = all(
            replayed[c.image].label == c.label and abs(replayed[c.image].radius_l2 - c.radius_l2) < 1e-12
            for c in result.certificates
        )
        runs.append(DemoRun(spec, result.certificates, result.stats.billable_calls, result.stats.cache_hits, matches))
    return runs
