"""Box AP (pycocotools), FROC and calibration on hand-built cases whose answers are known, and `bonefrac evaluate`
writing them for a real (tiny) model on the fixtures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURES, make_checkpoint, prediction

from bonefrac.datasets import Record
from bonefrac.evaluation.detection import _coco_eval, average_precision, detection_scores, froc_curve
from bonefrac.evaluation.evaluate import compute_metrics, evaluate
from bonefrac.evaluation.metrics import calibration

# Three images: two fractured (one with two boxes), one without a fracture.
TRUTH = [[[0, 0, 20, 20], [50, 50, 70, 70]], [[10, 10, 30, 30]], []]


def scored(boxes: list[list[float]], score: float) -> list[list[float]]:
    return [[*b, score] for b in boxes]


def test_a_perfect_detector_has_ap_1_and_finds_every_box() -> None:
    detections = [scored(t, 0.9) for t in TRUTH]
    summary, froc = detection_scores(TRUTH, detections)
    assert summary["ap50"] == summary["ap50_95"] == 1.0
    assert summary["ap50_fractured"] == summary["ap50_95_fractured"] == 1.0
    assert summary["froc"] == {"0.5": 1.0, "1": 1.0, "2": 1.0}
    assert (summary["n_images"], summary["n_fractured_images"], summary["n_gt_boxes"]) == (3, 2, 3)
    assert froc.fp_per_image.max() == 0.0


def test_iou_06_counts_at_05_but_not_at_075() -> None:
    # Shifted by 24 px: IoU = 76 x 100 / (2 x 100 x 100 - 76 x 100) = 0.613.
    truth, shifted = [[[0, 0, 100, 100]]], [[[24, 0, 124, 100, 0.8]]]
    ap50, ap50_95 = average_precision(truth, shifted)
    assert ap50 == pytest.approx(1.0)
    assert _coco_eval(truth, shifted).stats[2] == 0.0  # COCO's AP@0.75
    assert ap50_95 == pytest.approx(0.3)  # found at IoU 0.50, 0.55, 0.60: 3 of the 10 thresholds
    assert detection_scores(truth, shifted)[0]["froc"]["1"] == 1.0


def test_a_false_positive_on_a_negative_image_lowers_only_the_all_images_ap() -> None:
    detections = [scored(t, 0.9) for t in TRUTH]
    detections[2] = [[5, 5, 25, 25, 0.95]]  # the best-scoring detection, on the image without a fracture
    summary, _ = detection_scores(TRUTH, detections)
    # Ranked: FP, TP, TP, TP -> precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1; COCO interpolates to 0.75.
    assert summary["ap50"] == pytest.approx(0.75)
    assert summary["ap50_fractured"] == 1.0
    # The same detection below every true one costs nothing in AP (all boxes found first).
    detections[2] = [[5, 5, 25, 25, 0.1]]
    assert detection_scores(TRUTH, detections)[0]["ap50"] == pytest.approx(1.0)


def test_no_detections_at_all_is_ap_0() -> None:
    summary, _ = detection_scores(TRUTH, [[], [], []])
    assert summary["ap50"] == summary["ap50_fractured"] == 0.0
    assert summary["froc"] == {"0.5": 0.0, "1": 0.0, "2": 0.0}


def test_froc_by_hand() -> None:
    """Four images (two without a fracture), three boxes; by score: TP .9, FP .8, FP .7 (a second box on the
    one already found), FP .65, TP .6, FP .5, FP .4, FP .3, TP .1."""
    truth = [[[0, 0, 20, 20], [50, 50, 70, 70]], [[10, 10, 30, 30]], [], []]
    detections = [
        [[0, 0, 20, 20, 0.9], [1, 1, 21, 21, 0.7], [80, 0, 95, 15, 0.4], [50, 50, 70, 70, 0.1]],
        [[10, 10, 30, 30, 0.6], [60, 60, 80, 80, 0.3]],
        [[0, 0, 9, 9, 0.8], [30, 30, 40, 40, 0.5]],
        [[0, 0, 9, 9, 0.65]],
    ]
    summary, froc = detection_scores(truth, detections)
    # After .7: 2 FP / 4 images = 0.5 and 1 of 3 found; .6 brings 2/3 at 0.75; .1 the last at 6 / 4 = 1.5.
    assert summary["froc"] == pytest.approx({"0.5": 1 / 3, "1": 2 / 3, "2": 1.0})
    assert froc.fp_per_image.tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.25, 1.5, 1.5])
    assert froc.sensitivity_at(0.25) == pytest.approx(1 / 3)


def test_froc_never_splits_tied_scores() -> None:
    # One true and one false detection at the same score: no threshold keeps the one without the other.
    truth = [[[0, 0, 20, 20]], []]
    curve = froc_curve(truth, [[[0, 0, 20, 20, 0.5]], [[0, 0, 20, 20, 0.5]]])
    assert curve.fp_per_image.tolist() == [0.0, 0.5] and curve.sensitivity.tolist() == [0.0, 1.0]
    assert curve.sensitivity_at(0.25) == 0.0 and curve.sensitivity_at(0.5) == 1.0


def test_ece_is_0_for_calibrated_bins_and_04_for_a_constant_09_on_half_positives() -> None:
    y = np.array([1] * 2 + [0] * 8 + [1] * 7 + [0] * 3)
    p = np.array([0.2] * 10 + [0.7] * 10)  # 20% and 70% fractured in their bins
    assert calibration(y, p)["ece"] == pytest.approx(0.0)
    c = calibration(np.array([1, 0] * 50), np.full(100, 0.9))
    assert c["ece"] == pytest.approx(0.4) and c["bins"] == 15


def test_ece_bins_are_fifteen_equal_widths() -> None:
    # 0.61 and 0.69 share a bin of ten (mean 0.65 predicted, 0.65 observed: ECE 0) but not of fifteen.
    y = np.array([1] * 69 + [0] * 31 + [1] * 61 + [0] * 39)
    p = np.array([0.61] * 100 + [0.69] * 100)
    assert calibration(y, p)["ece"] == pytest.approx(0.08)
    assert calibration(y, p, bins=10)["ece"] == pytest.approx(0.0)
    # A probability of exactly 1 is in the last bin, with 0.94: 5 at 1.0 (3 fractured) and 5 at 0.94 (all 5)
    # give |0.8 - 0.97| = 0.17 over half the images; 10 at 0.1 (1 fractured) add nothing.
    y = np.array([1] * 3 + [0] * 2 + [1] * 5 + [1] * 1 + [0] * 9)
    assert calibration(y, np.array([1.0] * 5 + [0.94] * 5 + [0.1] * 10))["ece"] == pytest.approx(0.085)


def test_brier_by_hand() -> None:
    c = calibration(np.array([1, 0, 1, 0]), np.array([0.8, 0.3, 0.4, 0.0]))
    assert c["brier"] == pytest.approx((0.04 + 0.09 + 0.36 + 0.0) / 4)


def test_evaluation_scores_every_candidate_box_and_leaves_out_fractures_without_boxes() -> None:
    records = [
        Record("a.jpg", 1, boxes=[[10, 10, 20, 20]]),
        Record("b.jpg", 0),
        Record("c.jpg", 1),  # fractured, no boxes: nobody knows what its detections hit
        Record("d.jpg", 0),
    ]
    # a.jpg is found by a candidate box although its probability is under the threshold (no `boxes`);
    # b.jpg's false positive outscores it; c.jpg's detection would be another false positive if counted.
    preds = [
        prediction(0.4, [[10, 10, 20, 20, 0.3]]),
        prediction(0.6, [[0, 0, 30, 30, 0.6]]),
        prediction(0.9, [[0, 0, 30, 30, 0.9]]),
        prediction(0.1, []),
    ]
    m = compute_metrics(records, preds, {"default": 0.5})
    d = m["detection"]
    assert (d["n_images"], d["n_fractured_images"], d["n_fractured_without_boxes"]) == (3, 1, 1)
    assert d["ap50_fractured"] == pytest.approx(1.0) and d["ap50"] == pytest.approx(0.5)
    assert d["froc"] == {"0.5": 1.0, "1": 1.0, "2": 1.0}  # found with 1 FP over 3 images
    assert m["calibration"]["brier"] == pytest.approx((0.6**2 + 0.6**2 + 0.1**2 + 0.1**2) / 4)


def test_evaluate_writes_detection_and_calibration(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "model.pt")
    m = evaluate(FIXTURES, tmp_path / "rep", model=model, backend="torch", workers=1, progress=False)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert "froc_curve" not in saved and saved["detection"] == m["detection"]
    d = saved["detection"]
    # labels.csv: 7 fractured images with 8 boxes, 7 without a fracture.
    assert (d["n_images"], d["n_fractured_images"], d["n_gt_boxes"], d["n_fractured_without_boxes"]) == (14, 7, 8, 0)
    assert d["n_detections"] > 0
    for key in ("ap50", "ap50_95", "ap50_fractured", "ap50_95_fractured"):
        assert 0.0 <= d[key] <= 1.0, key
    assert d["ap50_95"] <= d["ap50"] and d["ap50_95_fractured"] <= d["ap50_fractured"]
    assert d["ap50"] <= d["ap50_fractured"]  # negatives can only add false positives
    assert list(d["froc"]) == ["0.5", "1", "2"]
    s = list(d["froc"].values())
    assert all(0.0 <= v <= 1.0 for v in s) and s == sorted(s)
    rows = list(csv.DictReader(open(tmp_path / "rep" / "predictions.csv")))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    c = saved["calibration"]
    assert c["bins"] == 15 and c["n"] == 14 and 0.0 <= c["ece"] <= 1.0
    assert c["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-5)  # the CSV rounds to 6 digits
    assert (tmp_path / "rep" / "froc.png").stat().st_size > 1000
    text = (tmp_path / "rep" / "results.txt").read_text()
    assert "detection over 14 images (7 fractured with 8 boxes" in text
    assert f"AP@0.5       all images {d['ap50']:.3f}   fractured images only {d['ap50_fractured']:.3f}" in text
    assert f"ECE {c['ece']:.3f} (15 equal-width bins), Brier {c['brier']:.3f}" in text
