"""Results: one image's `Prediction` (or the `PredictionError` that replaced it) and one study's
`StudyResult`.

Study-level results: the views of one study -> one probability and one decision.

A study is the set of images that share a DICOM Study Instance UID; for other files (and DICOM files that lack
the UID), the folder that holds them. The rule: the study's probability is the **maximum over its views**,
decided at the same operating point and threshold as each view.

Why the maximum: a fracture is often seen on one projection only (a scaphoid on the ulnar-deviated view, a
radial head on the lateral), so one positive view must make the study positive; the maximum keeps the study's
sensitivity at least the views' and adds no parameter. The mean dilutes a finding seen on one of three views,
and noisy-OR (1 - prod(1 - p)) pushes every multi-view study towards "fracture" because the views of one
patient are not independent evidence. FracAtlas, the only labelled data here, has no study identifiers, so no
validation can choose between them; the maximum is the documented rule until a dataset with studies says
otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.io.read import is_dicom_file


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    Attributes:
        probability: fracture probability, calibrated: sigmoid(scale * logit + bias) (`ModelSpec.calibration`).
        logit: the raw (uncalibrated) image logit, what the calibration is fitted on.
        fractured, threshold, operating_point: the decision (probability >= threshold) at a named point
            ("custom" for a threshold given by hand).
        operating_points: the decision at every named operating point of the model.
        detections: [x0, y0, x1, y1, score] in the pixels of the image as read, best first, whatever the
            decision: every box scoring at least `DETECTION_FLOOR`, at most `MAX_DETECTIONS`. A detector scores
            each by its own centre logit (calibrated); a classifier's heatmap boxes all score its probability.
        boxes: the detections kept at the decision's threshold (`boxes_at(threshold)`).
        peak: [x, y], the image pixel of the best detection's centre (detector) or of the heatmap's maximum.
        width, height: the image as read (EXIF orientation applied); boxes and peak refer to it.
        heatmap: float32 in [0, 1] covering the whole image, when asked for: (height, width) at full
            resolution, else scaled so that its long side is at most `DISPLAY_SIDE`. A detector's is absolute
            (the calibrated score of each cell); a classifier's is min-max normalised per image.
        ood_score: how unlike the model's training images this one is (`models.ood`: ~0 typical, higher is
            further); None when the model has no OOD statistics.
        in_distribution: ood_score <= the model's OOD threshold; None as ood_score. An image out of
            distribution also carries `models.ood.WARNING` in `warnings`.
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
    detections: list[list[float]] = field(default_factory=list, repr=False)
    logit: float = float("nan")
    heatmap: np.ndarray | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    ood_score: float | None = None
    in_distribution: bool | None = None

    def boxes_at(self, threshold: float) -> list[list[float]]:
        """The detections scoring at least `threshold` (e.g. an operating point's: "suspicious" boxes at
        high_sensitivity, "fracture" boxes at high_specificity)."""
        return [d for d in self.detections if d[4] >= threshold]

    def decided_at(self, operating_point: str, threshold: float) -> Prediction:
        """The same prediction decided at another threshold: fractured when probability >= threshold, and its
        boxes are the detections scoring at least the threshold. The one decision rule of bonefrac."""
        return replace(
            self,
            operating_point=operating_point,
            threshold=float(threshold),
            fractured=bool(self.probability >= threshold),
            boxes=self.boxes_at(threshold),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the keys of `bonefrac predict --json` (no heatmap array)."""
        return {
            "path": self.path,
            "probability": round(self.probability, 6),
            "logit": round(self.logit, 6),
            "fractured": self.fractured,
            "threshold": round(self.threshold, 6),
            "operating_point": self.operating_point,
            "operating_points": self.operating_points,
            "boxes": rounded_boxes(self.boxes),
            "detections": rounded_boxes(self.detections),
            "peak": [round(v, 1) for v in self.peak],
            "width": self.width,
            "height": self.height,
            "model_version": self.model_version,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "in_distribution": self.in_distribution,
            **({"warnings": self.warnings} if self.warnings else {}),
        }

    def to_row(self) -> dict[str, str]:
        """CSV-ready: one row of `bonefrac predict --csv` in `CSV_COLUMNS`, the values of `to_dict` as text."""
        d = self.to_dict()
        return {
            "path": str(d["path"]),
            "probability": f"{d['probability']:.6f}",
            "fractured": str(int(d["fractured"])),
            "threshold": f"{d['threshold']:.6f}",
            "operating_point": d["operating_point"],
            "boxes": boxes_text(d["boxes"]),
            "detections": boxes_text(d["detections"]),
            "ood_score": "" if d["ood_score"] is None else f"{d['ood_score']:.4f}",
            "in_distribution": "" if self.in_distribution is None else str(int(self.in_distribution)),
            "warnings": WARNINGS_SEPARATOR.join(self.warnings),
            "model_version": d["model_version"],
            "error": "",
        }

    def table_line(self, width: int) -> str:
        """One line of `bonefrac predict`'s table (`width` = the path column), its warnings at the end."""
        line = f"{self.path or '':<{width}}  {self.probability:11.3f}  {verdict(self.fractured):<11}  {len(self.boxes)}"
        return line + "".join(f"  warning: {w}" for w in self.warnings)


@dataclass(frozen=True)
class PredictionError:
    """A file that could not be predicted, reported in the stream instead of raised."""

    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}

    def to_row(self) -> dict[str, str]:
        """The CSV row: the path and the error, the other columns empty."""
        return {column: "" for column in CSV_COLUMNS} | {"path": self.path, "error": self.error}

    def table_line(self, width: int) -> str:
        return f"{self.path:<{width}}  ERROR  {self.error}"


#: The columns of `bonefrac predict --csv` (`Prediction.to_row`); `STUDY_CSV_COLUMNS` follow with --by-study.
CSV_COLUMNS = [
    "path", "probability", "fractured", "threshold", "operating_point", "boxes", "detections", "ood_score",
    "in_distribution", "warnings", "model_version", "error",
]  # fmt: skip
#: Between the warnings of one image in its CSV cell (a warning's text may hold commas and semicolons).
WARNINGS_SEPARATOR = " | "


def verdict(fractured: bool) -> str:
    """The decision in words, as the table, the overlays and the reports say it."""
    return "FRACTURE" if fractured else "no fracture"


def rounded_boxes(boxes: list[list[float]]) -> list[list[float]]:
    """Coordinates to 0.1 pixel, scores to 6 decimals (as the probability)."""
    return [[round(v, 1) for v in b[:4]] + [round(b[4], 6)] for b in boxes]


def boxes_text(boxes: list[list[float]]) -> str:
    """Boxes as in a dataset's labels.csv ("x0 y0 x1 y1;..."), each with its score: "x0 y0 x1 y1 score;..."."""
    return ";".join(" ".join(str(float(v)) for v in b) for b in boxes)


STUDY_RULE = "maximum over views"
#: The CSV columns `bonefrac predict --by-study` adds: each row's level ("image" or "study") and study key.
STUDY_CSV_COLUMNS = ["level", "study"]


@dataclass
class StudyResult:
    """One study's result. `probability` is None when none of its views could be predicted."""

    study: str
    probability: float | None
    fractured: bool
    threshold: float
    operating_point: str
    views: list[Prediction]
    failed: list[str] = field(default_factory=list)
    rule: str = STUDY_RULE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: one study line of `bonefrac predict --by-study --json` (tagged `"level": "study"`)."""
        out: dict[str, Any] = {
            "level": "study",
            "study": self.study,
            "probability": None if self.probability is None else round(self.probability, 6),
            "fractured": self.fractured,
            "threshold": round(self.threshold, 6),
            "operating_point": self.operating_point,
            "rule": self.rule,
            "views": [v.path for v in self.views],
        }
        if self.failed:
            out["failed_views"] = self.failed
        if self.probability is None:
            out["error"] = "no view of this study could be predicted"
        return out

    def to_row(self) -> dict[str, str]:
        """One study's CSV row, in `CSV_COLUMNS` plus `STUDY_CSV_COLUMNS` (`level` "study")."""
        d = self.to_dict()
        decided = self.probability is not None
        return {column: "" for column in CSV_COLUMNS} | {
            "probability": f"{d['probability']:.6f}" if decided else "",
            "fractured": str(int(self.fractured)) if decided else "",
            "threshold": f"{d['threshold']:.6f}" if decided else "",
            "operating_point": self.operating_point,
            "error": d.get("error", ""),
            "level": "study",
            "study": self.study,
        }

    def table_line(self, width: int) -> str:
        """One study's table line under the image lines (`width` = the path column)."""
        label = f"study {self.study}"
        if self.probability is None:
            return f"{label:<{width}}  ERROR  no view of this study could be predicted"
        views = f"({len(self.views)} views, {self.rule})"
        return f"{label:<{width}}  {self.probability:11.3f}  {verdict(self.fractured):<11}  {views}"


def study_result(study: str, views: list[Prediction], failed: list[str] | None = None) -> StudyResult:
    """The study's probability (maximum over `views`) and decision at the views' own threshold."""
    if not views:
        return StudyResult(study, None, False, float("nan"), "", [], list(failed or []))
    points = {(v.operating_point, v.threshold) for v in views}
    if len(points) > 1:
        raise ValueError(f"study {study}: views decided at different operating points {sorted(points)}")
    operating_point, threshold = points.pop()
    probability = max(v.probability for v in views)
    return StudyResult(
        study, probability, bool(probability >= threshold), threshold, operating_point, list(views), list(failed or [])
    )


def study_key(path: str | Path) -> str:
    """The Study Instance UID of a DICOM file, else the folder holding the file."""
    uid = dicom_study_uid(path)
    return uid if uid else str(Path(path).parent)


def dicom_study_uid(path: str | Path) -> str | None:
    """The Study Instance UID from a DICOM file's header (pixels not read); None for other files."""
    if not is_dicom_file(path):
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "").strip() or None
    except Exception:  # an unreadable header groups by folder; reading the image reports what is wrong
        return None


def group_studies(results: Iterable[tuple[str, Prediction | PredictionError]]) -> list[StudyResult]:
    """(study key, result) pairs -> one `StudyResult` per key, in order of first appearance."""
    views: dict[str, list[Prediction]] = {}
    failed: dict[str, list[str]] = {}
    for key, res in results:
        views.setdefault(key, [])
        failed.setdefault(key, [])
        if isinstance(res, Prediction):
            views[key].append(res)
        else:
            failed[key].append(res.path)
    return [study_result(key, views[key], failed[key]) for key in views]


# ---------------------------------------------------------------- `bonefrac predict --by-study` output
def without_heatmap(res: Prediction | PredictionError) -> Prediction | PredictionError:
    """What a study line needs of a result (kept for every input until the end, or sent between ranks)."""
    return replace(res, heatmap=None) if isinstance(res, Prediction) else res
