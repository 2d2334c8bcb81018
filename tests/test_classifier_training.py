"""Training CIFAR classifiers: resumable after a kill with the same final weights, checkpoints that hold everything."""
from __future__ import annotations

import pytest
import torch

from robust_api.classifier_training import (
    ClassifierConfig,
    augment,
    evaluate_classifier,
    learning_rate_factor,
    train_classifier,
)
from robust_api.cifar_resnet import read_checkpoint
from robust_api.errors import ConfigError

TINY = ClassifierConfig(arch="resnet20", epochs=2, batch=4)


@pytest.fixture(scope="module")
def data(cifar_like):
    return cifar_like  # tests/conftest.py


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(ckpt) -> dict:
    return ckpt["state_dict"]


def test_a_run_killed_after_one_epoch_and_resumed_ends_with_the_uninterrupted_runs_weights(data, tmp_path):
    straight = train_classifier(data, tmp_path / "straight.pt", TINY)
    train_classifier(data, tmp_path / "resumed.pt", TINY, stop_after_epoch=1)
    assert read_checkpoint(tmp_path / "resumed.pt")["epoch"] == 1
    resumed = train_classifier(data, tmp_path / "resumed.pt", TINY, resume=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    for name, tensor in weights(straight).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
    def untimed(metrics):
        return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]

    assert untimed(resumed["metrics"]) == untimed(straight["metrics"])


def test_the_checkpoint_holds_model_optimizer_schedule_rng_config_and_metrics(data, tmp_path):
    seen = []
    ckpt = train_classifier(data, tmp_path / "c.pt", TINY, stop_after_epoch=1, mirror=tmp_path / "mirror",
                            on_epoch=seen.append)
    on_disk = read_checkpoint(tmp_path / "c.pt")
    assert set(on_disk) >= {"arch", "class_names", "state_dict", "optimizer", "scheduler", "epoch", "rng", "config",
                            "metrics", "data", "recipe"}
    assert on_disk["class_names"] == ["cat", "dog"] and on_disk["config"]["epochs"] == 2
    assert seen == on_disk["metrics"] == ckpt["metrics"]
    assert set(seen[0]) == {"epoch", "loss", "train_acc", "test_acc", "lr", "seconds"}
    assert (tmp_path / "mirror" / "c.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed into place


def test_resume_refuses_a_checkpoint_trained_with_other_settings_and_a_fresh_run_refuses_to_overwrite(data, tmp_path):
    train_classifier(data, tmp_path / "c.pt", TINY, stop_after_epoch=1)
    with pytest.raises(ConfigError, match="epochs=2 \\(now 3\\)"):
        train_classifier(data, tmp_path / "c.pt", ClassifierConfig(epochs=3, batch=4), resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        train_classifier(data, tmp_path / "c.pt", TINY)


def test_training_learns_a_separable_toy_problem_and_eval_reports_clean_accuracy(data, tmp_path):
    config = ClassifierConfig(epochs=3, batch=4, lr=0.05, bf16=False)
    train_classifier(data, tmp_path / "c.pt", config)
    result = evaluate_classifier(data / "test", tmp_path / "c.pt")
    assert result["images"] == 4 and result["accuracy"] == 1.0 and result["epoch"] == 3


def test_gaussian_noise_augmentation_changes_the_weights(data, tmp_path):
    clean = train_classifier(data, tmp_path / "a.pt", ClassifierConfig(epochs=1, batch=4))
    noisy = train_classifier(data, tmp_path / "b.pt", ClassifierConfig(epochs=1, batch=4, noise_sd=0.25))
    assert not torch.equal(weights(clean)["fc.weight"], weights(noisy)["fc.weight"])


def test_augmentation_crops_from_the_zero_padded_image_and_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    out = augment(images, generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(2):  # every output is some 32x32 window of the padded image, maybe mirrored
        windows = [padded[i, :, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_the_schedule_warms_up_then_anneals_to_zero():
    factor = learning_rate_factor(ClassifierConfig(epochs=10, warmup_epochs=1), steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(99) < 0.001
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))


def test_training_needs_an_image_folder_root_with_train_inside(tmp_path):
    with pytest.raises(ConfigError, match="train/"):
        train_classifier(tmp_path, tmp_path / "c.pt", TINY)
    with pytest.raises(ConfigError, match="6n\\+2"):
        train_classifier(tmp_path, tmp_path / "c.pt", ClassifierConfig(arch="resnet18"))
