#!/usr/bin/env bash
# Reproduces the shipped denoisers on CPU (2 cores; float32 — bf16 autocast is used only where the CPU has native
# bf16). Needs the training photos (never shipped, never read at run time) and the ffdnet + surrogates extras:
#   bash robust_api/denoisers/train_shipped.sh OUTDIR [PHOTOS]      # PHOTOS: ../shared/data/imagenet-samples
#   python -m robust_api.denoisers.export OUTDIR --photos PHOTOS --eval EVAL.json   # weights/ + shipped.py
# Every step resumes from its checkpoint if interrupted (--resume).
set -euo pipefail
OUT=${1:-runs}
PHOTOS=${2:-../shared/data/imagenet-samples}
mkdir -p "$OUT"
RA=${ROBUST_API:-robust-api}
DATA="--images $PHOTOS --split train --threads 2 --resume"
# 1. KAIR's pretrained colour FFDNet (12x96) fine-tuned with MSE on clipped noise (it was trained on unclipped
#    noise): 24.7 -> 26.9 dB on 16 held-out photos at sigma 0.25 (an intermediate, 5 img/s on 2 cores in float32)
$RA denoiser train $DATA --arch ffdnet --init ffdnet-color --sigma 0.25 --objective mse --steps 400 --batch 16 --patch 96 --lr 1e-4 --checkpoint-every 50 --out "$OUT/ffdnet-s0.25.pt"
# 2. pruned to 64 channels (largest-norm filters) and trained on: the fast default (>= 10 img/s at 224px)
$RA denoiser train $DATA --arch ffdnet --width 64 --init "$OUT/ffdnet-s0.25.pt" --sigma 0.25 --objective mse --steps 900 --batch 16 --patch 96 --lr 1e-3 --checkpoint-every 100 --out "$OUT/ffdnet64-s0.25.pt"
# 3. Stab+MSE with query access: Stab fine-tuning of (2) through EfficientNet-Lite1 + Lite2 (not the Lite0 behind
#    the emulators), on 224px crops, ignoring crops whose clean label a surrogate gives less than 0.2
$RA denoiser train $DATA --arch ffdnet --init "$OUT/ffdnet64-s0.25.pt" --sigma 0.25 --objective stab+mse --surrogate efficientnet-lite1 --surrogate efficientnet-lite2 --min-confidence 0.2 --steps 300 --batch 8 --patch 224 --lr 5e-5 --checkpoint-every 25 --out "$OUT/ffdnet64-s0.25-stab.pt"
# 4./5. MSE at sigma 0.12 and 0.50, fine-tuned from (2) with the noise-level input set to the new sigma
for S in 0.12 0.50; do
  $RA denoiser train $DATA --arch ffdnet --init "$OUT/ffdnet64-s0.25.pt" --sigma $S --objective mse --steps 300 --batch 16 --patch 96 --lr 3e-4 --checkpoint-every 100 --out "$OUT/ffdnet64-s$S.pt"
done
