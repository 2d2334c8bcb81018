"""Photo folders: the fixed index % 10 == 9 split, ImageNet class indices from file order, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robust_api.denoisers import datasets
from robust_api.errors import ConfigError, ImageError


def write_folder(path, count: int, wnid: bool = True, size: int = 12):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        name = f"n{i:08d}_class{i}.JPEG" if wnid else f"photo{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + i % 3, 3), dtype=np.uint8)).save(path / name)
    return path


def test_imagenet_layout_split_and_true_classes(tmp_path):
    folder = write_folder(tmp_path / "imagenet-samples", 1000)
    held = datasets.load_folder(folder, "heldout")
    train = datasets.load_folder(folder, "train", limit=25)
    assert len(held) == 100 and [p.index for p in held[:3]] == [9, 19, 29]
    assert all(p.true_class == p.index for p in held)
    assert len(train) == 25 and all(p.index % 10 != 9 for p in train)
    assert held[0].pixels.dtype == np.uint8 and held[0].pixels.shape[2] == 3
    assert "split=heldout" in datasets.describe(folder, "heldout", held)
    assert str(tmp_path) not in datasets.describe(folder, "heldout", held)  # recipes name the folder, not the machine


def test_other_folders_split_the_same_way_without_classes(tmp_path):
    folder = write_folder(tmp_path / "mine", 20, wnid=False)
    held = datasets.load_folder(folder, "heldout")
    assert [p.index for p in held] == [9, 19] and all(p.true_class is None for p in held)
    assert len(datasets.load_folder(folder, "all")) == 20


def test_greyscale_photos_become_rgb_and_centre_crop(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    Image.fromarray(np.full((30, 50), 200, dtype=np.uint8), mode="L").save(folder / "a.png")
    photo = datasets.load_folder(folder, "all")[0]
    assert photo.pixels.shape == (30, 50, 3)
    crop = datasets.center_crop(photo.pixels, 16)
    assert crop.shape == (16, 16, 3) and crop.dtype == np.float32 and abs(float(crop.mean()) - 200 / 255) < 0.01


def test_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        datasets.load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        datasets.load_folder(tmp_path / "empty")
    folder = write_folder(tmp_path / "few", 5, wnid=False)
    with pytest.raises(ConfigError, match="no photos in split"):
        datasets.load_folder(folder, "heldout")
    with pytest.raises(ConfigError, match="split must be"):
        datasets.load_folder(folder, "test")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        datasets.load_folder(folder, "all")
