"""Training the detector: native-scale crops of the decode cache, CenterNet targets, and the joint loss.

The decode cache holds each image letterboxed to the model input (the same preprocessing as inference), so a
crop shows the fractures at the scale the model meets them whole. Training on 256 px crops costs about a
third of whole images; the crops of a fractured image contain one of its boxes most of the time (`p_box`),
and a mild scale jitter keeps the model from learning one pixel size per fracture (other sites' images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bonefrac.models.kinds.detector import STRIDE
from bonefrac.train.data import DecodeCache, Record

MAX_BOXES = 8  # FracAtlas has at most 6 boxes per image


@dataclass
class CropSampler:
    """Random `crop` x `crop` training crops from the decode cache, with their boxes in crop pixels."""

    cache: DecodeCache
    records: list[Record]
    crop: int = 256
    p_box: float = 0.7  # chance that a crop of a fractured image contains one of its boxes
    box_repeat: int = 2  # images with boxes appear this many times per epoch
    scale: tuple[float, float] = (0.8, 1.25)  # log-uniform zoom of the crop window
    flip_p: float = 0.5
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.1
    brightness: float = 0.05

    def epoch_pool(self) -> list[int]:
        """The record indices of one epoch, before shuffling (images with boxes repeated)."""
        return [i for i, r in enumerate(self.records) for _ in range(self.box_repeat if r.boxes else 1)]

    def boxes_on_grid(self, i: int, records: list[Record] | None = None) -> np.ndarray:
        """The boxes of record `i` (of `records`, by default the training ones), from image pixels onto the
        cached (size x size) grid, (k, 4)."""
        r = (records or self.records)[i]
        if not r.boxes:
            return np.zeros((0, 4), np.float32)
        g = self.cache.geometry(r.path)
        b = np.asarray(r.boxes, np.float32).reshape(-1, 4)
        return g.to_model(b).astype(np.float32)

    def sample(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop in [0, 1] (crop, crop) and its boxes (k, 4) in crop pixels."""
        img, boxes = self.cache.load(self.records[i].path), self.boxes_on_grid(i)
        size = img.shape[0]
        window = min(size, round(self.crop / math.exp(rng.uniform(*np.log(self.scale)))))
        if len(boxes) and rng.random() < self.p_box:
            b = boxes[rng.integers(len(boxes))]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            # the whole box inside where it fits, else at least its centre, away from the edge by a cell
            x0 = _start(rng, b[0], b[2], cx, window, size)
            y0 = _start(rng, b[1], b[3], cy, window, size)
        else:
            x0, y0 = int(rng.integers(0, size - window + 1)), int(rng.integers(0, size - window + 1))
        patch = img[y0 : y0 + window, x0 : x0 + window]
        zoom = self.crop / window
        if window != self.crop:
            patch = np.asarray(Image.fromarray(patch).resize((self.crop, self.crop), Image.BILINEAR))
        x = patch.astype(np.float32) / 255.0
        boxes = (boxes - np.array([x0, y0, x0, y0], np.float32)) * zoom
        if rng.random() < self.flip_p:
            x = x[:, ::-1]
            boxes = np.stack([self.crop - boxes[:, 2], boxes[:, 1], self.crop - boxes[:, 0], boxes[:, 3]], 1)
        x = x ** rng.uniform(*self.gamma)
        c, shift = rng.uniform(1 - self.contrast, 1 + self.contrast), rng.uniform(-self.brightness, self.brightness)
        x = np.clip((x - 0.5) * c + 0.5 + shift, 0, 1)
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (centre_x >= 0) & (centre_x < self.crop) & (centre_y >= 0) & (centre_y < self.crop)
        return np.ascontiguousarray(x, np.float32), boxes[inside].reshape(-1, 4)

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Record `i`'s crop (1, crop, crop) drawn from `seed`, and its CenterNet targets (`data.Samples`)."""
        x, boxes = self.sample(i, np.random.default_rng(seed))
        targets = centernet_targets(boxes, self.crop)
        return torch.from_numpy(x)[None], {k: torch.from_numpy(v) for k, v in targets.items()}

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        """Before each epoch (`data.Samples`): where the crops would follow the model; True if they changed."""
        return False

    def batch(self, idx: list[int], seeds: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, 1, crop, crop) crops in [0, 1] and their targets; `seeds` make each crop reproducible (the same
        crop for the same global position under torchrun or after a resume)."""
        crops, targets = [], []
        for i, seed in zip(idx, seeds, strict=True):
            x, boxes = self.sample(i, np.random.default_rng(seed))
            crops.append(x)
            targets.append(centernet_targets(boxes, self.crop))
        stacked = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
        return torch.from_numpy(np.stack(crops))[:, None], stacked


def pointing_game(sampler: CropSampler, records: list[Record], peaks: np.ndarray) -> float:
    """Share of the records with boxes whose heatmap peak (`peaks` (N, 2), x, y on the cached grid) falls
    inside one of their boxes; nan without boxes."""
    hits = [
        any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in sampler.boxes_on_grid(i, records))
        for i, (px, py) in enumerate(peaks)
        if records[i].boxes
    ]
    return float(np.mean(hits)) if hits else float("nan")


def _start(rng: np.random.Generator, lo: float, hi: float, centre: float, window: int, size: int) -> int:
    first = max(0.0, min(hi - window, centre - window + STRIDE))
    last = min(size - window, max(lo, centre - STRIDE))
    return int(rng.uniform(first, max(first, last)))


# ---------------------------------------------------------------- CenterNet targets (the loss: `models.centernet`)
def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (in cells) within which a centre still gives a box of IoU >= `min_overlap`."""
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    sigma = (2 * radius + 1) / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    h, w = heatmap.shape
    left, right, top, bottom = min(cx, radius), min(w - cx, radius + 1), min(cy, radius), min(h - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    np.maximum(region, g[radius - top : radius + bottom, radius - left : radius + right], out=region)


def centernet_targets(boxes: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Boxes (k, 4) in input pixels -> the centre heatmap (1, h, w), and per box (up to MAX_BOXES) its cell
    index, log size in cells, sub-cell offset and a mask of the slots in use."""
    h = w = size // STRIDE
    heatmap = np.zeros((h, w), np.float32)
    index, mask = np.zeros(MAX_BOXES, np.int64), np.zeros(MAX_BOXES, np.float32)
    log_size, offset = np.zeros((MAX_BOXES, 2), np.float32), np.zeros((MAX_BOXES, 2), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:MAX_BOXES]):
        bw, bh = max(x1 - x0, 1.0) / STRIDE, max(y1 - y0, 1.0) / STRIDE
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < w and 0 <= iy < h):
            continue
        _draw_gaussian(heatmap, ix, iy, max(0, int(gaussian_radius(bh, bw))))
        index[k], mask[k] = iy * w + ix, 1.0
        log_size[k], offset[k] = (math.log(bw), math.log(bh)), (cx - ix, cy - iy)
    return {"heatmap": heatmap[None], "index": index, "log_size": log_size, "offset": offset, "mask": mask}
