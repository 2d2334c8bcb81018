"""Gaussian noise for randomized smoothing: seeding, sampling, clipping.

Certification runs are reproducible: the noise of sample `index` in `phase` for an image is a pure function of
(seed, image sha256, phase, index), so a rerun draws the same noisy copies and finds them in the query-log
cache. Serving-mode predictions pass seed=None and get fresh OS randomness.
Clipping to [0, 1] (and later denoising, 8-bit quantisation and encoding) is a deterministic function of the
noisy input, so it is part of the base classifier and does not affect the certificate's validity.
"""
from __future__ import annotations

import numpy as np

PHASE_CODES = {"clean": 0, "selection": 1, "estimation": 2}


def sample_rng(seed: int | None, image_sha256: str, phase: str, index: int) -> np.random.Generator:
    """The generator for one noise sample; seed=None gives fresh OS entropy (not reproducible)."""
    if seed is None:
        return np.random.default_rng()
    if phase not in PHASE_CODES:
        raise ValueError(f"unknown phase {phase!r}")
    # Use 128 bits of the image hash; hex digests from other sources ('legacy:...') fall back to their bytes.
    try:
        image_words = [int(image_sha256[i : i + 8], 16) for i in range(0, 32, 8)]
    except ValueError:
        image_words = list(image_sha256.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([int(seed), *image_words, PHASE_CODES[phase], int(index)]))


def noisy_copies(
    image: np.ndarray, sigma: float, seed: int | None, image_sha256: str, phase: str, indices: list[int]
) -> np.ndarray:
    """x + sigma * eps for each sample index, clipped to [0, 1]; float32 array of shape (len(indices), H, W, C)."""
    if sigma < 0:
        raise ValueError("sigma must be >= 0")
    out = np.empty((len(indices), *image.shape), dtype=np.float32)
    for row, index in enumerate(indices):
        rng = sample_rng(seed, image_sha256, phase, index)
        eps = rng.standard_normal(image.shape, dtype=np.float32)
        np.multiply(eps, np.float32(sigma), out=out[row])
        out[row] += image
    np.clip(out, 0.0, 1.0, out=out)
    return out
