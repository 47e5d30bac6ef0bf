#!/bin/bash
# The MODEL_CARD recipe, unchanged, with reduce_from=4 preprocessing (1024 px FracAtlas images read at 1/2).
set -euo pipefail
cd /work/main
source .venv/bin/activate
D=../shared/data/fracatlas
date
bonefrac train $D --out runs/r4-lite0-256-nobox --arch efficientnet_lite0 --epochs 14 \
    --image-size 256 --loc-weight 0 --patience 1 --seed 0 --threads 2 --no-progress
date
bonefrac train $D --out runs/r4-lite0-256-finetune --init-from runs/r4-lite0-256-nobox/model.pt \
    --epochs 5 --lr 2e-4 --warmup-epochs 0.3 --loc-weight 0.25 --split runs/r4-lite0-256-nobox/split.json --seed 0 --threads 2 --no-progress
date
bonefrac train $D --out runs/r4-lite0-256-box --arch efficientnet_lite0 --epochs 12 \
    --image-size 256 --loc-weight 0.5 --seed 0 --threads 2 --no-progress
date
python tools/soup.py runs/r4-lite0-256-finetune runs/r4-lite0-256-box --weight 0.3 --dataset $D \
    --split runs/r4-lite0-256-nobox/split.json --out runs/r4-soup/model.pt
date
echo DONE
