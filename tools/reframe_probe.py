"""Scale probe: the pointing game on validation fractures re-framed as another source might frame them.

Teaching-file and other hospitals' radiographs are often cropped to the region of interest, so a fracture
fills more of the image than in FracAtlas. This re-frames each fractured validation image: a window of
1/zoom of each side, around a fracture box (at a random place within the window), resized back to the
original long side; then asks whether the model's peak lands in a fracture box. A proxy, not a second
source: it moves the scale, not the scanner, processing or population.

    python tools/reframe_probe.py --model src/bonefrac/weights/model.pt \
        --split src/bonefrac/weights/split.json --dataset ../shared/data/fracatlas --zoom 1 1.5 2 3

`--json OUT` also writes {"zoom": {"1.5": pointing game, ...}, "n": images}: `tools/compare_models.py
--reframe LABEL=OUT` reads it into the model comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bonefrac import FractureDetector
from bonefrac.datasets import load_dataset, load_split
from bonefrac.io.image import XrayImage
from bonefrac.io.read import read_image


def reframe(
    image: XrayImage, box: list[float], zoom: float, rng: np.random.Generator
) -> tuple[XrayImage, float, int, int]:
    """The window (1/zoom of each side) around `box`, resized to the image's long side; returns the new image,
    its scale and the window's origin."""
    h, w = image.pixels.shape
    ch, cw = max(32, round(h / zoom)), max(32, round(w / zoom))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    y0 = int(np.clip(cy - rng.uniform(0.25, 0.75) * ch, 0, h - ch))
    x0 = int(np.clip(cx - rng.uniform(0.25, 0.75) * cw, 0, w - cw))
    crop = image.pixels[y0 : y0 + ch, x0 : x0 + cw]
    scale = max(h, w) / max(ch, cw)
    size = (round(cw * scale), round(ch * scale))
    pixels = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    meta = {k: v for k, v in image.meta.items() if k != "reduced_by"} | {"width": size[0], "height": size[1]}
    return XrayImage(pixels=pixels, path=image.path, meta=meta), scale, x0, y0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--zoom", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the pointing game per zoom to this JSON file")
    args = ap.parse_args()
    det = FractureDetector.load(args.model)
    split = load_split(Path(args.split))
    records = [r for r in load_dataset(args.dataset) if split.get(r.key) == "val" and r.boxes][: args.limit]
    out = {}
    for zoom in args.zoom:
        rng = np.random.default_rng(args.seed)
        hits = []
        for r in records:
            image = read_image(r.path)
            framed, scale, x0, y0 = reframe(image, r.boxes[0], zoom, rng)
            px, py = det.predict(framed, heatmap=False).peak
            boxes = [
                [(b[0] - x0) * scale, (b[1] - y0) * scale, (b[2] - x0) * scale, (b[3] - y0) * scale] for b in r.boxes
            ]
            hits.append(any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in boxes))
        out[f"zoom {zoom:g}"] = {"pointing_game": float(np.mean(hits)), "n": len(hits)}
        print(f"zoom {zoom:g}: pointing game {np.mean(hits):.3f} (n = {len(hits)})", flush=True)
    print(json.dumps(out))
    if args.json:
        zooms = {f"{z:g}": out[f"zoom {z:g}"]["pointing_game"] for z in args.zoom}
        args.json.write_text(json.dumps({"zoom": zooms, "n": len(records)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
