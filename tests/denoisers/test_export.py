"""The maintainer's export keeps recipes portable and reproducible: every command that led to a checkpoint."""
from __future__ import annotations

from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers.checkpoints import checkpoint_dict
from robust_api.denoisers.export import _distinct_stage_files, _portable, _recipe_chain
from robust_api.denoisers.registry import get_weights


def test_portable_recipe_names_run_files_under_runs():
    cmd = "robust-api denoiser train --sigma 0.25 --init ffdnet64-s0.25 --steps 9 --out /tmp/x/stab-long.pt"
    assert _portable(cmd, "ffdnet64-s0.25-stab") == (
        "robust-api denoiser train --sigma 0.25 --init runs/ffdnet64-s0.25.pt --steps 9 --out runs/ffdnet64-s0.25-stab.pt"
    )
    assert _portable("t --init /home/me/a/ffdnet64-s0.25.pt --out /home/me/a/b.pt") == "t --init runs/ffdnet64-s0.25.pt --out runs/b.pt"
    assert _portable("t --init my-own --out b.pt") == "t --init my-own --out runs/b.pt"  # not a shipped name


def test_recipe_chain_follows_init_through_a_shipped_name_and_a_file(tmp_path):
    import torch

    net = build_denoiser("dncnn", depth=3, n_channels=4)
    first = tmp_path / "first.pt"
    torch.save(checkpoint_dict(net, "dncnn", {}, meta={"recipe": "train A", "init": {"source": "ffdnet64-s0.25"}}), first)
    second = checkpoint_dict(net, "dncnn", {}, meta={"recipe": "train B", "init": {"source": str(first)}})
    chain = _recipe_chain(second)
    assert chain == list(get_weights("ffdnet64-s0.25").meta["recipe"]) + ["train A", "train B"]


def test_eval_metrics_are_matched_to_runs_by_file_stem(tmp_path):
    import json

    from robust_api.denoisers.export import eval_metrics

    payload = {
        "settings": {"sigma": 0.25, "n0": 20, "n": 100, "alpha": 0.001, "photos": "imagenet-samples split=heldout"},
        "results": [
            {"name": "none", "psnr_db": 13.2, "agreement": 0.3, "certified": {"0.25": 0.05}, "certified_true": None},
            {"name": "runs/ffdnet64-s0.25-stab.pt [float32]", "psnr_db": 24.123, "agreement": 0.61,
             "certified": {"0.0": 0.5, "0.25": 0.3}, "certified_true": {"0.25": 0.2}},
        ],
    }
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(payload))
    got = eval_metrics([path])
    assert set(got) == {"none", "ffdnet64-s0.25-stab"}
    stab = got["ffdnet64-s0.25-stab"]
    assert stab["certified"] == {"0.0": 0.5, "0.25": 0.3} and stab["certified_true"] == {"0.25": 0.2}
    assert stab["n"] == 100 and stab["psnr_db"] == 24.12 and got["none"]["certified_true"] == {}


def test_heldout_images_of_a_folder_are_its_heldout_split(tmp_path):
    import numpy as np
    from PIL import Image

    from robust_api.denoisers.export import heldout_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((30, 40, 3), i * 10, dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    images, description = heldout_images(folder)
    assert images.shape == (2, 224, 224, 3)
    assert abs(float(images[0].mean()) - 90 / 255) < 0.01 and abs(float(images[1].mean()) - 190 / 255) < 0.01
    assert "split=heldout" in description and "2 photos" in description


def test_access_is_full_only_through_the_classifier_certification_queries():
    from robust_api.denoisers.export import access_of

    assert access_of([]) is None
    assert access_of(["efficientnet-lite1", "efficientnet-lite2"]) == "query"
    assert access_of(["efficientnet-lite0"]) == "full"
    assert access_of(["runs/cifar/resnet20-surrogate.pt"]) == "query"
    assert access_of(["models/cifar10-resnet20.pt"]) == "full"


def test_cifar_denoisers_are_measured_on_every_20th_test_image(cifar_like, monkeypatch):
    from robust_api.denoisers import export

    monkeypatch.setattr(export, "CIFAR_HELDOUT_SKIP", 3)
    images, description = export.cifar_heldout_images(cifar_like)
    assert images.shape == (2, 32, 32, 3) and images.dtype == "float32" and 0.0 <= images.min() <= images.max() <= 1.0
    assert "test split" in description


def test_a_stage_continuing_shipped_weights_under_their_name_reads_a_file_no_later_stage_overwrites():
    chain = [
        "t --objective mse --out runs/a.pt",
        "t --init runs/a.pt --steps 300 --out runs/b.pt",
        "t --init runs/b.pt --steps 1600 --out runs/b.pt",  # continues b, exported as b again
    ]
    assert _distinct_stage_files(chain) == [
        "t --objective mse --out runs/a.pt",
        "t --init runs/a.pt --steps 300 --out runs/b.stage2.pt",
        "t --init runs/b.stage2.pt --steps 1600 --out runs/b.pt",
    ]
    assert _distinct_stage_files(chain[:2]) == chain[:2]  # nothing overwritten: unchanged
