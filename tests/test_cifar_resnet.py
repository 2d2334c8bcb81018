"""CIFAR ResNets in He et al.'s layout, and their checkpoints served by the local provider."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from robust_api.cifar_resnet import CifarResNet, blocks_per_stage, load_classifier, read_checkpoint
from robust_api.errors import ConfigError
from robust_api.providers.local import LocalProvider


def test_depth_is_6n_plus_2_with_16_32_64_channels_and_parameter_free_shortcuts():
    assert blocks_per_stage("resnet20") == 3 and blocks_per_stage("resnet110") == 18
    model = CifarResNet("resnet20")
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al.: 0.27 M
    assert sum(p.numel() for p in CifarResNet("resnet110").parameters()) == 1_727_962  # 1.7 M
    for bad in ("resnet18", "resnet", "vgg16"):
        with pytest.raises(ConfigError, match="6n\\+2"):
            blocks_per_stage(bad)


def test_the_model_takes_unit_range_images_and_normalises_them_itself():
    model = CifarResNet("resnet20", num_classes=3).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert "mean" not in model.state_dict()  # constants, not weights: a checkpoint holds only learnt tensors


def save_checkpoint(path, classes=("cat", "dog")) -> None:
    torch.manual_seed(0)
    model = CifarResNet("resnet20", len(classes))
    torch.save({"arch": "resnet20", "class_names": list(classes), "state_dict": model.state_dict()}, path)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_checkpoint_labels_images_through_the_local_provider(tmp_path):
    path = tmp_path / "resnet20.pt"
    save_checkpoint(path)
    provider = LocalProvider(model=str(path), top_k=2)
    assert provider.model_name == "resnet20.pt" and provider.model_version.startswith("resnet20@")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    [answer] = asyncio.run(provider.classify([png(image)]))
    predictions = answer.response["predictions"]
    assert sorted(p["label"] for p in predictions) == ["cat", "dog"]
    assert predictions[0]["score"] >= predictions[1]["score"]
    # the provider serves exactly the network's float32 probabilities on the [0, 1] image
    classifier = load_classifier(path)
    expected = torch.softmax(classifier.module(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255), 1)
    assert predictions[0]["score"] == pytest.approx(float(expected.detach().max()), rel=1e-5)


def test_new_weights_mean_a_new_model_version(tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    save_checkpoint(first)
    ckpt = read_checkpoint(first)
    ckpt["state_dict"]["fc.bias"] += 1
    torch.save(ckpt, second)
    assert load_classifier(first).model_version != load_classifier(second).model_version


def test_a_file_that_is_not_a_classifier_checkpoint_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "denoiser.pt"
    torch.save({"arch": "cifar_dncnn", "state_dict": {}}, bad)
    with pytest.raises(ConfigError, match="denoiser.pt: not a CIFAR classifier checkpoint"):
        LocalProvider(model=str(bad))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        LocalProvider(model=str(tmp_path / "missing.pt"))
