"""The maintainer's export keeps recipes portable and reproducible: every command that led to a checkpoint."""
from __future__ import annotations

from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers.checkpoints import checkpoint_dict
from robust_api.denoisers.export import _portable, _recipe_chain
from robust_api.denoisers.registry import get_weights


def test_portable_recipe_names_run_files_under_runs():
    cmd = "robust-api denoiser train --sigma 0.25 --init dncnn-s0.25 --steps 9 --out /tmp/x/stab-long.pt"
    assert _portable(cmd, "dncnn-s0.25-stab") == (
        "robust-api denoiser train --sigma 0.25 --init runs/dncnn-s0.25.pt --steps 9 --out runs/dncnn-s0.25-stab.pt"
    )
    assert _portable("t --init /home/me/a/dncnn-s0.25.pt --out /home/me/a/b.pt") == "t --init runs/dncnn-s0.25.pt --out runs/b.pt"
    assert _portable("t --init my-own --out b.pt") == "t --init my-own --out runs/b.pt"  # not a shipped name


def test_recipe_chain_follows_init_through_a_shipped_name_and_a_file(tmp_path):
    import torch

    net = build_denoiser("dncnn", depth=3, n_channels=4)
    first = tmp_path / "first.pt"
    torch.save(checkpoint_dict(net, "dncnn", {}, meta={"recipe": "train A", "init": {"source": "dncnn-s0.25"}}), first)
    second = checkpoint_dict(net, "dncnn", {}, meta={"recipe": "train B", "init": {"source": str(first)}})
    chain = _recipe_chain(second)
    assert chain == list(get_weights("dncnn-s0.25").meta["recipe"]) + ["train A", "train B"]
