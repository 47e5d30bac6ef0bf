# v3 = the weight average (WiSE-FT) of two 3-epoch fine-tunes of v2, calibrated on the validation split.
# 0. v2, the start of both fine-tunes: provenance/v2/reproduce.sh (12 epochs from ImageNet weights), saved as v2.pt.
# 1. v2 trained 3 more epochs on its own native-scale crops (lr 3e-4, backbone 0.3x: the "control" row of the card)
bonefrac train ../shared/data/fracatlas --out runs/v2ft --arch lite0_centernet --image-size 416 --init-from v2.pt \
    --split src/bonefrac/weights/split.json --epochs 3 --batch-size 16 --lr 3e-4 --backbone-lr-scale 0.3 \
    --weight-decay 1e-4 --warmup-epochs 0.3 --patience 20 --threads 2
# 2. v2 fine-tuned 3 epochs with the v3 recipe (wide zoom, edge crops, region balance, small boxes drawn 2x,
#    photometric augmentation, hard negatives mined every 2 epochs). This run was stopped after epoch 2 and
#    resumed (--resume; run.json lists both commands).
bonefrac train ../shared/data/fracatlas --out runs/v3ft --arch lite0_centernet --image-size 416 --init-from v2.pt \
    --split src/bonefrac/weights/split.json --epochs 3 --batch-size 16 --lr 3e-4 --backbone-lr-scale 0.3 \
    --weight-decay 1e-4 --warmup-epochs 0.3 --patience 20 --threads 2 --zoom-min 0.5 --zoom-max 3.0 --p-edge 0.3 \
    --region-balance --small-box-factor 2 --photometric 0.25 --hard-negative-every 2 --p-hard-negative 0.7 \
    --hard-negative-images 400
# 3. Average their weights half and half (BatchNorm statistics too), then calibrate (Platt), choose the operating
#    points and fit the out-of-distribution statistics on the validation split (weights unchanged)
python tools/soup.py runs/v3ft runs/v2ft --weight 0.5 --dataset ../shared/data/fracatlas \
    --split src/bonefrac/weights/split.json --out runs/v3/soup.pt
bonefrac calibrate ../shared/data/fracatlas --model runs/v3/soup.pt --out src/bonefrac/weights/model.pt \
    --split src/bonefrac/weights/split.json --subset val
# 4. Exports beside it, and the validation report (the figures of the card)
python tools/ship_onnx.py
bonefrac quantize ../shared/data/fracatlas --split src/bonefrac/weights/split.json
bonefrac evaluate ../shared/data/fracatlas --out runs/bundled-val --split src/bonefrac/weights/split.json --subset val
python tools/reframe_probe.py --model src/bonefrac/weights/model.pt --dataset ../shared/data/fracatlas \
    --split src/bonefrac/weights/split.json --zoom 1 1.5 2 3
