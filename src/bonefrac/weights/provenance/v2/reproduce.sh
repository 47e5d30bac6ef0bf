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
# 4. (2026-12-07, issue 22.5) The checkpoint's info was rewritten without the paths of the machine that trained and
#    calibrated it (the calibration record now names the data "fracatlas" with a digest of its images), and with the
#    validation figures measured at the thresholds the model uses (from a recalibration on the same 653 images: the
#    same confusion counts at every point). Weights, calibration and thresholds are unchanged; the file's SHA-256
#    moved from 2d5c8807551225fe... (the version in the logs of this folder) to ce6b5550631357234....
# 5. (2026-12-07, issue 24.4) The out-of-distribution statistics (docs/ood.md) were fitted with
#      bonefrac calibrate ../shared/data/fracatlas --model src/bonefrac/weights/model.pt --out /tmp/model-ood.pt \
#          --split src/bonefrac/weights/split.json --subset val
#    (Gaussian on the 2611 training images, threshold on the 653 validation images) and only spec.ood and
#    info["ood"] were copied into this checkpoint: weights, calibration and thresholds unchanged. SHA-256 now
#    5ed334dcf1b57ea2...; the shipped model.onnx regenerated with tools/ship_onnx.py.
