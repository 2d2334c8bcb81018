"""A pretrained diffusion model as a one-shot denoiser (Carlini et al., "(Certified!!) Adversarial Robustness for
Free!", ICLR 2023): `--denoiser diffusion:PATH`, `RobustAPI(..., denoiser="diffusion:PATH")`.

The contract
------------
Images x are in [0, 1]; smoothing adds δ ~ N(0, σ²I). A DDPM trained on images in [-1, 1] noises them as
x_t = √ᾱ_t·x₀ + √(1-ᾱ_t)·ε, ε ~ N(0, I). In its space the noisy image is 2(x+δ)-1 = (2x-1) + 2δ: noise of
standard deviation 2σ on x₀ = 2x-1. Scaled by √ᾱ, √ᾱ·(x₀ + 2δ) is a sample of x_t exactly when
√ᾱ·2σ = √(1-ᾱ), i.e. ᾱ = 1/(1+4σ²). So:

    t* = argmin_t |ᾱ_t - 1/(1+4σ²)|                       (`timestep_for_sigma`)
    x_t = √ᾱ_{t*}·(2(x+δ) - 1)
    x̂₀ = (x_t - √(1-ᾱ_{t*})·ε_θ(x_t, t*)) / √ᾱ_{t*}      and the output is ((x̂₀ + 1)/2) clipped to [0, 1].

One network evaluation per noisy copy; no sampling loop. An oracle ε_θ that returns the noise actually drawn
(ε = δ/σ) gives x̂₀ = 2x-1 exactly when ᾱ_{t*} = 1/(1+4σ²); on a real 1000-step schedule t* is the nearest step
and x̂₀ - (2x-1) = (2σ - √((1-ᾱ_{t*})/ᾱ_{t*}))·ε, at most 0.6% of the noise for σ in {0.12, 0.25, 0.5, 1.0}
(linear and cosine schedules, 1000 or 4000 steps). tests/denoisers/test_diffusion.py checks both, and that the
mapping ᾱ = 1/(1+σ²) (forgetting the factor 2 of the [-1, 1] scaling) fails the oracle.

Models that predict x₀ (`predict_xstart`, diffusers' "sample") or v (diffusers' "v_prediction") are converted to
the same x̂₀. Learned-variance models output 2×3 channels (ε, then the variance interpolation): the first 3 are ε.

Clipping (what our pipeline feeds the denoiser)
-----------------------------------------------
`noise.noisy_copies` clips x+δ to [0, 1] before the denoiser, so that every copy can be encoded. That is a
deterministic function of the noisy input, part of the base classifier, so certificates stay valid; but the
denoiser then sees y = clip(x+δ), not x+δ, and the one-shot formula assumes Gaussian noise. For a pixel of value
x, E[y] - x = P(x+δ>1) + x·(Φ(b)-Φ(a)) + σ·(φ(a)-φ(b)) - x with a = -x/σ, b = (1-x)/σ (`clipping_mean_shift`):

    σ      x = 0 (or 1, negated)   x = 0.05   x = 0.25   x = 0.5   P(clip) at x = 0.5
    0.12   +0.048                  +0.027     +0.0008    0         0.00003
    0.25   +0.100                  +0.077     +0.021     0         0.046
    0.50   +0.195                  +0.170     +0.084     0         0.32
    1.00   +0.316                  +0.283     +0.155     0         0.62

A mid-grey pixel is unbiased (by symmetry) but its noise is narrower than σ; a black or white pixel is pushed
σ/√(2π) towards grey. The one-shot step cannot tell clipped from true intensities, so the shift passes through to
x̂₀ as a bias towards grey in dark and bright regions: with the oracle ε, x̂₀ - x = y - (x+δ), whose mean is
exactly the shift above (measured in the tests: 0.100 at x = 0, σ = 0.25, 0 at x = 0.5). A trained ε_θ has no
oracle: near 0 and 1 it is shown half-normal noise with a point mass at the bound, which it was not trained on.

Resolution
----------
The UNet runs at its training resolution (`image_size` / `sample_size`). An image of another size is resized to it
(bilinear, antialiased when shrinking), denoised, and resized back. Resizing changes the noise the model sees: the
mean per-pixel noise standard deviation after the resize is σ_eff = σ·√(mean row weight energy × mean column
weight energy) of the linear resize (`resize_noise_factor`: 0.66σ for 224 -> 256, 0.32σ for 64 -> 32), so an
image of size H×W is denoised at t*(σ_eff) rather than t*(σ). The log's denoiser name records σ, t* at the model's
own size and the size images are resized to: `diffusion:<name>@t=144,sigma=0.25,resize=256x256,cfg=<8 hex>`
(`cfg` is a hash of the configuration files: schedule, prediction type, architecture); its sha256 is that of the
weights file (several files: of the lines "<file name> <sha256>"). The per-size σ_eff and t* are a fixed function
of these, written to the module's `denoiser_meta["resized"]` and logged once per size.

Checkpoint layouts (PATH in `diffusion:PATH`)
--------------------------------------------
(a) A diffusers directory: `UNet2DModel.save_pretrained(DIR)` plus the scheduler's `save_pretrained(DIR)`
    (`config.json`, `diffusion_pytorch_model.safetensors` or `.bin`, `scheduler_config.json`), or a pipeline
    directory (`unet/` and `scheduler/`, as `DDPMPipeline.save_pretrained` writes them). ᾱ comes from the scheduler config (beta_schedule, betas, num_train_timesteps). Needs
    `pip install 'robust-api[diffusion]'`.
(b) An OpenAI improved-diffusion / guided-diffusion checkpoint FILE.pt (a bare state dict) with its settings in
    FILE.json next to it (same name, suffix .json): a JSON object with the keys of guided-diffusion's
    `model_and_diffusion_defaults()` (`image_size`, `num_channels`, `num_res_blocks`, `attention_resolutions`
    ("32,16,8"), `channel_mult` ("" = by image size), `learn_sigma`, `noise_schedule` (linear | cosine),
    `diffusion_steps`, `use_scale_shift_norm`, `resblock_updown`, `num_heads`, `num_head_channels`,
    `num_heads_upsample`, `use_new_attention_order`, `use_fp16`, `predict_xstart`, `rescale_timesteps`,
    `class_cond`; values as JSON or as the command-line strings "True"/"16,8"). `image_size` is required; other
    keys default to guided-diffusion's values; `rescale_timesteps` is required when `diffusion_steps` is not 1000
    (improved-diffusion feeds the model t·1000/T by default, guided-diffusion feeds t). Needs torch only.
    Unknown keys are refused, except training-only flags (`lr`, `batch_size`, ...), which are ignored.

Precision: like every denoiser, served through `speed.choose_precision` — float16 on CUDA (bfloat16 on CPUs with
native bf16) only when the fixed check image's PSNR moves by less than 0.05 dB, float32 otherwise.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from robust_api.errors import CheckpointError, ConfigError

SPEC_PREFIX = "diffusion:"
INSTALL_HINT = "pip install 'robust-api[diffusion]'"

log = logging.getLogger(__name__)


# -- the noise schedule and the σ -> t* mapping -------------------------------------------------------------------

def linear_alphas_cumprod(steps: int) -> torch.Tensor:
    """ᾱ_t (float64, t = 0..steps-1) of the linear schedule: β from 1e-4·s to 0.02·s, s = 1000/steps (Ho et al.;
    improved-diffusion's scaling so that any step count spans the same noise range)."""
    scale = 1000.0 / steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t (float64) of the cosine schedule (Nichol & Dhariwal 2021): f(u) = cos²((u + s)/(1 + s)·π/2),
    β_t = min(1 - f((t+1)/T)/f(t/T), 0.999)."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_for_sigma(sigma: float) -> float:
    """The ᾱ at which a DDPM on [-1, 1] images has the noise of N(0, σ²) on [0, 1] images: 1/(1+4σ²)."""
    return 1.0 / (1.0 + 4.0 * float(sigma) ** 2)


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """t* = the step whose ᾱ_t is closest to alpha_bar_for_sigma(sigma) (the first one on a tie)."""
    target = alpha_bar_for_sigma(sigma)
    return int(torch.argmin((alphas_cumprod.double() - target).abs()))


def clipping_mean_shift(x: float, sigma: float) -> float:
    """E[clip(x + δ, 0, 1)] - x for δ ~ N(0, σ²): how far clipping moves a pixel of value x on average."""
    from scipy.stats import norm

    a, b = (0.0 - x) / sigma, (1.0 - x) / sigma
    inside = x * (norm.cdf(b) - norm.cdf(a)) + sigma * (norm.pdf(a) - norm.pdf(b))
    return float(norm.sf(b) + inside - x)


def resize_weights(source: int, target: int) -> torch.Tensor:
    """[target, source] matrix of the 1-D bilinear resize `OneShotDenoiser` applies (antialiased when shrinking)."""
    eye = torch.eye(source, dtype=torch.float64)[None, None]
    return F.interpolate(eye, size=(target, source), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def resize_noise_factor(source: tuple[int, int], target: tuple[int, int]) -> float:
    """σ_eff/σ: the root mean per-pixel variance of i.i.d. unit noise after resizing `source` (H, W) to `target`."""
    energy = [float((resize_weights(s, t) ** 2).sum(dim=1).mean()) for s, t in zip(source, target)]
    return math.sqrt(energy[0] * energy[1])


# -- the denoiser ------------------------------------------------------------------------------------------------

PREDICTIONS = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class _Plan:
    """How an input of one size is denoised: at which timestep, with which ᾱ, resized to which size (or not)."""

    timestep: int
    alpha_bar: float
    sigma_effective: float
    size: tuple[int, int] | None  # None: run at the input's own size


class OneShotDenoiser(nn.Module):
    """x (NCHW in [0, 1], noisy at σ) -> x̂ (same shape, in [0, 1]) by one step of a diffusion model (see the
    module docstring for the formulas).

    `model(x_t, timesteps)` is the network: x_t in [-1, 1]-space at `image_size`, timesteps [N] as the model was
    trained to receive them (step × `timestep_scale`); it returns ε (or x₀ / v, per `prediction`), with 2×C
    channels for learned-variance models (the first C are used) — a tensor or a tuple/object holding one first.
    `alphas_cumprod` is the schedule (ᾱ_0..ᾱ_{T-1}, decreasing). `image_size` (H, W): inputs of another size are
    resized to it and back, at the timestep of the effective σ; None runs every input at its own size.
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., Any],
        alphas_cumprod: torch.Tensor,
        sigma: float,
        *,
        image_size: tuple[int, int] | None,
        prediction: str = "epsilon",
        timestep_scale: float = 1.0,
    ) -> None:
        super().__init__()
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"a diffusion denoiser needs a noise level sigma > 0, got {sigma!r}")
        if prediction not in PREDICTIONS:
            raise CheckpointError(f"diffusion model predicts {prediction!r}; supported: {', '.join(PREDICTIONS)}")
        self.model = model
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.sigma = sigma
        self.image_size = tuple(image_size) if image_size is not None else None
        self.prediction = prediction
        self.timestep_scale = float(timestep_scale)
        self.timestep = timestep_for_sigma(self.alphas_cumprod, sigma)
        self._plans: dict[tuple[int, int], _Plan] = {}
        self.resized: dict[str, dict[str, float]] = {}  # "HxW" -> {"sigma_effective", "timestep"}: sizes met so far

    @property
    def alpha_bar(self) -> float:
        """ᾱ_{t*} at the model's own size."""
        return float(self.alphas_cumprod[self.timestep])

    def plan_for(self, height: int, width: int) -> _Plan:
        """The timestep, ᾱ and resize used for inputs of this size (computed once per size)."""
        key = (int(height), int(width))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        if self.image_size is None or key == self.image_size:
            plan = _Plan(self.timestep, self.alpha_bar, self.sigma, None)
        else:
            sigma_eff = self.sigma * resize_noise_factor(key, self.image_size)
            step = timestep_for_sigma(self.alphas_cumprod, sigma_eff)
            plan = _Plan(step, float(self.alphas_cumprod[step]), sigma_eff, self.image_size)
            self.resized[f"{key[0]}x{key[1]}"] = {"sigma_effective": round(sigma_eff, 6), "timestep": step}
            log.info("diffusion denoiser: %dx%d images are resized to %dx%d and back; noise sigma %g becomes %.4g "
                     "there, denoised at t=%d", key[0], key[1], *self.image_size, self.sigma, sigma_eff, step)
        self._plans[key] = plan
        return plan

    def model_timesteps(self, step: int, count: int, device: torch.device) -> torch.Tensor:
        """[count] copies of `step` as the model receives it (× timestep_scale; integer when that is 1)."""
        if self.timestep_scale == 1.0:
            return torch.full((count,), step, dtype=torch.long, device=device)
        return torch.full((count,), step * self.timestep_scale, dtype=torch.float32, device=device)

    def to_model_input(self, noisy: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """x_t = √ᾱ·(2y - 1): the noisy [0, 1] image as a sample of the forward process at ᾱ."""
        return math.sqrt(alpha_bar) * (2.0 * noisy - 1.0)

    def predicted_x0(self, x_t: torch.Tensor, output: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """x̂₀ in [-1, 1]-space from the network's output (ε, x₀ or v) at ᾱ."""
        if self.prediction == "sample":
            return output
        root, root_rest = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        if self.prediction == "v_prediction":
            return root * x_t - root_rest * output
        return (x_t - root_rest * output) / root

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")
        n, channels, height, width = images.shape
        plan = self.plan_for(height, width)
        noisy = images
        if plan.size is not None:
            noisy = F.interpolate(noisy, size=plan.size, mode="bilinear", align_corners=False, antialias=True)
        x_t = self.to_model_input(noisy, plan.alpha_bar)
        output = self.model(x_t, self.model_timesteps(plan.timestep, n, images.device))
        if not isinstance(output, torch.Tensor):  # diffusers' UNet2DOutput or a tuple
            output = output[0] if isinstance(output, (tuple, list)) else output.sample
        if output.shape[1] == 2 * channels:  # learned variance: ε first, then the variance interpolation
            output = output[:, :channels]
        denoised = (self.predicted_x0(x_t, output.to(x_t.dtype), plan.alpha_bar) + 1.0) / 2.0
        if plan.size is not None:
            denoised = F.interpolate(denoised, size=(height, width), mode="bilinear", align_corners=False,
                                     antialias=True)
        return denoised.clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        size = "native" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        return (f"sigma={self.sigma:g}, t={self.timestep}, alpha_bar={self.alpha_bar:.6f}, "
                f"prediction={self.prediction}, size={size}")


# -- checkpoint layouts --------------------------------------------------------------------------------------------

# guided-diffusion's model_and_diffusion_defaults() (its script_util.py), the keys a FILE.json may hold.
GUIDED_DEFAULTS: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
    "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": False,
    "use_fp16": False, "use_new_attention_order": False, "learn_sigma": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False, "predict_xstart": False,
    "rescale_timesteps": False, "rescale_learned_sigmas": False,
}
# Flags of the releases' training and sampling scripts (and improved-diffusion's sigma_small): no effect on x̂₀.
IGNORED_GUIDED_KEYS = frozenset({
    "sigma_small", "lr", "batch_size", "microbatch", "ema_rate", "log_interval", "save_interval",
    "resume_checkpoint", "fp16_scale_growth", "weight_decay", "lr_anneal_steps", "schedule_sampler", "data_dir",
    "clip_denoised", "num_samples", "use_ddim", "model_path",
})
# channel_mult when the config leaves it "": guided-diffusion's table, plus improved-diffusion's 32x32 entry.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2),
}
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model", (".safetensors", ".bin"))


@dataclass(frozen=True)
class DiffusionFiles:
    """Where a `diffusion:PATH` checkpoint's parts are, checked without reading any weights.

    `layout` is "diffusers" or "guided"; `weights` the weight file(s) that load; `configs` the configuration files
    that shape the denoiser (their content is hashed into the log name's `cfg=`)."""

    path: Path
    layout: str
    weights: tuple[Path, ...]
    configs: tuple[Path, ...]
    unet_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)


def split_spec(spec: str | Path) -> str | None:
    """PATH of a `diffusion:PATH` spec, None for any other spec. ConfigError for `diffusion:` with no path."""
    if not isinstance(spec, str) or not spec.strip().startswith(SPEC_PREFIX):
        return None
    path = spec.strip()[len(SPEC_PREFIX):].strip()
    if not path:
        raise ConfigError(
            "denoiser 'diffusion:' needs a path: diffusion:DIR (a diffusers UNet2DModel + scheduler directory) or "
            "diffusion:FILE.pt (an OpenAI guided/improved-diffusion checkpoint with FILE.json beside it)"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _flag(value: Any, key: str, source: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n"):
        return value.strip().lower() in ("true", "yes", "1", "t", "y")
    raise CheckpointError(f"{source}: {key} must be true or false, got {value!r}")


def _integer(value: Any, key: str, source: Path) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number == int(number)):
        raise CheckpointError(f"{source}: {key} must be an integer, got {value!r}")
    return int(number)


def _numbers(value: Any, key: str, source: Path) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(v) for v in items if str(v).strip() != "")
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: {key} must be numbers like \"16,8\", got {value!r}") from None
    return numbers


def guided_settings(config_path: Path) -> dict[str, Any]:
    """FILE.json of a guided/improved-diffusion checkpoint, validated and normalised (every key present, typed)."""
    raw = _read_json(config_path)
    unknown = sorted(set(raw) - set(GUIDED_DEFAULTS) - IGNORED_GUIDED_KEYS)
    if unknown:
        raise CheckpointError(f"{config_path}: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(GUIDED_DEFAULTS)}")
    if "image_size" not in raw:
        raise CheckpointError(f"{config_path}: image_size is required (the resolution the model was trained at)")
    merged = {**GUIDED_DEFAULTS, **{k: v for k, v in raw.items() if k in GUIDED_DEFAULTS}}
    s: dict[str, Any] = {}
    for key in ("image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample",
                "num_head_channels", "diffusion_steps"):
        s[key] = _integer(merged[key], key, config_path)
    for key in ("class_cond", "use_scale_shift_norm", "resblock_updown", "use_fp16", "use_new_attention_order",
                "learn_sigma", "predict_xstart", "rescale_timesteps"):
        s[key] = _flag(merged[key], key, config_path)
    if s["image_size"] <= 0 or s["num_channels"] <= 0 or s["num_res_blocks"] <= 0 or s["diffusion_steps"] <= 1:
        raise CheckpointError(f"{config_path}: image_size, num_channels, num_res_blocks must be > 0 and "
                              f"diffusion_steps > 1")
    if s["class_cond"]:
        raise CheckpointError(f"{config_path}: class-conditional models (class_cond true) need a class label a "
                              f"denoiser does not have; use an unconditional checkpoint (e.g. 256x256_diffusion_uncond.pt)")
    schedule = str(merged["noise_schedule"]).strip().lower()
    if schedule not in ("linear", "cosine"):
        raise CheckpointError(f"{config_path}: noise_schedule must be linear or cosine, got {merged['noise_schedule']!r}")
    s["noise_schedule"] = schedule
    if s["diffusion_steps"] != 1000 and "rescale_timesteps" not in raw:
        raise CheckpointError(
            f"{config_path}: with diffusion_steps {s['diffusion_steps']} say whether the model was trained on "
            f"rescaled timesteps (t*1000/T): \"rescale_timesteps\": true for improved-diffusion's defaults (its "
            f"CIFAR-10 and ImageNet-64 releases), false for guided-diffusion's"
        )
    mult = _numbers(merged["channel_mult"], "channel_mult", config_path)
    if not mult:
        if s["image_size"] not in DEFAULT_CHANNEL_MULT:
            raise CheckpointError(f"{config_path}: no default channel_mult for image_size {s['image_size']}; "
                                  f"give channel_mult, e.g. \"1,2,2,2\"")
        mult = tuple(float(m) for m in DEFAULT_CHANNEL_MULT[s["image_size"]])
    s["channel_mult"] = mult
    resolutions = _numbers(merged["attention_resolutions"], "attention_resolutions", config_path)
    s["attention_ds"] = tuple(sorted({s["image_size"] // int(r) for r in resolutions if int(r) > 0}))
    return s


def _diffusers_weight_files(unet_dir: Path) -> tuple[Path, ...]:
    """The weight file(s) UNet2DModel.from_pretrained loads from `unet_dir` (safetensors first; no variants)."""
    stem, suffixes = DIFFUSERS_WEIGHTS
    for suffix in suffixes:
        single = unet_dir / f"{stem}{suffix}"
        if single.is_file():
            return (single,)
        index = unet_dir / f"{stem}{suffix}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            return tuple(unet_dir / shard for shard in shards)
    raise CheckpointError(f"{unet_dir}: no {stem}.safetensors or {stem}.bin (write it with UNet2DModel.save_pretrained)")


def inspect_checkpoint(path: str | Path) -> DiffusionFiles:
    """The layout and files of a diffusion checkpoint at `path` (no weights are read). CheckpointError when it is
    neither layout; ConfigError naming the extra when it is a diffusers directory and diffusers is not installed."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"diffusion:{path}: no such file or directory")
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():
            unet_dir, scheduler = path / "unet", path / "scheduler" / "scheduler_config.json"
        elif (path / "config.json").is_file():
            unet_dir, scheduler = path, path / "scheduler_config.json"
        else:
            raise CheckpointError(
                f"diffusion:{path}: not a diffusers directory: expected config.json + scheduler_config.json + "
                f"diffusion_pytorch_model.safetensors (UNet2DModel and scheduler save_pretrained), or unet/ + "
                f"scheduler/ (a pipeline)"
            )
        unet_config = _read_json(unet_dir / "config.json")
        if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise CheckpointError(f"{unet_dir / 'config.json'}: a {unet_config.get('_class_name')}, not a "
                                  f"UNet2DModel (pixel-space DDPM); latent or text-conditioned models are not supported")
        if not scheduler.is_file():
            raise CheckpointError(f"diffusion:{path}: no {scheduler.relative_to(path)} (save the DDPMScheduler the "
                                  f"model was trained with next to it: scheduler.save_pretrained(DIR))")
        weights = _diffusers_weight_files(unet_dir)
        if importlib.util.find_spec("diffusers") is None:
            raise ConfigError(f"diffusion:{path} is a diffusers model and diffusers is not installed: {INSTALL_HINT}")
        return DiffusionFiles(path, "diffusers", weights, (unet_dir / "config.json", scheduler), unet_dir)
    config = path.with_suffix(".json")
    if config == path or not config.is_file():
        raise CheckpointError(
            f"diffusion:{path}: a guided/improved-diffusion checkpoint needs its settings in {config.name} next to "
            f"it (a JSON object with guided-diffusion's flags, e.g. image_size, num_channels, noise_schedule), and a "
            f"diffusers model is a directory"
        )
    return DiffusionFiles(path, "guided", (path,), (config,), settings=guided_settings(config))


def check_spec(spec: str) -> Path:
    """The checkpoint path of a `diffusion:PATH` spec once its layout checks out (see inspect_checkpoint)."""
    path = split_spec(spec)
    if path is None:
        raise ConfigError(f"{spec!r} is not a diffusion:PATH denoiser")
    return inspect_checkpoint(path).path


# -- loading -------------------------------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    from robust_api.denoisers.registry import file_sha256

    return file_sha256(path)


def config_digest(files: DiffusionFiles) -> str:
    """8 hex digits of sha256 over the configuration files' content (keys starting with "_", such as the
    diffusers version, left out), so a changed schedule or architecture is a different denoiser in the logs."""
    canonical = []
    for path in files.configs:
        data = {k: v for k, v in _read_json(path).items() if not str(k).startswith("_")}
        canonical.append(json.dumps(data, sort_keys=True, separators=(",", ":")))
    return hashlib.sha256("\n".join(canonical).encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class Schedule:
    """What a checkpoint's configuration says about denoising with it (no weights needed): ᾱ_0..ᾱ_{T-1}
    (float64), what the network predicts, its training resolution, and the factor its timesteps are fed at."""

    alphas_cumprod: torch.Tensor
    prediction: str
    size: tuple[int, int]
    timestep_scale: float


def _diffusers_alphas_cumprod(scheduler_config: Path) -> tuple[torch.Tensor, str]:
    """(ᾱ float64, prediction type) from a diffusers scheduler config, computed by diffusers' DDPMScheduler from
    the same keys (every diffusers DDPM-family scheduler derives ᾱ from them alike)."""
    from diffusers import DDPMScheduler

    config = _read_json(scheduler_config)
    if "num_train_timesteps" not in config and "timesteps" in config:  # the first diffusers releases' name
        config["num_train_timesteps"] = config["timesteps"]
    try:
        scheduler = DDPMScheduler.from_config(config)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise CheckpointError(f"{scheduler_config}: diffusers cannot build its schedule: {exc}") from exc
    alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    return alphas_cumprod, str(config.get("prediction_type", "epsilon"))


def _size(value: Any, source: Path) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"{source}: sample_size must be the training resolution (an int or [H, W]), got {value!r}")


def schedule_of(files: DiffusionFiles) -> Schedule:
    """The Schedule of a checkpoint, from its configuration files. CheckpointError for a model that is not an
    unconditional RGB pixel-space one."""
    if files.layout == "guided":
        s = files.settings
        steps = s["diffusion_steps"]
        alphas_cumprod = (linear_alphas_cumprod if s["noise_schedule"] == "linear" else cosine_alphas_cumprod)(steps)
        return Schedule(alphas_cumprod, "sample" if s["predict_xstart"] else "epsilon",
                        (s["image_size"], s["image_size"]), 1000.0 / steps if s["rescale_timesteps"] else 1.0)
    config_path = files.configs[0]
    config = _read_json(config_path)
    if int(config.get("in_channels", 3)) != 3:
        raise CheckpointError(f"{config_path}: in_channels {config.get('in_channels')}: an RGB pixel-space model has 3")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise CheckpointError(f"{config_path}: a class-conditional UNet needs a class label a denoiser does not have")
    alphas_cumprod, prediction = _diffusers_alphas_cumprod(files.configs[1])
    return Schedule(alphas_cumprod, prediction, _size(config.get("sample_size"), config_path), 1.0)


class _DiffusersNetwork(nn.Module):
    """A diffusers UNet2DModel called as model(x_t, t) -> ε tensor."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, timesteps, return_dict=False)[0]


def _load_diffusers(files: DiffusionFiles) -> nn.Module:
    from diffusers import UNet2DModel

    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": files.weights[0].suffix == ".safetensors"}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # the default would warn that accelerate is missing, then do this
    try:
        unet = UNet2DModel.from_pretrained(str(files.unet_dir), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"diffusion:{files.path}: cannot load the UNet2DModel: {exc}") from exc
    return _DiffusersNetwork(unet)


def build_guided_unet(settings: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The GuidedUNet of normalised guided-diffusion settings (see guided_settings), on `device`."""
    from robust_api.denoisers.guided_unet import GuidedUNet

    with torch.device(device):
        return GuidedUNet(
            model_channels=settings["num_channels"], num_res_blocks=settings["num_res_blocks"],
            channel_mult=settings["channel_mult"], attention_ds=settings["attention_ds"],
            out_channels=6 if settings["learn_sigma"] else 3, num_heads=settings["num_heads"],
            num_head_channels=settings["num_head_channels"], num_heads_upsample=settings["num_heads_upsample"],
            use_scale_shift_norm=settings["use_scale_shift_norm"], resblock_updown=settings["resblock_updown"],
            use_new_attention_order=settings["use_new_attention_order"],
        )


def _read_state_dict(path: Path, trusted: bool) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        hint = "" if trusted else " (weights_only=True: pass trusted=True only for files you trust)"
        raise CheckpointError(f"diffusion:{path}: not a loadable state dict{hint}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"diffusion:{path}: expected a state dict (parameter name -> tensor), as the "
                              f"guided/improved-diffusion releases are")
    return state


def _load_guided(files: DiffusionFiles, trusted: bool) -> nn.Module:
    state = _read_state_dict(files.path, trusted)
    # Built on the meta device, then the loaded tensors are adopted: a 550M-parameter model is not held twice.
    model = build_guided_unet(files.settings, "meta")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise CheckpointError(
            f"diffusion:{files.path}: the weights do not match {files.configs[0].name} "
            f"({'; '.join(line.strip() for line in first[:3])[:400]})"
        ) from exc
    return model.float()  # use_fp16 releases may store half tensors; precision is chosen when serving


# A network loaded once serves every noise level (the session loads a denoiser per sigma): while any denoiser
# holds it, loading the same unchanged files onto the same device reuses it instead of holding a second copy.
_networks: "weakref.WeakValueDictionary[tuple, nn.Module]" = weakref.WeakValueDictionary()
_sha256_by_file: dict[tuple, str] = {}


def _files_key(files: DiffusionFiles) -> tuple:
    """Each weight and configuration file's resolved path, size and modification time."""
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (*files.weights, *files.configs))


def load_network(files: DiffusionFiles, device: str | torch.device | None = None, *, trusted: bool = False) -> nn.Module:
    """The checkpoint's network (eval mode, no gradients) on `device` (default CPU), shared by every denoiser
    loaded from the same files onto the same device while any of them is alive (load on the device you want rather
    than moving one: `.to()` would move it under the others)."""
    device = torch.device(device if device is not None else "cpu")
    key = (_files_key(files), str(device), trusted)
    network = _networks.get(key)
    if network is None:
        network = _load_diffusers(files) if files.layout == "diffusers" else _load_guided(files, trusted)
        for p in network.parameters():
            p.requires_grad_(False)
        network = network.to(device).eval()
        _networks[key] = network
    return network


def weights_sha256(files: DiffusionFiles) -> str:
    """sha256 of the weights file; for several (sharded) files, of the lines "<name> <sha256>" in name order.
    Remembered per (path, size, modification time), so a model served at several sigmas is hashed once."""
    digests = []
    for path in sorted(files.weights, key=lambda p: p.name):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _sha256_by_file:
            _sha256_by_file[key] = _file_sha256(path)
        digests.append((path.name, _sha256_by_file[key]))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{name} {sha}\n" for name, sha in digests).encode("utf-8")).hexdigest()


def _files_and_schedule(spec: str, sigma: float | None) -> tuple[DiffusionFiles, Schedule]:
    """The checkpoint files and noise schedule of `diffusion:PATH`; ConfigError for another spec or no sigma."""
    path = split_spec(spec)
    if path is None:
        raise ConfigError(f"{spec!r} is not a diffusion:PATH denoiser")
    if sigma is None:
        raise ConfigError(f"denoiser {spec!r} takes its timestep from the noise level: pass the sigma")
    files = inspect_checkpoint(path)
    return files, schedule_of(files)


def load_diffusion_denoiser(
    spec: str, sigma: float | None, device: str | torch.device | None = None, *, trusted: bool = False
) -> OneShotDenoiser:
    """The one-shot denoiser of `diffusion:PATH` at noise level `sigma` (eval mode, on `device` or CPU), carrying
    `denoiser_name`, `denoiser_sha256` and `denoiser_meta` for the query logs (see the module docstring).
    ConfigError without a sigma or without diffusers for a diffusers directory; CheckpointError for files that are
    not a checkpoint of either layout."""
    files, schedule = _files_and_schedule(spec, sigma)
    network = load_network(files, device, trusted=trusted)
    module = OneShotDenoiser(network, schedule.alphas_cumprod, float(sigma), image_size=schedule.size,
                             prediction=schedule.prediction, timestep_scale=schedule.timestep_scale).eval()
    _stamp_identity(module, files)
    return module


def identity_name(files: DiffusionFiles, timestep: int, sigma: float, size: tuple[int, int] | None) -> str:
    """The log name: `diffusion:<file or directory name>@t=<t*>,sigma=<σ>,resize=<HxW>,cfg=<config digest>`."""
    resize = f"{size[0]}x{size[1]}" if size else "native"
    return f"diffusion:{files.label}@t={timestep},sigma={float(sigma):g},resize={resize},cfg={config_digest(files)}"


def _stamp_identity(module: OneShotDenoiser, files: DiffusionFiles) -> None:
    module.denoiser_name = identity_name(files, module.timestep, module.sigma, module.image_size)
    module.denoiser_sha256 = weights_sha256(files)
    module.denoiser_meta = {
        "arch": "diffusers UNet2DModel" if files.layout == "diffusers" else "guided-diffusion UNet",
        "objective": "diffusion, one-shot denoising (Carlini et al. 2023)",
        "sigma": module.sigma,
        "timestep": module.timestep,
        "alpha_bar": module.alpha_bar,
        "diffusion_steps": int(module.alphas_cumprod.numel()),
        "prediction": module.prediction,
        "image_size": list(module.image_size) if module.image_size else None,
        "path": str(files.path),
        "resized": module.resized,  # filled in as sizes are met
    }


def optimize_diffusion(module: OneShotDenoiser, precision: str = "auto") -> nn.Module:
    """`module` served in the precision speed.choose_precision picks (reduced only where the PSNR check holds),
    in place: no copy of a model that may hold 550M parameters, no BatchNorm to fold, no channels_last wrapper
    (the UNet's attention reshapes would undo it). `.denoiser_precision` says which precision."""
    from robust_api.denoisers.speed import Autocast, choose_precision

    module.eval()
    sizes_before = set(module.resized)
    chosen = choose_precision(module, precision, module.sigma)
    for size in set(module.resized) - sizes_before:  # the PSNR check image is not one of the caller's sizes
        del module.resized[size]
    served: nn.Module = module if chosen == "float32" else Autocast(module, getattr(torch, chosen))
    for attr in ("denoiser_name", "denoiser_sha256", "denoiser_meta"):
        if hasattr(module, attr):
            setattr(served, attr, getattr(module, attr))
    served.denoiser_precision = chosen
    return served.eval()


def diffusion_identity(spec: str, sigma: float | None) -> dict[str, str]:
    """{"name", "sha256"} that `load_diffusion_denoiser(spec, sigma)` would carry, without loading the network."""
    files, schedule = _files_and_schedule(spec, sigma)
    name = identity_name(files, timestep_for_sigma(schedule.alphas_cumprod, float(sigma)), float(sigma), schedule.size)
    return {"name": name, "sha256": weights_sha256(files)}
