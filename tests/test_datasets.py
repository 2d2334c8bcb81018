"""ImageFolder trees and plain folders: class order, file order, every K-th item (certify.py --skip), decoding once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_api.datasets import decode_uint8, image_arguments, image_folder
from robust_api.errors import ConfigError

CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def write_tree(root: Path, classes=("dog", "cat"), per_class: int = 4, size: int = 8) -> Path:
    """`root/<class>/NNNN.png`, each image a solid colour that encodes (class, index)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), (c * 100, i * 10, 7), np.uint8)).save(root / name / f"{i:04d}.png")
    return root


def test_classes_are_sorted_subfolders_and_files_are_sorted_within_each_class(tmp_path):
    data = image_folder(write_tree(tmp_path / "tree"))
    assert data.classes == ("cat", "dog")
    assert [(f.class_name, f.path.name) for f in data.files][:5] == [
        ("cat", "0000.png"), ("cat", "0001.png"), ("cat", "0002.png"), ("cat", "0003.png"), ("dog", "0000.png")]
    assert data.labels == [0, 0, 0, 0, 1, 1, 1, 1]


def test_skip_keeps_items_0_k_2k_in_data_set_order_and_max_keeps_the_first_of_those(tmp_path):
    root = write_tree(tmp_path / "tree")
    assert [(f.class_name, f.path.name) for f in image_folder(root, skip=3).files] == [
        ("cat", "0000.png"), ("cat", "0003.png"), ("dog", "0002.png")]
    assert len(image_folder(root, skip=3, max=2).files) == 2
    with pytest.raises(ConfigError, match="skip"):
        image_folder(root, skip=0)


def test_a_plain_folder_lists_its_images_without_classes(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for name in ("b.png", "a.png", "notes.txt"):
        (root / name).write_bytes(b"x") if name.endswith("txt") else Image.new("RGB", (4, 4)).save(root / name)
    data = image_folder(root)
    assert data.classes == () and [f.path.name for f in data.files] == ["a.png", "b.png"]
    assert data.labels == [None, None]


def test_command_line_images_mix_files_and_folders_then_skip_over_the_whole_list(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=2)
    single = tmp_path / "single.png"
    Image.new("RGB", (4, 4)).save(single)
    chosen = image_arguments([single, root], skip=2)
    assert [(f.path.name, f.class_name) for f in chosen] == [("single.png", None), ("0001.png", "cat"), ("0001.png", "dog")]
    with pytest.raises(ConfigError, match="no such file"):
        image_arguments([tmp_path / "missing.png"])


def test_images_decode_once_into_uint8_and_come_back_from_the_cache(tmp_path):
    data = image_folder(write_tree(tmp_path / "tree"))
    cache = tmp_path / "cache"
    pixels = decode_uint8(data, cache_dir=cache)
    assert pixels.shape == (8, 8, 8, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[5, 0, 0]) == (0, 10, 7)  # dog 0001 (dog was written first: red 0)
    assert len(list(cache.glob("tree-*.npy"))) == 1
    np.testing.assert_array_equal(decode_uint8(data, cache_dir=cache), pixels)


@pytest.mark.skipif(not CIFAR10.is_dir(), reason="needs ../shared/data/cifar10")
def test_cifar10_test_set_with_skip_20_is_the_reference_500_images():
    data = image_folder(CIFAR10 / "test", skip=20)
    assert len(data.files) == 500 and data.classes[0] == "airplane" and len(data.classes) == 10
    assert [f.class_index for f in data.files[:51:50]] == [0, 1]  # 1000 test images per class
