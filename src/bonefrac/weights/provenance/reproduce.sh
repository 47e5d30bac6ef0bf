# 1. ImageNet Lite0 classifier (no box loss). Early stopping after the first epoch without a better validation AUC:
#    it ran 7 epochs, the best (epoch 6) is model.pt.
bonefrac train ../shared/data/fracatlas --out runs/lite0-256-nobox --arch efficientnet_lite0 --epochs 14 \
    --image-size 256 --loc-weight 0 --patience 1 --seed 0 --threads 2
# 2a. fine-tune it with light box supervision of the heatmap (best: epoch 2 of 5)
bonefrac train ../shared/data/fracatlas --out runs/lite0-256-finetune --init-from runs/lite0-256-nobox/model.pt \
    --epochs 5 --lr 2e-4 --warmup-epochs 0.3 --loc-weight 0.25 --split runs/lite0-256-nobox/split.json --seed 0 --threads 2
# 2b. ImageNet Lite0 trained with box supervision from the start, seed 1, same split (best: epoch 12 of 12)
bonefrac train ../shared/data/fracatlas --out runs/lite0-256-box --arch efficientnet_lite0 --epochs 12 \
    --image-size 256 --loc-weight 0.5 --seed 1 --split runs/lite0-256-nobox/split.json --threads 2
# 3. weight average, 0.3 x (2a) + 0.7 x (2b); operating points chosen on the validation split
python tools/soup.py runs/lite0-256-finetune runs/lite0-256-box --weight 0.3 --dataset ../shared/data/fracatlas \
    --split runs/lite0-256-nobox/split.json --out src/bonefrac/weights/model.pt
# 4. list the training and validation images' content digests in the checkpoint (weights unchanged)
python tools/stamp_digests.py src/bonefrac/weights/model.pt --split runs/lite0-256-nobox/split.json \
    --dataset ../shared/data/fracatlas
# validation report (the figures below; provenance/results.txt)
bonefrac evaluate ../shared/data/fracatlas --out runs/bundled-val --split src/bonefrac/weights/split.json --subset val
