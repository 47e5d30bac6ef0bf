"""The output side: model outputs + geometry -> Prediction, checked against hand-computed expectations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bonefrac.inference.decode import (
    DETECTION_FLOOR,
    DISPLAY_SIDE,
    MAX_DETECTIONS,
    Prediction,
    display_shape,
    predictions,
    probabilities,
)
from bonefrac.models.kinds.classifier import MAX_BOXES, boxes_from_heatmap, content_box_to_image, heatmap_on_image
from bonefrac.models.kinds.detector import read_detector
from bonefrac.preprocess import letterbox_geometry
from bonefrac.spec import ModelSpec

POINTS = {"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
SPEC = ModelSpec(operating_points=POINTS)


def test_boxes_are_the_connected_hot_regions_hottest_first_scoring_the_probability() -> None:
    heat = np.zeros((20, 30), np.float32)
    heat[2:5, 3:8] = 0.97  # a weaker region, first in raster order
    heat[10:16, 20:25] = 1.0
    heat[17, 0] = 0.96  # a single hot pixel
    boxes = boxes_from_heatmap(heat, probability=0.5)
    assert boxes == [
        [20.0, 10.0, 25.0, 16.0, 0.5],
        [3.0, 2.0, 8.0, 5.0, 0.5],
        [0.0, 17.0, 1.0, 18.0, 0.5],
    ]


def test_regions_touching_only_at_a_corner_are_two_boxes_and_at_most_max_boxes_come_back() -> None:
    diagonal = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert len(boxes_from_heatmap(diagonal, 1.0)) == 2
    spots = np.zeros((9, 9), np.float32)
    spots[::2, ::2] = 1.0  # 25 separate pixels
    assert len(boxes_from_heatmap(spots, 1.0)) == MAX_BOXES
    assert boxes_from_heatmap(np.zeros((4, 4), np.float32), 1.0) == []


def test_a_u_shape_is_one_region() -> None:
    mask = np.zeros((12, 12), np.float32)
    mask[2:10, 2:4] = mask[2:10, 8:10] = mask[8:10, 2:10] = 1.0
    assert boxes_from_heatmap(mask, 1.0) == [[2.0, 2.0, 10.0, 10.0, 1.0]]


def test_content_boxes_map_back_onto_the_image_as_read() -> None:
    g = letterbox_geometry(height=200, width=100, size=64)  # content 64 x 32, padded left and right
    assert (g.pad_x, g.pad_y) == (16, 0)
    assert content_box_to_image([0.0, 0.0, 32.0, 64.0, 0.7], g) == [0.0, 0.0, 100.0, 200.0, 0.7]
    assert content_box_to_image([8.0, 16.0, 16.0, 32.0], g) == [25.0, 50.0, 50.0, 100.0]


def test_heatmap_is_display_sized_unless_the_full_resolution_is_asked_for() -> None:
    g = letterbox_geometry(height=4000, width=3000, size=64)
    content = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    shown = heatmap_on_image(content, g)
    assert shown.shape == (DISPLAY_SIDE, 1200) == display_shape(4000, 3000)
    full = heatmap_on_image(content, g, full=True)
    assert full.shape == (4000, 3000)
    assert (shown.min(), shown.max()) == (0.0, 1.0) and (full.min(), full.max()) == (0.0, 1.0)
    assert display_shape(300, 200) == (300, 200)  # small images are never enlarged


def test_predictions_decide_with_the_one_rule_and_keep_the_detections() -> None:
    size = 32
    geometries = [letterbox_geometry(64, 64, size), letterbox_geometry(32, 64, size)]
    cams = np.zeros((2, size, size), np.float32)
    cams[0, 4:8, 10:14] = 3.0
    cams[1, 10:12, 0:4] = 3.0  # inside the second image's content rows (8..24)
    outputs = {"logit": np.array([2.0, -2.0], np.float32), "cam": cams}
    out = predictions(outputs, geometries, ["a", "b"], [[], ["odd"]], SPEC, "default", "v1", heatmap=True)
    a, b = out
    assert a.probability == pytest.approx(1 / (1 + np.exp(-2.0))) and a.logit == 2.0
    assert (
        a.fractured
        and a.threshold == 0.5
        and a.operating_points
        == {
            "default": True,
            "high_sensitivity": True,
            "high_specificity": True,
        }
    )
    assert a.boxes == a.detections == [[20.0, 8.0, 28.0, 16.0, a.probability]]
    assert a.peak == [21.0, 9.0]  # first hottest pixel (10, 4) at 2x, its centre
    assert not b.fractured and b.boxes == [] and b.detections and b.warnings == ["odd"]
    assert b.detections[0][:4] == [0.0, 4.0, 8.0, 8.0]  # rows 10-12 minus the 8-row pad, x2
    assert a.heatmap is not None and a.heatmap.shape == (64, 64)
    redecided = b.decided_at("high_sensitivity", 0.1)
    assert redecided.fractured and redecided.boxes == b.detections and redecided.threshold == 0.1
    assert b.boxes_at(0.1) == b.detections and b.boxes_at(0.2) == []
    d = a.to_dict()
    assert d["detections"] == d["boxes"] == [[20.0, 8.0, 28.0, 16.0, round(a.probability, 6)]] and d["logit"] == 2.0


def test_a_classifier_is_calibrated_and_decided_at_a_custom_threshold() -> None:
    spec = ModelSpec(operating_points=POINTS, calibration={"scale": 0.5, "bias": -1.0})
    outputs = {"logit": np.array([2.0]), "cam": np.zeros((1, 8, 8))}
    g = [letterbox_geometry(8, 8, 8)]
    pred = predictions(outputs, g, [None], [[]], spec, "custom", "v", threshold=0.45)[0]
    assert pred.probability == pytest.approx(0.5) and pred.logit == 2.0  # sigmoid(0.5 * 2 - 1)
    assert (pred.operating_point, pred.threshold, pred.fractured) == ("custom", 0.45, True)
    assert pred.operating_points == {"default": True, "high_sensitivity": True, "high_specificity": False}
    low = predictions({**outputs, "logit": np.array([-8.0])}, g, [None], [[]], spec, "default", "v")[0]
    assert low.probability < 0.01 and low.detections == [] and low.peak  # under the floor: no detections


def test_a_prediction_is_a_pure_result() -> None:
    fields = {f.name for f in dataclasses.fields(Prediction)}
    assert "image" not in fields
    outputs = {"logit": np.zeros(1), "cam": np.zeros((1, 8, 8))}
    pred = predictions(outputs, [letterbox_geometry(8, 8, 8)], [None], [[]], SPEC, "default", "v")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.probability = 1.0  # type: ignore[misc]
    assert pred.heatmap is None and pred.probability == 0.5


def test_probabilities_are_the_logistic_function_of_the_calibrated_logit() -> None:
    assert probabilities(np.array([0.0, np.log(3.0), -40.0])).tolist() == pytest.approx([0.5, 0.75, 0.0], abs=1e-12)
    calibrated = probabilities(np.array([1.0, 3.0]), {"scale": 2.0, "bias": -2.0})
    assert calibrated.tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-4.0))], abs=1e-12)


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


def test_a_detector_decodes_centernet_peaks_in_the_content_into_image_pixels() -> None:
    # A 128 x 64 image in a 64 px input: content 64 x 32 at 2x, rows 16..48; 8 x 8 cells of 8 px, content cell
    # rows 2..5 (their centres inside the content).
    g = letterbox_geometry(height=64, width=128, size=64)
    assert (g.pad_x, g.pad_y) == (0, 16)
    heat = np.full((8, 8), -10.0, np.float32)  # z = -5 with a zero global logit: under the floor
    size, offset = np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32)
    heat[0, 5] = 10.0  # in the padding: neither a detection nor the image's score
    heat[3, 2], offset[:, 3, 2], size[:, 3, 2] = 4.0, (0.5, 0.25), (np.log(2), 0.0)  # z = 2, 16 x 8 px
    heat[3, 3] = 3.0  # beside a higher cell: not a peak
    heat[4, 6] = 2.0  # z = 1, 8 x 8 px
    heat[5, 0], size[0, 5, 0] = 1.0, np.log(4)  # z = 0.5, 32 px wide at the left edge: clipped
    r = read_detector(heat, size, offset, 0.0, g, {"scale": 1.0, "bias": 0.0}, heatmap=True)
    # centre (2.5, 3.25) cells = (20, 26) input px = (20, 10) content px; x2 onto the image
    # each detection scored by its own centre logit (4, 2, 1), the image by z = (centre + global) / 2 at the best
    expected = [[24, 12, 56, 28, _sigmoid(4)], [88, 24, 104, 40, _sigmoid(2)], [0, 40, 32, 56, _sigmoid(1)]]
    assert np.allclose(r.detections, expected, atol=1e-6)
    assert r.logit == 2.0 and r.probability == _sigmoid(2)
    assert r.peak == pytest.approx([40.0, 20.0])
    # The heatmap is absolute: each cell's score, none from the padding cell (top rows of the image).
    assert r.heatmap is not None and r.heatmap.shape == (64, 128)
    assert r.heatmap.max() <= _sigmoid(2) + 1e-6 and r.heatmap.min() == pytest.approx(_sigmoid(-5), abs=1e-6)
    assert r.heatmap[:4].max() < 0.05


def test_detections_are_calibrated_capped_and_floored() -> None:
    g = letterbox_geometry(height=128, width=128, size=128)
    heat = np.full((16, 16), -20.0, np.float32)
    heat[::2, ::2] = np.linspace(0, 6, 64).reshape(8, 8)  # 64 separate peaks
    size, offset = np.zeros((2, 16, 16), np.float32), np.zeros((2, 16, 16), np.float32)
    r = read_detector(heat, size, offset, 0.0, g, {"scale": 1.0, "bias": 0.0}, heatmap=False)
    scores = [d[4] for d in r.detections]
    assert len(scores) == MAX_DETECTIONS and scores == sorted(scores, reverse=True) and r.heatmap is None
    calibration = {"scale": 2.0, "bias": -9.0}
    low = read_detector(heat, size, offset, 0.0, g, calibration, heatmap=False)
    assert low.probability == pytest.approx(_sigmoid(2 * 3.0 - 9)) and low.logit == r.logit == 3.0
    # the same peaks, rescored sigmoid(2 c - 9) from their centre logits c; under the floor (c < 2.2) dropped
    assert all(d[4] >= DETECTION_FLOOR for d in low.detections) and low.detections[-1][4] == pytest.approx(
        _sigmoid(2 * 6 * 44 / 63 - 9)
    )  # the 20th best of 64 peaks c = 6 i / 63 (i = 63 ... 44)
    assert np.allclose(low.detections, [[*d[:4], _sigmoid(2 * np.log(d[4] / (1 - d[4])) - 9)] for d in r.detections])
