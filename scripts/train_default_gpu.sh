#!/usr/bin/env bash
# Train the shipped CIFAR-10 pair on one GPU in about 8 minutes of wall time (device session).
# Inputs: .device/train.tar.gz and .device/test.tar.gz (the CIFAR-10 JPEG tree, train/ and test/),
# .whl/ with diffusers, timm and importlib_metadata wheels when the machine lacks them.
# Output: $OUT/models/{cifar10-ddpm,cifar10-vit-base,cifar10-vit}, logs and evaluation JSON.
set -euo pipefail
OUT=${OUT:-$PWD/runs/gpu}
BUDGET_STAGE1=${BUDGET_STAGE1:-270}
BUDGET_STAGE2=${BUDGET_STAGE2:-100}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
rm -rf /tmp/data /tmp/work; mkdir -p /tmp/data "$OUT/models" /tmp/work
tar -xzf "${DATA_TARS:-.device}/train.tar.gz" -C /tmp/data
tar -xzf "${DATA_TARS:-.device}/test.tar.gz" -C /tmp/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python3 -c "import torch, timm, diffusers; print(torch.__version__, timm.__version__, diffusers.__version__)" | tee -a "$OUT/gpu.txt"
FVIT="python3 -m fvit_core.cli"
# Stage 1: classifier and denoiser side by side on the one GPU (each alone leaves it mostly idle).
$FVIT train-denoiser --data /tmp/data/train --out /tmp/work/cifar10-ddpm --time-budget-s "$BUDGET_STAGE1" \
  --batch-size "${BATCH:-512}" --lr 5e-4 --warmup-steps 300 --ema-decay 0.9995 --seed 0 --checkpoint-every-s 60 \
  > "$OUT/train_denoiser.log" 2>&1 &
DEN=$!
$FVIT train-classifier --data /tmp/data/train --out /tmp/work/cifar10-vit-base --time-budget-s "$BUDGET_STAGE1" \
  --batch-size "${BATCH:-512}" --lr 1e-3 --warmup-steps 500 --ema-decay 0.9995 --seed 0 --checkpoint-every-s 60 \
  --eval-data /tmp/data/test > "$OUT/train_classifier.log" 2>&1 &
CLF=$!
wait $DEN; wait $CLF
for m in cifar10-ddpm cifar10-vit-base; do
  mkdir -p "$OUT/models/$m"; (cd /tmp/work/$m && cp -r $(ls | grep -v checkpoint) "$OUT/models/$m/")
done
tail -c 600 "$OUT/train_denoiser.log"; tail -c 600 "$OUT/train_classifier.log"
# Stage 2: fine-tune the classifier on DDS inputs (half of each batch noised and one-shot denoised).
$FVIT train-classifier --data /tmp/data/train --out /tmp/work/cifar10-vit --init /tmp/work/cifar10-vit-base \
  --denoiser /tmp/work/cifar10-ddpm --denoised-fraction 0.5 --sigmas 0.12,0.25,0.5 \
  --time-budget-s "$BUDGET_STAGE2" --batch-size "${BATCH:-512}" --lr 2e-4 --warmup-steps 100 --ema-decay 0.999 --seed 1 \
  --checkpoint-every-s 60 --eval-data /tmp/data/test > "$OUT/train_finetune.log" 2>&1
mkdir -p "$OUT/models/cifar10-vit"; (cd /tmp/work/cifar10-vit && cp -r $(ls | grep -v checkpoint) "$OUT/models/cifar10-vit/")
tail -c 600 "$OUT/train_finetune.log"
# Stage 3: quick model-card numbers for both classifiers (no certification: the CPU run does that).
for m in cifar10-vit-base cifar10-vit; do
  $FVIT evaluate-models --data /tmp/data/test --classifier /tmp/work/$m --denoiser /tmp/work/cifar10-ddpm \
    --n-dds-images "${N_DDS:-500}" --dds-samples 100 --certify-images 0 --json "$OUT/eval_$m.json" > "$OUT/eval_$m.log" 2>&1 &
done
wait
cat "$OUT"/eval_*.json
# The device returns only a few small files: pack the models (without checkpoints) into parts of
# at most 3 MB; reassemble with `cat models.tar.part* | tar -x`.
tar -C "$OUT/models" -cf /tmp/models.tar . && rm -rf "$OUT/models"
(cd "$OUT" && split -b 3000000 -d /tmp/models.tar models.tar.part && md5sum /tmp/models.tar > models.tar.md5)
