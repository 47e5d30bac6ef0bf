"""Class-activation heatmaps and the boxes derived from them.

The classifier head is global-average-pool then linear, so applying `forward_head` at every location of
the `forward_features` map gives a per-location logit whose mean is exactly the image logit (CAM, Zhou et
al. 2016). No hooks, no gradients: the same computation runs in torch and inside the ONNX graph.

Boxes (documented method): the heatmap, mapped back onto the image, is thresholded at
`BOX_THRESHOLD` of its own maximum; each connected region becomes one box [x0, y0, x1, y1, score], with
score = fracture probability x the region's peak heat. At most `MAX_BOXES`, best first. The threshold was
chosen on the bundled model's validation split: FracAtlas fracture boxes are small (median 29 px wide in
373x454 images) and the heatmap comes from an 8 x 8 grid, so only its very top marks a fracture-sized
region (top-box precision at IoU 0.3: 0.01 at 50% of the peak, 0.22 at 90%, 0.31 at 95%, 0.29 at 97%).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays unimported when predicting through onnxruntime
    import torch

BOX_THRESHOLD = 0.95
MAX_BOXES = 3


def class_activation_map(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) features -> (N, h, w) per-location logits, via the model's own `forward_head`."""
    n, c, h, w = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(n * h * w, c, 1, 1)
    return model.forward_head(cells).reshape(n, h, w)


def normalize_heatmap(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]: where the model looks, relative to the rest of this image."""
    lo, hi = float(cam.min()), float(cam.max())
    if hi <= lo:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32, copy=False)


def heatmap_peak(heat: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel position of the heatmap maximum."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return float(x), float(y)


def boxes_from_heatmap(heat: np.ndarray, probability: float, threshold: float = BOX_THRESHOLD) -> list[list[float]]:
    """Connected regions of `heat >= threshold * max` as [x0, y0, x1, y1, score] in the heatmap's pixels."""
    if heat.size == 0 or float(heat.max()) <= 0:
        return []
    mask = heat >= threshold * float(heat.max())
    boxes = [
        [float(x0), float(y0), float(x1), float(y1), round(probability * peak, 4)]
        for y0, x0, y1, x1, peak in _regions(mask, heat)
    ]
    boxes.sort(key=lambda b: -b[4])
    return boxes[:MAX_BOXES]


def _regions(mask: np.ndarray, heat: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """4-connected regions of `mask` (as scipy.ndimage.label's default, in its order: by first pixel in
    raster order) as (y0, x0, y1, x1, max heat).

    A heatmap's top is a few smooth blobs, so the mask is first cut along empty rows and columns (XY-cut)
    into blocks that are nearly always one blob each; a block is one region when each of its rows is a single
    run overlapping the run above. Only a block that fails that test (a U shape, two blobs that only touch
    the cut lines diagonally) is labelled run by run. Boxes for the bundled model's heatmaps of 400 FracAtlas
    images: 0.28 -> 0.19 ms per image (the run-by-run labelling of the whole mask before)."""
    found: list[tuple[int, int, int, int, int, float]] = []  # (y0, first x, x0, y1, x1, peak)
    blocks = [(0, mask.shape[0], 0, mask.shape[1])]
    while blocks:
        r0, r1, c0, c1 = blocks.pop()
        row_bands = _bands(mask[r0:r1, c0:c1].any(axis=1))
        if len(row_bands) != 1:
            blocks += [(r0 + a, r0 + b, c0, c1) for a, b in row_bands]
            continue
        r0, r1 = r0 + row_bands[0][0], r0 + row_bands[0][1]
        col_bands = _bands(mask[r0:r1, c0:c1].any(axis=0))
        if len(col_bands) != 1:
            blocks += [(r0, r1, c0 + a, c0 + b) for a, b in col_bands]
            continue
        c0, c1 = c0 + col_bands[0][0], c0 + col_bands[0][1]
        block, block_heat = mask[r0:r1, c0:c1], heat[r0:r1, c0:c1]
        first = block.argmax(axis=1)
        stop = block.shape[1] - block[:, ::-1].argmax(axis=1)
        one_run = bool((block.sum(axis=1) == stop - first).all())
        if one_run and bool(((first[1:] < stop[:-1]) & (first[:-1] < stop[1:])).all()):
            peak = float(np.max(block_heat, where=block, initial=-np.inf))
            found.append((r0, c0 + int(first[0]), c0, r1, c1, peak))
        else:
            for y0, fx, x0, y1, x1, pk in _run_regions(block, np.ascontiguousarray(block_heat)):
                found.append((y0 + r0, fx + c0, x0 + c0, y1 + r0, x1 + c0, pk))
    found.sort(key=lambda r: (r[0], r[1]))
    return [(y0, x0, y1, x1, peak) for y0, _, x0, y1, x1, peak in found]


def _bands(nonempty: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each stretch of True in a 1-D boolean array."""
    idx = np.flatnonzero(nonempty)
    if not len(idx):
        return []
    if idx[-1] - idx[0] + 1 == len(idx):  # the usual case: one stretch
        return [(int(idx[0]), int(idx[-1]) + 1)]
    cuts = np.flatnonzero(np.diff(idx) > 1)
    starts = [int(idx[0]), *(int(i) for i in idx[cuts + 1])]
    stops = [*(int(i) + 1 for i in idx[cuts]), int(idx[-1]) + 1]
    return list(zip(starts, stops, strict=True))


def _run_regions(mask: np.ndarray, heat: np.ndarray) -> list[tuple[int, int, int, int, int, float]]:
    """Regions of a block as (y0, first x, x0, y1, x1, peak), from its row runs: a run belongs with each run
    on the row above that shares a column (found for all runs at once by binary search), and each region's
    extent is reduced per label. Vectorised but for the union-find over the rare joining links: ~0.1 ms for
    a block of a few hundred runs, where scipy's import alone would cost 0.17 s of start-up."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)  # (np.pad: ~10x slower for these small blocks)
    padded[:, 1:-1] = mask
    edges = padded[:, 1:] - padded[:, :-1]
    row, a = np.nonzero(edges == 1)
    b = np.nonzero(edges == -1)[1]  # same row-major order: the k-th end closes the k-th start
    bounds = np.empty(2 * len(a), np.intp)
    bounds[0::2], bounds[1::2] = row * width + a, row * width + b
    peak = np.maximum.reduceat(np.append(heat.ravel(), 0), bounds)[::2]  # (each segment end a valid index)
    # Runs j on row r - 1 overlapping run k ([a, b) intersect) are the index range [lo_k, hi_k) of the runs
    # in raster order: keys row * (width + 1) + column never collide across rows.
    stride = width + 1
    above = (row - 1) * stride
    lo = np.searchsorted(row * stride + b, above + a, side="right")
    hi = np.searchsorted(row * stride + a, above + b, side="left")
    count = np.maximum(hi - lo, 0)
    # Each run hangs from the first run it touches above: a forest whose roots are resolved by pointer
    # jumping. The few remaining links (a run touching several runs above: blobs joining) are merged by a
    # small union-find over those roots. A label is the region's first run in raster order.
    parent = np.arange(len(row))
    parent[count > 0] = lo[count > 0]
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    more = np.maximum(count - 1, 0)  # links beyond the first, per run
    k = np.repeat(np.arange(len(row)), more)
    j = lo[k] + 1 + np.arange(len(k)) - np.repeat(np.cumsum(more) - more, more)  # its 2nd, 3rd... run above
    joined: dict[int, int] = {}

    def find(x: int) -> int:
        while joined.get(x, x) != x:
            x = joined[x]
        return x

    for rj, rk in zip(parent[j].tolist(), parent[k].tolist(), strict=True):
        rj, rk = find(rj), find(rk)
        if rj != rk:
            joined[max(rj, rk)] = min(rj, rk)
    if joined:
        final = np.arange(len(row))
        final[list(joined)] = [find(r) for r in joined]
        parent = final[parent]  # each run's label: its region's first run
    order = np.argsort(parent, kind="stable")
    grouped = parent[order]
    first = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    row, a, b, peak = row[order], a[order], b[order], peak[order]
    return list(
        zip(
            row[first].tolist(),
            a[first].tolist(),  # stable sort: each label's first run is its first in raster order
            np.minimum.reduceat(a, first).tolist(),
            (np.maximum.reduceat(row, first) + 1).tolist(),
            np.maximum.reduceat(b, first).tolist(),
            np.maximum.reduceat(peak, first).astype(float).tolist(),
            strict=True,
        )
    )
