"""Classical (untrained) denoisers selectable by name: `tv` and `tv:W`.

`tv` is scikit-image's Chambolle total-variation denoiser (`skimage.restoration.denoise_tv_chambolle`) with
weight 0.6 * sigma (the `denoiser eval` TV baseline, `evaluation.tv_method`), sigma being the certification noise
level; `tv:W` fixes the weight to W > 0 whatever the sigma. Each colour channel is denoised on its own
(`channel_axis=-1`).

Contract of `TVDenoiser`: NCHW float tensors in [0, 1] in; the TV-denoised batch out, float32, same shape and
device. Each image is denoised on the CPU with numpy (one image at a time; no autograd, no parameters). The output
depends only on the input, the weight and the scikit-image release: the denoiser is deterministic, so it is part
of the base classifier of the smoothed classifier, like a trained denoiser's weights. Its identity for the query
logs (`denoiser_name`, `denoiser_sha256`) therefore names the weight and the scikit-image version, so samples are
reused from a log only under the same weight and release.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from robust_api.denoisers.evaluation import TV_WEIGHT_PER_SIGMA  # one definition of the 0.6 for eval and serving
from robust_api.errors import ConfigError


def tv_denoise(images: np.ndarray, weight: float) -> np.ndarray:
    """Chambolle TV of every image of an NHWC float batch in [0,1] (each colour channel on its own), float32."""
    from skimage.restoration import denoise_tv_chambolle

    out = np.empty(images.shape, dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = denoise_tv_chambolle(image, weight=weight, channel_axis=-1)
    return out


def _skimage_version() -> str:
    import skimage

    return str(skimage.__version__)


class TVDenoiser(nn.Module):
    """Chambolle TV denoising of every image of an NCHW [0, 1] batch (see the module docstring for the contract).

    `weight` > 0 is denoise_tv_chambolle's weight (larger = smoother). `sigma` is only recorded in
    `denoiser_meta` (the noise level the weight was derived from, or None for an explicit `tv:W`).
    """

    def __init__(self, weight: float, *, sigma: float | None = None) -> None:
        super().__init__()
        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"TV denoiser weight must be a finite number > 0, got {weight!r}")
        self.weight = weight
        canonical = (
            f"skimage.restoration.denoise_tv_chambolle(weight={weight!r}, channel_axis=-1) "
            f"scikit-image=={_skimage_version()}"
        )
        self.denoiser_name = f"tv:w={weight:g}"
        self.denoiser_sha256 = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        self.denoiser_meta = {
            "arch": "tv", "weight": weight, "sigma": float(sigma) if sigma else None, "objective": "classical",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
        images = x.detach().to(device="cpu", dtype=torch.float32).permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(tv_denoise(images, self.weight)).permute(0, 3, 1, 2).contiguous().to(x.device)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


def parse_classical(spec: str, sigma: float | None) -> TVDenoiser | None:
    """The classical denoiser a spec names: `tv` -> weight 0.6 * sigma, `tv:W` -> weight W; None for any other spec.

    Raises ConfigError for a malformed or non-positive weight (`tv:abc`, `tv:-1`) and for `tv` without a sigma.
    """
    spec = spec.strip()
    if spec == "tv":
        if sigma is None:
            raise ConfigError(
                "denoiser 'tv' takes its weight from the noise level (0.6 * sigma): pass the sigma or use tv:W"
            )
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"denoiser 'tv' needs a sigma > 0 for its weight (0.6 * sigma), got {sigma!r}")
        # Rounded to 12 significant digits so that `tv` at sigma 0.12 and `tv:0.072` are the same denoiser.
        weight = float(f"{TV_WEIGHT_PER_SIGMA * sigma:.12g}")
        return TVDenoiser(weight, sigma=sigma)
    if not spec.startswith("tv:"):
        return None
    text = spec[len("tv:"):].strip()
    try:
        weight = float(text)
    except ValueError:
        raise ConfigError(f"denoiser {spec!r}: the TV weight W in tv:W must be a number > 0, got {text!r}") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"denoiser {spec!r}: the TV weight W in tv:W must be a finite number > 0, got {text!r}")
    return TVDenoiser(weight, sigma=None)
