#!/usr/bin/env bash
# The denoised-smoothing paper's CIFAR-10 table (Salman et al. 2020), end to end on this machine's CPU:
#   bash scripts/cifar10_table.sh [SKIP] [DATA]     # certify every SKIP-th test image (default 250), then every
#                                                   # 50th (the 200 images) for each row, in -skip50 logs
#   TRAIN=1 bash scripts/cifar10_table.sh ...       # first retrain the surrogate and the three denoisers
# Without TRAIN the shipped denoisers (cifar10-dncnn-s0.25*) and models/ classifiers are certified, resuming from
# the committed logs in results/cifar10: a finished range of 1000 samples is never computed again, and a SKIP that
# divides 250 adds only the images it adds. Training steps resume from their checkpoints (--resume) after a kill.
# results/cifar10/README.md has what the committed run did and measured; ROBUST_API=... picks the command.
set -euo pipefail
SKIP=${1:-250}
DATA=${2:-../shared/data/cifar10}
RUNS=${RUNS:-runs/cifar}
RESULTS=${RESULTS:-results/cifar10}
RA=${ROBUST_API:-robust-api}
TARGET=models/cifar10-resnet20.pt  # resnet20, 65 epochs, 87.9 % clean test accuracy (models/README.md)
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$RESULTS"
MSE=cifar10-dncnn-s0.25 QUERY=cifar10-dncnn-s0.25-stab-query FULL=cifar10-dncnn-s0.25-stab-full

if [[ "${TRAIN:-0}" == 1 ]]; then  # two trainings at a time, one thread each
  # 1. the query-access surrogate: a second resnet20 (seed 1), never the target. The shipped query denoiser was
  #    trained through this run's epoch-3 checkpoint, shipped as models/cifar10-resnet20-surrogate-e3.pt (69.6 %).
  SURROGATE=models/cifar10-resnet20-surrogate-e3.pt
  if [[ ! -f "$SURROGATE" ]]; then
    $RA classifier train --data "$DATA" --arch resnet20 --epochs 5 --seed 1 --threads 1 --cache-dir "$RUNS/cache" \
        --resume --out "$RUNS/resnet20-surrogate.pt" > "$RUNS/resnet20-surrogate.log" 2>&1 &
    SURROGATE=$RUNS/resnet20-surrogate.pt
  fi
  # 2. DnCNN-10/32 with MSE at sigma 0.25 on 32x32 images of all 50,000 training images
  $RA denoiser train --images "$DATA/train" --split all --patch 32 --arch dncnn --sigma 0.25 --objective mse \
      --batch 128 --lr 1e-3 --steps 700 --checkpoint-every 50 --threads 1 --resume --out "$RUNS/$MSE.pt"
  wait
  # 3./4. Stab+MSE: fine-tune (2) so the classifier's labels of denoised noisy images match its clean labels,
  # through the target itself (full access) and through the surrogate (query access): 300 steps at lr 1e-4 on
  # randomly rotated patches (the first table's denoisers), then 1,600 steps at lr 2e-4 on upright patches only
  common=(--images "$DATA/train" --split all --patch 32 --arch dncnn --sigma 0.25 --objective stab+mse
          --batch 64 --threads 1 --resume)
  stab() {  # SURROGATE NAME
    $RA denoiser train "${common[@]}" --init "$RUNS/$MSE.pt" --lr 1e-4 --steps 300 --checkpoint-every 25 \
        --surrogate "$1" --out "$RUNS/$2.stage2.pt"
    $RA denoiser train "${common[@]}" --init "$RUNS/$2.stage2.pt" --lr 2e-4 --steps 1600 --checkpoint-every 50 \
        --no-rotate --surrogate "$1" --out "$RUNS/$2.pt"
  }
  stab "$TARGET" "$FULL" & stab "$SURROGATE" "$QUERY"; wait
  MSE=$RUNS/$MSE.pt QUERY=$RUNS/$QUERY.pt FULL=$RUNS/$FULL.pt
fi

certify() {  # NAME SKIP [--denoiser D]: the paper's protocol, the target behind the local provider, on Ray
  local name=$1 skip=$2; shift 2
  $RA certify "$DATA/test" --skip "$skip" --api local --model "$TARGET" --full-access --backend ray --workers 1 \
      --sigma 0.25 --n0 100 --n 10000 --alpha 0.001 --seed 0 --no-table "$@" \
      --log "$RESULTS/$name.jsonl" --out "$RESULTS/$name.tsv"
}
# two runs at a time, one Ray worker (one core) each
certify stab-full "$SKIP" --denoiser "$FULL" & certify none "$SKIP"; wait
certify stab-query "$SKIP" --denoiser "$QUERY" & certify mse "$SKIP" --denoiser "$MSE"; wait
# every 50th image (200 images, the minimum), each in its own log started from the 40-image one, so those
# 40 (every 250th) are not computed again and the 40-image logs keep matching their TSVs. One run at a time on
# two Ray workers: ~40 s per image with the denoiser, ~1 h 50 min per denoiser row. Committed so far: no
# denoiser and Stab+MSE full access (results/cifar10/README.md); the report shows the rows that exist.
wide() {  # NAME [--denoiser D]
  local name=$1; shift
  [[ -f "$RESULTS/$name-skip50.jsonl" ]] || cp "$RESULTS/$name.jsonl" "$RESULTS/$name-skip50.jsonl"
  $RA certify "$DATA/test" --skip 50 --api local --model "$TARGET" --full-access --backend ray --workers 2 \
      --sigma 0.25 --n0 100 --n 10000 --alpha 0.001 --seed 0 --no-table "$@" \
      --log "$RESULTS/$name-skip50.jsonl" --out "$RESULTS/$name-skip50.tsv"
}
wide none
wide stab-full --denoiser "$FULL"
wide mse --denoiser "$MSE"
wide stab-query --denoiser "$QUERY"
# the committed run also holds the first, 300-step Stab+MSE denoisers' certificates (stab-*-s300: same images)
first=() first_labels=""
for m in query full; do
  if [[ -f "$RESULTS/stab-$m-s300.tsv" ]]; then
    first+=("$RESULTS/stab-$m-s300.tsv"); first_labels+=",Stab+MSE $m access (300 steps)"
  fi
done
wide_rows=() wide_labels=""
for m in "none:no denoiser" "mse:MSE" "stab-query:Stab+MSE query access" "stab-full:Stab+MSE full access"; do
  if [[ -f "$RESULTS/${m%%:*}-skip50.tsv" ]]; then
    wide_rows+=("$RESULTS/${m%%:*}-skip50.tsv"); wide_labels+=",${m#*:} (200 images)"
  fi
done
$RA report "$RESULTS"/{none,mse}.tsv "${first[@]}" "$RESULTS"/{stab-query,stab-full}.tsv "${wide_rows[@]}" \
    --labels "no denoiser,MSE$first_labels,Stab+MSE query access,Stab+MSE full access$wide_labels" \
    --radii 0,0.25,0.5,0.75,1 \
    --reference salman2020-cifar10 --plot "$RESULTS/certified_accuracy.png" --table "$RESULTS/table.md" \
    --title "CIFAR-10, resnet20, sigma = 0.25, N = 10,000"
