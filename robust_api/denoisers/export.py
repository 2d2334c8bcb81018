"""Export trained runs into the package: `python -m robust_api.denoisers.export RUNDIR [--seed 0]`.

For each shipped name it reads RUNDIR/<name>.pt, drops training state (optimizer, loss history, RNG), measures the
held-out PSNR (noisy vs denoised, one seeded noise draw per held-out evaluation crop), writes weights/<name>.pt and
regenerates shipped.py with each file's sha256 and metadata. Maintainer tool; prints, as scripts do.
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

SHIPPED_NAMES = ("dncnn-s0.12", "dncnn-s0.25", "dncnn-s0.50", "dncnn-s0.25-stab")
_SHIPPED_PY = Path(__file__).resolve().parent / "shipped.py"


def heldout_psnr(module: torch.nn.Module, sigma: float, seed: int = 0, crops: int = 6) -> tuple[float, float]:
    """(noisy PSNR, denoised PSNR) in dB, averaged over held-out crops with one seeded noise draw each."""
    images = np.stack([img for _, img in eval_images(crops)])
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


def export(rundir: Path, seed: int = 0) -> list[dict[str, Any]]:
    WEIGHTS_DIR.mkdir(exist_ok=True)
    entries = []
    heldout = [p.name for p in PHOTOS if p.heldout]
    for name in SHIPPED_NAMES:
        src = rundir / f"{name}.pt"
        if not src.exists():
            current = get_weights(name)
            if current is not None:  # keep the shipped entry (and its file) as it is
                entries.append({"name": name, "filename": current.filename, "sha256": current.sha256, "meta": current.meta})
            print(f"keep {name}: {src} missing" if current else f"skip {name}: {src} missing")
            continue
        raw = read_checkpoint_dict(src)
        loaded = load_checkpoint(src)
        m = loaded.meta
        sigma = float(m["sigma"])
        noisy_db, denoised_db = heldout_psnr(loaded.module, sigma, seed)
        chain = _recipe_chain(raw)
        meta = {
            "name": name,
            "arch": loaded.arch,
            "arch_config": loaded.config,
            "sigma": sigma,
            "objective": m.get("objective"),
            "surrogates": m.get("surrogates", []),
            "training_data": m.get("data"),
            "steps": m.get("steps"),
            "train_seconds_cpu": m.get("train_seconds"),
            "recipe": [_portable(r) for r in chain[:-1]] + [_portable(chain[-1], name)] if chain else [],
            "heldout_photos": heldout,
            "heldout_psnr_noisy_db": round(noisy_db, 2),
            "heldout_psnr_db": round(denoised_db, 2),
            "heldout_psnr_gain_db": round(denoised_db - noisy_db, 2),
            "parameters": sum(p.numel() for p in loaded.module.parameters()),
        }
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
    args = parser.parse_args()
    export(args.rundir, args.seed)


if __name__ == "__main__":
    main()
