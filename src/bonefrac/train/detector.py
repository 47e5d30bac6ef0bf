"""Training the detector: native-scale crops of the decode cache, CenterNet targets, and the joint loss.

The decode cache holds each image letterboxed to the model input (the same preprocessing as inference), so a
crop shows the fractures at the scale the model meets them whole. Training on 256 px crops costs about a
third of whole images; the crops of a fractured image contain one of its boxes most of the time (`p_box`),
and a scale jitter keeps the model from learning one pixel size per fracture (other sites' images).

The v3 recipe (issue 24 points 1, 2) adds, each off by default so that the defaults draw v2's crops bit for bit:
a wide zoom range whose zoom-out windows are padded with the letterbox fill (`pad`), boxes placed near a crop
edge so that the edge cuts through the bone (`p_edge`), square-root balancing of body regions (`region_balance`),
more draws of the smallest fractures (`small_box_factor`), other sites' processing (`photometric`), and crops
centred on the model's own peaks on normal images (`hard_negatives`, mined below).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bonefrac.models.grid import STRIDE, stride_for, stride_of
from bonefrac.preprocess import normalize, resized_shape
from bonefrac.spec import ModelSpec
from bonefrac.train import distributed
from bonefrac.train.augment import Photometric
from bonefrac.train.config import TrainConfig
from bonefrac.train.data import DecodeCache, Record

MAX_BOXES = 8  # FracAtlas has at most 6 boxes per image
NATIVE_ZOOM = (0.8, 1.25)  # v2's crop zoom: about the scale inference sees
#: With `region_balance`, no image is drawn more than this many times its unbalanced number per epoch (the
#: 6 training fractures of hips or shoulders would otherwise be drawn ~10 times each).
MAX_BALANCE_REPEAT = 3.0


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
    pad: bool = False  # windows larger than the image are padded with the letterbox fill (v2: clamped to it)
    p_native: float = 0.0  # chance that a crop draws v2's zoom (NATIVE_ZOOM, clamped to the image) instead
    size_in_view: bool = False  # size and offset regressed only for boxes wholly inside the crop
    stride: int = STRIDE  # the model's heatmap cell, in input pixels (`grid.stride_of`)
    p_edge: float = 0.0  # chance that a box crop puts the box near a crop edge rather than anywhere inside
    region_balance: bool = False  # each class's draws shared by body region as sqrt(images), not as images
    small_box_factor: float = 1.0  # draws of fractured images whose smallest box is in the smallest third
    p_hard_negative: float = 0.0  # chance that a normal image with mined peaks is cropped around one
    photometric: Photometric = field(default_factory=Photometric)
    seed: int = 0  # the rounding of the balanced pool's repeats
    #: Record index -> (k, 2) points (x, y) on the cached grid: the model's peaks on that normal image.
    hard_negatives: dict[int, np.ndarray] = field(default_factory=dict)
    hard_negative_every: int = 0  # mine every N epochs (0: never)
    hard_negative_images: int = 400  # normal images looked at per mining (0: all)
    spec: ModelSpec | None = None  # the model's preprocessing, for mining

    def epoch_pool(self) -> list[int]:
        """The record indices of one epoch, before shuffling (images with boxes repeated; with `region_balance`
        or `small_box_factor`, each image's expected draws rounded up or down at random, once for the run)."""
        base = np.array([self.box_repeat if r.boxes else 1 for r in self.records], np.float64)
        if not self.region_balance and self.small_box_factor == 1:
            return [i for i, n in enumerate(base.astype(int)) for _ in range(n)]
        weights = base.copy()
        fractured = np.array([bool(r.boxes) for r in self.records])
        if self.small_box_factor != 1 and fractured.any():
            side = np.array([self.smallest_box(i) if f else np.inf for i, f in enumerate(fractured)])
            weights[fractured & (side <= np.quantile(side[fractured], 1 / 3))] *= self.small_box_factor
        if self.region_balance:
            for cls in (True, False):  # each class keeps its draws; its regions share them as sqrt(images)
                members = np.flatnonzero(fractured == cls)
                groups: dict[str, list[int]] = defaultdict(list)
                for i in members:
                    groups[self.records[i].region.split(":")[0]].append(int(i))
                total, roots = weights[members].sum(), sum(math.sqrt(len(g)) for g in groups.values())
                for g in groups.values():
                    weights[g] *= total * math.sqrt(len(g)) / roots / weights[g].sum()
            weights = np.minimum(weights, MAX_BALANCE_REPEAT * base)
        rng = np.random.default_rng(self.seed)
        counts = np.floor(weights).astype(int) + (rng.random(len(weights)) < weights - np.floor(weights))
        return [i for i, n in enumerate(counts) for _ in range(n)]

    def smallest_box(self, i: int) -> float:
        """The longest side (cached-grid pixels) of record `i`'s smallest box."""
        b = self.boxes_on_grid(i)
        return float(np.max(b[:, 2:] - b[:, :2], axis=1).min())

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
        native = self.p_native > 0 and rng.random() < self.p_native
        window = round(self.crop / math.exp(rng.uniform(*np.log(NATIVE_ZOOM if native else self.scale))))
        window = window if self.pad and not native else min(size, window)
        # Where the window may start: inside the image, or holding all of it when larger (zoom-out).
        lo, hi = min(0, size - window), max(0, size - window)
        peaks = self.hard_negatives.get(i) if self.p_hard_negative > 0 and not len(boxes) else None
        if peaks is not None and len(peaks) and rng.random() < self.p_hard_negative:
            px, py = peaks[rng.integers(len(peaks))]
            x0, y0 = round(px - window / 2), round(py - window / 2)  # centred, padded where it leaves the image
        elif len(boxes) and rng.random() < self.p_box:
            b = boxes[rng.integers(len(boxes))]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if self.p_edge > 0 and rng.random() < self.p_edge:
                x0, y0 = _edge_start(rng, b, window, lo, hi)
            else:  # the whole box inside where it fits, else at least its centre, away from the edge by a cell
                x0 = _start(rng, b[0], b[2], cx, window, lo, hi)
                y0 = _start(rng, b[1], b[3], cy, window, lo, hi)
        else:
            x0, y0 = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        patch = _window(img, x0, y0, window)
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
        x = self.photometric(x, rng)  # draws nothing when off
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (centre_x >= 0) & (centre_x < self.crop) & (centre_y >= 0) & (centre_y < self.crop)
        return np.ascontiguousarray(x, np.float32), boxes[inside].reshape(-1, 4)

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Record `i`'s crop (1, crop, crop) drawn from `seed`, and its CenterNet targets (`data.Samples`)."""
        x, boxes = self.sample(i, np.random.default_rng(seed))
        targets = centernet_targets(boxes, self.crop, self.size_in_view, self.stride)
        return torch.from_numpy(x)[None], {k: torch.from_numpy(v) for k, v in targets.items()}

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        """Before each epoch (`data.Samples`): every `hard_negative_every` epochs from the first, the model's
        peaks on normal training images become the centres of hard-negative crops; True when they changed."""
        if not self.hard_negative_every or epoch % self.hard_negative_every or self.spec is None:
            return False
        t0 = time.time()
        subset = mining_subset(self, self.hard_negative_images, self.seed * 1000 + epoch)
        self.hard_negatives = mine(model, self.spec, self, subset)
        if distributed.is_main():
            points = sum(len(p) for p in self.hard_negatives.values())
            print(
                f"epoch {epoch + 1}: hard negatives: {points} peaks on {len(self.hard_negatives)} of {len(subset)} "
                f"normal images in {time.time() - t0:.0f} s",
                flush=True,
            )
        return True

    @classmethod
    def from_config(cls, cfg: TrainConfig, cache: DecodeCache, train: list[Record], spec: ModelSpec) -> CropSampler:
        """The detector's crops as a run's settings ask (the defaults: v2's recipe)."""
        zoom = (cfg.zoom_min, cfg.zoom_max)
        return cls(
            cache,
            train,
            crop=cfg.crop_size,
            scale=zoom,
            pad=zoom != (TrainConfig.zoom_min, TrainConfig.zoom_max),  # v2 clamped its windows to the image
            p_native=cfg.p_native,
            size_in_view=cfg.size_in_view,
            stride=stride_of(spec.arch),
            p_edge=cfg.p_edge,
            region_balance=cfg.region_balance,
            small_box_factor=cfg.small_box_factor,
            p_hard_negative=cfg.p_hard_negative if cfg.hard_negative_every else 0.0,
            photometric=Photometric(cfg.photometric),
            seed=cfg.seed,
            hard_negative_every=cfg.hard_negative_every,
            hard_negative_images=cfg.hard_negative_images,
            spec=spec,
        )

    def batch(self, idx: list[int], seeds: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, 1, crop, crop) crops in [0, 1] and their targets; `seeds` make each crop reproducible (the same
        crop for the same global position under torchrun or after a resume)."""
        crops, targets = [], []
        for i, seed in zip(idx, seeds, strict=True):
            x, boxes = self.sample(i, np.random.default_rng(seed))
            crops.append(x)
            targets.append(centernet_targets(boxes, self.crop, self.size_in_view, self.stride))
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


def _start(
    rng: np.random.Generator, lo: float, hi: float, centre: float, window: int, first_ok: int, last_ok: int
) -> int:
    """A window start (one axis) holding the box [lo, hi] where it fits, else its centre a cell from the edge,
    within [first_ok, last_ok]."""
    first = max(float(first_ok), min(hi - window, centre - window + STRIDE))
    last = min(last_ok, max(lo, centre - STRIDE))
    return int(rng.uniform(first, max(first, last)))


def _edge_start(rng: np.random.Generator, box: np.ndarray, window: int, lo: int, hi: int) -> tuple[int, int]:
    """A window start whose one edge (left, right, top or bottom, at random) passes between one cell and a
    quarter window from the box's centre: the edge cuts the bone, as a tight clinical crop does."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    axis, side = int(rng.integers(2)), int(rng.integers(2))
    d = rng.uniform(STRIDE, max(STRIDE, window / 4))
    centre, other_lo, other_hi, other_c = (cx, box[1], box[3], cy) if axis == 0 else (cy, box[0], box[2], cx)
    start = centre - d if side == 0 else centre + d - window
    near = int(np.clip(round(start), lo, hi))
    across = _start(rng, other_lo, other_hi, other_c, window, lo, hi)
    return (near, across) if axis == 0 else (across, near)


def _window(img: np.ndarray, x0: int, y0: int, window: int) -> np.ndarray:
    """img[y0 : y0 + window, x0 : x0 + window], the part outside the image filled with 0 (the letterbox fill)."""
    h, w = img.shape
    if 0 <= x0 and 0 <= y0 and x0 + window <= w and y0 + window <= h:
        return img[y0 : y0 + window, x0 : x0 + window]
    out = np.zeros((window, window), img.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + window), min(h, y0 + window)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


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


def centernet_targets(
    boxes: np.ndarray, size: int, in_view_only: bool = False, stride: int = STRIDE
) -> dict[str, np.ndarray]:
    """Boxes (k, 4) in input pixels -> the centre heatmap (1, h, w), and per box (up to MAX_BOXES) its cell
    index, log size in cells, sub-cell offset, a mask of the slots in use and `regress`, the slots whose size
    and offset are supervised: all of them, or with `in_view_only` those whose box lies wholly in the crop.

    Why `in_view_only`: a box cut by the crop edge (edge crops, 3x zooms of a large fracture) asks the model for
    an extent it cannot see, which teaches the size head to guess; its centre still trains the heatmap."""
    h = w = size // stride
    heatmap = np.zeros((h, w), np.float32)
    index, mask = np.zeros(MAX_BOXES, np.int64), np.zeros(MAX_BOXES, np.float32)
    regress = np.zeros(MAX_BOXES, np.float32)
    log_size, offset = np.zeros((MAX_BOXES, 2), np.float32), np.zeros((MAX_BOXES, 2), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:MAX_BOXES]):
        bw, bh = max(x1 - x0, 1.0) / stride, max(y1 - y0, 1.0) / stride
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < w and 0 <= iy < h):
            continue
        _draw_gaussian(heatmap, ix, iy, max(0, int(gaussian_radius(bh, bw))))
        index[k], mask[k] = iy * w + ix, 1.0
        regress[k] = float(not in_view_only or (x0 >= 0 and y0 >= 0 and x1 <= size and y1 <= size))
        log_size[k], offset[k] = (math.log(bw), math.log(bh)), (cx - ix, cy - iy)
    return {
        "heatmap": heatmap[None],
        "index": index,
        "log_size": log_size,
        "offset": offset,
        "mask": mask,
        "regress": regress,
    }


# ---------------------------------------------------------------- hard negatives
# Hard negatives (issue 24 point 2): where the detector fires on normal training images, to crop there.
#
# On other sites' hand radiographs the detector's peak lands on a normal joint (IP, MCP, CMC, carpal) in 74% of
# its misses: the joints outrank the fractures. Every few epochs the model looks at (a seeded subset of) the
# normal training images whole, as at inference, and each image's top local maxima of the centre heatmap above a
# floor are kept; `CropSampler` then centres some of those images' crops on them, with no box: the focal loss
# pushes those cells down.
TOP = 3  # peaks kept per image
FLOOR = 0.05  # sigmoid of the raw centre logit: below it a cell is no peak worth a crop


def mining_subset(sampler: CropSampler, limit: int | None, seed: int) -> list[int]:
    """The normal training images to look at: all of them, or `limit` of them drawn with `seed`, in order."""
    normals = [i for i, r in enumerate(sampler.records) if r.label == 0 and not r.boxes]
    if limit and len(normals) > limit:
        normals = sorted(np.random.default_rng(seed).choice(normals, limit, replace=False).tolist())
    return normals


@torch.no_grad()
def mine(
    model: torch.nn.Module, spec: ModelSpec, sampler: CropSampler, indices: list[int], batch_size: int = 16
) -> dict[int, np.ndarray]:
    """{record index: (k, 2) peak points (x, y) on the cached grid}, k <= TOP, for the images `indices` that
    have a peak above FLOOR inside their content. The model is put in eval mode; under torchrun each rank
    looks at its share and every rank receives all."""
    model.eval()
    device = next(model.parameters()).device

    def peaks_of(batch_indices: list[int]) -> np.ndarray:
        out = np.full((len(batch_indices), TOP, 2), np.nan, np.float32)
        for s in range(0, len(batch_indices), batch_size):
            chunk = batch_indices[s : s + batch_size]
            recs = [sampler.records[i] for i in chunk]
            x = torch.from_numpy(np.stack([sampler.cache.load(r.path) for r in recs]))[:, None].float().div_(255)
            x = normalize(x, spec).to(device).contiguous(memory_format=torch.channels_last)
            score = torch.sigmoid(model(x)[0].float())  # (n, 1, h, w) centre heatmap
            peak = (score == F.max_pool2d(score, 3, 1, 1)) & (score >= FLOOR)
            h, w = score.shape[-2:]
            stride = stride_for(x.shape[-1], w)
            centres_y = (torch.arange(h, device=device) + 0.5) * stride
            centres_x = (torch.arange(w, device=device) + 0.5) * stride
            for j, r in enumerate(recs):
                g = sampler.cache.geometry(r.path)
                nh, nw = resized_shape(g.height, g.width, g.size)
                content = ((centres_y >= g.pad_y) & (centres_y < g.pad_y + nh))[:, None] & (
                    (centres_x >= g.pad_x) & (centres_x < g.pad_x + nw)
                )[None]
                flat = torch.where(peak[j, 0] & content, score[j, 0], torch.zeros_like(score[j, 0])).flatten()
                values, cells = flat.topk(TOP)
                for k, (v, c) in enumerate(zip(values.tolist(), cells.tolist(), strict=True)):
                    if v > 0:
                        out[s + j, k] = ((c % w + 0.5) * stride, (c // w + 0.5) * stride)
        return out.reshape(len(batch_indices), -1)

    found = distributed.gather_predictions(peaks_of, indices).reshape(len(indices), TOP, 2)
    return {i: p[~np.isnan(p[:, 0])] for i, p in zip(indices, found, strict=True) if not np.isnan(p[0, 0])}


def hard_negatives_state(sampler: CropSampler | None) -> dict[str, list[list[float]]]:
    """The mined points by image key, for last.pt (plain lists: loadable with weights_only); {} when none."""
    if sampler is None:
        return {}
    return {sampler.records[i].key: p.tolist() for i, p in sampler.hard_negatives.items()}


def restore_hard_negatives(sampler: CropSampler | None, state: dict[str, list[list[float]]] | None) -> bool:
    """Put last.pt's mined points back into the sampler (a resumed run crops as if never stopped); True if any."""
    if sampler is None or not state:
        return False
    index = {r.key: i for i, r in enumerate(sampler.records)}
    sampler.hard_negatives = {
        index[k]: np.asarray(p, np.float32).reshape(-1, 2) for k, p in state.items() if k in index
    }
    return True
