"""Scale-out benchmark: full-access certification (EfficientNet-Lite0 behind `--api local`, the shipped
ffdnet64-s0.25 denoiser, sigma 0.25, N0 = 100, N = --n per image) of held-out ImageNet sample photos (centre
crop, 224x224), side by side in one run:

  local       this process, torch on every core, one range of samples at a time
  ray xK      the Ray backend with K workers (1 CPU each): an image's ranges are counted on every worker
              -- samples/s, the ratio to local and to one Ray worker, and whether the certificates equal
              the local backend's (all columns but the provider time)
  sequential  (--sequential) the same photos in sequential mode (budget N0 + N, target radius --target) on
              Ray with the most workers: samples used and certified accuracy at the target vs fixed mode

Each configuration certifies with a fresh log (nothing cached). Ray starts once and its workers are started
by a warm-up run before the clock, as they are for any later run in a process. Data: the held-out photos of
../shared/data/imagenet-samples (class index % 10 == 9), read by this script only.

Run: python benchmarks/scale_out.py [--n 1000] [--images 2] [--workers 1,2] [--sequential] [--modes-only]
Seconds, ratios and counts only, no assertion (noisy machines).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from robust_api.images import load_image
from robust_api.modes import CertifyParams
from robust_api.run import RunConfig, run_certification

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"
DENOISER = "ffdnet64-s0.25"


def photos(count: int) -> list:
    """The first `count` held-out photos, centre-cropped to 224x224, with their true class names."""
    from robust_api.classifiers import imagenet_names

    files = sorted(DATA.glob("*.JPEG"))
    if len(files) != 1000:
        raise SystemExit(f"expected the 1000 ImageNet sample photos in {DATA}")
    names = imagenet_names()
    out = []
    for index in range(9, 1000, 10)[:count]:
        with Image.open(files[index]) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BICUBIC)
            out.append((load_image(np.asarray(im, dtype=np.float32) / 255.0, name=files[index].stem), names[index]))
    return out


def certify(images, params: CertifyParams, backend: str, workers: int | None, log: Path):
    config = RunConfig(api="local", params=params, log=log, denoiser=DENOISER, full_access=True, backend=backend,
                       workers=workers)
    started = time.perf_counter()
    result = run_certification(images, config)
    return result, time.perf_counter() - started


def rows(certs) -> list[tuple]:
    return [(c.label, c.radius_l2, tuple(sorted(c.counts_estimation.items()))) for c in certs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--modes-only", action="store_true",
                        help="only fixed vs sequential, both on Ray with the most workers (no backend table)")
    args = parser.parse_args()
    worker_counts = [int(k) for k in args.workers.split(",")]
    data = photos(args.images)
    images = [image for image, _ in data]
    params = CertifyParams(sigma=0.25, n0=100, n=args.n, alpha=0.001, seed=0)
    samples = len(images) * (1 + 100 + args.n)
    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))

    from robust_api.backends.ray_backend import connect

    connect()  # Ray's start is not part of any configuration's time
    warm = CertifyParams(sigma=0.25, n0=2, n=4, alpha=0.001, seed=99)
    certify(images[:1], warm, "ray", max(worker_counts), tmp / "warm.jsonl")

    print(f"full access: {len(images)} photo(s) x (1 + 100 + {args.n}) samples = {samples}, {DENOISER} + Lite0")
    if args.modes_only:
        local, seconds = certify(images, params, "ray", max(worker_counts), tmp / "fixed.jsonl")
        print(f"fixed on ray x{max(worker_counts)}: {seconds:.1f} s")
        args.sequential = True
        worker_counts = []
    else:
        local, seconds = certify(images, params, "local", None, tmp / "local.jsonl")
    table = [("local", seconds, True)]
    for k in worker_counts:
        result, seconds = certify(images, params, "ray", k, tmp / f"ray{k}.jsonl")
        table.append((f"ray x{k}", seconds, rows(result.certificates) == rows(local.certificates)))
    one = next((s for name, s, _ in table if name == "ray x1"), None)
    if not args.modes_only:
        print(f"{'backend':<10} {'seconds':>8} {'samples/s':>10} {'vs local':>9} {'vs ray x1':>10}  same certificates")
    for name, seconds, same in table if not args.modes_only else []:
        vs_one = f"{one / seconds:.2f}x" if one else "-"
        print(f"{name:<10} {seconds:8.1f} {samples / seconds:10.1f} {table[0][1] / seconds:8.2f}x {vs_one:>10}  {same}")
    for cert, (_, truth) in zip(local.certificates, data):
        print(f"  {cert.name}: label {cert.label} (true {truth}), radius {cert.radius_l2:.3f}")

    if args.sequential:
        k = max(worker_counts or [int(w) for w in args.workers.split(",")])
        seq = CertifyParams(sigma=0.25, mode="sequential", max_queries=100 + args.n, target_radius=args.target,
                            alpha=0.001, seed=0)
        result, seconds = certify(images, seq, "ray", k, tmp / "sequential.jsonl")
        used = sum(sum(c.counts_estimation.values()) + 1 for c in result.certificates)

        def accuracy(certs) -> float:
            return sum(c.label == truth and c.radius_l2 >= args.target for c, (_, truth) in zip(certs, data)) / len(data)

        print(f"\nsequential (budget {100 + args.n}, target radius {args.target}) on ray x{k}: {used} samples "
              f"vs {samples} fixed ({1 - used / samples:.0%} saved), {seconds:.1f} s; certified accuracy at "
              f"r={args.target}: sequential {accuracy(result.certificates):.2f}, fixed {accuracy(local.certificates):.2f}")


if __name__ == "__main__":
    main()
