"""Pilot for issue 16 (an experiment kept for the next session, not part of the package): a CenterNet-style
dense head on stride-8 FPN features of EfficientNet-Lite0, trained on 256 px crops at native scale.

Run (session 7, 2-core CPU, fp32, channels_last; 4 epochs in 23 min; validation split of weights/split.json):
    python tools/experiments/v2_pilot.py decode
    python tools/experiments/v2_pilot.py train --minutes 31 --epochs 4
    python tools/experiments/v2_pilot.py eval --ckpt /tmp/v2pilot/ckpt_last.pt
gave pointing game 0.693, AP@0.5 (fractured images) 0.178, FROC@1FP 0.333, AUC 0.913-0.925 (validation figures;
the bundled model: 0.474, 0.014, 0.094, 0.924). Paths below are this machine's; set V2PILOT_OUT to move the output.

Subcommands:
  decode  [--limit N]                      decode every image once (uint8, native scale, long side <= 512) -> cache
  bench   [--steps 20]                     train images/s, fp32 vs bf16 autocast
  train   --minutes M [--epochs E] [--bf16] [--limit N]
  eval    --ckpt PATH [--limit N]          validation figures

Everything lives in /tmp/v2pilot (OUT). Reads /work/main (bonefrac) only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

OUT = os.environ.get("V2PILOT_OUT", "/tmp/v2pilot")
DATA = "/work/shared/data/fracatlas"
SPLIT = "/work/main/src/bonefrac/weights/split.json"
MAX_SIDE = 512
CROP = 256
STRIDE = 8
torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------------ data
def decode(limit: int | None = None) -> str:
    from bonefrac.io.read import read_image
    from bonefrac.train.data import load_dataset

    records = load_dataset(DATA)
    split = json.load(open(SPLIT))
    if limit:
        # a small mixed subset for smoke tests: some fractured of each split
        rs = [r for r in records if r.boxes]
        records = rs[: limit // 2] + [r for r in records if not r.label][: limit - limit // 2]
    items = []
    t0 = time.time()
    for r in records:
        im = read_image(r.path)
        px = im.pixels
        h, w = px.shape
        s = min(1.0, MAX_SIDE / max(h, w))
        if s < 1.0:
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            px = np.asarray(Image.fromarray(px.astype(np.float32), mode="F").resize((nw, nh), Image.BILINEAR))
        lo, hi = float(px.min()), float(px.max())
        u = np.clip((px - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(px)
        u8 = np.round(u * 255).astype(np.uint8)
        items.append(
            dict(
                key=r.key,
                split=split.get(r.key, "?"),
                label=int(r.label),
                region=r.region,
                scale=s,
                orig_hw=(h, w),
                img=u8,
                boxes=np.asarray(r.boxes, dtype=np.float32).reshape(-1, 4),  # original pixels
            )
        )
    path = os.path.join(OUT, f"cache{'_' + str(limit) if limit else ''}.pkl")
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=4)
    print(f"decoded {len(items)} images in {time.time() - t0:.1f}s -> {path}", flush=True)
    return path


def load_cache(limit: int | None) -> list[dict]:
    path = os.path.join(OUT, f"cache{'_' + str(limit) if limit else ''}.pkl")
    if not os.path.exists(path):
        decode(limit)
    with open(path, "rb") as f:
        return pickle.load(f)


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (in cells) for a box of h x w cells."""
    a1, b1, c1 = 1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(hm: np.ndarray, cx: int, cy: int, radius: int) -> None:
    d = 2 * radius + 1
    sigma = d / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    H, W = hm.shape
    left, r = min(cx, radius), min(W - cx, radius + 1)
    t, b = min(cy, radius), min(H - cy, radius + 1)
    np.maximum(
        hm[cy - t : cy + b, cx - left : cx + r],
        g[radius - t : radius + b, radius - left : radius + r],
        out=hm[cy - t : cy + b, cx - left : cx + r],
    )


MAX_OBJ = 8


def make_targets(boxes: np.ndarray, size_hw: tuple[int, int]):
    """boxes in input pixels -> heatmap (1,h,w), indices, log-wh, offsets, mask."""
    H, W = size_hw[0] // STRIDE, size_hw[1] // STRIDE
    hm = np.zeros((H, W), np.float32)
    ind = np.zeros(MAX_OBJ, np.int64)
    wh = np.zeros((MAX_OBJ, 2), np.float32)
    off = np.zeros((MAX_OBJ, 2), np.float32)
    mask = np.zeros(MAX_OBJ, np.float32)
    for k, b in enumerate(boxes[:MAX_OBJ]):
        bw, bh = max(b[2] - b[0], 1.0), max(b[3] - b[1], 1.0)
        cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < W and 0 <= iy < H):
            continue
        r = max(0, int(gaussian_radius(bh / STRIDE, bw / STRIDE)))
        draw_gaussian(hm, ix, iy, r)
        ind[k] = iy * W + ix
        wh[k] = (math.log(bw / STRIDE), math.log(bh / STRIDE))
        off[k] = (cx - ix, cy - iy)
        mask[k] = 1
    return hm[None], ind, wh, off, mask


class CropSampler:
    """Random CROPxCROP crops at native scale; with p_pos a crop of a fractured image contains a box."""

    def __init__(self, items: list[dict], seed: int = 0, p_pos: float = 0.7, pos_repeat: int = 2):
        self.items = items
        self.rng = np.random.default_rng(seed)
        self.p_pos = p_pos
        self.pos_repeat = pos_repeat

    def epoch_indices(self) -> np.ndarray:
        idx = []
        for i, it in enumerate(self.items):
            idx += [i] * (self.pos_repeat if len(it["boxes"]) else 1)
        idx = np.asarray(idx)
        self.rng.shuffle(idx)
        return idx

    def sample(self, i: int):
        rng = self.rng
        it = self.items[i]
        img = it["img"]
        boxes = it["boxes"] * it["scale"]  # in cached-image pixels
        h, w = img.shape
        # pad small images up to the crop (zeros, as bonefrac's letterbox pads)
        ph, pw = max(0, CROP - h), max(0, CROP - w)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)))
            h, w = img.shape
        if len(boxes) and rng.random() < self.p_pos:
            b = boxes[rng.integers(len(boxes))]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            # the whole box inside if it fits, else at least its centre
            lo_x = max(0.0, min(b[2] - CROP, cx - CROP + STRIDE))
            hi_x = min(w - CROP, max(b[0], cx - STRIDE))
            lo_y = max(0.0, min(b[3] - CROP, cy - CROP + STRIDE))
            hi_y = min(h - CROP, max(b[1], cy - STRIDE))
            x0 = int(rng.uniform(lo_x, max(lo_x, hi_x)))
            y0 = int(rng.uniform(lo_y, max(lo_y, hi_y)))
        else:
            x0 = int(rng.integers(0, w - CROP + 1))
            y0 = int(rng.integers(0, h - CROP + 1))
        crop = img[y0 : y0 + CROP, x0 : x0 + CROP].astype(np.float32) / 255.0
        bx = boxes - np.array([x0, y0, x0, y0], np.float32)
        if rng.random() < 0.5:  # horizontal flip
            crop = crop[:, ::-1]
            bx = np.stack([CROP - bx[:, 2], bx[:, 1], CROP - bx[:, 0], bx[:, 3]], 1) if len(bx) else bx
        # intensity jitter: gamma, contrast, brightness
        crop = np.clip(crop, 0, 1) ** rng.uniform(0.8, 1.25)
        crop = np.clip((crop - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.05, 0.05), 0, 1)
        if len(bx):
            cxs, cys = (bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2
            bx = bx[(cxs >= 0) & (cxs < CROP) & (cys >= 0) & (cys < CROP)]
        x = (np.ascontiguousarray(crop) - 0.5) / 0.5
        hm, ind, wh, off, mask = make_targets(bx, (CROP, CROP))
        label = float(len(bx) > 0)
        return x[None].astype(np.float32), hm, ind, wh, off, mask, label

    def batch(self, idx: np.ndarray):
        cols = list(zip(*(self.sample(int(i)) for i in idx), strict=True))
        return (
            [torch.from_numpy(np.stack(cols[0])).contiguous(memory_format=torch.channels_last)]
            + [torch.from_numpy(np.stack(c)) for c in cols[1:6]]
            + [torch.tensor(cols[6], dtype=torch.float32)]
        )


# ----------------------------------------------------------------------------------------------- model
class V2Net(nn.Module):
    """Lite0 backbone; FPN 32->16->8 at 64 ch; CenterNet head on stride 8; global head on stride 32."""

    def __init__(self, pretrained: bool = True, ch: int = 64):
        super().__init__()
        from bonefrac.models.classifier import EfficientNetLite0

        bb = EfficientNetLite0()
        if pretrained:
            bb.load_imagenet()
        self.stem = nn.Sequential(bb._conv_stem, bb._bn0, nn.ReLU6())
        blocks = list(bb._blocks)
        self.s8 = nn.Sequential(*blocks[:5])  # 40 ch
        self.s16 = nn.Sequential(*blocks[5:11])  # 112 ch
        self.s32 = nn.Sequential(*blocks[11:16])  # 320 ch
        self.conv_head, self.bn_head = bb._conv_head, bb._bn1  # 320 -> 1280 (ImageNet)
        self.lat8, self.lat16, self.lat32 = nn.Conv2d(40, ch, 1), nn.Conv2d(112, ch, 1), nn.Conv2d(320, ch, 1)
        self.smooth16 = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())
        self.smooth8 = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())

        def branch(cout: int, bias: float = 0.0) -> nn.Sequential:
            s = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, cout, 1))
            nn.init.constant_(s[-1].bias, bias)
            return s

        self.hm = branch(1, -2.19)
        self.wh = branch(2)
        self.off = branch(2)
        self.drop = nn.Dropout(0.2)
        self.cls = nn.Conv2d(1280, 1, 1)  # global head: per-cell logit, averaged (a CAM, as bonefrac's)

    def backbone_params(self):
        for m in (self.stem, self.s8, self.s16, self.s32, self.conv_head, self.bn_head):
            yield from m.parameters()

    def forward(self, x):
        c8 = self.s8(self.stem(x))
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p32 = self.lat32(c32)
        p16 = self.smooth16(self.lat16(c16) + F.interpolate(p32, size=c16.shape[-2:], mode="nearest"))
        p8 = self.smooth8(self.lat8(c8) + F.interpolate(p16, size=c8.shape[-2:], mode="nearest"))
        g = F.relu6(self.bn_head(self.conv_head(c32)))
        cam = self.cls(self.drop(g))  # (N,1,h32,w32)
        logit = cam.mean(dim=(1, 2, 3))
        return self.hm(p8), self.wh(p8), self.off(p8), logit, cam


def focal_loss(pred_logit, gt):
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of objects."""
    pred = torch.sigmoid(pred_logit.float()).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg
    n = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / n.clamp(min=1)


def gather(feat, ind):
    n, c, h, w = feat.shape
    f = feat.float().view(n, c, h * w).permute(0, 2, 1)  # (N, HW, C)
    return f.gather(1, ind[..., None].expand(-1, -1, c))  # (N, K, C)


def losses(out, hm, ind, wh, off, mask, label):
    p_hm, p_wh, p_off, logit, _ = out
    l_hm = focal_loss(p_hm, hm)
    m = mask[..., None]
    nm = mask.sum().clamp(min=1)
    l_wh = (F.l1_loss(gather(p_wh, ind), wh, reduction="none") * m).sum() / (2 * nm)
    l_off = (F.l1_loss(gather(p_off, ind), off, reduction="none") * m).sum() / (2 * nm)
    l_cls = F.binary_cross_entropy_with_logits(logit.float(), label)
    return l_hm + l_wh + l_off + 0.5 * l_cls, dict(hm=l_hm.item(), wh=l_wh.item(), off=l_off.item(), cls=l_cls.item())


def make_opt(model, lr_head=1e-3, lr_bb=3e-4, wd=1e-4):
    bb = set(id(p) for p in model.backbone_params())
    head = [p for p in model.parameters() if id(p) not in bb]
    return torch.optim.AdamW(
        [{"params": list(model.backbone_params()), "lr": lr_bb}, {"params": head, "lr": lr_head}], weight_decay=wd
    )


# --------------------------------------------------------------------------------------------- commands
def cmd_bench(a):
    items = [it for it in load_cache(a.limit) if it["split"] == "train" or a.limit]
    res = {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = V2Net().train().to(memory_format=torch.channels_last)
        opt = make_opt(model)
        s = CropSampler(items, seed=1)
        idx = s.epoch_indices()
        times, dtimes = [], []
        for step in range(a.steps + 3):
            t0 = time.time()
            bi = idx[(step * a.batch) % max(1, len(idx) - a.batch) :][: a.batch]
            if len(bi) < a.batch:
                bi = np.resize(idx, a.batch)
            x, hm, ind, wh, off, mask, label = s.batch(bi)
            t1 = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                out = model(x)
            loss, _ = losses(out, hm, ind, wh, off, mask, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 3:
                times.append(time.time() - t0)
                dtimes.append(t1 - t0)
        ips = a.batch * len(times) / sum(times)
        res[mode] = dict(images_per_s=ips, data_s_per_step=float(np.mean(dtimes)), s_per_step=float(np.mean(times)))
        print(mode, res[mode], flush=True)
    json.dump(res, open(os.path.join(OUT, f"bench{'_' + str(a.limit) if a.limit else ''}.json"), "w"), indent=1)


def cmd_train(a):
    items = load_cache(a.limit)
    train = [it for it in items if it["split"] == "train"] if not a.limit else items
    print(f"train images {len(train)} (fractured {sum(len(it['boxes']) > 0 for it in train)})", flush=True)
    torch.manual_seed(0)
    model = V2Net().train().to(memory_format=torch.channels_last)
    opt = make_opt(model)
    s = CropSampler(train, seed=0)
    per_epoch = len(s.epoch_indices()) // a.batch
    epochs = a.epochs
    if epochs is None:
        epochs = max(1, int(a.minutes * 60 * a.ips / (per_epoch * a.batch)))
    total = epochs * per_epoch
    warm = min(100, total // 10)
    base = [g["lr"] for g in opt.param_groups]
    print(f"epochs {epochs} x {per_epoch} steps (batch {a.batch}), bf16={a.bf16}, budget {a.minutes} min", flush=True)
    t_start = time.time()
    step = 0
    stop = False
    for ep in range(epochs):
        idx = s.epoch_indices()
        agg: dict[str, float] = {}
        te = time.time()
        for b in range(per_epoch):
            f = (
                (step + 1) / warm
                if step < warm
                else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            )
            for g, lr in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr * f
            x, hm, ind, wh, off, mask, label = s.batch(idx[b * a.batch : (b + 1) * a.batch])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                out = model(x)
            loss, parts = losses(out, hm, ind, wh, off, mask, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            for k, v in parts.items():
                agg[k] = agg.get(k, 0.0) + v
            if b % 25 == 0:
                el = time.time() - t_start
                print(f"ep {ep} step {b}/{per_epoch} loss {loss.item():.3f} {parts} {el / 60:.1f} min", flush=True)
            if time.time() - t_start > a.minutes * 60:
                stop = True
                break
        nb = b + 1
        ck = os.path.join(OUT, f"ckpt_ep{ep}.pt")
        torch.save({"model": model.state_dict(), "epoch": ep, "steps": step, "bf16": a.bf16}, ck)
        torch.save(
            {"model": model.state_dict(), "epoch": ep, "steps": step, "bf16": a.bf16}, os.path.join(OUT, "ckpt_last.pt")
        )
        print(
            f"== epoch {ep} done: {nb} steps, {nb * a.batch / (time.time() - te):.1f} img/s, "
            f"mean { {k: round(v / nb, 4) for k, v in agg.items()} }, "
            f"total {(time.time() - t_start) / 60:.1f} min -> {ck}",
            flush=True,
        )
        if stop:
            print("time budget reached: stopping", flush=True)
            break
    print(f"training wall time {(time.time() - t_start) / 60:.1f} min, {step} steps", flush=True)


@torch.no_grad()
def infer(model, it, topk: int, bf16: bool):
    """Whole image at native (cached) scale, padded to a multiple of 32 -> detections in original pixels."""
    img = it["img"].astype(np.float32) / 255.0
    h, w = img.shape
    H, W = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    x = np.zeros((H, W), np.float32)
    x[:h, :w] = img
    x = torch.from_numpy((x - 0.5) / 0.5)[None, None].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        p_hm, p_wh, p_off, logit, cam = model(x)
    hm = torch.sigmoid(p_hm.float())[0, 0]
    gh, gw = math.ceil(h / STRIDE), math.ceil(w / STRIDE)
    hm = hm[:gh, :gw]  # drop the padding cells
    keep = F.max_pool2d(hm[None, None], 3, 1, 1)[0, 0] == hm
    scores = (hm * keep).flatten()
    sc, ii = scores.topk(min(topk, scores.numel()))
    ys, xs = ii // gw, ii % gw
    wh = p_wh.float()[0, :, :gh, :gw].flatten(1)
    off = p_off.float()[0, :, :gh, :gw].flatten(1)
    s = it["scale"]
    dets = []
    for k in range(len(ii)):
        j = ii[k]
        cx = (xs[k] + off[0, j]) * STRIDE
        cy = (ys[k] + off[1, j]) * STRIDE
        bw, bh = torch.exp(wh[0, j]) * STRIDE, torch.exp(wh[1, j]) * STRIDE
        dets.append([float(v) / s for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)] + [float(sc[k])])
    peak = ((dets[0][0] + dets[0][2]) / 2, (dets[0][1] + dets[0][3]) / 2)
    # peak cell centre (without offset), as a heatmap viewer would show it
    peak_cell = ((float(xs[0]) + 0.5) * STRIDE / s, (float(ys[0]) + 0.5) * STRIDE / s)
    gh32, gw32 = math.ceil(h / 32), math.ceil(w / 32)
    cam_valid = cam.float()[0, 0, :gh32, :gw32]
    return dict(
        dets=dets,
        peak=peak,
        peak_cell=peak_cell,
        p_max=float(hm.max()),
        logit_global=float(logit.float()[0]),
        logit_global_valid=float(cam_valid.mean()),
        logit_cam_max=float(cam_valid.max()),
    )


def sens_at_spec(y, p, spec=0.90):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    ok = fpr <= 1 - spec + 1e-12
    return float(tpr[ok].max())


def cmd_eval(a):
    from bonefrac.evaluation.detection import detection_scores
    from bonefrac.evaluation.metrics import auc, auc_ci

    items = load_cache(a.limit)
    val = [it for it in items if it["split"] == "val"] if not a.limit else items
    ck = torch.load(a.ckpt, map_location="cpu", weights_only=True)
    model = V2Net(pretrained=False)
    model.load_state_dict(ck["model"])
    model.eval().to(memory_format=torch.channels_last)
    t0 = time.time()
    res = [infer(model, it, a.topk, a.bf16) for it in val]
    dt = time.time() - t0
    y = np.array([it["label"] for it in val])
    sig = lambda z: 1 / (1 + np.exp(-np.asarray(z)))  # noqa: E731
    p = {
        "heatmap_max": np.array([r["p_max"] for r in res]),
        "global_head": sig([r["logit_global"] for r in res]),
        "global_head_unpadded": sig([r["logit_global_valid"] for r in res]),
        "global_cam_max": sig([r["logit_cam_max"] for r in res]),
    }
    # a fixed, untuned combination: mean of the two logits
    lg = lambda q: np.log(np.clip(q, 1e-6, 1 - 1e-6) / np.clip(1 - q, 1e-6, 1))  # noqa: E731
    p["mean_logit(heatmap_max,global)"] = sig((lg(p["heatmap_max"]) + lg(p["global_head"])) / 2)
    cls = {
        k: dict(auc=auc(y, v), auc_ci=auc_ci(y, v, n_boot=1000), sens_at_spec90=sens_at_spec(y, v))
        for k, v in p.items()
    }
    boxed = [i for i, it in enumerate(val) if len(it["boxes"])]
    hits = sum(
        any(b[0] <= res[i]["peak"][0] <= b[2] and b[1] <= res[i]["peak"][1] <= b[3] for b in val[i]["boxes"])
        for i in boxed
    )
    hits_cell = sum(
        any(b[0] <= res[i]["peak_cell"][0] <= b[2] and b[1] <= res[i]["peak_cell"][1] <= b[3] for b in val[i]["boxes"])
        for i in boxed
    )
    # images labelled fractured without boxes have unknown box truth: left out of the detection figures
    keep = [i for i, it in enumerate(val) if not (it["label"] == 1 and not len(it["boxes"]))]
    truth = [val[i]["boxes"].tolist() for i in keep]
    dets = {}
    for k in sorted({1, 5, a.topk}):
        dets[k] = detection_scores(truth, [[d for d in res[i]["dets"][:k]] for i in keep])[0]
    out = dict(
        ckpt=a.ckpt,
        epoch=ck.get("epoch"),
        steps=ck.get("steps"),
        n_val=len(val),
        n_fractured=int(y.sum()),
        n_boxed=len(boxed),
        n_boxes=int(sum(len(it["boxes"]) for it in val)),
        classification=cls,
        pointing_game=hits / max(1, len(boxed)),
        pointing_game_peak_cell_centre=hits_cell / max(1, len(boxed)),
        detection_by_topk=dets,
        infer_s_per_image=dt / len(val),
    )
    path = os.path.join(
        OUT, f"eval_{os.path.basename(a.ckpt).replace('.pt', '')}{'_' + str(a.limit) if a.limit else ''}.json"
    )
    json.dump(out, open(path, "w"), indent=1)
    print(json.dumps(out, indent=1), flush=True)
    print("->", path)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["decode", "bench", "train", "eval"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--ips", type=float, default=14.0, help="expected train images/s, to size the epochs")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--ckpt", default=os.path.join(OUT, "ckpt_last.pt"))
    ap.add_argument("--topk", type=int, default=5)
    a = ap.parse_args(argv)
    if a.cmd == "decode":
        decode(a.limit)
    elif a.cmd == "bench":
        cmd_bench(a)
    elif a.cmd == "train":
        cmd_train(a)
    else:
        cmd_eval(a)


if __name__ == "__main__":
    main()
