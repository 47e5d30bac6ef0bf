"""The detector kind: a dense CenterNet-style head (`models.centernet`).

Outputs "heatmap" (N, h, w) centre logits at stride 8, "size" (N, 2, h, w) log box size in cells, "offset"
(N, 2, h, w) centre offset in cells, "global" (N,) the global head's logit, "ood_features" (N, 152) what
`models.ood` scores against the training images. The image's probability and the
heatmap come from the calibrated cell scores (centre and global heads together); each detection is scored by
its own centre logit through the same calibration, so boxes rank across images by their own evidence. An
image can thus be called normal with a box above the threshold, or fractured without one.

Training: crops with CenterNet targets (`train.detector.CropSampler`), `centernet.detection_loss`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bonefrac.models.grid import stride_for
from bonefrac.models.kinds.base import (
    DETECTION_FLOOR,
    MAX_DETECTIONS,
    HeatmapOption,
    Kind,
    Read,
    StepContext,
    display_shape,
    probabilities,
)
from bonefrac.preprocess import Geometry, float_image, resized_shape

if TYPE_CHECKING:
    import torch
    from torch import nn


class Detector(Kind):
    name = "detector"
    outputs = ("heatmap", "size", "offset", "global", "ood_features")
    outputs_doc = (
        "heatmap (N, h, w): fracture-centre logits on a stride-8 grid; size (N, 2, h, w): log(width / 8), "
        "log(height / 8); offset (N, 2, h, w): the centre's (dx, dy) in the cell, so centre = (cell + offset) * 8 "
        "input pixels; global (N,): the global head's logit; ood_features (N, 152): the spatial mean of the backbone's "
        "c8 and c16 channels (the spec's ood statistics score them). Per cell z = (heatmap + global) / 2, its score "
        "sigmoid(scale * z + bias); image z = the highest z over the image content (not the padding); {calibrated}"
    )
    parity_as_probability = ("global", "heatmap")
    parity_as_is = ("size", "offset")
    trains_on_crops = True
    box_note = "  (a box is scored on its own, the decision on the whole image: a FRACTURE may have no box)"
    heatmap_note = "  (the heatmap is the detector's score on the probability's scale: a normal image stays dark)"

    def decode(
        self, outputs: dict[str, np.ndarray], i: int, g: Geometry, calibration: dict[str, float], heatmap: HeatmapOption
    ) -> Read:
        return read_detector(
            outputs["heatmap"][i], outputs["size"][i], outputs["offset"][i], float(outputs["global"][i]), g,
            calibration, heatmap,
        )  # fmt: skip

    def export_module(self, model: nn.Module, size: int) -> nn.Module:
        from bonefrac.models.centernet import DetectorGraph

        return DetectorGraph(model)

    def slow_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The ImageNet backbone learns at `backbone_lr_scale` of the rate, the new heads at the full one."""
        return list(model.backbone_parameters())

    def training_step(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, float, float | None]:
        """`detection_loss` on this rank's crops; the logged part is the centre heatmap's. Scaled by
        `ctx.world` so that the mean over ranks is the global batch's."""
        from bonefrac.models.centernet import detection_loss, target_counts

        # Ranks hold different numbers of centres: each divides its sums by the global batch's counts, times
        # world for DDP's average (in one process: this batch's counts, times 1).
        counts = ctx.sum_ints(list(target_counts(targets))) if ctx.world > 1 else None
        loss, parts = detection_loss(model(x), targets, counts=counts)  # computed in fp32 (it casts)
        return loss * ctx.world, loss.item() * ctx.world, parts["heatmap"] * ctx.world

    def validation_outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from bonefrac.models.centernet import logits_and_peaks

        return logits_and_peaks(model, x)


DETECTOR = Detector()


# ---------------------------------------------------------------- decoding (numpy)
def read_detector(
    heat_logits: np.ndarray,
    log_size: np.ndarray,
    offset: np.ndarray,
    global_logit: float,
    g: Geometry,
    calibration: dict[str, float],
    heatmap: HeatmapOption,
) -> Read:
    """A detector's image from its outputs on its grid (stride 8 or 4, read from their shape): (h, w) centre
    logits, (2, h, w) log box size in cells, (2, h, w) centre offset in cells, and the global head's logit.

    Each cell inside the image content scores sigmoid(a * z + b), z = (centre logit + global logit) / 2 (the
    training's `detection_model.image_logit` per cell): the heatmap, and the image's probability at its highest.
    Detections are the 3 x 3 local maxima of the centre logits, decoded as CenterNet does, each scored by its own
    centre logit c as sigmoid(a * c + b): without the global head's image-wide term, which would rank every box
    of a confident image above every box of a doubtful one (validation box AP@0.5 0.12 with it, 0.27 without)."""
    stride = stride_for(g.size, heat_logits.shape[1])
    rows, cols = content_cells(g, heat_logits.shape)
    centre_logit = heat_logits[rows, cols].astype(np.float64)
    score = probabilities((centre_logit + global_logit) / 2, calibration)
    box_score = probabilities(centre_logit, calibration)
    best = int(np.argmax(centre_logit))
    keep = local_maxima(box_score, DETECTION_FLOOR)[:MAX_DETECTIONS]
    # CenterNet's decoding, in model-input pixels, then in the content's (the padding subtracted) and the image's.
    r, c = np.divmod(np.append(keep, best), score.shape[1])
    r, c = r + rows.start, c + cols.start  # on the whole grid
    centre = (np.stack([c, r], 1) + offset[:, r, c].T.astype(np.float64)) * stride  # (k, 2) x, y
    # (a size beyond twice the input is clipped by the image anyway; capping it avoids exp overflow)
    half = np.exp(np.minimum(log_size[:, r, c].T.astype(np.float64), np.log(2 * g.size / stride))) * stride / 2
    boxes = g.to_image(np.concatenate([centre - half, centre + half], 1))
    centre = g.to_image(centre)
    scores = box_score.ravel()[np.append(keep, best)][:, None]
    detections = np.concatenate([boxes, scores], 1)[:-1].tolist()
    return Read(
        logit=float((centre_logit.flat[best] + global_logit) / 2),
        probability=float(score.flat[best]),
        detections=detections,
        peak=centre[-1].tolist(),  # the best cell's centre: the best detection's, when it has one
        heatmap=cell_heatmap_on_image(score, rows, cols, g, stride, full=heatmap == "full") if heatmap else None,
    )


def content_cells(g: Geometry, grid: tuple[int, ...]) -> tuple[slice, slice]:
    """The rows and columns of heatmap cells whose centre lies in the image content (not the letterbox
    padding): padding cells see only the zero border, and must neither detect nor score the image."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    stride = stride_for(g.size, grid[1])

    def span(pad: int, n: int, cells: int) -> slice:
        first = min(max(0, math.ceil((pad - stride / 2) / stride)), cells - 1)
        return slice(first, max(first + 1, min(cells, math.ceil((pad + n - stride / 2) / stride))))

    return span(g.pad_y, nh, grid[0]), span(g.pad_x, nw, grid[1])


def local_maxima(score: np.ndarray, floor: float) -> np.ndarray:
    """Flat indices of the cells that are the maximum of their 3 x 3 neighbourhood (CenterNet's max-pool
    "NMS") and score at least `floor`, best first (ties in raster order)."""
    padded = np.pad(score, 1, constant_values=-np.inf)
    h, w = score.shape
    neighbourhood = padded[1:-1, 1:-1].copy()
    for dy, dx in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):  # all but the centre (1, 1)
        np.maximum(neighbourhood, padded[dy : dy + h, dx : dx + w], out=neighbourhood)
    flat = score.ravel()
    candidates = np.flatnonzero((score >= neighbourhood).ravel() & (flat >= floor))
    return candidates[np.argsort(-flat[candidates], kind="stable")]


def cell_heatmap_on_image(
    score: np.ndarray, rows: slice, cols: slice, g: Geometry, stride: int, full: bool = False
) -> np.ndarray:
    """The content cells' scores (absolute, not normalised) resized (bilinear) onto the whole image: its full
    (height, width), or display size. The cells are placed where they lie on the model input, the content's
    edge cells extended over the padding, so the map lines up with the image rather than with the cell grid."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    shape = (g.height, g.width) if full else display_shape(g.height, g.width)
    # The content's extent in cell units, relative to the first content cell's top-left corner (pad by one
    # cell of the edge values on every side so that the box never reaches outside the source).
    x0, y0 = g.pad_x / stride - cols.start + 1, g.pad_y / stride - rows.start + 1
    source = float_image(np.pad(score.astype(np.float32), 1, mode="edge"))
    box = (x0, y0, x0 + nw / stride, y0 + nh / stride)
    return np.array(source.resize(shape[::-1], Image.BILINEAR, box=box))  # (asarray's would be read-only)
