"""Real photos that ship offline inside installed packages: the training set, the held-out set, and eval crops.

Every photo is returned as float32 HxWx3 in [0,1]; greyscale photos are repeated over three channels.
Licences (from each package's documentation) are in `PHOTOS`. The held-out photos are never used for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

from robust_api.errors import ConfigError


@dataclass(frozen=True)
class Photo:
    name: str
    source: str
    licence: str
    colour: bool
    heldout: bool


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


_CC0 = "CC0 / public domain"
PHOTOS: tuple[Photo, ...] = (
    # training photos
    Photo("astronaut", "skimage.data", "public domain (NASA)", True, False),
    Photo("rocket", "skimage.data", "public domain (SpaceX, CC0)", True, False),
    Photo("hubble_deep_field", "skimage.data", "public domain (NASA)", True, False),
    Photo("immunohistochemistry", "skimage.data", "no known copyright restrictions", True, False),
    Photo("retina", "skimage.data", "CC0 1.0 (Wikimedia)", True, False),
    Photo("china", "sklearn.datasets", "CC-BY 2.0 (Flickr, via scikit-learn)", True, False),
    Photo("camera", "skimage.data", "CC0 (Lav Varshney)", False, False),
    Photo("moon", "skimage.data", "no known copyright restrictions", False, False),
    Photo("brick", "skimage.data", "CC0 (CC0Textures)", False, False),
    Photo("grass", "skimage.data", "CC0 (DeviantArt)", False, False),
    Photo("gravel", "skimage.data", "CC0 (CC0Textures)", False, False),
    Photo("coins", "skimage.data", "no known copyright restrictions (Brooklyn Museum)", False, False),
    Photo("clock", "skimage.data", "CC0 (Stefan van der Walt)", False, False),
    Photo("cell", "skimage.data", _CC0, False, False),
    Photo("page", "skimage.data", _CC0, False, False),
    # held out for evaluation
    Photo("chelsea", "skimage.data", "CC0 (Stefan van der Walt)", True, True),
    Photo("coffee", "skimage.data", "CC0 (Rachel Michetti)", True, True),
    Photo("flower", "sklearn.datasets", "CC-BY 2.0 (Flickr, via scikit-learn)", True, True),
    Photo("grace_hopper", "matplotlib sample data", "public domain (U.S. Navy)", True, True),
)

_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    **{p.name: _skimage(p.name) for p in PHOTOS if p.source == "skimage.data"},
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}


def _to_float_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One named photo as float32 HxWx3 in [0,1] (read-only); ConfigError for names not in PHOTOS."""
    if name not in _LOADERS:
        raise ConfigError(f"unknown built-in photo {name!r}; known: {', '.join(p.name for p in PHOTOS)}")
    arr = _to_float_rgb(_LOADERS[name]())
    arr.setflags(write=False)
    return arr


def training_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 float32) for every built-in training photo (never the held-out ones)."""
    return [(p.name, load_photo(p.name)) for p in PHOTOS if not p.heldout]


def heldout_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 float32) for the photos kept out of training, for evaluation."""
    return [(p.name, load_photo(p.name)) for p in PHOTOS if p.heldout]


def center_square(arr: np.ndarray) -> np.ndarray:
    """The centred square of an HxW[xC] array's full short side (a view, no resampling)."""
    h, w = arr.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return arr[y0:y0 + side, x0:x0 + side]


def resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a float HxWx3 image in [0,1] (through 8-bit PIL, as a provider would see it)."""
    img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0


# (window side as a fraction of the photo's short side, centre x, centre y as fractions of the free range)
_CROP_PLAN = (
    (1.0, 0.5, 0.5), (0.75, 0.5, 0.5), (0.5, 0.5, 0.5), (0.75, 0.0, 0.0), (0.75, 1.0, 1.0),
    (0.5, 0.0, 1.0), (0.5, 1.0, 0.0), (0.6, 0.25, 0.75), (0.6, 0.75, 0.25), (0.85, 0.3, 0.3),
    (0.4, 0.5, 0.3), (0.4, 0.3, 0.6),
)


def crops(arr: np.ndarray, n: int, size: int = 224) -> list[np.ndarray]:
    """`n` (<= 12) square crops at different positions and scales, each resized to size x size."""
    if not 1 <= n <= len(_CROP_PLAN):
        raise ConfigError(f"crops per photo must be in 1..{len(_CROP_PLAN)}, got {n}")
    h, w = arr.shape[:2]
    out = []
    for frac, fx, fy in _CROP_PLAN[:n]:
        side = max(8, int(round(frac * min(h, w))))
        x0 = int(round(fx * (w - side)))
        y0 = int(round(fy * (h - side)))
        out.append(resize(arr[y0:y0 + side, x0:x0 + side], size, size))
    return out


def eval_images(n_per_photo: int = 6, size: int = 224) -> list[tuple[str, np.ndarray]]:
    """Held-out evaluation images: (photo#crop, size x size x 3 float32) for every held-out photo."""
    return [
        (f"{name}#{i}", crop)
        for name, arr in heldout_photos()
        for i, crop in enumerate(crops(arr, n_per_photo, size))
    ]


def training_pyramid(photos: list[tuple[str, np.ndarray]], size: int = 224) -> list[np.ndarray]:
    """Each photo at the scales evaluation crops see it (short side size/1.0, size/0.75, size/0.5, capped at native).

    Training on these scales matches the statistics the denoiser meets on 224x224 crops of whole photos.
    uint8 photos give uint8 scales, float photos float32 ones.
    """
    out = []
    for _, arr in photos:
        h, w = arr.shape[:2]
        short = min(h, w)
        seen = set()
        for frac in (1.0, 0.75, 0.5):
            target = min(short, int(round(size / frac)))
            if target in seen:
                continue
            seen.add(target)
            scale = target / short
            if target == short:
                out.append(arr)
                continue
            size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
            if arr.dtype == np.uint8:  # uint8 photos stay uint8 (a quarter of float32's memory)
                out.append(np.asarray(Image.fromarray(arr).resize(size_wh, Image.BICUBIC)))
            else:
                out.append(resize(arr, *size_wh))
    return out
