"""Fixtures shared by several test modules."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A tiny CIFAR-10-like ImageFolder tree `{train,test}/{cat,dog}/NNNN.png` (4 train, 2 test images per
    class): 32x32, cats reddish, dogs bluish, plus noise."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                base = np.array((200, 60, 60) if c == 0 else (60, 60, 200))
                pixels = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")
    return root
