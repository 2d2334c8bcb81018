"""Image data sets on disk: ImageFolder trees (CIFAR-10's train/ and test/) and plain folders of images.

An **ImageFolder** root holds one subfolder per class: classes are the sorted subfolder names, class index = position
in that order, and items are listed class by class with each class's files sorted by name (torchvision's
`ImageFolder` order). A **plain folder** (image files, no class subfolders) gives items in sorted file order with no
class. `skip=K` keeps every K-th item in that order (items 0, K, 2K, ...), like `certify.py --skip K` of Cohen et al.;
`max` then keeps the first `max` of those.

`decode_uint8` decodes a selection once into one N x H x W x 3 uint8 array (a quarter of float32's memory; all
images must share one size), optionally cached as an .npy file in a folder of the caller's choosing. Nothing here
reads a data set unless a command is given its folder.
"""
from __future__ import annotations

import builtins
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from robust_api.errors import ConfigError, ImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class LabelledFile:
    """One image file of a data set, with its class index and name (both None in a plain folder)."""

    path: Path
    class_index: int | None
    class_name: str | None


@dataclass(frozen=True)
class ImageFolderSet:
    """The selected files of a data set in data-set order, and the class names (empty for a plain folder)."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[LabelledFile, ...]
    skip: int = 1

    @property
    def labels(self) -> list[int | None]:
        return [f.class_index for f in self.files]

    def describe(self) -> str:
        """What a recipe records: the folder's name (not the machine's absolute path), the selection, the count."""
        kind = f"{len(self.classes)} classes" if self.classes else "plain folder"
        every = f", every {self.skip}th" if self.skip > 1 else ""
        return f"{self.root.name} ({kind}{every}): {len(self.files)} images"


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def image_folder(root: str | Path, *, skip: int = 1, max: int | None = None) -> ImageFolderSet:
    """The files of the ImageFolder tree or plain folder at `root`, every `skip`-th in data-set order, at most `max`.

    ConfigError when `root` is not a folder, holds no images, or `skip` < 1.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{root}: not a directory")
    if skip < 1:
        raise ConfigError(f"skip must be at least 1, got {skip}")
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    class_dirs = [d for d in class_dirs if any(is_image_file(p) for p in d.iterdir())]
    files: list[LabelledFile] = []
    classes: tuple[str, ...] = ()
    if class_dirs:
        classes = tuple(d.name for d in class_dirs)
        for index, d in enumerate(class_dirs):
            files += [LabelledFile(p, index, d.name) for p in _images_in(d)]
    else:
        files = [LabelledFile(p, None, None) for p in _images_in(folder)]
    if not files:
        raise ConfigError(f"{root}: is a directory with no image files (expected class subfolders or image files)")
    chosen = files[::skip]
    if max is not None:
        chosen = chosen[: builtins.max(0, max)]
    return ImageFolderSet(folder, classes, tuple(chosen), skip)


def decode_rgb_uint8(path: Path) -> np.ndarray:
    """HxWx3 uint8 pixels of one file (greyscale and palette images converted to RGB); ImageError naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from exc


def _cache_key(data: ImageFolderSet) -> str:
    digest = hashlib.sha256()
    for f in data.files:
        stat = f.path.stat()
        digest.update(f"{f.path.relative_to(data.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{f.class_index}\n".encode())
    return digest.hexdigest()[:16]


def decode_uint8(data: ImageFolderSet, *, cache_dir: str | Path | None = None, threads: int = 1) -> np.ndarray:
    """All selected images as one N x H x W x 3 uint8 array, in data-set order.

    With `cache_dir`, the array is kept there as `<root name>-<key>.npy` (key: hash of file names, sizes and
    modification times) and read back instead of decoding when present. ConfigError when the images differ in size.
    """
    cache: Path | None = None
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser() / f"{data.root.name}-{_cache_key(data)}.npy"
        if cache.is_file():
            return np.load(cache)
    with ThreadPoolExecutor(max_workers=builtins.max(1, threads)) as pool:  # Pillow's decoder releases the GIL
        pixels = list(pool.map(decode_rgb_uint8, [f.path for f in data.files]))
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise ConfigError(f"{data.root}: images differ in size ({', '.join(map(str, sorted(shapes)[:3]))}, ...)")
    array = np.stack(pixels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, cache)
    return array


def image_arguments(paths: Sequence[str | Path], *, skip: int = 1, max: int | None = None) -> list[LabelledFile]:
    """The images a command line names, in order: a file as itself (no class), a folder as its ImageFolder items
    (class = its subfolder) or its image files (no class); then every `skip`-th of the whole list, at most `max`.

    ConfigError for a path that is neither, an empty folder, or `skip` < 1.
    """
    if skip < 1:
        raise ConfigError(f"skip must be at least 1, got {skip}")
    files: list[LabelledFile] = []
    for path in paths:
        p = Path(path).expanduser()
        if p.is_dir():
            files += image_folder(p).files
        elif p.is_file():
            files.append(LabelledFile(p, None, None))
        else:
            raise ConfigError(f"{path}: no such file or directory")
    chosen = files[::skip]
    return chosen if max is None else chosen[: builtins.max(0, max)]
