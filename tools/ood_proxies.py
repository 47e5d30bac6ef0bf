"""OOD proxies: how well a model's `ood_score` separates images unlike FracAtlas from its validation images.

There is no second source of radiographs here, so the "unlike the training images" sets are built in memory
from the split's validation images, each a change a site or a teaching file might bring:

- zoom2: a window of half of each side, around a fracture box (the image centre without one), resized back
  up: a 2x closer framing;
- hand_fill: hand images cropped tight around their bright (bone and soft tissue) content, then 2x;
- blur: a Gaussian of sigma 2 px at the model input scale (`BLUR_SIGMA`); unsharp: PIL UnsharpMask(4, 200);
- histeq: histogram equalisation; invert: 1 - pixels (a MONOCHROME1 image read as MONOCHROME2);
- nonrad: synthetic stand-ins for photographs (no internet here): smooth multi-scale random colour fields with
  a gradient and a few soft-edged coloured shapes, turned grey by ITU-R 601 luma. Not real photographs:
  they stand for "a picture that is no radiograph", and are probably easier to reject than real ones.

Each row: images, AUROC of ood_score (proxy positive, validation negative) and the share flagged
(`in_distribution` False); the validation images' own share flagged comes first. Deterministic (`--seed`).

    python tools/ood_proxies.py --model src/bonefrac/weights/model.pt --dataset ../shared/data/fracatlas \
        --split src/bonefrac/weights/split.json [--json OUT] [--n 60]

`--json OUT` writes {"val_flagged": x, "val_n": n, "threshold": t, "proxies": {name: {"n", "auroc", "flagged"}}}.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from scipy.ndimage import gaussian_filter

from bonefrac import FractureDetector
from bonefrac.datasets.records import Record
from bonefrac.evaluation.evaluate import select_records
from bonefrac.io.image import ImageReadWarning, XrayImage
from bonefrac.io.read import read_image

#: Gaussian sigma of `blur`, in pixels of the model input. On the bundled model sigma 1 gives AUROC ~0.90 and
#: ~25% flagged, 0.5 about chance: the features see a blur only from about 1 model pixel on.
BLUR_SIGMA = 2.0
#: A proxy: (image, its record, a generator, the model's input side) -> the changed image.
Transform = Callable[[XrayImage, Record, np.random.Generator, int], XrayImage]


def _image(pixels: np.ndarray, like: XrayImage | None = None) -> XrayImage:
    """An XrayImage of `pixels`; meta's size must be the new one and `reduced_by` must go, or the
    preprocessing would map the pixels onto the source file's geometry."""
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    meta = {k: v for k, v in (like.meta if like else {}).items() if k not in ("reduced_by", "warnings")}
    meta |= {"height": pixels.shape[0], "width": pixels.shape[1]}
    return XrayImage(pixels=pixels, meta=meta, path=like.path if like else None)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (width, height) on float pixels (no 8-bit rounding added)."""
    return np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _window(image: XrayImage, box: tuple[int, int, int, int], cx: float, cy: float) -> XrayImage:
    """The window of half of `box`'s (x0, y0, x1, y1) sides centred on (cx, cy) within it, scaled so its long
    side is the image's: what a 2x closer framing of that region would look like."""
    x0, y0, x1, y1 = box
    cw, ch = max(16, (x1 - x0) // 2), max(16, (y1 - y0) // 2)
    wx = int(np.clip(cx - cw / 2, x0, max(x0, x1 - cw)))
    wy = int(np.clip(cy - ch / 2, y0, max(y0, y1 - ch)))
    crop = image.pixels[wy : wy + ch, wx : wx + cw]
    scale = max(image.pixels.shape) / max(crop.shape)
    return _image(_resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale))), image)


def zoom2(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    h, w = image.pixels.shape
    cx, cy = w / 2, h / 2
    if record.boxes:  # centred on a fracture, as a teaching file would frame it
        b = record.boxes[int(rng.integers(len(record.boxes)))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return _window(image, (0, 0, w, h), cx, cy)


def hand_fill(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    # Otsu on a smoothed copy: the hand against the dark background, not film grain or edge noise.
    smooth = gaussian_filter(image.pixels, 4.0)
    hist, edges = np.histogram(smooth, 256, (0.0, 1.0))
    p, mids = hist / hist.sum(), (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(p), np.cumsum(p * mids)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    bright = smooth > mids[int(np.argmax(between))]
    h, w = image.pixels.shape
    m = max(1, round(0.03 * max(h, w)))  # the bright strips along some FracAtlas edges would span the frame
    bright[:m], bright[-m:], bright[:, :m], bright[:, -m:] = False, False, False, False
    # Rows/columns with at least 3% bright pixels: side markers (R/L letters) and labels do not stretch the box.
    rows, cols = np.flatnonzero(bright.mean(1) > 0.03), np.flatnonzero(bright.mean(0) > 0.03)
    box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if len(rows) and len(cols) else (0, 0, w, h)
    return _window(image, box, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def blur(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    # sigma in pixels where the model looks: scaled up by the letterbox's downsampling of this image.
    return _image(gaussian_filter(image.pixels, BLUR_SIGMA * max(image.pixels.shape) / side), image)


def _on_8bit(image: XrayImage, change: Callable[[Image.Image], Image.Image]) -> XrayImage:
    """Apply a PIL filter that works on 8-bit grey (FracAtlas JPEGs are 8-bit, so nothing is lost)."""
    grey = Image.fromarray(np.round(image.pixels * 255).astype(np.uint8), mode="L")
    return _image(np.asarray(change(grey), np.float32) / 255, image)


def unsharp(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    return _on_8bit(image, lambda g: g.filter(ImageFilter.UnsharpMask(radius=4, percent=200, threshold=0)))


def histeq(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    return _on_8bit(image, ImageOps.equalize)


def invert(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    return _image(1.0 - image.pixels, image)


def nonrad(image: XrayImage, record: Record, rng: np.random.Generator, side: int) -> XrayImage:
    """A synthetic non-radiograph of the source image's size (the source's pixels are not used)."""
    h, w = image.pixels.shape
    rgb = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((3, 1.0), (8, 0.5), (24, 0.25), (72, 0.1)):  # smooth, then finer, colour variation
        noise = rng.random((cells, cells, 3)).astype(np.float32)
        rgb += weight * np.stack([_resize(noise[..., c], (w, h)) for c in range(3)], -1)
    angle = rng.uniform(0, 2 * np.pi)  # a light gradient across the scene
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rgb += 0.8 * (np.cos(angle) * xx + np.sin(angle) * yy)[..., None].astype(np.float32)
    scene = Image.fromarray(np.uint8(255 * (rgb - rgb.min()) / np.ptp(rgb)), mode="RGB")
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(3, 9))):  # objects with edges, as a photograph has
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        shape = [x0, y0, x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.1, 0.4) * h]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=fill)
    scene = scene.filter(ImageFilter.GaussianBlur(1.5))
    grey = np.asarray(scene.convert("L"), np.float32) / 255  # ITU-R 601 luma
    return _image(grey + rng.normal(0, 0.01, grey.shape), image)  # sensor noise


PROXIES: dict[str, Transform] = {
    "zoom2": zoom2,
    "hand_fill": hand_fill,
    "blur": blur,
    "unsharp": unsharp,
    "histeq": histeq,
    "invert": invert,
    "nonrad": nonrad,
}


def proxy_set(name: str, records: list[Record], n: int, seed: int, side: int) -> Iterator[XrayImage]:
    """`n` validation images (hand images for hand_fill) changed by proxy `name`; a generator per proxy
    (seeded by its name) keeps each set the same when others are added. Made one at a time: bounded memory."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    pool = [r for r in records if r.region == "hand"] if name == "hand_fill" else records
    chosen = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return (PROXIES[name](read_image(pool[i].path), pool[i], rng, side) for i in sorted(chosen))


def score(det: FractureDetector, images: Iterable[XrayImage | str]) -> tuple[np.ndarray, np.ndarray]:
    """(ood_score, flagged) per image; exits with one line when the model has no OOD statistics."""
    scores, flagged = [], []
    for image in images:
        pred = det.predict(image, heatmap=False, any_modality=True)  # nonrad and friends are no radiographs
        if pred.ood_score is None:
            raise SystemExit(f"{det.version}: this model has no OOD statistics (ood_score is None): nothing to measure")
        scores.append(pred.ood_score)
        flagged.append(pred.in_distribution is False)
    return np.asarray(scores), np.asarray(flagged)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--n", type=int, default=60, help="images per proxy set (hand_fill: at most the hand images)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    warnings.simplefilter("ignore", ImageReadWarning)  # a few FracAtlas JPEGs are truncated: scored as they read
    start = time.perf_counter()
    det = FractureDetector.load(args.model, precision="fp32")  # the figures are the fp32 model's
    records = select_records(args.dataset, args.split, "val")
    val_scores, val_flagged = score(det, [r.path for r in records])
    out: dict[str, object] = {
        "val_flagged": float(val_flagged.mean()),
        "val_n": len(records),
        "threshold": (det.spec.ood or {}).get("threshold"),
    }
    proxies: dict[str, dict[str, float | int]] = {}
    lines = ["| proxy | images | AUROC | flagged |", "|---|---:|---:|---:|"]
    lines.append(f"| val (reference) | {len(records)} | - | {val_flagged.mean():.3f} |")
    for name in PROXIES:
        s, f = score(det, proxy_set(name, records, args.n, args.seed, det.spec.image_size))
        y = np.r_[np.ones(len(s)), np.zeros(len(val_scores))]
        auroc = float(roc_auc_score(y, np.r_[s, val_scores]))
        proxies[name] = {"n": len(s), "auroc": auroc, "flagged": float(f.mean())}
        lines.append(f"| {name} | {len(s)} | {auroc:.3f} | {f.mean():.2f} |")
    out["proxies"] = proxies
    print("\n".join(lines))
    print(f"(OOD threshold {out['threshold']:.3f}; {time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
