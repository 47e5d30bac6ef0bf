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

from typing import TYPE_CHECKING, Any

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
    """4-connected regions of `mask` (as scipy.ndimage.label's default) as (y0, x0, y1, x1, max heat)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return []
    # The mask is the top few percent of a smooth map: a small block of the image holds all of it.
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    found = _block_regions(mask[r0:r1, c0:c1], np.ascontiguousarray(heat[r0:r1, c0:c1]))
    return [(y0 + r0, x0 + c0, y1 + r0, x1 + c0, peak) for y0, x0, y1, x1, peak in found]


def _block_regions(mask: np.ndarray, heat: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """`_regions` on the mask's bounding block (`heat` contiguous): row runs joined by union-find. The mask
    holds a handful of blobs, tens of runs, so this costs microseconds, where scipy's import alone costs
    0.17 s of start-up."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)  # (np.pad: ~10x slower for these small blocks)
    padded[:, 1:-1] = mask
    edges = padded[:, 1:] - padded[:, :-1]
    run_row, c0 = np.nonzero(edges == 1)
    c1 = np.nonzero(edges == -1)[1]  # same row-major order: the k-th end closes the k-th start
    bounds = np.empty(2 * len(c0), np.intp)
    bounds[0::2], bounds[1::2] = run_row * width + c0, run_row * width + c1
    flat = np.append(heat.ravel(), 0)  # reduceat needs each segment end to be a valid index
    run_peak = np.maximum.reduceat(flat, bounds)[::2]
    # The usual heatmap top is one blob: one run per row, each overlapping the one above.
    if (np.diff(run_row) == 1).all() and ((c0[1:] < c1[:-1]) & (c0[:-1] < c1[1:])).all():
        return [(int(run_row[0]), int(c0.min()), int(run_row[-1]) + 1, int(c1.max()), float(run_peak.max()))]
    # Otherwise union-find over runs: a run joins every run on the row above that shares a column.
    parent = list(range(len(run_row)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    r_list, a_list, b_list = run_row.tolist(), c0.tolist(), c1.tolist()
    first_of_row: dict[int, int] = {}
    for k, r in enumerate(r_list):
        first_of_row.setdefault(r, k)
        j = first_of_row.get(r - 1)
        while j is not None and j < len(r_list) and r_list[j] == r - 1:
            if a_list[j] < b_list[k] and a_list[k] < b_list[j]:
                parent[root(k)] = root(j)
            j += 1
    # Tens of runs: plain Python beats numpy's per-call overhead here (np.unique and ufunc.at: ~0.1 ms).
    regions: dict[int, list[Any]] = {}
    for k, (r, a, b, peak) in enumerate(zip(r_list, a_list, b_list, run_peak.tolist(), strict=True)):
        box = regions.get(root(k))
        if box is None:
            regions[root(k)] = [r, a, r + 1, b, peak]
        else:
            box[:] = [min(box[0], r), min(box[1], a), max(box[2], r + 1), max(box[3], b), max(box[4], peak)]
    return [(int(y0), int(x0), int(y1), int(x1), float(pk)) for y0, x0, y1, x1, pk in regions.values()]
