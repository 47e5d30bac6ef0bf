"""The output side: model outputs + the preprocessing geometry -> `Prediction` (calibrated probability,
decision at an operating point, detections, heatmap on the image as read and its peak, in image pixels).

Every path that predicts (`FractureDetector.predict`/`predict_many`, so the CLI, the server, evaluation and
the DICOM outputs) turns the backend's named outputs into results here and nowhere else. The model's kind
reads each image's outputs (`models.kinds`: a classifier's class-activation map, a detector's dense head);
one rule decides: fractured when probability >= threshold, and the boxes are the detections scoring at least
the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bonefrac.models.kinds.base import (
    DETECTION_FLOOR,
    DISPLAY_SIDE,
    MAX_DETECTIONS,
    HeatmapOption,
    display_shape,
    probabilities,
)
from bonefrac.models.ood import OUTPUT as OOD_OUTPUT
from bonefrac.models.ood import WARNING as OOD_WARNING
from bonefrac.models.ood import scores_and_flags
from bonefrac.models.registry import kind_for
from bonefrac.preprocess import Geometry
from bonefrac.results import Prediction
from bonefrac.spec import ModelSpec

__all__ = [
    "DETECTION_FLOOR",
    "DISPLAY_SIDE",
    "MAX_DETECTIONS",
    "HeatmapOption",
    "Prediction",
    "display_shape",
    "predictions",
    "probabilities",
]


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
    at its threshold in `spec.operating_points`, or at `threshold` when given. With the model's OOD statistics
    (`spec.ood`) and an `ood_features` output, each also gets its ood_score and in_distribution, and an image
    out of distribution a warning (which the table, overlays, page and SR show with the others)."""
    threshold = spec.operating_points[operating_point] if threshold is None else float(threshold)
    kind = kind_for(spec)
    ood = scores_and_flags(spec.ood, outputs.get(OOD_OUTPUT), len(geometries))
    out = []
    for i, (g, path, notes) in enumerate(zip(geometries, paths, warnings, strict=True)):
        r = kind.decode(outputs, i, g, spec.calibration, heatmap)
        ood_score, in_distribution = ood[i] if ood[i] is not None else (None, None)
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
            warnings=list(notes) + ([OOD_WARNING] if in_distribution is False else []),
            ood_score=ood_score,
            in_distribution=in_distribution,
        )
        out.append(undecided.decided_at(operating_point, threshold))
    return out
