"""The classifier kind: one image logit and a class-activation map (`models.classifier`).

Outputs "logit" (N,) and "cam" (N, S, S). The class-activation map (`FractureNet.class_activation_map`, 8 x 8
for a 256 px input) comes out of the graph already upsampled onto the model input (`LogitAndCam`); decoding
cuts the letterbox padding away, min-max normalises it per image (where the model looks, relative to the rest
of this image), then resizes it onto the image. Its boxes (documented method): the heatmap at model resolution
is thresholded at `BOX_THRESHOLD` of its own maximum; each 4-connected region becomes one box
[x0, y0, x1, y1, score] with score = the image's probability; at most `MAX_BOXES`, the hottest region first.
The threshold was chosen on the bundled model's validation split: fracture boxes are small and the heatmap
comes from an 8 x 8 grid, so only its very top marks a fracture-sized region.

Training: whole images, class-balanced cross-entropy, plus the box-supervision loss of the map where boxes
are given (`localization_loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bonefrac.models.kinds.base import (
    DETECTION_FLOOR,
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

BOX_THRESHOLD = 0.95
MAX_BOXES = 3


class Classifier(Kind):
    name = "classifier"
    outputs = ("logit", "cam")
    outputs_doc = "logit (N,) = z, {calibrated}; cam (N, S, S): per-location logits (mean = logit)"
    parity_as_probability = ("logit",)  # the map's mean is the logit
    box_supervision = True

    def decode(
        self, outputs: dict[str, np.ndarray], i: int, g: Geometry, calibration: dict[str, float], heatmap: HeatmapOption
    ) -> Read:
        return read_classifier(float(outputs["logit"][i]), outputs["cam"][i], g, calibration, heatmap)

    def export_module(self, model: nn.Module, size: int) -> nn.Module:
        from bonefrac.models.classifier import LogitAndCam

        return LogitAndCam(model, size)

    def training_step(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, float, float | None]:
        """Cross-entropy of the image logit (weighted by `ctx.share`), plus `ctx.loc_weight` x the
        box-supervision loss when `targets` has "masks"."""
        import torch.nn.functional as F

        from bonefrac.models.classifier import box_targets, localization_loss

        masks = targets.get("masks")
        loc: torch.Tensor | float = 0.0
        if masks is not None:
            logits, cam = model(x, return_cam=True)
            cam = cam.float()
            # Ranks hold different numbers of boxed images: divide by the global batch's count, times
            # world for DDP's average (in one process: the plain mean, times 1).
            n_boxed = ctx.sum_ints([int(box_targets(cam, masks)[1].sum())])[0] if ctx.world > 1 else None
            loc = localization_loss(cam, masks, n_boxed) * ctx.world
        else:
            logits = model(x)
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets["label"], pos_weight=ctx.pos_weight)
        loss = bce * ctx.share + ctx.loc_weight * loc
        return loss, loss.item(), loc.item() if masks is not None else None

    def validation_outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)


CLASSIFIER = Classifier()


# ---------------------------------------------------------------- decoding (numpy)
def read_classifier(
    logit: float, cam: np.ndarray, g: Geometry, calibration: dict[str, float], heatmap: HeatmapOption
) -> Read:
    """A classifier's image: its calibrated probability, the CAM's hot regions as boxes scoring it."""
    prob = float(probabilities(logit, calibration))
    content = normalize_heatmap(content_map(cam, g))
    py, px = np.unravel_index(int(np.argmax(content)), content.shape)
    boxes = boxes_from_heatmap(content, prob) if prob >= DETECTION_FLOOR else []
    return Read(
        logit=logit,
        probability=prob,
        detections=[content_box_to_image(b, g) for b in boxes],
        peak=content_box_to_image([px + 0.5, py + 0.5, px + 0.5, py + 0.5], g)[:2],  # the pixel's centre
        heatmap=heatmap_on_image(content, g, full=heatmap == "full") if heatmap else None,
    )


def content_map(cam: np.ndarray, g: Geometry) -> np.ndarray:
    """The image's part of a (size, size) map on the model input (`models.classifier.LogitAndCam`): no padding."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    return cam[g.pad_y : g.pad_y + nh, g.pad_x : g.pad_x + nw]


def heatmap_on_image(content: np.ndarray, g: Geometry, full: bool = False) -> np.ndarray:
    """A content map resized (bilinear) onto the whole image: its full (height, width), or display size;
    min-max normalised (a classifier's heatmap is relative to the rest of its image)."""
    shape = (g.height, g.width) if full else display_shape(g.height, g.width)
    resized = np.asarray(float_image(content).resize(shape[::-1], Image.BILINEAR))
    return normalize_heatmap(resized)


def content_box_to_image(box: list[float], g: Geometry) -> list[float]:
    """[x0, y0, x1, y1, ...] in model-content pixels -> the same box in the pixels of the image as read,
    clipped to it."""
    corners = np.asarray(box[:4], np.float64) + [g.pad_x, g.pad_y, g.pad_x, g.pad_y]  # onto the model input
    return [*g.to_image(corners).tolist(), *box[4:]]


def normalize_heatmap(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]: where the model looks, relative to the rest of this image."""
    lo, hi = float(cam.min()), float(cam.max())
    if hi <= lo:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32, copy=False)


def boxes_from_heatmap(heat: np.ndarray, probability: float, threshold: float = BOX_THRESHOLD) -> list[list[float]]:
    """4-connected regions of `heat >= threshold * max` as [x0, y0, x1, y1, probability] in the heatmap's
    pixels, the region with the hottest peak first (a classifier scores its image, not its regions)."""
    if heat.size == 0 or float(heat.max()) <= 0:
        return []
    from scipy import ndimage  # lazy: an import that `bonefrac predict --help` need not pay (bench/README.md)

    mask = heat >= threshold * float(heat.max())
    # Label only the rows and columns the hot pixels span (the top of a heatmap is a small part of it).
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    mask, heat = mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1], heat[y0 : rows[-1] + 1, x0 : cols[-1] + 1]
    labels, _ = ndimage.label(mask)
    regions = []
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        peak = float(heat[ys, xs][labels[ys, xs] == i].max())  # (ndimage.maximum is far slower for a few regions)
        box = [float(xs.start + x0), float(ys.start + y0), float(xs.stop + x0), float(ys.stop + y0)]
        regions.append((peak, [*box, probability]))
    regions.sort(key=lambda r: -r[0])  # stable: equal peaks keep scipy's raster order
    return [box for _, box in regions[:MAX_BOXES]]
