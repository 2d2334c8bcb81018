"""Shipped denoisers: listed with metadata, load by name offline, sha256 verified; paths and identities."""
from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from robust_api.denoisers import registry, shipped
from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers.checkpoints import checkpoint_dict, save_checkpoint
from robust_api.denoisers.cli import denoiser_app
from robust_api.denoisers.photos import eval_images
from robust_api.denoisers.registry import (
    DenoiserWeights, denoiser_identity, file_sha256, list_denoisers, load_denoiser, state_dict_sha256,
)
from robust_api.errors import CheckpointError

EXPECTED = {"ffdnet64-s0.12": 0.12, "ffdnet64-s0.25": 0.25, "ffdnet64-s0.50": 0.50, "ffdnet64-s0.25-stab": 0.25}
CIFAR = {"cifar10-dncnn-s0.25": None, "cifar10-dncnn-s0.25-stab-query": "query", "cifar10-dncnn-s0.25-stab-full": "full"}


def test_the_cifar10_denoisers_are_registered_with_recipe_data_access_and_heldout_psnr():
    entries = {w.name: w for w in list_denoisers()}
    for name, access in CIFAR.items():
        meta = entries[name].meta
        assert meta["sigma"] == 0.25 and meta["arch"] == "dncnn" and meta["access"] == access
        assert meta["objective"] == ("mse" if access is None else "stab+mse")
        assert "train split=all: 50000 photos" == meta["training_data"] and "test split" in meta["heldout_photos"]
        # MSE is trained for PSNR; Stab trades some of it for the classifier's labels, but is still a denoiser
        assert meta["heldout_psnr_db"] > meta["heldout_psnr_noisy_db"] + (8 if access is None else 4)
        assert meta["recipe"] and all(r.startswith("robust-api denoiser train") for r in meta["recipe"])
        outs = [r.split("--out ")[1].split()[0] for r in meta["recipe"]]
        assert len(set(outs)) == len(outs) and outs[-1] == f"runs/{name}.pt"  # each stage its own file
        assert entries[name].path.stat().st_size < 1_000_000


def test_the_shipped_imagenet_denoisers_are_registered_with_their_metadata():
    entries = {w.name: w for w in list_denoisers()}
    assert set(entries) == set(EXPECTED) | set(CIFAR)
    for name, sigma in EXPECTED.items():
        meta = entries[name].meta
        assert meta["sigma"] == sigma and meta["arch"] == "ffdnet" and meta["arch_config"]["n_channels"] == 64
        assert meta["recipe"] and all(r.startswith("robust-api denoiser train") for r in meta["recipe"])
        assert meta["heldout_psnr_db"] > meta["heldout_psnr_noisy_db"]
        assert "imagenet-samples split=train" in meta["training_data"] and "split=heldout" in meta["heldout_photos"]
        assert entries[name].path.stat().st_size < 2_000_000
    assert entries["ffdnet64-s0.25-stab"].meta["objective"] == "stab+mse"
    # the default Stab+MSE is query access: trained through classifiers other than the Lite0 behind the emulators
    assert entries["ffdnet64-s0.25-stab"].meta["surrogates"] == ["efficientnet-lite1", "efficientnet-lite2"]
    assert entries["ffdnet64-s0.25-stab"].meta["access"] == "query"


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(CIFAR))
def test_each_shipped_denoiser_loads_by_name_and_denoises(name):
    module = load_denoiser(name, device="cpu")
    entry = registry.get_weights(name)
    assert denoiser_identity(module) == {"name": name, "sha256": entry.sha256} == denoiser_identity(name)
    assert file_sha256(entry.path) == entry.sha256
    torch.manual_seed(0)
    photo = eval_images(1, size=64)[0][1]  # a held-out real photo, never seen in training
    clean = torch.from_numpy(photo).permute(2, 0, 1)[None]
    noisy = (clean + EXPECTED.get(name, 0.25) * torch.randn_like(clean)).clamp(0, 1)
    with torch.no_grad():
        out = module(noisy)
    assert ((out - clean) ** 2).mean() < ((noisy - clean) ** 2).mean()


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A registry with one entry whose file lives in tmp_path (so tampering never touches the package)."""
    net = build_denoiser("dncnn", depth=3, n_channels=4)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, checkpoint_dict(net, "dncnn", {"depth": 3, "n_channels": 4, "image_channels": 3}, meta={"sigma": 0.25}))
    entry = DenoiserWeights("tiny-s0.25", "tiny.pt", file_sha256(path), {"sigma": 0.25, "arch": "dncnn"})
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(shipped, "SHIPPED", (entry,))
    return entry


def test_optimized_load_keeps_identity_and_outputs(fake_registry):
    plain = load_denoiser("tiny-s0.25")
    fast = load_denoiser("tiny-s0.25", optimize=True)
    assert denoiser_identity(fast) == denoiser_identity(plain) == {"name": "tiny-s0.25", "sha256": fake_registry.sha256}
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-4)


def test_tampered_shipped_file_fails_its_sha256_check(fake_registry):
    assert isinstance(load_denoiser("tiny-s0.25"), torch.nn.Module)
    data = bytearray(fake_registry.path.read_bytes())
    data[-30] ^= 0xFF
    fake_registry.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_denoiser("tiny-s0.25")


def test_a_path_loads_and_is_identified_by_its_file_hash(fake_registry, tmp_path):
    copy = tmp_path / "mine.pt"
    shutil.copy(fake_registry.path, copy)
    module = load_denoiser(str(copy))
    assert denoiser_identity(module) == {"name": str(copy), "sha256": file_sha256(copy)}


def test_unknown_name_is_a_checkpoint_error(fake_registry):
    with pytest.raises(CheckpointError, match="tiny-s0.25"):
        load_denoiser("no-such-denoiser")


def test_identity_of_none_and_of_a_plain_module():
    assert denoiser_identity(None) is None
    net = build_denoiser("dncnn", depth=3, n_channels=4)
    ident = denoiser_identity(net)
    assert ident == {"name": "DnCNN", "sha256": state_dict_sha256(net)}
    with torch.no_grad():
        net.dncnn[0].bias.add_(1.0)
    assert denoiser_identity(net)["sha256"] != ident["sha256"]


def test_cli_list_shows_names_sigmas_and_psnr():
    result = CliRunner().invoke(denoiser_app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "recipe: robust-api denoiser train" in result.output
