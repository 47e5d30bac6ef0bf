"""The output side: model outputs + the preprocessing geometry -> `Prediction` (probability, decision at an
operating point, heatmap on the image as read, its peak and boxes in image pixels).

Every path that predicts (`FractureDetector.predict`/`predict_many`, so the CLI, the server, evaluation and
the DICOM outputs) turns the backend's `(logits, cams)` into results here and nowhere else.

Heatmap: the class-activation map (`models.FractureNet.class_activation_map`, 8 x 8 for a 256 px input)
comes out of the backend already upsampled onto the model input (`models.LogitAndCam`); here the letterbox
padding is cut away, and it is min-max normalised per image (where the model looks, relative to the rest of
this image), then resized onto the image.

Boxes (documented method): the heatmap at model resolution is thresholded at `BOX_THRESHOLD` of its own
maximum; each 4-connected region becomes one box [x0, y0, x1, y1, score] with score = fracture probability x
the region's peak heat; at most `MAX_BOXES`, best first. The threshold was chosen on the bundled model's
validation split: fracture boxes are small and the heatmap comes from an 8 x 8 grid, so only its very top
marks a fracture-sized region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from PIL import Image

from .transforms import Geometry, float_image, resized_shape

BOX_THRESHOLD = 0.95
MAX_BOXES = 3
#: Long side of the heatmap (and of overlays) unless the full resolution is asked for: the heatmap is smooth
#: (upsampled from the feature grid), so a display-sized map carries all of it, in bounded memory.
DISPLAY_SIDE = 1600

HeatmapOption = bool | Literal["full"]


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    Attributes:
        probability: fracture probability.
        fractured, threshold, operating_point: the decision (probability >= threshold) at a named point.
        operating_points: the decision at every named operating point of the model.
        boxes: [x0, y0, x1, y1, score] in the pixels of the image as read; empty unless `fractured`.
        candidate_boxes: the heatmap's boxes whatever the decision (what `boxes` become when fractured).
        peak: [x, y], the image pixel where the heatmap is highest.
        width, height: the image as read (EXIF orientation applied); boxes and peak refer to it.
        heatmap: float32 in [0, 1] covering the whole image, when asked for: (height, width) at full
            resolution, else scaled so that its long side is at most `DISPLAY_SIDE`.
    """

    path: str | None
    probability: float
    fractured: bool
    threshold: float
    operating_point: str
    operating_points: dict[str, bool]
    boxes: list[list[float]]
    model_version: str
    width: int
    height: int
    peak: list[float] = field(default_factory=list)
    candidate_boxes: list[list[float]] = field(default_factory=list, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)

    def decided_at(self, operating_point: str, threshold: float) -> Prediction:
        """The same prediction decided at another threshold: fractured when probability >= threshold, and
        then the heatmap's candidate boxes are its boxes. The one decision rule of bonefrac."""
        fractured = bool(self.probability >= threshold)
        return replace(
            self,
            operating_point=operating_point,
            threshold=float(threshold),
            fractured=fractured,
            boxes=list(self.candidate_boxes) if fractured else [],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the keys of `bonefrac predict --json` (no heatmap array)."""
        return {
            "path": self.path,
            "probability": round(self.probability, 6),
            "fractured": self.fractured,
            "threshold": round(self.threshold, 6),
            "operating_point": self.operating_point,
            "operating_points": self.operating_points,
            "boxes": rounded_boxes(self.boxes),
            "peak": [round(v, 1) for v in self.peak],
            "width": self.width,
            "height": self.height,
            "model_version": self.model_version,
            **({"warnings": self.warnings} if self.warnings else {}),
        }


@dataclass(frozen=True)
class PredictionError:
    """A file that could not be predicted, reported in the stream instead of raised."""

    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


def rounded_boxes(boxes: list[list[float]]) -> list[list[float]]:
    return [[round(v, 1) for v in b[:4]] + [b[4]] for b in boxes]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Fracture probabilities (float64) from the model's logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def predictions(
    logits: np.ndarray,
    cams: np.ndarray,
    geometries: Sequence[Geometry],
    paths: Sequence[str | None],
    warnings: Sequence[list[str]],
    operating_points: dict[str, float],
    operating_point: str,
    model_version: str,
    heatmap: HeatmapOption = False,
) -> list[Prediction]:
    """One `Prediction` per image of a batch, decided at `operating_point`."""
    threshold = operating_points[operating_point]
    out = []
    for prob, cam, g, path, notes in zip(probabilities(logits), cams, geometries, paths, warnings, strict=True):
        content = normalize_heatmap(content_map(cam, g))
        px, py = np.unravel_index(int(np.argmax(content)), content.shape)[::-1]
        undecided = Prediction(
            path=path,
            probability=float(prob),
            fractured=False,
            threshold=float("nan"),
            operating_point="",
            operating_points={k: bool(prob >= t) for k, t in operating_points.items()},
            boxes=[],
            model_version=model_version,
            width=g.width,
            height=g.height,
            peak=content_box_to_image([px + 0.5, py + 0.5, px + 0.5, py + 0.5], g)[:2],  # the pixel's centre
            candidate_boxes=[content_box_to_image(b, g) for b in boxes_from_heatmap(content, float(prob))],
            heatmap=heatmap_on_image(content, g, full=heatmap == "full") if heatmap else None,
            warnings=list(notes),
        )
        out.append(undecided.decided_at(operating_point, threshold))
    return out


def content_map(cam: np.ndarray, g: Geometry) -> np.ndarray:
    """The image's part of a (size, size) map on the model input (`models.LogitAndCam`): no padding."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    return cam[g.pad_y : g.pad_y + nh, g.pad_x : g.pad_x + nw]


def heatmap_on_image(content: np.ndarray, g: Geometry, full: bool = False) -> np.ndarray:
    """A content map resized (bilinear) onto the whole image: its full (height, width), or display size."""
    shape = (g.height, g.width) if full else display_shape(g.height, g.width)
    resized = np.asarray(float_image(content).resize(shape[::-1], Image.BILINEAR))
    return normalize_heatmap(resized)


def display_shape(height: int, width: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) scaled down so that the long side is at most `side`."""
    return (height, width) if max(height, width) <= side else resized_shape(height, width, side)


def content_box_to_image(box: list[float], g: Geometry) -> list[float]:
    """[x0, y0, x1, y1, ...] in model-content pixels -> the same box in the pixels of the image as read."""
    nh, nw = resized_shape(g.height, g.width, g.size)
    sx, sy = g.width / nw, g.height / nh
    x0, y0, x1, y1 = box[:4]
    return [
        min(x0 * sx, g.width),
        min(y0 * sy, g.height),
        min(x1 * sx, g.width),
        min(y1 * sy, g.height),
        *box[4:],
    ]


def normalize_heatmap(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]: where the model looks, relative to the rest of this image."""
    lo, hi = float(cam.min()), float(cam.max())
    if hi <= lo:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32, copy=False)


def boxes_from_heatmap(heat: np.ndarray, probability: float, threshold: float = BOX_THRESHOLD) -> list[list[float]]:
    """4-connected regions of `heat >= threshold * max` as [x0, y0, x1, y1, score] in the heatmap's pixels."""
    if heat.size == 0 or float(heat.max()) <= 0:
        return []
    from scipy import ndimage  # lazy: an import that `bonefrac predict --help` need not pay (bench/README.md)

    mask = heat >= threshold * float(heat.max())
    # Label only the rows and columns the hot pixels span (the top of a heatmap is a small part of it).
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    mask, heat = mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1], heat[y0 : rows[-1] + 1, x0 : cols[-1] + 1]
    labels, _ = ndimage.label(mask)
    boxes = []
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        peak = float(heat[ys, xs][labels[ys, xs] == i].max())  # (ndimage.maximum is far slower for a few regions)
        box = [float(xs.start + x0), float(ys.start + y0), float(xs.stop + x0), float(ys.stop + y0)]
        boxes.append([*box, round(probability * peak, 4)])
    boxes.sort(key=lambda b: -b[4])  # stable: equal scores keep scipy's raster order
    return boxes[:MAX_BOXES]
