"""Training runs every objective at tiny sizes, reduces its loss, checkpoints periodically and resumes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robust_api.denoisers.checkpoints import load_checkpoint, read_checkpoint_dict
from robust_api.denoisers.training import PatchSampler, TrainConfig, train_denoiser
from robust_api.errors import CheckpointError, ConfigError

TINY = {"depth": 3, "n_channels": 8}


def smooth_images(count: int = 3, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Smooth colour images (blurred random fields): easy to tell apart from Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.random((5, 5, 3)).astype(np.float32)
        img = np.kron(coarse, np.ones((size // 5, size // 5, 1), dtype=np.float32))
        out.append(img)
    return out


class TinyClassifier(nn.Module):
    """A frozen 4-class classifier of mean colour: cheap stand-in surrogate for Stab tests."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [-2.0, -2.0, -2.0]]))
            self.fc.bias.zero_()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def config(**kw) -> TrainConfig:
    base = dict(sigma=0.25, arch="dncnn", arch_overrides=TINY, steps=30, batch=8, patch=16, lr=3e-3,
                checkpoint_every=10, data="synthetic")
    base.update(kw)
    return TrainConfig(**base)


def test_mse_training_reduces_loss_and_writes_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "mse.pt"
    result = train_denoiser(config(steps=60), smooth_images(), out, device="cpu")
    assert result.steps_done == 60
    assert np.mean(result.losses[-10:]) < 0.7 * np.mean(result.losses[:5])
    loaded = load_checkpoint(out)
    assert loaded.arch == "dncnn" and loaded.config["depth"] == 3 and loaded.epoch == 60
    assert loaded.meta["sigma"] == 0.25 and loaded.meta["objective"] == "mse" and loaded.meta["steps"] == 60


def test_stab_training_through_a_frozen_surrogate_reduces_loss(tmp_path):
    surrogate = TinyClassifier()
    before = surrogate.fc.weight.clone()
    result = train_denoiser(
        config(objective="stab", steps=40, sigma=0.5, surrogates=["tiny"]), smooth_images(), tmp_path / "s.pt",
        surrogates=[surrogate], device="cpu",
    )
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:5])
    assert torch.equal(surrogate.fc.weight, before)  # the surrogate stays frozen


def test_stab_plus_mse_fine_tunes_an_mse_checkpoint_with_several_surrogates(tmp_path):
    mse = tmp_path / "mse.pt"
    train_denoiser(config(steps=20), smooth_images(), mse, device="cpu")
    result = train_denoiser(
        config(objective="stab+mse", init=str(mse), steps=10, surrogates=["a", "b"]), smooth_images(),
        tmp_path / "sm.pt", surrogates=[TinyClassifier(), TinyClassifier()], device="cpu",
    )
    meta = load_checkpoint(tmp_path / "sm.pt").meta
    assert meta["objective"] == "stab+mse" and meta["init"]["source"] == str(mse) and len(meta["init"]["sha256"]) == 64
    assert result.steps_done == 10


def test_stab_plus_mse_requires_an_initial_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="--init"):
        train_denoiser(config(objective="stab+mse"), smooth_images(), tmp_path / "x.pt", surrogates=[TinyClassifier()])
    with pytest.raises(ConfigError, match="surrogate"):
        train_denoiser(config(objective="stab"), smooth_images(), tmp_path / "x.pt")


class _Interrupted(Exception):
    pass


def test_resume_continues_from_the_periodic_checkpoint_exactly(tmp_path):
    images = smooth_images()
    straight = train_denoiser(config(steps=20), images, tmp_path / "straight.pt", device="cpu")

    def crash_after_step_13(step, total, loss):
        if step == 13:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_denoiser(config(steps=20), images, tmp_path / "resumed.pt", device="cpu", progress=crash_after_step_13)
    assert read_checkpoint_dict(tmp_path / "resumed.pt")["epoch"] == 10  # the last periodic checkpoint
    resumed = train_denoiser(config(steps=20), images, tmp_path / "resumed.pt", resume=True, device="cpu")
    assert resumed.steps_done == 20 and len(resumed.losses) == 20
    # same data order, same noise, same optimizer state: resuming reproduces the uninterrupted run
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-4, atol=1e-6)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    train_denoiser(config(steps=5), smooth_images(), tmp_path / "a.pt", device="cpu")
    with pytest.raises(CheckpointError, match="sigma"):
        train_denoiser(config(steps=10, sigma=0.5), smooth_images(), tmp_path / "a.pt", resume=True)


def test_patches_come_with_flips_and_rotations():
    img = np.zeros((16, 16, 3), dtype=np.float32)
    img[0, 0] = 1.0  # a single bright corner pixel: its position reveals the augmentation
    sampler = PatchSampler([img], 16, torch.Generator().manual_seed(0))
    corners = set()
    for patch in sampler.sample(64):
        ys, xs = torch.nonzero(patch[0], as_tuple=True)
        corners.add((int(ys[0]), int(xs[0])))
    assert corners == {(0, 0), (0, 15), (15, 0), (15, 15)}


def test_without_rotations_patches_stay_upright_and_only_flip():
    # an upright photo stays upright: the top-left pixel can only move to the top-right (a horizontal flip)
    img = np.zeros((16, 16, 3), dtype=np.float32)
    img[0, 0] = 1.0
    sampler = PatchSampler([img], 16, torch.Generator().manual_seed(0), rotate=False)
    corners = set()
    for patch in sampler.sample(64):
        ys, xs = torch.nonzero(patch[0], as_tuple=True)
        corners.add((int(ys[0]), int(xs[0])))
    assert corners == {(0, 0), (0, 15)}


def test_the_rotation_choice_is_recorded_with_the_run(tmp_path):
    result = train_denoiser(config(steps=2, rotate=False), smooth_images(), tmp_path / "r.pt", device="cpu")
    meta = torch.load(result.checkpoint, weights_only=False)["meta"]
    assert meta["train"]["rotate"] is False


def test_real_efficientnet_surrogate_trains_one_step(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from robust_api.denoisers.surrogates import load_surrogate

    surrogate = load_surrogate("efficientnet-lite0")
    result = train_denoiser(
        config(objective="stab", steps=1, batch=2, patch=32, surrogates=["efficientnet-lite0"]),
        smooth_images(size=40), tmp_path / "e.pt", surrogates=[surrogate], device="cpu",
    )
    assert result.steps_done == 1 and np.isfinite(result.losses[0]) and result.losses[0] > 0


def test_stab_ignores_samples_whose_clean_label_is_not_confident(tmp_path):
    # the tiny surrogate is never 101% sure: every sample is skipped, so the denoiser must not move
    images = smooth_images()
    run = train_denoiser(
        config(objective="stab", steps=3, min_confidence=1.01, surrogates=["tiny"]), images, tmp_path / "c.pt",
        surrogates=[TinyClassifier()], device="cpu",
    )
    fresh = train_denoiser(config(steps=1, lr=0.0), images, tmp_path / "f.pt", device="cpu")
    for (k, a), b in zip(run.module.state_dict().items(), fresh.module.state_dict().values()):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(a, b), k
    assert run.losses == [0.0, 0.0, 0.0]


def test_frozen_batchnorm_keeps_its_running_statistics(tmp_path):
    images = smooth_images()
    init = train_denoiser(config(steps=5), images, tmp_path / "init.pt", device="cpu")
    before = {k: v.clone() for k, v in init.module.state_dict().items() if "running" in k}
    tuned = train_denoiser(
        config(objective="stab+mse", init=str(tmp_path / "init.pt"), steps=5, freeze_bn=True, surrogates=["tiny"]),
        images, tmp_path / "tuned.pt", surrogates=[TinyClassifier()], device="cpu",
    )
    after = {k: v for k, v in tuned.module.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for (k, a), b in zip(tuned.module.state_dict().items(), init.module.state_dict().values())
               if "weight" in k)  # the weights themselves did move


def test_mse_weight_adds_the_mse_term_to_stab():
    from robust_api.denoisers.architectures import build_denoiser
    from robust_api.denoisers.training import stab_loss

    torch.manual_seed(0)
    net = build_denoiser("dncnn", **TINY)
    clean = torch.rand(4, 3, 16, 16)
    noisy = (clean + 0.25 * torch.randn_like(clean)).clamp(0, 1)
    f = TinyClassifier()
    stab = stab_loss(net, clean, noisy, [f])
    both = stab_loss(net, clean, noisy, [f], mse_weight=100.0)
    mse = torch.nn.functional.mse_loss(net(noisy), clean)
    assert torch.allclose(both, stab + 100.0 * mse, rtol=1e-5)
    # with every sample filtered out, only the MSE term is left
    assert torch.allclose(stab_loss(net, clean, noisy, [f], min_confidence=1.01, mse_weight=2.0), 2.0 * mse)
    with pytest.raises(ConfigError, match="mse_weight"):
        config(mse_weight=-1.0).validate()


class _Overshooting(nn.Module):
    """A 'denoiser' whose output leaves [0, 1]: 3x - 1, with one trainable gain."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x - 1.0


class _BrightnessClassifier(nn.Module):
    """Two classes scored by mean brightness (class 1 wins the brighter the image); records what it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1) * 10.0


def test_stab_scores_the_denoised_image_clipped_to_0_1_as_serving_sends_it():
    from robust_api.denoisers.training import stab_loss

    torch.manual_seed(0)
    clean = torch.rand(8, 3, 8, 8) * 0.2 + 0.8  # bright: the classifier's clean label is class 1
    noisy = (clean + 0.25 * torch.randn_like(clean)).clamp(0, 1)
    net, f = _Overshooting(), _BrightnessClassifier()
    loss = stab_loss(net, clean, noisy, [f])
    fed = f.seen[-1]
    assert fed.min() >= 0.0 and fed.max() <= 1.0 and (net(noisy) > 1.0).any()
    with torch.no_grad():
        served = net.eval()(noisy).clamp(0, 1)  # what the engine sends on
    expected = torch.nn.functional.cross_entropy(f(served), torch.ones(8, dtype=torch.long))
    assert torch.allclose(loss, expected)
    # an output already above 1 everywhere earns nothing by going higher: no gradient pushes it further out
    bright = torch.full((4, 3, 8, 8), 0.9)
    net.train()
    stab_loss(net, bright, bright, [f]).backward()
    assert net.gain.grad is not None and float(net.gain.grad) == 0.0
    raw = torch.nn.functional.cross_entropy(f(net(bright)), torch.ones(4, dtype=torch.long))
    (gain_grad,) = torch.autograd.grad(raw, net.gain)
    assert float(gain_grad) < 0  # the unclipped loss would have kept raising the gain


def test_training_precision_follows_the_hardware(monkeypatch):
    from robust_api.denoisers import speed
    from robust_api.denoisers.training import training_dtype

    cpu = torch.device("cpu")
    assert training_dtype("float32", cpu) is None and training_dtype("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: False)
    assert training_dtype("auto", cpu) is None  # emulated bf16 is many times slower than float32
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)
    assert training_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(sigma=0.25, precision="half").validate()


def test_bfloat16_training_reduces_loss_and_records_its_precision(tmp_path):
    config = TrainConfig(sigma=0.2, arch="dncnn", arch_overrides=TINY, steps=30, batch=8, patch=16, lr=3e-3,
                         precision="bfloat16")
    result = train_denoiser(config, smooth_images(), tmp_path / "bf16.pt")
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert read_checkpoint_dict(tmp_path / "bf16.pt")["meta"]["train_precision"] == "bfloat16"


def test_ffdnet_fine_tune_sets_its_noise_level_and_can_prune_its_width(tmp_path):
    from robust_api.denoisers.architectures import build_denoiser
    from robust_api.denoisers.checkpoints import checkpoint_dict, save_checkpoint

    wide = tmp_path / "wide.pt"
    save_checkpoint(wide, checkpoint_dict(build_denoiser("ffdnet", depth=3, n_channels=16), "ffdnet",
                                          {"depth": 3, "n_channels": 16, "noise_level": 0.25}))
    config = TrainConfig(sigma=0.12, arch="ffdnet", arch_overrides={"n_channels": 8}, init=str(wide), steps=3,
                         batch=2, patch=16, lr=1e-4)
    train_denoiser(config, smooth_images(), tmp_path / "narrow.pt")
    loaded = load_checkpoint(tmp_path / "narrow.pt")
    assert loaded.config["n_channels"] == 8 and loaded.config["noise_level"] == 0.12
    assert loaded.module.noise_level == 0.12
    with pytest.raises(ConfigError, match="prune"):
        bad = TrainConfig(sigma=0.12, arch="ffdnet", arch_overrides={"n_channels": 32}, init=str(wide), steps=1,
                          batch=2, patch=16)
        train_denoiser(bad, smooth_images(), tmp_path / "bad.pt")


def test_uint8_photos_give_the_same_patches_as_float_ones():
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    a = PatchSampler([photo], 16, torch.Generator().manual_seed(1)).sample(4)
    b = PatchSampler([photo.astype(np.float32) / 255.0], 16, torch.Generator().manual_seed(1)).sample(4)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-7)
