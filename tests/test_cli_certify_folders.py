"""`robust-api certify DIR --skip K`: an ImageFolder tree certified every K-th image, judged against its true class."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_api import cli
from robust_api.providers.emulator.aws import AwsEmulator
from robust_api.providers.emulator.base import EMULATOR_KEY


def colour_labeller(image: Image.Image):
    """Reddish pictures are cats, the rest dogs."""
    r, _, b = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    return [("cat", 0.9), ("dog", 0.1)] if r > b else [("dog", 0.9), ("cat", 0.1)]


@pytest.fixture(scope="module")
def aws_url():
    emulator = AwsEmulator(labeller=colour_labeller)
    with pytest.MonkeyPatch.context() as mp, emulator.running() as url:
        mp.setenv("AWS_ACCESS_KEY_ID", EMULATOR_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", "emulator-secret")
        mp.setenv("AWS_REGION", "us-east-1")
        yield url


def write_tree(root: Path) -> Path:
    """2 classes x 4 images of 32x32; cat/0003.png is a misfiled blue (dog-looking) picture."""
    for name, colour in (("cat", (220, 40, 40)), ("dog", (40, 40, 220))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            rgb = (40, 40, 220) if (name, i) == ("cat", 3) else colour
            Image.fromarray(np.full((32, 32, 3), rgb, np.uint8)).save(root / name / f"{i:04d}.png")
    return root


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_certify_a_folder_every_third_image_against_its_true_class(tmp_path, aws_url, capsys):
    root = write_tree(tmp_path / "test")
    out = tmp_path / "results.tsv"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["certify", str(root), "--skip", "3", "--api", "aws", "--endpoint", aws_url, "--n0", "2",
                  "--n", "10", "--alpha", "0.05", "--sigma", "0.05", "--rate", "1000", "-o", str(out)])
    assert (exit_info.value.code or 0) == 0, capsys.readouterr().err
    table = rows(out)
    # items 0, 3, 6 of the data set: cat/0000, cat/0003 (misfiled: looks like a dog), dog/0002
    assert [(r["label"], r["predict"], r["correct"]) for r in table] == [
        ("cat", "cat", "1"), ("cat", "dog", "0"), ("dog", "dog", "1")]
    assert "cat/0003.png" in capsys.readouterr().out


def test_max_keeps_the_first_images_after_skip(tmp_path, aws_url, capsys):
    root = write_tree(tmp_path / "test")
    out = tmp_path / "results.tsv"
    with pytest.raises(SystemExit):
        cli.main(["certify", str(root), "--skip", "2", "--max", "1", "--api", "aws", "--endpoint", aws_url,
                  "--n0", "2", "--n", "4", "--alpha", "0.3", "--rate", "1000", "-o", str(out)])
    assert [r["label"] for r in rows(out)] == ["cat"]
