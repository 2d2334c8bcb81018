"""What one-shot diffusion denoising costs per noisy copy: seconds per sample of `diffusion:PATH` denoisers whose
UNets have the architectures of the public checkpoints (random weights: the time does not depend on their values).

    python benchmarks/diffusion_cost.py [--threads 1] [--skip-256] [--passes-256 2]

Rows (each through OneShotDenoiser, so resizing and the x̂₀ arithmetic are counted):
  cifar10-ddpm     diffusers UNet2DModel shaped like google/ddpm-cifar10-32 (35.7M parameters), 32x32, batch 16
  cifar10-iddpm    guided UNet shaped like improved-diffusion's cifar10_uncond_50M_500K.pt, 32x32, batch 16
  imagenet-256     guided UNet shaped like guided-diffusion's 256x256_diffusion_uncond.pt (552M parameters),
                   fed 224x224 images (resized to 256 and back), batch 1, only --passes-256 forward passes
  tiny-test        the 32x32 UNet2DModel of the tests (45k parameters), batch 16

On CPU, float32, `--threads` threads (default 1). Prints seconds per sample and samples per second. A GPU figure
is not measured here (no GPU on this machine).
"""
from __future__ import annotations

import argparse
import time

import torch

from robust_api.denoisers.diffusion import (
    OneShotDenoiser, _DiffusersNetwork, build_guided_unet, cosine_alphas_cumprod, guided_settings,
    linear_alphas_cumprod,
)


def seconds_per_sample(denoiser: torch.nn.Module, size: int, batch: int, passes: int, warmup: bool) -> float:
    x = torch.rand(batch, 3, size, size)
    with torch.inference_mode():
        if warmup:
            denoiser(x)
        start = time.perf_counter()
        for _ in range(passes):
            denoiser(x)
        return (time.perf_counter() - start) / (passes * batch)


def random_fill(module: torch.nn.Module) -> torch.nn.Module:
    """Parameters built on the meta device, materialised on the CPU with small random values (no denormals)."""
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return module.eval()


def guided(config: dict) -> torch.nn.Module:
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        settings = guided_settings(path)
    return random_fill(build_guided_unet(settings, "meta"))


def params_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-256", action="store_true", help="leave out the 552M-parameter ImageNet 256 UNet")
    parser.add_argument("--passes-256", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="timed batches for the 32x32 rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ddpm = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    rows.append(("cifar10-ddpm", params_m(ddpm), "32x32", 16,
                 OneShotDenoiser(_DiffusersNetwork(ddpm), linear_alphas_cumprod(1000), 0.25, image_size=(32, 32)),
                 32, args.passes))
    iddpm = guided({"image_size": 32, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True,
                    "diffusion_steps": 4000, "noise_schedule": "cosine", "rescale_timesteps": True})
    rows.append(("cifar10-iddpm", params_m(iddpm), "32x32", 16,
                 OneShotDenoiser(iddpm, cosine_alphas_cumprod(4000), 0.25, image_size=(32, 32), timestep_scale=0.25),
                 32, args.passes))
    tiny = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8).eval()
    rows.append(("tiny-test", params_m(tiny), "32x32", 16,
                 OneShotDenoiser(_DiffusersNetwork(tiny), linear_alphas_cumprod(1000), 0.25, image_size=(32, 32)),
                 32, args.passes))
    if not args.skip_256:
        adm = guided({"image_size": 256, "num_channels": 256, "num_res_blocks": 2, "learn_sigma": True,
                      "attention_resolutions": "32,16,8", "num_head_channels": 64, "resblock_updown": True,
                      "use_scale_shift_norm": True, "noise_schedule": "linear", "diffusion_steps": 1000})
        rows.append(("imagenet-256", params_m(adm), "224->256", 1,
                     OneShotDenoiser(adm, linear_alphas_cumprod(1000), 0.25, image_size=(256, 256)), 224,
                     args.passes_256))

    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, CPU")
    print(f"{'model':<14} {'params':>8} {'size':>9} {'batch':>5} {'s/sample':>9} {'samples/s':>9}")
    for name, params, size_text, batch, denoiser, size, passes in rows:
        big = name == "imagenet-256"
        cost = seconds_per_sample(denoiser, size, batch, passes, warmup=not big)
        print(f"{name:<14} {params:>7.1f}M {size_text:>9} {batch:>5} {cost:>9.4f} {1 / cost:>9.2f}"
              + (f"  ({passes} pass(es), no warm-up)" if big else ""), flush=True)


if __name__ == "__main__":
    main()
