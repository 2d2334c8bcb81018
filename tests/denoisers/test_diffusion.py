"""Diffusion models as one-shot denoisers (`diffusion:PATH`): the σ -> t* mapping and scaling pinned by an oracle,
clipping and resizing measured, the diffusers and guided-diffusion layouts loaded from tiny random models.

Everything is offline and CPU-only: the models are built here with random weights, nothing is downloaded.
"""
from __future__ import annotations

import gc
import json
import math
import shutil
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from robust_api.denoisers import diffusion, registry, speed
from robust_api.denoisers.diffusion import (
    OneShotDenoiser, alpha_bar_for_sigma, clipping_mean_shift, cosine_alphas_cumprod, linear_alphas_cumprod,
    resize_noise_factor, timestep_for_sigma,
)
from robust_api.denoisers.guided_unet import GuidedUNet
from robust_api.errors import CheckpointError, ConfigError
from robust_api.noise import noisy_copies, sample_rng

SIGMAS = (0.12, 0.25, 0.5, 1.0)


class OracleNetwork(nn.Module):
    """Knows the clean image x and the standard-normal draw z of the smoothing noise δ = σz, and returns what a
    perfect network trained with `prediction` would: ε = z, x₀ = 2x-1, or v = √ᾱ·z - √(1-ᾱ)·x₀ at `alpha_bar`."""

    def __init__(self, clean: torch.Tensor, z: torch.Tensor, prediction: str = "epsilon",
                 alpha_bar: float | None = None) -> None:
        super().__init__()
        self.clean, self.z, self.prediction, self.alpha_bar = clean, z, prediction, alpha_bar
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(timesteps)
        x0 = 2 * self.clean - 1
        if self.prediction == "sample":
            return x0
        if self.prediction == "v_prediction":
            return math.sqrt(self.alpha_bar) * self.z - math.sqrt(1 - self.alpha_bar) * x0
        return self.z


def exact_schedule(sigmas=SIGMAS) -> torch.Tensor:
    """The 1000-step linear schedule with 1/(1+4σ²) inserted for each σ, so that t* hits the matching ᾱ exactly."""
    targets = torch.tensor([alpha_bar_for_sigma(s) for s in sigmas], dtype=torch.float64)
    return torch.sort(torch.cat([linear_alphas_cumprod(1000), targets]), descending=True).values


def draw(sigma: float, seed: int = 0, shape=(2, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    clean = 0.2 + 0.6 * torch.rand(shape, generator=g)
    z = torch.randn(shape, generator=g)
    return clean, z, clean + sigma * z  # unclipped: the contract is about Gaussian noise


def oracle_error(sigma: float, schedule: torch.Tensor, prediction: str = "epsilon",
                 denoiser_class=OneShotDenoiser) -> tuple[torch.Tensor, OneShotDenoiser, OracleNetwork]:
    clean, z, noisy = draw(sigma)
    step = timestep_for_sigma(schedule, sigma)
    oracle = OracleNetwork(clean, z, prediction, float(schedule[step]))
    denoiser = denoiser_class(oracle, schedule, sigma, image_size=None, prediction=prediction)
    with torch.no_grad():
        out = denoiser(noisy)
    return out - clean, denoiser, oracle


# -- the contract: σ -> t*, scaling, x̂₀ ------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_an_oracle_network_gives_back_the_clean_image_exactly(sigma, prediction):
    schedule = exact_schedule()
    error, denoiser, oracle = oracle_error(sigma, schedule, prediction)
    assert float(error.abs().max()) < 2e-6
    # t* is the step holding 1/(1+4σ²), and the network was called there, once, for the whole batch
    assert float(schedule[denoiser.timestep]) == pytest.approx(1 / (1 + 4 * sigma**2), abs=1e-15)
    assert [t.tolist() for t in oracle.timesteps] == [[denoiser.timestep] * 2]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_mapping_that_forgets_the_factor_two_of_the_scaling_fails_the_oracle(sigma, monkeypatch):
    monkeypatch.setattr(diffusion, "alpha_bar_for_sigma", lambda s: 1.0 / (1.0 + s**2))
    error, _, _ = oracle_error(sigma, exact_schedule())
    # x̂₀ keeps about half the noise: |error| ≈ σ|z|/2, mean 0.4σ (a little less at σ = 1, where [0, 1] clips it)
    assert float(error.abs().mean()) > 0.25 * sigma


@pytest.mark.parametrize("sigma", SIGMAS)
def test_feeding_the_noisy_image_without_the_sqrt_alpha_bar_factor_fails_the_oracle(sigma):
    class Unscaled(OneShotDenoiser):
        def to_model_input(self, noisy, alpha_bar):
            return 2.0 * noisy - 1.0

    error, _, _ = oracle_error(sigma, exact_schedule(), denoiser_class=Unscaled)
    assert float(error.abs().max()) > 0.01


@pytest.mark.parametrize("name, schedule", [
    ("linear-1000", linear_alphas_cumprod(1000)),
    ("cosine-1000", cosine_alphas_cumprod(1000)),
    ("cosine-4000", cosine_alphas_cumprod(4000)),
])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_on_real_schedules_the_oracle_error_is_only_the_nearest_step_rounding(name, schedule, sigma):
    error, denoiser, _ = oracle_error(sigma, schedule)
    t = denoiser.timestep
    c = math.sqrt((1 - float(schedule[t])) / float(schedule[t]))
    _, z, _ = draw(sigma)
    # x̂₀ - x = (2σ - c)/2 · z in [0,1] units, exactly; and t* is the best step: < 0.6% of the noise left
    assert torch.allclose(error, (2 * sigma - c) / 2 * z, atol=2e-6)
    assert abs(1 - c / (2 * sigma)) < 0.006
    target = 1 / (1 + 4 * sigma**2)
    assert all(abs(float(schedule[t]) - target) <= abs(float(schedule[n]) - target)
               for n in (t - 1, t + 1) if 0 <= n < len(schedule))


def test_schedules_are_the_ones_diffusers_and_the_openai_releases_train_with():
    diffusers = pytest.importorskip("diffusers")
    linear = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    cosine = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(linear_alphas_cumprod(1000), torch.cumprod(1 - linear.betas.double(), 0), atol=1e-6)
    assert torch.allclose(cosine_alphas_cumprod(1000), torch.cumprod(1 - cosine.betas.double(), 0), atol=1e-6)
    # improved-diffusion scales the linear β range by 1000/T: β from 2.5e-5 to 0.005 over 4000 steps
    abar = linear_alphas_cumprod(4000)
    assert 1 - float(abar[0]) == pytest.approx(2.5e-5) and 1 - float(abar[-1] / abar[-2]) == pytest.approx(0.005)
    assert [timestep_for_sigma(linear_alphas_cumprod(1000), s) for s in SIGMAS] == [70, 144, 258, 396]


# -- clipping ----------------------------------------------------------------------------------------------------

def test_clipping_shifts_dark_and_bright_pixels_towards_grey_by_the_documented_amount():
    sigma, copies = 0.25, 64
    assert clipping_mean_shift(0.0, sigma) == pytest.approx(0.0997, abs=5e-4)  # σ/√(2π) minus a negligible tail
    assert clipping_mean_shift(0.5, sigma) == pytest.approx(0.0, abs=1e-12)
    assert clipping_mean_shift(1.0, sigma) == pytest.approx(-0.0997, abs=5e-4)
    schedule = exact_schedule((sigma,))
    for level in (0.0, 0.05, 0.5, 1.0):
        image = np.full((16, 16, 3), level, dtype=np.float32)
        clipped = noisy_copies(image, sigma, 7, "ab" * 32, "estimation", list(range(copies)))  # the pipeline's
        measured = float(clipped.mean()) - level
        standard_error = sigma / math.sqrt(clipped.size)
        assert measured == pytest.approx(clipping_mean_shift(level, sigma), abs=4 * standard_error)
        # With the oracle ε (the unclipped draw), x̂₀ - x = clip(x+δ) - (x+δ), whose mean is the same shift.
        unclipped = image[None] + sigma * np.stack(
            [sample_rng(7, "ab" * 32, "estimation", i).standard_normal(image.shape, dtype=np.float32)
             for i in range(copies)])
        assert np.allclose(np.clip(unclipped, 0, 1), clipped)  # same draws as the pipeline
        z = torch.from_numpy((unclipped - image[None]) / sigma).permute(0, 3, 1, 2)
        clean = torch.full_like(z, level)
        denoiser = OneShotDenoiser(OracleNetwork(clean, z), schedule, sigma, image_size=None)
        with torch.no_grad():
            out = denoiser(torch.from_numpy(clipped).permute(0, 3, 1, 2))
        # (the output is clipped to [0, 1] too, which only matters at the extremes: compare before that)
        raw = torch.from_numpy(clipped).permute(0, 3, 1, 2) - sigma * z
        assert torch.allclose(out, raw.clamp(0, 1), atol=2e-6)
        assert float((raw - clean).mean()) == pytest.approx(clipping_mean_shift(level, sigma), abs=4 * standard_error)


# -- resizing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, target", [((224, 224), (256, 256)), ((64, 64), (32, 32)), ((48, 40), (32, 32))])
def test_the_effective_noise_after_resizing_is_what_a_resized_noise_image_measures(source, target):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((32, 3, *source), generator=g)
    resized = torch.nn.functional.interpolate(noise, size=target, mode="bilinear", align_corners=False,
                                              antialias=True)
    assert float(resized.pow(2).mean().sqrt()) == pytest.approx(resize_noise_factor(source, target), rel=0.02)
    assert resize_noise_factor(source, source) == pytest.approx(1.0)


def test_an_image_of_another_size_is_resized_denoised_at_its_effective_sigma_and_resized_back():
    calls = []

    def network(x_t, timesteps):
        calls.append((tuple(x_t.shape), timesteps.tolist()))
        return torch.zeros(x_t.shape[0], 6, *x_t.shape[2:])  # learned variance: 6 channels, ε first

    schedule = linear_alphas_cumprod(1000)
    denoiser = OneShotDenoiser(network, schedule, 0.25, image_size=(32, 32))
    out = denoiser(torch.rand(3, 3, 48, 40))
    sigma_eff = 0.25 * resize_noise_factor((48, 40), (32, 32))
    step = timestep_for_sigma(schedule, sigma_eff)
    assert out.shape == (3, 3, 48, 40) and step < denoiser.timestep == 144
    assert calls == [((3, 3, 32, 32), [step] * 3)]
    assert denoiser.resized == {"48x40": {"sigma_effective": round(sigma_eff, 6), "timestep": step}}
    denoiser(torch.rand(1, 3, 32, 32))
    assert calls[-1] == ((1, 3, 32, 32), [144]) and "32x32" not in denoiser.resized


# -- the diffusers layout ------------------------------------------------------------------------------------------

def tiny_unet(**overrides):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=8, attention_head_dim=8)
    return UNet2DModel(**{**config, **overrides}).eval()


@pytest.fixture(scope="module")
def tiny_unet_dir(tmp_path_factory):
    """A randomly initialised UNet2DModel and a 1000-step linear DDPMScheduler, saved with save_pretrained."""
    from diffusers import DDPMScheduler

    directory = tmp_path_factory.mktemp("models") / "tiny-unet"
    tiny_unet().save_pretrained(directory)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(directory)
    return directory


def by_hand(unet, noisy: torch.Tensor, alpha_bar: float, step: int, prediction: str = "epsilon") -> torch.Tensor:
    x_t = math.sqrt(alpha_bar) * (2 * noisy - 1)
    with torch.no_grad():
        out = unet(x_t, torch.full((len(noisy),), step)).sample
    if prediction == "v_prediction":
        x0 = math.sqrt(alpha_bar) * x_t - math.sqrt(1 - alpha_bar) * out
    else:
        x0 = (x_t - math.sqrt(1 - alpha_bar) * out) / math.sqrt(alpha_bar)
    return ((x0 + 1) / 2).clamp(0, 1)


def test_a_saved_tiny_unet2dmodel_reloads_and_denoises_by_the_contract(tiny_unet_dir):
    pytest.importorskip("diffusers")
    module = registry.load_denoiser(f"diffusion:{tiny_unet_dir}", sigma=0.25)
    weights = tiny_unet_dir / "diffusion_pytorch_model.safetensors"
    assert module.denoiser_name.startswith("diffusion:tiny-unet@t=144,sigma=0.25,resize=32x32,cfg=")
    assert module.denoiser_sha256 == registry.file_sha256(weights)
    assert registry.denoiser_identity(f"diffusion:{tiny_unet_dir}", sigma=0.25) == registry.denoiser_identity(module)
    assert module.denoiser_meta["sigma"] == 0.25 and module.denoiser_meta["timestep"] == 144
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = module(noisy)
    alpha_bar = float(linear_alphas_cumprod(1000)[144])
    assert torch.allclose(out, by_hand(tiny_unet(), noisy, alpha_bar, 144), atol=1e-5)
    # another sigma is another timestep, hence another denoiser in the logs (same weights)
    other = registry.denoiser_identity(f"diffusion:{tiny_unet_dir}", sigma=0.5)
    assert other["name"].startswith("diffusion:tiny-unet@t=258,sigma=0.5,") and other["sha256"] == module.denoiser_sha256


def test_one_network_serves_every_noise_level_while_a_denoiser_holds_it(tiny_unet_dir):
    pytest.importorskip("diffusers")
    low = registry.load_denoiser(f"diffusion:{tiny_unet_dir}", sigma=0.12)
    high = registry.load_denoiser(f"diffusion:{tiny_unet_dir}", sigma=0.5)
    assert low.model is high.model and (low.timestep, high.timestep) == (70, 258)
    network = weakref.ref(low.model)
    del low, high
    gc.collect()
    assert network() is None  # the cache does not keep a model alive on its own


def test_a_pipeline_directory_and_a_v_prediction_scheduler_load_too(tiny_unet_dir, tmp_path):
    pytest.importorskip("diffusers")
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_unet_dir, pipeline / "unet")
    (pipeline / "scheduler").mkdir()
    config = json.loads((tiny_unet_dir / "scheduler_config.json").read_text())
    (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    (pipeline / "unet" / "scheduler_config.json").unlink()
    module = registry.load_denoiser(f"diffusion:{pipeline}", sigma=0.5)
    assert module.prediction == "v_prediction" and module.denoiser_name.startswith("diffusion:pipeline@t=258,")
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = module(noisy)
    alpha_bar = float(linear_alphas_cumprod(1000)[258])
    assert torch.allclose(out, by_hand(tiny_unet(), noisy, alpha_bar, 258, "v_prediction"), atol=1e-5)


def test_a_changed_schedule_is_a_different_denoiser_in_the_logs_even_with_the_same_weights(tiny_unet_dir, tmp_path):
    pytest.importorskip("diffusers")
    changed = tmp_path / "tiny-unet"
    shutil.copytree(tiny_unet_dir, changed)
    config = json.loads((changed / "scheduler_config.json").read_text())
    (changed / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    a = registry.denoiser_identity(f"diffusion:{tiny_unet_dir}", sigma=0.25)
    b = registry.denoiser_identity(f"diffusion:{changed}", sigma=0.25)
    assert a["sha256"] == b["sha256"] and a["name"] != b["name"]


def test_the_served_module_keeps_float32_unless_the_psnr_check_allows_less(tiny_unet_dir, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: False)
    served = registry.serve_denoiser(f"diffusion:{tiny_unet_dir}", 0.25, device="cpu")
    assert served.identity.precision == "float32" and isinstance(served.module, OneShotDenoiser)
    assert served.identity.sigma == 0.25 and served.identity.params["arch"] == "diffusers UNet2DModel"
    monkeypatch.setattr(speed, "native_bfloat16_cpu", lambda: True)
    served = registry.serve_denoiser(f"diffusion:{tiny_unet_dir}", 0.25, device="cpu")
    assert served.identity.precision in ("bfloat16", "float32")
    assert served.identity.as_log()["name"].startswith("diffusion:tiny-unet@t=144,sigma=0.25,")
    assert served.module.denoiser_meta["resized"] == {}  # the 96x96 check image is not one of the user's sizes
    with torch.no_grad():
        assert served.module(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_a_session_loads_a_diffusion_denoiser_per_noise_level_and_refuses_a_bad_path_early(tiny_unet_dir, tmp_path):
    pytest.importorskip("diffusers")
    from robust_api.providers.local import LocalProvider
    from robust_api.session import Session, SessionConfig

    def brightness(image):
        p = float(np.asarray(image, dtype=np.float32).mean() > 0.5)
        return {"bright": p, "dark": 1.0 - p}

    provider = LocalProvider(brightness, input="array", model_name="brightness", model_version="1")
    with Session(SessionConfig(api="local", provider=provider, denoiser=f"diffusion:{tiny_unet_dir}")) as session:
        low, high = session.engine_for(0.12), session.engine_for(0.5)
        assert low.denoiser_id["name"].startswith("diffusion:tiny-unet@t=70,sigma=0.12,")
        assert high.denoiser_id["name"].startswith("diffusion:tiny-unet@t=258,sigma=0.5,")
    with pytest.raises(CheckpointError, match="no such file"):
        Session(SessionConfig(api="local", provider=provider, denoiser=f"diffusion:{tmp_path / 'missing'}"))


def test_bad_specs_fail_with_one_clear_error(tiny_unet_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="needs a path"):
        registry.resolve_path("diffusion:")
    with pytest.raises(CheckpointError, match="no such file"):
        registry.resolve_path(f"diffusion:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers directory"):
        registry.resolve_path(f"diffusion:{tmp_path / 'empty'}")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="model.json next to it"):
        registry.resolve_path(f"diffusion:{tmp_path / 'model.pt'}")
    assert registry.resolve_path(f"diffusion:{tiny_unet_dir}") == tiny_unet_dir
    with pytest.raises(ConfigError, match="pass the sigma"):
        registry.load_denoiser(f"diffusion:{tiny_unet_dir}")
    real_find_spec = diffusion.importlib.util.find_spec
    monkeypatch.setattr(diffusion.importlib.util, "find_spec",
                        lambda name, *a: None if name == "diffusers" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'robust-api\[diffusion\]'"):
        registry.resolve_path(f"diffusion:{tiny_unet_dir}")


# -- the guided-diffusion / improved-diffusion layout ----------------------------------------------------------------

# The parameter names and shapes of a guided-diffusion UNetModel state dict (openai/guided-diffusion,
# guided_diffusion/unet.py; the released 256x256_diffusion_uncond.pt has this layout at full size), written out for
# TINY_CONFIG: 32x32, num_channels 32, channel_mult 1,2, one res block per level, attention at 16x16 (ds 2) with
# 16-channel heads, resblock_updown, scale-shift norm, learn_sigma (6 output channels). Time embedding width 4*32.
TINY_CONFIG = {
    "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "16",
    "num_head_channels": 16, "resblock_updown": True, "use_scale_shift_norm": True, "learn_sigma": True,
    "noise_schedule": "linear", "diffusion_steps": 1000, "class_cond": False, "use_fp16": True, "dropout": 0.1,
}
EMB = 128


def resblock_keys(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    keys = {
        f"{prefix}.in_layers.0.weight": (cin,), f"{prefix}.in_layers.0.bias": (cin,),
        f"{prefix}.in_layers.2.weight": (cout, cin, 3, 3), f"{prefix}.in_layers.2.bias": (cout,),
        f"{prefix}.emb_layers.1.weight": (2 * cout, EMB), f"{prefix}.emb_layers.1.bias": (2 * cout,),
        f"{prefix}.out_layers.0.weight": (cout,), f"{prefix}.out_layers.0.bias": (cout,),
        f"{prefix}.out_layers.3.weight": (cout, cout, 3, 3), f"{prefix}.out_layers.3.bias": (cout,),
    }
    if cin != cout:
        keys.update({f"{prefix}.skip_connection.weight": (cout, cin, 1, 1), f"{prefix}.skip_connection.bias": (cout,)})
    return keys


def attention_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,), f"{prefix}.qkv.weight": (3 * c, c, 1),
            f"{prefix}.qkv.bias": (3 * c,), f"{prefix}.proj_out.weight": (c, c, 1), f"{prefix}.proj_out.bias": (c,)}


TINY_LAYOUT: dict[str, tuple[int, ...]] = {
    "time_embed.0.weight": (EMB, 32), "time_embed.0.bias": (EMB,),
    "time_embed.2.weight": (EMB, EMB), "time_embed.2.bias": (EMB,),
    "input_blocks.0.0.weight": (32, 3, 3, 3), "input_blocks.0.0.bias": (32,),
    **resblock_keys("input_blocks.1.0", 32, 32),          # level 0 (32x32)
    **resblock_keys("input_blocks.2.0", 32, 32),          # downsampling res block -> 16x16
    **resblock_keys("input_blocks.3.0", 32, 64),          # level 1 (16x16, attention)
    **attention_keys("input_blocks.3.1", 64),
    **resblock_keys("middle_block.0", 64, 64),
    **attention_keys("middle_block.1", 64),
    **resblock_keys("middle_block.2", 64, 64),
    **resblock_keys("output_blocks.0.0", 64 + 64, 64),    # + skip of input_blocks.3
    **attention_keys("output_blocks.0.1", 64),
    **resblock_keys("output_blocks.1.0", 64 + 32, 64),    # + skip of input_blocks.2
    **attention_keys("output_blocks.1.1", 64),
    **resblock_keys("output_blocks.1.2", 64, 64),         # upsampling res block -> 32x32
    **resblock_keys("output_blocks.2.0", 64 + 32, 32),    # + skip of input_blocks.1
    **resblock_keys("output_blocks.3.0", 32 + 32, 32),    # + skip of input_blocks.0
    "out.0.weight": (32,), "out.0.bias": (32,), "out.2.weight": (6, 32, 3, 3), "out.2.bias": (6,),
}


def write_guided(directory, config=TINY_CONFIG, layout=TINY_LAYOUT, name="tiny_uncond", seed=0):
    """A state dict with the layout's names and shapes (random values, saved as the releases are: a bare dict)
    and its settings file beside it."""
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(shape, generator=g) for k, shape in layout.items()}
    path = directory / f"{name}.pt"
    torch.save(state, path)
    (directory / f"{name}.json").write_text(json.dumps(config))
    return path


def test_a_guided_diffusion_state_dict_with_the_release_key_layout_loads_strictly_and_denoises(tmp_path):
    path = write_guided(tmp_path)
    module = registry.load_denoiser(f"diffusion:{path}", sigma=0.25)
    assert set(module.model.state_dict()) == set(TINY_LAYOUT)
    assert {k: tuple(v.shape) for k, v in module.model.state_dict().items()} == TINY_LAYOUT
    assert module.denoiser_name.startswith("diffusion:tiny_uncond.pt@t=144,sigma=0.25,resize=32x32,cfg=")
    assert module.denoiser_sha256 == registry.file_sha256(path)
    assert module.denoiser_meta["arch"] == "guided-diffusion UNet"
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = module(noisy)
        eps = module.model(math.sqrt(module.alpha_bar) * (2 * noisy - 1), torch.tensor([144, 144]))
    assert eps.shape == (2, 6, 32, 32)  # ε and the variance interpolation: the first three are ε
    x_t = math.sqrt(module.alpha_bar) * (2 * noisy - 1)
    x0 = (x_t - math.sqrt(1 - module.alpha_bar) * eps[:, :3]) / math.sqrt(module.alpha_bar)
    assert torch.allclose(out, ((x0 + 1) / 2).clamp(0, 1), atol=1e-5)
    assert registry.denoiser_identity(f"diffusion:{path}", sigma=0.25) == registry.denoiser_identity(module)


def test_the_strided_conv_and_nearest_conv_resampling_variant_has_op_and_conv_weights():
    model = GuidedUNet(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,), num_heads=2,
                       resblock_updown=False)
    keys = set(model.state_dict())
    assert {"input_blocks.2.0.op.weight", "output_blocks.1.2.conv.weight", "out.2.weight"} <= keys
    assert not any(k.startswith("input_blocks.2.0.in_layers") for k in keys)
    assert model.state_dict()["out.2.weight"].shape == (3, 32, 3, 3)


def test_weights_that_do_not_match_the_settings_are_refused_naming_the_file(tmp_path):
    path = write_guided(tmp_path, config={**TINY_CONFIG, "num_channels": 64})
    with pytest.raises(CheckpointError, match="do not match tiny_uncond.json"):
        registry.load_denoiser(f"diffusion:{path}", sigma=0.25)
    missing_key = dict(TINY_LAYOUT)
    missing_key.pop("middle_block.1.qkv.bias")
    path = write_guided(tmp_path, layout=missing_key, name="partial")
    with pytest.raises(CheckpointError, match="middle_block.1.qkv.bias"):
        registry.load_denoiser(f"diffusion:{path}", sigma=0.25)


@pytest.mark.parametrize("change, message", [
    ({"class_cond": True}, "class-conditional"),
    ({"noise_schedule": "sigmoid"}, "linear or cosine"),
    ({"num_head_channel": 16}, "unknown setting"),
    ({"diffusion_steps": 4000}, "rescale_timesteps"),
    ({"learn_sigma": "maybe"}, "true or false"),
])
def test_settings_that_cannot_describe_the_model_are_refused(tmp_path, change, message):
    path = write_guided(tmp_path, config={**TINY_CONFIG, **change})
    with pytest.raises(CheckpointError, match=message):
        registry.resolve_path(f"diffusion:{path}")


def test_improved_diffusion_settings_as_command_line_strings_with_rescaled_timesteps(tmp_path, monkeypatch):
    # improved-diffusion's CIFAR-10 flags (--learn_sigma True --diffusion_steps 4000 --noise_schedule cosine),
    # written as the strings its scripts take, plus its default rescale_timesteps=True; training flags ignored.
    config = {**{k: str(v) if isinstance(v, bool) else v for k, v in TINY_CONFIG.items()},
              "noise_schedule": "cosine", "diffusion_steps": 4000, "rescale_timesteps": "True", "lr": 1e-4,
              "batch_size": 128}
    path = write_guided(tmp_path, config=config)
    module = registry.load_denoiser(f"diffusion:{path}", sigma=0.25)
    assert module.timestep == timestep_for_sigma(cosine_alphas_cumprod(4000), 0.25) == 1158
    seen = []
    original = module.model.forward
    monkeypatch.setattr(module.model, "forward", lambda x, t: seen.append(t) or original(x, t))
    with torch.no_grad():
        module(torch.rand(1, 3, 32, 32))
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [1158 * 1000 / 4000]
