"""Denoiser throughput: images/s at 32x32 and 224x224, plain module vs optimize_for_inference, side by side.

The last columns add reduced precision (bfloat16 on CPU, float16 on CUDA) to the float32 optimisations, with the
PSNR each precision gets on held-out photos at the denoiser's sigma when the offline photos are installed.

    python benchmarks/denoiser.py [--denoiser NAME ...] [--arch dncnn ...] [--threads 2] [--seconds 3]

Default: the shipped ffdnet64-s0.25 beside KAIR's 12x96 ffdnet-color (when the ffdnet extra is installed) and the
previous shipped layout (DnCNN 10x32, random weights: speed does not depend on the weights' values).

Each cell runs batches for about --seconds after one warm-up batch, under torch.inference_mode, on CUDA when present.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from robust_api.denoisers import build_denoiser, load_denoiser, optimize_for_inference
from robust_api.denoisers.evaluation import psnr
from robust_api.denoisers.speed import best_device


def images_per_second(module: torch.nn.Module, size: int, batch: int, seconds: float, device: torch.device) -> float:
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.inference_mode():
        module(x)  # warm-up: allocator, kernels, channels_last weight layout
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            module(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--denoiser", action="append", default=[], help="shipped name or checkpoint path (repeatable)")
    parser.add_argument("--arch", action="append", default=[], help="also time a random-weight architecture (repeatable)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device()
    names = args.denoiser or ["ffdnet64-s0.25", "ffdnet-color"]
    archs = args.arch or ([] if args.denoiser else ["dncnn"])
    models = []
    for name in names:
        try:
            models.append((name, load_denoiser(name, sigma=0.25)))
        except Exception as exc:  # noqa: BLE001 - e.g. ffdnet-color without the ffdnet extra
            print(f"(skipping {name}: {exc})")
    models += [(f"{a} (random weights)", build_denoiser(a).eval()) for a in archs]
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    lowp = "float16" if device.type == "cuda" else "bfloat16"
    print(f"auto precision here: {optimize_for_inference(models[0][1].to(device)).denoiser_precision}")
    print(f"| denoiser | size | batch | plain img/s | fold BN | channels_last | fold BN + channels_last | + {lowp} "
          f"| speed-up fp32 | speed-up {lowp} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, module in models:
        module = module.to(device).eval()
        variants = [
            module,
            optimize_for_inference(module, fold_bn=True, channels_last=False, precision="float32"),
            optimize_for_inference(module, fold_bn=False, channels_last=True, precision="float32"),
            optimize_for_inference(module, precision="float32"),
            optimize_for_inference(module, precision=lowp),
        ]
        for size, batch in ((32, 64), (224, 8)):
            rates = [images_per_second(v.to(device), size, batch, args.seconds, device) for v in variants]
            cells = " | ".join(f"{r:.1f}" for r in rates)
            print(f"| {name} | {size} | {batch} | {cells} | {rates[-2] / rates[0]:.2f}x | {rates[-1] / rates[0]:.2f}x |",
                  flush=True)
        print_psnr(name, module, variants[-2:], device)


def print_psnr(name: str, module: torch.nn.Module, variants: list, device: torch.device) -> None:
    """Mean PSNR on 4 crops of each held-out photo at the denoiser's sigma, float32 vs reduced precision."""
    try:
        from robust_api.denoisers.photos import eval_images
    except ImportError:
        return
    try:
        images = torch.from_numpy(np.stack([img for _, img in eval_images(4)])).permute(0, 3, 1, 2).to(device)
    except Exception as exc:  # the photo packages (scikit-image, scikit-learn, matplotlib) are the demo extra
        print(f"(held-out PSNR skipped: {exc})")
        return
    sigma = float((getattr(module, "denoiser_meta", None) or {}).get("sigma") or 0.25)
    g = torch.Generator().manual_seed(0)
    noisy = (images + sigma * torch.randn(images.shape, generator=g).to(device)).clamp(0, 1)
    cells = []
    with torch.inference_mode():
        for v in variants:
            out = torch.cat([v(noisy[i:i + 8]) for i in range(0, len(noisy), 8)]).clamp(0, 1)
            db = psnr(out.float().cpu().numpy(), images.cpu().numpy()).mean()
            cells.append(f"{v.denoiser_precision} {db:.3f} dB")
    print(f"{name}: held-out PSNR at sigma {sigma:g} ({len(images)} crops): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
