#!/usr/bin/env bash
# Reproduces the shipped denoisers on CPU (budgeted for 2 shared cores). Usage:
#   bash robust_api/denoisers/train_shipped.sh OUTDIR
#   python -m robust_api.denoisers.export OUTDIR   # copies the final weights into weights/ and regenerates shipped.py
set -euo pipefail
OUT=${1:-runs}
mkdir -p "$OUT"
RA=${ROBUST_API:-robust-api}
COMMON="--images builtin --arch dncnn --depth 10 --width 32 --threads 1 --checkpoint-every 100 --resume"
# 1. MSE at sigma 0.25 from scratch
$RA denoiser train $COMMON --sigma 0.25 --objective mse --steps 1200 --batch 16 --patch 40 --lr 1e-3 --out "$OUT/dncnn-s0.25.pt"
# 2. Stab+MSE: fine-tune (1) through the frozen pretrained EfficientNet-Lite0 on 224x224 crops (the classifier's
#    input scale), ignoring crops whose clean label the classifier itself is unsure of
$RA denoiser train --images builtin --arch dncnn --depth 10 --width 32 --threads 2 --checkpoint-every 50 --resume --sigma 0.25 --objective stab+mse --init "$OUT/dncnn-s0.25.pt" --surrogate efficientnet-lite0 --steps 200 --batch 4 --patch 224 --lr 1e-4 --min-confidence 0.3 --out "$OUT/dncnn-s0.25-stab.pt"
# 3./4. MSE at sigma 0.12 and 0.50, fine-tuned from (1) (denoisers transfer well across noise levels)
$RA denoiser train $COMMON --sigma 0.12 --objective mse --init "$OUT/dncnn-s0.25.pt" --steps 500 --batch 16 --patch 40 --lr 5e-4 --out "$OUT/dncnn-s0.12.pt"
$RA denoiser train $COMMON --sigma 0.50 --objective mse --init "$OUT/dncnn-s0.25.pt" --steps 500 --batch 16 --patch 40 --lr 5e-4 --out "$OUT/dncnn-s0.50.pt"
