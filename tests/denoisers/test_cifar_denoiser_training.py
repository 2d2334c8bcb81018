"""CIFAR denoisers through `robust-api denoiser train`: cifar_dncnn on 32x32 patches of an ImageFolder tree (MSE),
then Stab+MSE through a CIFAR classifier checkpoint as the frozen surrogate (full or query access)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_api import cli
from robust_api.cifar_resnet import CifarResNet
from robust_api.denoisers.checkpoints import read_checkpoint_dict
from robust_api.denoisers.surrogates import load_surrogate


def write_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i:04d}.png")
    return root


def classifier_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = CifarResNet("resnet20", 2)
    torch.save({"arch": "resnet20", "class_names": ["cat", "dog"], "state_dict": model.state_dict()}, path)
    return path


def run_cli(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert (exit_info.value.code or 0) == 0, err
    return out


def test_a_classifier_checkpoint_is_a_frozen_surrogate_taking_unit_range_images(tmp_path):
    surrogate = load_surrogate(str(classifier_checkpoint(tmp_path / "c.pt")))
    assert surrogate(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    assert not any(p.requires_grad for p in surrogate.parameters()) and not surrogate.training
    assert surrogate.class_names == ("cat", "dog")  # what `denoiser eval --dataset` maps folders to


def test_cifar_dncnn_mse_then_stab_mse_through_a_classifier_checkpoint(tmp_path, capsys):
    train = write_tree(tmp_path / "train")
    surrogate = classifier_checkpoint(tmp_path / "resnet20.pt")
    common = ["denoiser", "train", "--images", train, "--split", "all", "--patch", "32", "--arch", "cifar_dncnn",
              "--sigma", "0.25", "--batch", "2", "--steps", "2", "--checkpoint-every", "1", "--threads", "1"]
    run_cli(capsys, *common, "--out", tmp_path / "mse.pt")
    mse = read_checkpoint_dict(tmp_path / "mse.pt")
    assert mse["arch"] == "cifar_dncnn" and "8 photos" in mse["meta"]["train"]["data"]
    run_cli(capsys, *common, "--out", tmp_path / "stab.pt", "--objective", "stab+mse", "--init", tmp_path / "mse.pt",
            "--surrogate", surrogate)
    stab = read_checkpoint_dict(tmp_path / "stab.pt")
    assert stab["meta"]["train"]["surrogates"] == [str(surrogate)]
    assert any(not torch.equal(tensor, mse["state_dict"][name]) for name, tensor in stab["state_dict"].items())


def test_labelled_folder_set_takes_true_classes_in_the_classifiers_order(cifar_like):
    from robust_api.denoisers.datasets import labelled_folder_set
    from robust_api.errors import ConfigError

    images, description = labelled_folder_set(cifar_like / "test", class_names=["dog", "cat"])
    assert [(name, truth) for name, _, truth in images] == [
        ("cat/0000.png", 1), ("cat/0001.png", 1), ("dog/0000.png", 0), ("dog/0001.png", 0)]
    assert images[0][1].shape == (32, 32, 3) and images[0][1].dtype == np.float32 and images[0][1].max() <= 1.0
    assert "4 images" in description
    every_other, _ = labelled_folder_set(cifar_like / "test", skip=2)
    assert [(name, truth) for name, _, truth in every_other] == [("cat/0000.png", 0), ("dog/0000.png", 1)]
    with pytest.raises(ConfigError, match="'cat' is not a class of the classifier"):
        labelled_folder_set(cifar_like / "test", class_names=["dog", "bird"])


def test_denoiser_eval_on_an_image_folder_through_a_classifier_checkpoint(cifar_like, tmp_path, capsys):
    import json

    ckpt = tmp_path / "resnet20.pt"
    torch.manual_seed(0)
    torch.save({"arch": "resnet20", "class_names": ["cat", "dog"], "state_dict": CifarResNet("resnet20", 2).state_dict()}, ckpt)
    out = run_cli(capsys, "denoiser", "eval", "--dataset", cifar_like / "test", "--classifier", ckpt,
                  "--denoiser", "cifar10-dncnn-s0.25", "--n0", "4", "--n", "8", "--threads", "1",
                  "--json", tmp_path / "eval.json")
    assert f"classifier {ckpt}" in out
    payload = json.loads((tmp_path / "eval.json").read_text())
    assert payload["settings"]["classifier"] == str(ckpt)
    results = payload["results"]
    assert [r["name"].split(" [")[0] for r in results] == ["none", "tv(w=0.15)", "cifar10-dncnn-s0.25"]
    assert all(r["n_images"] == 4 and r["clean_accuracy"] is not None for r in results)
    # every method saw the same noisy copies: no denoiser's PSNR is the noisy images' PSNR, below the denoiser's
    assert results[2]["psnr_db"] > results[0]["psnr_db"]


def test_denoiser_eval_on_an_image_folder_scores_no_true_class_for_a_classifier_without_class_names(cifar_like, tmp_path, capsys):
    import json

    out = run_cli(capsys, "denoiser", "eval", "--dataset", cifar_like / "test", "--skip", "2", "--no-baselines",
                  "--denoiser", "cifar10-dncnn-s0.25", "--n0", "2", "--n", "4", "--threads", "1",
                  "--json", tmp_path / "eval.json")
    assert "no true classes" in out
    result = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert result["n_images"] == 2 and result["clean_accuracy"] is None and result["true_accuracy"] is None
