#!/bin/bash
# Second draw of the reduce_from=4 retrain: step 2b (ImageNet, box loss 0.5, 12 epochs) with seed 1 on the
# same split, then the recipe's soup with the first draw's step 2a. Everything else as retrain.sh.
set -euo pipefail
cd /work/main
source .venv/bin/activate
D=../shared/data/fracatlas
date
bonefrac train $D --out runs/r4s1-lite0-256-box --arch efficientnet_lite0 --epochs 12 \
    --image-size 256 --loc-weight 0.5 --seed 1 --split runs/r4-lite0-256-nobox/split.json --threads 2 --no-progress
date
python tools/soup.py runs/r4-lite0-256-finetune runs/r4s1-lite0-256-box --weight 0.3 --dataset $D \
    --split runs/r4-lite0-256-nobox/split.json --out runs/r4s1-soup/model.pt
date
echo DONE
