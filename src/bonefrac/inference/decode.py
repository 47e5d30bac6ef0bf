"""The output side: model outputs + the preprocessing geometry -> `Prediction` (calibrated probability,
decision at an operating point, detections, heatmap on the image as read and its peak, in image pixels).

Every path that predicts (`FractureDetector.predict`/`predict_many`, so the CLI, the server, evaluation and
the DICOM outputs) turns the backend's named outputs into results here and nowhere else. One rule decides:
fractured when probability >= threshold, and the boxes are the detections scoring at least the threshold.

Detectors (`ModelSpec.is_detector`, outputs heatmap/size/offset/global): `read_detector`. The image's
probability and the heatmap come from the calibrated cell scores (centre and global heads together); each
detection is scored by its own centre logit through the same calibration, so boxes rank across images by their
own evidence. An image can thus be called normal with a box above the threshold, or fractured without one.

Classifiers (outputs logit/cam): the class-activation map (`models.FractureNet.class_activation_map`, 8 x 8 for
a 256 px input) comes out of the backend already upsampled onto the model input (`models.LogitAndCam`); here
the letterbox padding is cut away, and it is min-max normalised per image (where the model looks, relative to
the rest of this image), then resized onto the image. Its boxes (documented method): the heatmap at model
resolution is thresholded at `BOX_THRESHOLD` of its own maximum; each 4-connected region becomes one box
[x0, y0, x1, y1, score] with score = the image's probability; at most `MAX_BOXES`, the hottest region first.
The threshold was chosen on the bundled model's validation split: fracture boxes are small and the heatmap
comes from an 8 x 8 grid, so only its very top marks a fracture-sized region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from bonefrac.preprocess import Geometry, float_image, resized_shape
from bonefrac.results import Prediction
from bonefrac.spec import ModelSpec

BOX_THRESHOLD = 0.95
MAX_BOXES = 3
#: Detections scoring below this are dropped (whatever the decision, `Prediction.detections` keeps the rest).
DETECTION_FLOOR = 0.01
#: At most this many detections per image, best first.
MAX_DETECTIONS = 20
#: Input pixels per cell of a detector's heatmap (`detection_model.STRIDE`; that module imports torch).
STRIDE = 8
#: Long side of the heatmap (and of overlays) unless the full resolution is asked for: the heatmap is smooth
#: (upsampled from the feature grid), so a display-sized map carries all of it, in bounded memory.
DISPLAY_SIDE = 1600

HeatmapOption = bool | Literal["full"]


def probabilities(logits: np.ndarray | float, calibration: dict[str, float] | None = None) -> np.ndarray:
    """Fracture probabilities (float64) from raw logits z: sigmoid(scale * z + bias) with the model's
    calibration (`ModelSpec.calibration`), the plain logistic function without one."""
    a, b = (float(calibration["scale"]), float(calibration["bias"])) if calibration else (1.0, 0.0)
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(logits, dtype=np.float64) + b)))


class _Read(NamedTuple):
    """What one image's model outputs say, before the decision."""

    logit: float
    probability: float
    detections: list[list[float]]
    peak: list[float]
    heatmap: np.ndarray | None


def predictions(
    outputs: dict[str, np.ndarray],
    geometries: Sequence[Geometry],
    paths: Sequence[str | None],
    warnings: Sequence[list[str]],
    spec: ModelSpec,
    operating_point: str,
    model_version: str,
    heatmap: HeatmapOption = False,
    threshold: float | None = None,
) -> list[Prediction]:
    """One `Prediction` per image of a batch (the backend's named `outputs`), decided at `operating_point`:
    at its threshold in `spec.operating_points`, or at `threshold` when given."""
    threshold = spec.operating_points[operating_point] if threshold is None else float(threshold)
    out = []
    for i, (g, path, notes) in enumerate(zip(geometries, paths, warnings, strict=True)):
        if spec.is_detector:
            r = read_detector(
                outputs["heatmap"][i], outputs["size"][i], outputs["offset"][i], float(outputs["global"][i]), g,
                spec.calibration, heatmap,
            )  # fmt: skip
        else:
            r = read_classifier(float(outputs["logit"][i]), outputs["cam"][i], g, spec.calibration, heatmap)
        undecided = Prediction(
            path=path,
            probability=r.probability,
            fractured=False,
            threshold=float("nan"),
            operating_point="",
            operating_points={k: bool(r.probability >= t) for k, t in spec.operating_points.items()},
            boxes=[],
            model_version=model_version,
            width=g.width,
            height=g.height,
            peak=r.peak,
            detections=r.detections,
            logit=r.logit,
            heatmap=r.heatmap,
            warnings=list(notes),
        )
        out.append(undecided.decided_at(operating_point, threshold))
    return out


# ---------------------------------------------------------------- classifiers (a class-activation map)
def read_classifier(
    logit: float, cam: np.ndarray, g: Geometry, calibration: dict[str, float], heatmap: HeatmapOption
) -> _Read:
    """A classifier's image: its calibrated probability, the CAM's hot regions as boxes scoring it."""
    prob = float(probabilities(logit, calibration))
    content = normalize_heatmap(content_map(cam, g))
    py, px = np.unravel_index(int(np.argmax(content)), content.shape)
    boxes = boxes_from_heatmap(content, prob) if prob >= DETECTION_FLOOR else []
    return _Read(
        logit=logit,
        probability=prob,
        detections=[content_box_to_image(b, g) for b in boxes],
        peak=content_box_to_image([px + 0.5, py + 0.5, px + 0.5, py + 0.5], g)[:2],  # the pixel's centre
        heatmap=heatmap_on_image(content, g, full=heatmap == "full") if heatmap else None,
    )


def content_map(cam: np.ndarray, g: Geometry) -> np.ndarray:
    """The image's part of a (size, size) map on the model input (`models.LogitAndCam`): no padding."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    return cam[g.pad_y : g.pad_y + nh, g.pad_x : g.pad_x + nw]


def heatmap_on_image(content: np.ndarray, g: Geometry, full: bool = False) -> np.ndarray:
    """A content map resized (bilinear) onto the whole image: its full (height, width), or display size;
    min-max normalised (a classifier's heatmap is relative to the rest of its image)."""
    shape = (g.height, g.width) if full else display_shape(g.height, g.width)
    resized = np.asarray(float_image(content).resize(shape[::-1], Image.BILINEAR))
    return normalize_heatmap(resized)


def display_shape(height: int, width: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) scaled down so that the long side is at most `side`."""
    return (height, width) if max(height, width) <= side else resized_shape(height, width, side)


def content_box_to_image(box: list[float], g: Geometry) -> list[float]:
    """[x0, y0, x1, y1, ...] in model-content pixels -> the same box in the pixels of the image as read,
    clipped to it."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    sx, sy = g.width / nw, g.height / nh
    x0, y0, x1, y1 = box[:4]
    return [
        min(max(x0 * sx, 0.0), g.width),
        min(max(y0 * sy, 0.0), g.height),
        min(max(x1 * sx, 0.0), g.width),
        min(max(y1 * sy, 0.0), g.height),
        *box[4:],
    ]


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


# ---------------------------------------------------------------- detectors (a dense CenterNet-style head)
def read_detector(
    heat_logits: np.ndarray,
    log_size: np.ndarray,
    offset: np.ndarray,
    global_logit: float,
    g: Geometry,
    calibration: dict[str, float],
    heatmap: HeatmapOption,
) -> _Read:
    """A detector's image from its stride-`STRIDE` outputs: (h, w) centre logits, (2, h, w) log box size in
    cells, (2, h, w) centre offset in cells, and the global head's logit.

    Each cell inside the image content scores sigmoid(a * z + b), z = (centre logit + global logit) / 2 (the
    training's `detection_model.image_logit` per cell): the heatmap, and the image's probability at its highest.
    Detections are the 3 x 3 local maxima of the centre logits, decoded as CenterNet does, each scored by its own
    centre logit c as sigmoid(a * c + b): without the global head's image-wide term, which would rank every box
    of a confident image above every box of a doubtful one (validation box AP@0.5 0.12 with it, 0.27 without)."""
    rows, cols = content_cells(g, heat_logits.shape)
    centre_logit = heat_logits[rows, cols].astype(np.float64)
    score = probabilities((centre_logit + global_logit) / 2, calibration)
    box_score = probabilities(centre_logit, calibration)
    best = int(np.argmax(centre_logit))
    keep = local_maxima(box_score, DETECTION_FLOOR)[:MAX_DETECTIONS]
    # CenterNet's decoding, in model-input pixels, then in the content's (the padding subtracted) and the image's.
    r, c = np.divmod(np.append(keep, best), score.shape[1])
    r, c = r + rows.start, c + cols.start  # on the whole grid
    centre = (np.stack([c, r]) + offset[:, r, c].astype(np.float64)) * STRIDE - [[g.pad_x], [g.pad_y]]
    # (a size beyond twice the input is clipped by the image anyway; capping it avoids exp overflow)
    half = np.exp(np.minimum(log_size[:, r, c].astype(np.float64), np.log(2 * g.size / STRIDE))) * STRIDE / 2
    nh, nw = resized_shape(g.height, g.width, g.size)
    to_image, limit = np.array([[g.width / nw], [g.height / nh]]), np.array([[g.width], [g.height]])
    lo, hi, centre = (np.clip(v * to_image, 0, limit) for v in (centre - half, centre + half, centre))
    boxes = np.concatenate([lo, hi, box_score.ravel()[np.append(keep, best)][None]])[:, :-1]
    detections = boxes.T.tolist()
    return _Read(
        logit=float((centre_logit.flat[best] + global_logit) / 2),
        probability=float(score.flat[best]),
        detections=detections,
        peak=centre[:, -1].tolist(),  # the best cell's centre: the best detection's, when it has one
        heatmap=cell_heatmap_on_image(score, rows, cols, g, full=heatmap == "full") if heatmap else None,
    )


def content_cells(g: Geometry, grid: tuple[int, ...]) -> tuple[slice, slice]:
    """The rows and columns of heatmap cells whose centre lies in the image content (not the letterbox
    padding): padding cells see only the zero border, and must neither detect nor score the image."""
    nh, nw = resized_shape(g.height, g.width, g.size)

    def span(pad: int, n: int, cells: int) -> slice:
        first = min(max(0, math.ceil((pad - STRIDE / 2) / STRIDE)), cells - 1)
        return slice(first, max(first + 1, min(cells, math.ceil((pad + n - STRIDE / 2) / STRIDE))))

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


def cell_heatmap_on_image(score: np.ndarray, rows: slice, cols: slice, g: Geometry, full: bool = False) -> np.ndarray:
    """The content cells' scores (absolute, not normalised) resized (bilinear) onto the whole image: its full
    (height, width), or display size. The cells are placed where they lie on the model input, the content's
    edge cells extended over the padding, so the map lines up with the image rather than with the cell grid."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    shape = (g.height, g.width) if full else display_shape(g.height, g.width)
    # The content's extent in cell units, relative to the first content cell's top-left corner (pad by one
    # cell of the edge values on every side so that the box never reaches outside the source).
    x0, y0 = g.pad_x / STRIDE - cols.start + 1, g.pad_y / STRIDE - rows.start + 1
    source = float_image(np.pad(score.astype(np.float32), 1, mode="edge"))
    box = (x0, y0, x0 + nw / STRIDE, y0 + nh / STRIDE)
    return np.array(source.resize(shape[::-1], Image.BILINEAR, box=box))  # (asarray's would be read-only)
