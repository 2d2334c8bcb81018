"""Photo folders for training and evaluating denoisers, with a fixed train / held-out split.

A folder's image files, sorted by path, are numbered 0, 1, 2, ...; photo i is **held out** when i % 10 == 9 and
used for **training** otherwise. For `imagenet-samples` (1000 files `nXXXXXXXX_<class>.JPEG`, one per ILSVRC-2012
class in class order) this is the project's fixed split (900 train / 100 held out) and the file's position is its
true ImageNet class index, so `true_class` is set. Any other folder gets the same rule with `true_class=None`.

Photos are decoded once and kept as uint8 HxWx3 (greyscale repeated over three channels), a quarter of the memory of
float32: 900 ImageNet photos take ~0.5 GB. Nothing here is read at import time; the package never reads a data set
unless a command is given its folder.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from robust_api.datasets import IMAGE_SUFFIXES, decode_rgb_uint8
from robust_api.errors import ConfigError

SPLITS = ("train", "heldout", "all")
_WNID = re.compile(r"^n\d{8}_")
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class FolderPhoto:
    """One decoded photo: file name, uint8 HxWx3 pixels, its index in the sorted folder, its true class if known."""

    name: str
    pixels: np.ndarray
    index: int
    true_class: int | None


def is_heldout(index: int) -> bool:
    """The fixed split: every tenth photo (index % 10 == 9) is held out for evaluation."""
    return index % 10 == 9


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted by path; ConfigError when it is not a folder or has none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{folder}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder}: no image files found")
    return files


def is_imagenet_samples(files: Sequence[Path]) -> bool:
    """One photo per ImageNet class, named by WordNet id, so sorted position = class index."""
    return len(files) == IMAGENET_CLASSES and all(_WNID.match(f.name) for f in files)


def load_folder(folder: str | Path, split: str = "all", *, limit: int | None = None, threads: int = 4) -> list[FolderPhoto]:
    """The photos of `folder` in `split` (train | heldout | all), decoded once, in sorted order.

    `limit` keeps the first `limit` photos of the split (for quick runs and tests). Raises ConfigError for an
    unknown split or an empty folder, ImageError naming the file for an unreadable image.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    files = image_files(folder)
    imagenet = is_imagenet_samples(files)
    chosen = [(i, f) for i, f in enumerate(files) if split == "all" or is_heldout(i) == (split == "heldout")]
    if limit is not None:
        chosen = chosen[: max(0, limit)]
    if not chosen:
        raise ConfigError(f"{folder}: no photos in split {split!r}")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # Pillow's JPEG decoder releases the GIL
        pixels = list(pool.map(decode_rgb_uint8, [f for _, f in chosen]))
    return [FolderPhoto(f.name, px, i, i if imagenet else None) for (i, f), px in zip(chosen, pixels)]


def describe(folder: str | Path, split: str, photos: Sequence[FolderPhoto]) -> str:
    """What a recipe records about its data: folder name (not the machine's absolute path), split, count, rule."""
    rule = "" if split == "all" else " (index % 10 == 9 held out)"
    return f"{Path(folder).name} split={split}{rule}: {len(photos)} photos"


def center_crop(pixels: np.ndarray, size: int = 224) -> np.ndarray:
    """The centred square of the photo's full short side, resized to size x size (float32 in [0,1])."""
    from robust_api.denoisers.photos import center_square, resize

    return resize(center_square(pixels).astype(np.float32) / 255.0, size, size)


def evaluation_set(
    folder: str | Path, split: str = "heldout", size: int = 224, *, limit: int | None = None
) -> tuple[list[tuple[str, np.ndarray, int | None]], str]:
    """(name, centred size x size crop, true class or None) for each photo of the split, and a description for
    tables and metadata. The one place `denoiser eval --photos` and the export's held-out PSNR take images from."""
    found = load_folder(folder, split, limit=limit)
    images = [(p.name, center_crop(p.pixels, size), p.true_class) for p in found]
    return images, f"{describe(folder, split, found)}, one centred {size}x{size} crop each"


def labelled_folder_set(
    root: str | Path, *, skip: int = 1, limit: int | None = None, class_names: Sequence[str] | None = None
) -> tuple[list[tuple[str, np.ndarray, int | None]], str]:
    """(name, HxWx3 float32 in [0,1] at the images' own size, true class) for every `skip`-th image of an
    ImageFolder tree (`root/<class>/<image>`, e.g. CIFAR-10's test/), at most `limit`, and a description.

    The true class is the index of the image's folder name in `class_names` (a classifier's output order) when
    given, else its folder's position among the sorted class folders; None for a plain folder of images.
    ConfigError when the folder holds no images, the images differ in size, or a class folder's name is not one of
    `class_names`.
    """
    from robust_api.datasets import decode_uint8, image_folder

    data = image_folder(root, skip=skip, max=limit)
    lookup = {name: i for i, name in enumerate(class_names)} if class_names else None
    truths: list[int | None] = []
    for f in data.files:
        if f.class_index is None or lookup is None:
            truths.append(f.class_index)
        elif f.class_name in lookup:
            truths.append(lookup[f.class_name])
        else:
            raise ConfigError(f"{root}: class folder {f.class_name!r} is not a class of the classifier "
                              f"({', '.join(class_names or [])})")
    pixels = decode_uint8(data).astype(np.float32) / 255.0
    names = [str(f.path.relative_to(data.root)) for f in data.files]
    return list(zip(names, pixels, truths)), data.describe()
