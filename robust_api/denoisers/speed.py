"""Fast denoiser inference: BatchNorm folded into the preceding conv, channels_last memory, reduced precision
where the hardware has it and it keeps PSNR, batched numpy I/O.

`optimize_for_inference(module)` returns a new module computing the same function (to float rounding, ~1e-6,
in float32; to well under one 8-bit grey level in bfloat16/float16) with fewer ops; the original is left untouched.
`denoise_numpy` runs any denoiser over NHWC float arrays in batches.

Reduced precision and certificates: the smoothed classifier is then built on the reduced-precision denoiser. A log
resumed on a machine of the other precision mixes samples of two base classifiers chosen independently of the
noise; the pooled count then certifies the mixture (a randomised base classifier, which Cohen et al.'s theorem
covers), so every certificate stays valid.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from robust_api.errors import ConfigError


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to bn(conv(x)) in eval mode: weight scaled per output channel, BN shift folded into the bias."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorm(module: nn.Module) -> int:
    """In place: every Conv2d directly followed by BatchNorm2d inside an nn.Sequential becomes one conv. Returns count."""
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


class ChannelsLast(nn.Module):
    """Runs the wrapped module on channels_last tensors (faster convs on CPU/CUDA) and returns a contiguous NCHW result."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last)).contiguous()


PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PSNR_TOLERANCE_DB = 0.05  # reduced precision is used only when it moves PSNR on the check image by less than this


class Autocast(nn.Module):
    """Runs the wrapped module under torch.autocast(dtype) and returns float32 (the caller's dtype)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            y = self.module(x)
        return y.to(x.dtype)


def native_bfloat16_cpu() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so oneDNN's bf16 convs beat float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in probes if hasattr(torch.cpu, name))
    except Exception:  # a probe that fails on an unusual build means "not known to be native"
        return False


def _check_images(device: torch.device, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed piecewise-smooth colour image (gradients, a disc, stripes) and a noisy copy at `sigma` (seeded)."""
    g = torch.Generator().manual_seed(1234)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    disc = (((xx - 0.6) ** 2 + (yy - 0.4) ** 2) < 0.06).float()
    stripes = (torch.sin(xx * 40) > 0).float() * (yy > 0.7).float()
    clean = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy * (1 - disc), 0.5 * disc + 0.4 * stripes]).clamp(0, 1)[None]
    noisy = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    return clean.to(device), noisy.to(device)


def keeps_psnr(reference: nn.Module, candidate: nn.Module, sigma: float, device: torch.device) -> bool:
    """Whether `candidate`'s PSNR on the check image is within PSNR_TOLERANCE_DB of `reference`'s (and finite)."""
    clean, noisy = _check_images(device, sigma)
    with torch.inference_mode():
        ref = reference(noisy).clamp(0, 1)
        out = candidate(noisy).clamp(0, 1)
    if not bool(torch.isfinite(out).all()):
        return False
    from robust_api.denoisers.evaluation import psnr

    target = clean.float().cpu().numpy()
    ref_db, out_db = (float(psnr(t.float().cpu().numpy(), target)[0]) for t in (ref, out))
    return abs(out_db - ref_db) < PSNR_TOLERANCE_DB


def has_float_tensors(module: nn.Module) -> bool:
    """Whether `module` holds any floating-point parameter or buffer (a classical denoiser such as
    classical.TVDenoiser holds none: it computes in numpy, so autocast, BN folding and channels_last do nothing)."""
    return any(t.is_floating_point() for t in (*module.parameters(), *module.buffers()))


def choose_precision(module: nn.Module, precision: str = "auto", sigma: float | None = None) -> str:
    """The precision to serve `module` in: float32, or bfloat16 on CPUs with native bf16 / float16 on CUDA when
    that keeps PSNR (checked once on a fixed image). An explicit precision is returned as given, except that a
    module without floating-point tensors (has_float_tensors) is always float32: it has nothing to reduce.
    Raises ConfigError for names not in PRECISIONS.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not has_float_tensors(module):
        return "float32"
    if precision != "auto":
        return precision
    device = next(module.parameters(), torch.empty(0)).device
    if device.type == "cuda":
        candidate = "float16"
    elif device.type == "cpu" and native_bfloat16_cpu():
        candidate = "bfloat16"
    else:
        return "float32"
    lowp = Autocast(module, getattr(torch, candidate))
    try:
        keeps = keeps_psnr(module, lowp, 0.25 if sigma is None else sigma, device)
    except (RuntimeError, TypeError, NotImplementedError):  # an op without a reduced-precision kernel: stay exact
        keeps = False
    return candidate if keeps else "float32"


def optimize_for_inference(
    module: nn.Module, *, fold_bn: bool = True, channels_last: bool = True, precision: str = "auto"
) -> nn.Module:
    """An eval-mode copy of `module` with BatchNorm folded, channels_last memory and the precision from
    choose_precision (float32: same outputs within 1e-4; bfloat16/float16 only where PSNR moves < 0.05 dB).

    Identity attributes set by load_denoiser (denoiser_name, denoiser_sha256, denoiser_meta) are carried over; the
    precision used is in `.denoiser_precision`. A module without floating-point tensors (a classical denoiser)
    comes back as an eval-mode copy in float32, with no channels_last wrapper.
    """
    fast = copy.deepcopy(module).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(fast)
    out: nn.Module = ChannelsLast(fast) if channels_last and has_float_tensors(fast) else fast
    sigma = (getattr(module, "denoiser_meta", None) or {}).get("sigma")
    chosen = choose_precision(out, precision, float(sigma) if sigma else None)
    if chosen != "float32":
        out = Autocast(out, getattr(torch, chosen))
    for attr in ("denoiser_name", "denoiser_sha256", "denoiser_meta"):
        if hasattr(module, attr):
            setattr(out, attr, getattr(module, attr))
    out.denoiser_precision = chosen
    out.eval()
    return out


def best_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def denoise_numpy(
    module: nn.Module, images: np.ndarray, *, batch_size: int = 16, device: str | torch.device | None = None
) -> np.ndarray:
    """Denoise NHWC (or one HWC) float images in [0,1] in batches; returns float32 of the same shape in [0,1]."""
    arr = np.asarray(images, dtype=np.float32)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected NHWC images with 3 channels, got shape {arr.shape}")
    dev = torch.device(device) if device is not None else next(module.parameters(), torch.empty(0)).device
    module.eval()
    out = np.empty_like(arr)
    with torch.inference_mode():
        for start in range(0, len(arr), batch_size):
            x = torch.from_numpy(arr[start:start + batch_size]).permute(0, 3, 1, 2).to(dev)
            y = module(x).clamp(0.0, 1.0)
            out[start:start + batch_size] = y.permute(0, 2, 3, 1).float().cpu().numpy()
    return out[0] if single else out
