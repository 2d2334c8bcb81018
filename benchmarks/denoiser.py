"""Denoiser throughput: images/s at 32x32 and 224x224, plain module vs optimize_for_inference, side by side.

    python benchmarks/denoiser.py [--denoiser dncnn-s0.25] [--arch cifar_dncnn] [--threads 2] [--seconds 3]

Each cell runs batches for about --seconds after one warm-up batch, under torch.inference_mode, on CUDA when present.
"""
from __future__ import annotations

import argparse
import time

import torch

from robust_api.denoisers import build_denoiser, load_denoiser, optimize_for_inference
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
    parser.add_argument("--denoiser", default="dncnn-s0.25", help="shipped name or checkpoint path")
    parser.add_argument("--arch", action="append", default=[], help="also time a random-weight architecture (repeatable)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device()
    models = [(args.denoiser, load_denoiser(args.denoiser))] + [(a, build_denoiser(a).eval()) for a in args.arch]
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print("| denoiser | size | batch | plain img/s | fold BN | channels_last | fold BN + channels_last | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, module in models:
        module = module.to(device).eval()
        variants = [
            module,
            optimize_for_inference(module, fold_bn=True, channels_last=False),
            optimize_for_inference(module, fold_bn=False, channels_last=True),
            optimize_for_inference(module),
        ]
        for size, batch in ((32, 64), (224, 8)):
            rates = [images_per_second(v.to(device), size, batch, args.seconds, device) for v in variants]
            cells = " | ".join(f"{r:.1f}" for r in rates)
            print(f"| {name} | {size} | {batch} | {cells} | {rates[-1] / rates[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
