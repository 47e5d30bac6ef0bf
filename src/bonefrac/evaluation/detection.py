"""Box detection metrics over a set of images: COCO average precision (by pycocotools) and FROC sensitivity.

Inputs, per image: the ground-truth boxes [x0, y0, x1, y1] and the model's detections [x0, y0, x1, y1, score],
all in the pixels of the image as read. An image without ground-truth boxes is a negative: every detection on
it is a false positive. A caller leaves out images whose truth is unknown (labelled fractured, but unboxed).

- AP@0.5 and AP@[.5:.95]: COCOeval's own box AP (one category, "fracture"; every box iscrowd 0 with area =
  its width x height; COCO's area range "all" and its limit of the 100 best-scoring detections per image).
  "fractured" figures are over the images with ground-truth boxes only (the FracAtlas paper's protocol), the
  others over every image given, where detections on images without a fracture lower the precision.
- FROC: a ground-truth box is found when a detection overlaps it at IoU >= 0.5, with COCOeval's matching at
  that threshold (highest score first, each box found once; a second detection on a found box is a false
  positive), so FROC and AP@0.5 agree on every hit. Lowering the score threshold traces sensitivity (found
  boxes / all boxes) against false positives per image (over every image given); the figure at k false
  positives per image is the highest sensitivity reached with at most k, ties in score never split (past the
  last detection: the sensitivity of all of them). A hit by IoU, not by "the detection's centre inside the
  box" (the rule for point-like outputs): these outputs are boxes, the centre rule passes a blob covering the
  whole bone, and fracture detection benchmarks decide hits by overlap (RibFrac's FROC: mask IoU > 0.2; 0.5
  here, AP@0.5's threshold, the stricter).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: False positives per image at which FROC sensitivity is reported.
FROC_RATES = (0.5, 1.0, 2.0)
#: IoU at which a detection finds a ground-truth box in the FROC (COCOeval's first threshold, AP@0.5's).
FROC_IOU = 0.5

Boxes = Sequence[Sequence[float]]


@dataclass(frozen=True)
class FrocCurve:
    """The FROC as the score threshold falls: one point per distinct detection score, after the origin."""

    thresholds: np.ndarray
    fp_per_image: np.ndarray
    sensitivity: np.ndarray

    def sensitivity_at(self, fp_per_image: float) -> float:
        """The highest sensitivity reached with at most `fp_per_image` false positives per image."""
        ok = self.fp_per_image <= fp_per_image + 1e-12
        return float(self.sensitivity[ok].max()) if ok.any() else 0.0


def _coco_eval(truth: Sequence[Boxes], detections: Sequence[Boxes]) -> Any:
    """COCOeval run (evaluate + accumulate + summarize) over these images, built in memory."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: Sequence[float]) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": i + 1} for i in range(len(truth))]
    categories = [{"id": 1, "name": "fracture"}]
    # Annotation ids start at 1: COCOeval marks an unmatched detection with the id 0.
    gt_anns = [
        {"id": 0, "image_id": i + 1, "category_id": 1, "bbox": xywh(b), "iscrowd": 0}
        for i, boxes in enumerate(truth)
        for b in boxes
    ]
    dt_anns = [
        {"id": 0, "image_id": i + 1, "category_id": 1, "bbox": xywh(b), "score": float(b[4]), "iscrowd": 0}
        for i, boxes in enumerate(detections)
        for b in boxes
    ]
    for n, a in enumerate(gt_anns + dt_anns):
        a["id"] = n + 1
        a["area"] = a["bbox"][2] * a["bbox"][3]
    # The detections are a COCO object of their own, as COCO.loadRes would build (it refuses an empty list).
    gt, dt = COCO(), COCO()
    gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
    dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its progress and table by print()
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ap(ev: Any) -> tuple[float, float]:
    """(AP@0.5, AP@[.5:.95]) from COCOeval's summary; -1 there (no ground truth) becomes nan."""
    ap50_95, ap50 = float(ev.stats[0]), float(ev.stats[1])
    return (ap50 if ap50 >= 0 else float("nan")), (ap50_95 if ap50_95 >= 0 else float("nan"))


def average_precision(truth: Sequence[Boxes], detections: Sequence[Boxes]) -> tuple[float, float]:
    """COCO box (AP@0.5, AP@[.5:.95]) over these images; nan without any ground-truth box."""
    return _ap(_coco_eval(truth, detections))


def _froc_from(ev: Any, n_images: int) -> FrocCurve:
    """The FROC from COCOeval's per-image matching at IoU 0.5 (area range "all", its detection limit)."""
    p = ev.params
    assert abs(p.iouThrs[0] - FROC_IOU) < 1e-9
    per_image = [e for e in ev.evalImgs if e is not None and e["aRng"] == p.areaRng[0]]
    n_gt = sum(int((e["gtIgnore"] == 0).sum()) for e in per_image)
    scores = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for e in per_image] or [np.zeros(0)])
    found = np.concatenate([e["dtMatches"][0] > 0 for e in per_image] or [np.zeros(0, bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, found = scores[order], found[order]
    tp, fp = np.cumsum(found), np.cumsum(~found)
    # A threshold keeps every detection of its score: only the last of a run of equal scores is a point.
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)
    return FrocCurve(
        thresholds=np.r_[np.inf, scores[last]],
        fp_per_image=np.r_[0.0, fp[last] / max(n_images, 1)],
        sensitivity=np.r_[0.0, tp[last] / n_gt] if n_gt else np.full(int(last.sum()) + 1, np.nan),
    )


def froc_curve(truth: Sequence[Boxes], detections: Sequence[Boxes]) -> FrocCurve:
    return _froc_from(_coco_eval(truth, detections), len(truth))


def detection_scores(truth: Sequence[Boxes], detections: Sequence[Boxes]) -> tuple[dict[str, Any], FrocCurve]:
    """Every detection figure of `bonefrac evaluate` (a JSON-ready dict), and the FROC curve for its plot.

    `truth[i]` and `detections[i]` belong to image i; images with no ground-truth box are negatives.
    """
    if len(truth) != len(detections):
        raise ValueError(f"{len(truth)} images of ground truth, {len(detections)} of detections")
    ev = _coco_eval(truth, detections)
    ap50, ap50_95 = _ap(ev)
    froc = _froc_from(ev, len(truth))
    boxed = [i for i, t in enumerate(truth) if len(t)]
    ap50_f, ap50_95_f = average_precision([truth[i] for i in boxed], [detections[i] for i in boxed])
    summary = {
        "ap50": ap50,
        "ap50_95": ap50_95,
        "ap50_fractured": ap50_f,
        "ap50_95_fractured": ap50_95_f,
        "froc": {f"{r:g}": froc.sensitivity_at(r) for r in FROC_RATES},
        "froc_iou": FROC_IOU,
        "n_images": len(truth),
        "n_fractured_images": len(boxed),
        "n_gt_boxes": sum(len(t) for t in truth),
        "n_detections": sum(len(d) for d in detections),
    }
    return summary, froc
