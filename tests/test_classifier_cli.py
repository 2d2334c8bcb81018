"""`robust-api classifier train|eval`: progress per epoch, resume after a kill, clean accuracy; and a trained
checkpoint certifying an ImageFolder subset through the local provider."""
from __future__ import annotations

import pytest
import torch

from robust_api import cli
from robust_api.cifar_resnet import read_checkpoint
from robust_api.engine import CertifyParams
from robust_api.run import RunConfig, run_certification
from robust_api.datasets import image_arguments
from robust_api.results import with_true_labels


@pytest.fixture(scope="module")
def data(cifar_like):
    return cifar_like  # tests/conftest.py


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_train_prints_one_line_per_epoch_resumes_and_eval_reports_accuracy(data, tmp_path, capsys):
    out = tmp_path / "runs" / "c.pt"
    args = ["classifier", "train", "--data", data, "--epochs", "2", "--batch", "4", "--threads", "1", "--out", out,
            "--mirror", tmp_path / "mirror", "--cache-dir", tmp_path / "cache"]
    code, text, err = run_cli(capsys, *args)
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0].startswith("epoch 1/2  loss ") and "train acc" in lines[0] and "test acc" in lines[0]
    assert lines[-1] == f"wrote {out} (epoch 2/2)"
    assert read_checkpoint(tmp_path / "mirror" / "c.pt")["epoch"] == 2
    assert read_checkpoint(out)["recipe"].startswith("robust-api classifier train --data ")
    # no --bf16/--no-bf16: bfloat16 only where this CPU computes it natively (emulated it is ~10x slower)
    from robust_api.denoisers.speed import native_bfloat16_cpu

    native = "--bf16" if native_bfloat16_cpu() else "--no-bf16"
    assert read_checkpoint(out)["recipe"].split()[-1] == native

    code, _, err = run_cli(capsys, *args)  # a second fresh run must not overwrite the first
    assert code == 2 and "--resume" in err
    code, text, err = run_cli(capsys, *args, "--resume")  # nothing left to do: the run is complete
    assert code == 0 and text.strip() == f"wrote {out} (epoch 2/2)"

    code, text, err = run_cli(capsys, "classifier", "eval", "--data", data / "test", "--model", out, "--threads", "1")
    assert code == 0, err
    assert "c.pt: resnet20 after 2 epochs: clean accuracy" in text and "4 images" in text


def test_a_trained_checkpoint_certifies_every_other_test_image_through_the_local_provider(data, tmp_path, capsys):
    out = tmp_path / "c.pt"
    code, _, err = run_cli(capsys, "classifier", "train", "--data", data, "--epochs", "3", "--batch", "4", "--lr",
                           "0.05", "--no-bf16", "--threads", "1", "--out", out)
    assert code == 0, err
    chosen = image_arguments([data / "test"], skip=2)
    config = RunConfig(api="local", provider_options={"model": str(out)}, params=CertifyParams(
        sigma=0.12, n0=4, n=20, alpha=0.05))
    result = run_certification([f.path for f in chosen], config)
    certificates = with_true_labels(result.certificates, [f.class_name for f in chosen])
    assert [c.true_label for c in certificates] == ["cat", "dog"]
    assert all(c.correct and c.radius_l2 > 0 for c in certificates)
