# 1. Train the detector (2-core CPU, fp32, about 2 hours; the code of commit 91d9a8b). This run was started with
#    --epochs 15 and resumed after epoch 2 with --epochs 12 (run.json lists both commands), so its learning-rate
#    schedule differs slightly from one straight 12-epoch run. Best epoch by validation AUC + pointing game.
bonefrac train ../shared/data/fracatlas --out runs/v2 --arch lite0_centernet --image-size 416 --epochs 12 \
    --batch-size 16 --lr 1e-3 --backbone-lr-scale 0.3 --weight-decay 1e-4 --warmup-epochs 0.5 --patience 20 \
    --split src/bonefrac/weights/split.json --threads 2
# 2. Calibrate (Platt) and choose the operating points on the validation split (weights unchanged)
bonefrac calibrate ../shared/data/fracatlas --model runs/v2 --out src/bonefrac/weights/model.pt \
    --split src/bonefrac/weights/split.json --subset val
# 3. Validation report (the figures below)
bonefrac evaluate ../shared/data/fracatlas --out runs/bundled-val --split src/bonefrac/weights/split.json --subset val
