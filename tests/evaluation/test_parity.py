"""The int8 parity gates (`evaluation.parity`): what passes and what fails, on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest
from _models import prediction

from bonefrac.datasets import Record
from bonefrac.evaluation.parity import GATES, calibration_paths, compare, summary
from bonefrac.results import Prediction

POINTS = {"default": 0.5, "high_sensitivity": 0.3}


def _pred(probability: float, peak: tuple[float, float] = (15.0, 15.0)) -> Prediction:
    box = [peak[0] - 5, peak[1] - 5, peak[0] + 5, peak[1] + 5, probability]
    return prediction(probability, [box], peak, POINTS)


def _set(n: int = 200, seed: int = 0) -> tuple[list[Record], np.ndarray]:
    """`n` images, a quarter fractured (a box at (10..20)), with probabilities that rank them well but not
    perfectly, none within 0.02 of a threshold (so that small shifts flip no decision)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4 == 0).astype(int)
    p = np.clip(np.where(labels == 1, rng.normal(0.7, 0.15, n), rng.normal(0.2, 0.15, n)), 0.01, 0.99)
    for t in POINTS.values():
        near = np.abs(p - t) < 0.02
        p[near] = t + np.where(p[near] >= t, 0.03, -0.03)
    records = [Record(f"{i}.jpg", int(y), boxes=[[10, 10, 20, 20]] if y else []) for i, y in enumerate(labels)]
    return records, p


def test_identical_outputs_pass_every_gate() -> None:
    records, p = _set()
    preds = [_pred(float(q)) for q in p]
    parity = compare(records, preds, preds, POINTS)
    assert parity["passed"] and parity["max_probability_difference"] == 0
    names = {r["figure"] for r in parity["gates"]}
    assert {"auc", "ap50_fractured", "pointing_game", "default.sensitivity", "high_sensitivity.specificity"} <= names
    assert {"default.same_decisions", "high_sensitivity.same_decisions"} <= names


def test_small_shifts_that_flip_nothing_pass() -> None:
    records, p = _set()
    parity = compare(records, [_pred(float(q)) for q in p], [_pred(float(q) + 0.01) for q in p], POINTS)
    assert parity["passed"]
    assert parity["max_probability_difference"] == pytest.approx(0.01)


def test_three_flipped_fractures_of_fifty_fail_sensitivity_and_agreement() -> None:
    records, p = _set()
    fractured = [i for i, r in enumerate(records) if r.label == 1]
    q = p.copy()
    flipped = [i for i in fractured if p[i] >= 0.5][:3]
    q[flipped] = 0.45  # under default, over high_sensitivity
    parity = compare(records, [_pred(float(v)) for v in p], [_pred(float(v)) for v in q], POINTS)
    rows = {r["figure"]: r for r in parity["gates"]}
    assert not parity["passed"]
    assert rows["default.sensitivity"]["difference"] == pytest.approx(-3 / 50)
    assert not rows["default.sensitivity"]["holds"]
    assert rows["default.same_decisions"]["int8"] == pytest.approx(1 - 3 / 200)
    assert not rows["default.same_decisions"]["holds"]  # 98.5% < 99%
    assert rows["high_sensitivity.same_decisions"]["holds"]  # all three stay over 0.3
    assert "FAIL default.sensitivity" in summary(parity)


def test_a_moved_peak_fails_the_pointing_game() -> None:
    records, p = _set()
    moved = [_pred(float(q), (15.0, 15.0) if i % 8 else (60.0, 60.0)) for i, q in enumerate(p)]
    parity = compare(records, [_pred(float(q)) for q in p], moved, POINTS)
    rows = {r["figure"]: r for r in parity["gates"]}
    assert rows["pointing_game"]["difference"] == pytest.approx(-0.5)  # every other fractured image (i % 8 == 0)
    assert not rows["pointing_game"]["holds"] and rows["auc"]["holds"]
    assert GATES["pointing_game"] == 0.01


def test_calibration_images_are_a_fixed_draw() -> None:
    records = [Record(f"img{i}.jpg", i % 2) for i in range(100)]
    first = calibration_paths(records, 10)
    assert first == calibration_paths(list(reversed(records)), 10)  # the order of the records does not matter
    assert len(set(first)) == 10 and calibration_paths(records[:5], 10) == calibration_paths(records[:5], 5)
