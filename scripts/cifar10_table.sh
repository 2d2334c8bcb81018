#!/usr/bin/env bash
# The denoised-smoothing paper's CIFAR-10 table (Salman et al. 2020), end to end on this machine's CPU:
#   bash scripts/cifar10_table.sh [SKIP] [DATA]       # SKIP: certify every SKIP-th test image (default 200)
# Every step resumes where a kill left it: training from its checkpoint (--resume), certification from its query
# log (count records: a finished range of 1000 samples is never computed again). A smaller SKIP later reuses the
# logged images of a larger one when it divides it (every 100th image is also every 50th).
# Settings are those of the committed results (results/cifar10/README.md); ROBUST_API=... picks the command.
set -euo pipefail
SKIP=${1:-200}
DATA=${2:-../shared/data/cifar10}
RUNS=${RUNS:-runs/cifar}
RESULTS=${RESULTS:-results/cifar10}
RA=${ROBUST_API:-robust-api}
TARGET=${TARGET:-models/cifar10-resnet20.pt}  # resnet20, 65 epochs, 87.9 % clean test accuracy (models/README.md)
DENOISERS=${DENOISERS:-models}
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$RESULTS"

train() {  # the two cores: two trainings at a time, one thread each
  # 1. the query-access surrogate: a second resnet20 (another seed, 5 epochs), never the target
  $RA classifier train --data "$DATA" --arch resnet20 --epochs 5 --seed 1 --threads 1 --cache-dir "$RUNS/cache" \
      --resume --out "$RUNS/resnet20-surrogate.pt" > "$RUNS/resnet20-surrogate.log" 2>&1 &
  # 2. DnCNN-10/32 with MSE at sigma 0.25 on 32x32 images of all 50,000 training images
  $RA denoiser train --images "$DATA/train" --split all --patch 32 --arch dncnn --sigma 0.25 --objective mse \
      --batch 128 --lr 1e-3 --steps 700 --checkpoint-every 50 --threads 1 --resume --out "$RUNS/dncnn-mse.pt"
  wait
  # 3./4. Stab+MSE: fine-tune (2) so the classifier's labels on denoised noisy images match its clean labels,
  # through the surrogate (query access: the target is only queried) and through the target (full access)
  local common=(--images "$DATA/train" --split all --patch 32 --arch dncnn --sigma 0.25 --objective stab+mse
                --init "$RUNS/dncnn-mse.pt" --batch 64 --lr 1e-4 --steps 300 --checkpoint-every 25 --threads 1 --resume)
  $RA denoiser train "${common[@]}" --surrogate "$RUNS/resnet20-surrogate.pt" --out "$RUNS/dncnn-stab-query.pt" \
      > "$RUNS/dncnn-stab-query.log" 2>&1 &
  $RA denoiser train "${common[@]}" --surrogate "$TARGET" --out "$RUNS/dncnn-stab-full.pt"
  wait
}

certify() {  # NAME [--denoiser PATH]: the paper's protocol, the target behind the local provider, on Ray
  local name=$1; shift
  $RA certify "$DATA/test" --skip "$SKIP" --api local --model "$TARGET" --full-access --backend ray --workers 2 \
      --sigma 0.25 --n0 100 --n 10000 --alpha 0.001 --seed 0 --no-table "$@" \
      --log "$RESULTS/$name.jsonl" --out "$RESULTS/$name.tsv"
}

if [[ "${SKIP_TRAINING:-0}" != 1 ]]; then train; DENOISERS=$RUNS; fi
certify stab-full --denoiser "$DENOISERS/dncnn-stab-full.pt"
certify stab-query --denoiser "$DENOISERS/dncnn-stab-query.pt"
certify none
certify mse --denoiser "$DENOISERS/dncnn-mse.pt"
$RA report "$RESULTS"/{none,mse,stab-query,stab-full}.tsv \
    --labels "no denoiser,MSE,Stab+MSE query access,Stab+MSE full access" --radii 0,0.25,0.5,0.75,1 \
    --reference salman2020-cifar10 --plot "$RESULTS/certified_accuracy.png" --table "$RESULTS/table.md" \
    --title "CIFAR-10, resnet20, sigma = 0.25, N = 10,000, every ${SKIP}th test image"
