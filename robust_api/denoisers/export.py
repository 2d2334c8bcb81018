"""Export trained runs into the package:
`python -m robust_api.denoisers.export RUNDIR --photos ../shared/data/imagenet-samples [--eval EVAL.json ...]`.

For each shipped name it reads RUNDIR/<name>.pt, drops training state (optimizer, loss history, RNG), measures the
held-out PSNR (noisy vs denoised, one seeded noise draw per held-out photo: the centred 224 crop of each photo of
`--photos`'s held-out split, or the built-in held-out crops without it; for the CIFAR-10 names every 20th image of
`--cifar`'s test/ folder, 500 images the denoisers never saw), attaches the certified accuracies that
`denoiser eval --json` files report for it, writes weights/<name>.pt and regenerates shipped.py with each file's
sha256 and metadata. Names no longer in SHIPPED_NAMES are dropped from shipped.py. Maintainer tool; prints, as
scripts do; the data folder is read only here, never by the package at run time.
"""
from __future__ import annotations

import argparse
import pprint
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_api.denoisers.checkpoints import checkpoint_dict, load_checkpoint, read_checkpoint_dict, save_checkpoint
from robust_api.denoisers.evaluation import psnr
from robust_api.denoisers.photos import PHOTOS, eval_images
from robust_api.denoisers.registry import WEIGHTS_DIR, file_sha256, get_weights
from robust_api.denoisers.speed import denoise_numpy

# FFDNet 12x64 (pruned from KAIR's 12x96 colour FFDNet, fine-tuned on the 900 training photos): the fast defaults
IMAGENET_NAMES = ("ffdnet64-s0.12", "ffdnet64-s0.25", "ffdnet64-s0.50", "ffdnet64-s0.25-stab")
# DnCNN-10/32 on the 50,000 CIFAR-10 training images (scripts/cifar10_table.sh): MSE, then Stab+MSE through a
# second classifier (query access) and through the target resnet20 itself (full access)
CIFAR_NAMES = ("cifar10-dncnn-s0.25", "cifar10-dncnn-s0.25-stab-query", "cifar10-dncnn-s0.25-stab-full")
SHIPPED_NAMES = IMAGENET_NAMES + CIFAR_NAMES
# the classifiers certification runs behind: Stab through one of them is the paper's full access
FULL_ACCESS_TARGETS = ("efficientnet-lite0", "cifar10-resnet20.pt")
CIFAR_HELDOUT_SKIP = 20
_SHIPPED_PY = Path(__file__).resolve().parent / "shipped.py"


def heldout_images(photos: Path | None = None, crops: int = 6) -> tuple[np.ndarray, str]:
    """The held-out images PSNR is measured on (NHWC float32) and how to name them in the metadata."""
    if photos is None:
        return np.stack([img for _, img in eval_images(crops)]), ", ".join(p.name for p in PHOTOS if p.heldout)
    from robust_api.denoisers import datasets

    images, description = datasets.evaluation_set(photos, "heldout")
    return np.stack([img for _, img, _ in images]), description


def cifar_heldout_images(root: Path) -> tuple[np.ndarray, str]:
    """Every CIFAR_HELDOUT_SKIP-th image of `root`/test (ImageFolder order) as NHWC float32, and its description."""
    from robust_api.denoisers.datasets import labelled_folder_set

    images, description = labelled_folder_set(Path(root) / "test", skip=CIFAR_HELDOUT_SKIP)
    return np.stack([pixels for _, pixels, _ in images]), f"{description} (test split, never trained on)"


def access_of(surrogates: list[str]) -> str | None:
    """"full" when Stab ran through the classifier that certification queries, "query" through others, None for
    MSE."""
    if not surrogates:
        return None
    return "full" if any(Path(s).name in FULL_ACCESS_TARGETS for s in surrogates) else "query"


def heldout_psnr(
    module: torch.nn.Module, sigma: float, seed: int = 0, crops: int = 6, images: np.ndarray | None = None
) -> tuple[float, float]:
    """(noisy PSNR, denoised PSNR) in dB, averaged over held-out images with one seeded noise draw each."""
    images = np.stack([img for _, img in eval_images(crops)]) if images is None else images
    rng = np.random.default_rng(seed)
    noisy = np.clip(images + sigma * rng.standard_normal(images.shape, dtype=np.float32), 0, 1)
    denoised = denoise_numpy(module, noisy, batch_size=8)
    return float(psnr(noisy, images).mean()), float(psnr(denoised, images).mean())


def _recipe_chain(raw: dict[str, Any]) -> list[str]:
    """Every command that led to this checkpoint, oldest first, following `--init` through files and shipped names."""
    meta = raw.get("meta") or {}
    chain: list[str] = []
    init = meta.get("init") or {}
    source = init.get("source") if isinstance(init, dict) else None
    shipped = get_weights(source) if source else None
    if shipped is not None:
        chain += list(shipped.meta.get("recipe", []))
    elif source and Path(source).exists():
        chain += _recipe_chain(read_checkpoint_dict(source))
    if meta.get("recipe"):
        chain.append(meta["recipe"])
    return chain


def _portable(recipe: str, name: str | None = None) -> str:
    """The recorded command with the maintainer's run directories replaced by `runs/` (as train_shipped.sh uses),
    an `--init` of a shipped name by that name's run file, and, given `name`, the output file by `runs/<name>.pt`."""
    recipe = re.sub(r"--init (\S+)", lambda m: f"--init runs/{m[1]}.pt" if get_weights(m[1]) else m[0], recipe)
    recipe = re.sub(r"(--out|--init) (\S*/)?([^/\s]+\.pt)", r"\1 runs/\3", recipe)
    return recipe if name is None else re.sub(r"--out \S+", f"--out runs/{name}.pt", recipe)


def _distinct_stage_files(recipe: list[str]) -> list[str]:
    """A recipe chain in which no two commands write the same file.

    A run that continues shipped weights under the same name (`--init NAME`, exported as NAME again) would read,
    after `_portable`, `--init runs/NAME.pt --out runs/NAME.pt`, the file the previous stage wrote; with
    `--resume` that resumes the old stage instead of starting the new one. Each stage whose output a later stage
    overwrites writes `runs/NAME.stageK.pt` instead (K its position in the chain, from 1), and the commands that
    read it until it is overwritten read that file.
    """
    def out_of(cmd: str) -> str | None:
        m = re.search(r"--out (\S+)", cmd)
        return m[1] if m else None

    outs = [out_of(cmd) for cmd in recipe]
    result = list(recipe)
    for k, path in enumerate(outs):
        later = [j for j in range(k + 1, len(outs)) if outs[j] == path]
        if path is None or not later:
            continue
        staged = re.sub(r"\.pt$", f".stage{k + 1}.pt", path)
        result[k] = result[k].replace(f"--out {path}", f"--out {staged}")
        for j in range(k + 1, later[0] + 1):
            result[j] = re.sub(rf"--init {re.escape(path)}(?=\s|$)", f"--init {staged}", result[j])
    return result


def eval_metrics(eval_files: list[Path]) -> dict[str, dict[str, Any]]:
    """{run or shipped name: {sigma, n0, n, alpha, photos, certified..., psnr}} from `denoiser eval --json` files.

    A method is matched to a name by its file stem (`runs/ffdnet64-s0.25.pt [float32]` -> `ffdnet64-s0.25`).
    """
    import json

    out: dict[str, dict[str, Any]] = {}
    for path in eval_files:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        settings = payload.get("settings", {})
        for r in payload.get("results", []):
            key = Path(str(r["name"]).split(" [")[0]).stem
            out[key] = {
                "sigma": settings.get("sigma"), "n0": settings.get("n0"), "n": settings.get("n"),
                "alpha": settings.get("alpha"), "photos": settings.get("photos"),
                "psnr_db": round(float(r["psnr_db"]), 2), "agreement": round(float(r["agreement"]), 3),
                "certified": {str(k): round(float(v), 3) for k, v in (r.get("certified") or {}).items()},
                "certified_true": {str(k): round(float(v), 3) for k, v in (r.get("certified_true") or {}).items()},
            }
    return out


def export(rundir: Path, seed: int = 0, photos: Path | None = None, eval_files: list[Path] | None = None,
           cifar: Path | None = None) -> list[dict[str, Any]]:
    WEIGHTS_DIR.mkdir(exist_ok=True)
    entries = []
    heldout_sets = {"imagenet": lambda: heldout_images(photos)}
    if cifar is not None:
        heldout_sets["cifar"] = lambda: cifar_heldout_images(cifar)
    loaded_sets: dict[str, tuple[np.ndarray, str]] = {}
    measured = eval_metrics(list(eval_files or []))
    for name in SHIPPED_NAMES:
        src = rundir / f"{name}.pt"
        family = "cifar" if name in CIFAR_NAMES else "imagenet"
        if not src.exists() or family not in heldout_sets:
            current = get_weights(name)
            if current is not None:  # keep the shipped entry (and its file) as it is
                entries.append({"name": name, "filename": current.filename, "sha256": current.sha256, "meta": current.meta})
            why = f"{src} missing" if not src.exists() else "no --cifar data to measure it on"
            print(f"keep {name}: {why}" if current else f"skip {name}: {why}")
            continue
        if family not in loaded_sets:
            loaded_sets[family] = heldout_sets[family]()
        images, heldout = loaded_sets[family]
        raw = read_checkpoint_dict(src)
        loaded = load_checkpoint(src)
        m = loaded.meta
        sigma = float(m["sigma"])
        noisy_db, denoised_db = heldout_psnr(loaded.module, sigma, seed, images=images)
        chain = _recipe_chain(raw)
        meta = {
            "name": name,
            "arch": loaded.arch,
            "arch_config": loaded.config,
            "sigma": sigma,
            "objective": m.get("objective"),
            "surrogates": m.get("surrogates", []),
            "access": access_of(list(m.get("surrogates") or [])),
            "training_data": m.get("data"),
            "steps": m.get("steps"),
            "train_seconds_cpu": m.get("train_seconds"),
            "train_precision": m.get("train_precision", "float32"),
            "recipe": _distinct_stage_files([_portable(r) for r in chain[:-1]] + [_portable(chain[-1], name)]) if chain else [],
            "heldout_photos": heldout,
            "heldout_psnr_noisy_db": round(noisy_db, 2),
            "heldout_psnr_db": round(denoised_db, 2),
            "heldout_psnr_gain_db": round(denoised_db - noisy_db, 2),
            "parameters": sum(p.numel() for p in loaded.module.parameters()),
        }
        if name in measured:
            meta["heldout_eval"] = measured[name]
        ckpt = checkpoint_dict(loaded.module, loaded.arch, loaded.config, meta=meta, epoch=int(m.get("steps") or 0))
        dst = WEIGHTS_DIR / f"{name}.pt"
        save_checkpoint(dst, ckpt)
        entries.append({"name": name, "filename": dst.name, "sha256": file_sha256(dst), "meta": meta})
        print(f"{name}: PSNR {noisy_db:.2f} -> {denoised_db:.2f} dB, {dst.stat().st_size / 1024:.0f} KB")
    _write_shipped(entries)
    return entries


def _write_shipped(entries: list[dict[str, Any]]) -> None:
    lines = [
        '"""The shipped denoisers\' entries (file, sha256, metadata); regenerated by `python -m robust_api.denoisers.export`."""',
        "from __future__ import annotations",
        "",
        "from robust_api.denoisers.registry import DenoiserWeights",
        "",
        "SHIPPED: tuple[DenoiserWeights, ...] = (",
    ]
    for e in entries:
        meta = pprint.pformat(e["meta"], width=110, sort_dicts=False).replace("\n", "\n" + " " * 13)
        lines += [
            "    DenoiserWeights(",
            f"        name={e['name']!r},",
            f"        filename={e['filename']!r},",
            f"        sha256={e['sha256']!r},",
            f"        meta={meta},",
            "    ),",
        ]
    lines.append(")")
    _SHIPPED_PY.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rundir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=Path, default=None, help="photo folder whose held-out split PSNR is measured on")
    parser.add_argument("--eval", type=Path, action="append", default=[], help="denoiser eval --json file (repeatable)")
    parser.add_argument("--cifar", type=Path, default=None, help="CIFAR-10 ImageFolder root (its test/ is held out)")
    args = parser.parse_args()
    export(args.rundir, args.seed, args.photos, args.eval, args.cifar)


if __name__ == "__main__":
    main()
