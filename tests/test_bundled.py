"""The default model shipped in the package: present, verified, a calibrated detector, and as good as its model
card says. The assertions hold for any sensible detector (no figure of one checkpoint is written in here)."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURES

from bonefrac import FractureDetector
from bonefrac.evaluation.calibration import IDENTITY
from bonefrac.inference.decode import DETECTION_FLOOR, MAX_DETECTIONS
from bonefrac.models.checkpoint import bundled_model_path, sha256_file
from bonefrac.models.registry import kind_of
from bonefrac.results import Prediction

WEIGHTS = bundled_model_path().parent
EXAMPLES = WEIGHTS.parent / "examples"
#: The bundled examples (validation images, examples/CREDITS.md) and their FracAtlas labels.
LABELS = {"IMG0000319.jpg": 1, "IMG0001192.jpg": 1, "IMG0000007.jpg": 0, "IMG0000010.jpg": 0}
#: IMG0000319's (a hand's) FracAtlas fracture box, x0 y0 x1 y1 in its 454 x 373 pixels.
FRACTURE_319 = (271, 112, 303, 136)

pytestmark = pytest.mark.numeric  # the bundled model's figures: make test runs them again on AVX2 kernels


@pytest.fixture(scope="module")
def det() -> FractureDetector:
    return FractureDetector.load()


@pytest.fixture(scope="module")
def examples(det: FractureDetector) -> dict[str, Prediction]:
    """Each example predicted once, with its full-resolution heatmap."""
    return {p.name: det.predict(p, heatmap="full") for p in sorted(EXAMPLES.glob("*.jpg"))}


def test_bundled_weights_are_small_verified_and_credited() -> None:
    path = bundled_model_path()
    assert path.stat().st_size < 25 * 1024 * 1024
    assert (WEIGHTS / "model.pt.sha256").read_text().split()[0] == sha256_file(path)
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    assert "FracAtlas" in card and "CC BY 4.0" in card and "10.1038/s41597-023-02432-4" in card
    assert "bonefrac train" in card  # the command that reproduces it


def test_bundled_model_is_a_calibrated_detector(det: FractureDetector) -> None:
    assert kind_of(det.spec.arch) == "detector", det.spec.arch
    v = det.info["validation"]
    assert v["auc"] >= 0.85 and v["auc_ci95"][0] <= v["auc"] <= v["auc_ci95"][1]
    # Where the best detection points: the old classifier's heatmap peak found the fracture box on 0.48.
    assert 0.5 <= v["pointing_game"] <= 1
    # Calibrated: fitted, not the identity, with the record of what it was fitted on.
    assert det.spec.calibration != IDENTITY and det.spec.calibration["scale"] > 0
    assert det.info["calibration"]["n_images"] > 0
    # Three distinct points, so that each of the page's buttons changes something.
    ops = det.operating_points
    assert 0 < ops["high_sensitivity"] < ops["default"] < ops["high_specificity"] < 1, ops


def test_examples_are_ranked_sensibly(examples: dict[str, Prediction]) -> None:
    """The bundled examples (validation images): the fractured ones score higher than the others."""
    assert set(examples) == set(LABELS)
    pos = [examples[k].probability for k, v in LABELS.items() if v]
    neg = [examples[k].probability for k, v in LABELS.items() if not v]
    assert min(pos) > max(neg), {k: p.probability for k, p in examples.items()}


def test_best_detection_lands_on_the_fracture(examples: dict[str, Prediction]) -> None:
    """IMG0000319 (hand): its best detection, the prediction's peak and the heatmap's maximum all fall on the
    fracture box, give or take 15 px (two cells of the stride-8 head at this scale; the box is 32 x 24 px)."""
    pred = examples["IMG0000319.jpg"]
    x0, y0, x1, y1 = FRACTURE_319
    tol = 15

    def on_box(x: float, y: float) -> bool:
        return x0 - tol <= x <= x1 + tol and y0 - tol <= y <= y1 + tol

    best = pred.detections[0]
    assert on_box((best[0] + best[2]) / 2, (best[1] + best[3]) / 2), best
    assert on_box(*pred.peak), pred.peak
    assert pred.heatmap is not None and pred.heatmap.shape == (373, 454)
    y, x = np.unravel_index(np.argmax(pred.heatmap), pred.heatmap.shape)
    assert on_box(x, y), (x, y)
    # A box about the fracture's size, not a grid blob: within a factor of 3 of 32 x 24 px each way.
    assert 32 / 3 <= best[2] - best[0] <= 32 * 3 and 24 / 3 <= best[3] - best[1] <= 24 * 3, best


def test_heatmap_is_absolute(examples: dict[str, Prediction]) -> None:
    """The heatmap is the image's calibrated score per location (centre and global heads), not min-max normalised:
    its maximum is about the probability; the unfractured examples show no spot near as bright as IMG0000319's."""
    for name, pred in examples.items():
        assert pred.heatmap is not None and 0 <= pred.heatmap.min() and pred.heatmap.max() <= 1
        # Bicubic upsampling of the cell scores may overshoot or smooth the peak cell a little.
        assert abs(float(pred.heatmap.max()) - pred.probability) < 0.05, (name, pred.heatmap.max(), pred.probability)
    hot = float(examples["IMG0000319.jpg"].heatmap.max())
    for name in (k for k, v in LABELS.items() if not v):
        assert float(examples[name].heatmap.max()) < hot / 2, (name, examples[name].heatmap.max(), hot)


def test_detections_are_in_bounds_and_decide(det: FractureDetector, examples: dict[str, Prediction]) -> None:
    """Every example's detections: inside the image, best first, above the floor; the boxes are the detections at
    the decision's threshold; the best detection's centre is the prediction's peak."""
    for name, pred in examples.items():
        d = np.array(pred.detections, dtype=float).reshape(-1, 5)
        assert len(d) <= MAX_DETECTIONS
        assert ((0 <= d[:, 0]) & (d[:, 0] < d[:, 2]) & (d[:, 2] <= pred.width)).all(), (name, d)
        assert ((0 <= d[:, 1]) & (d[:, 1] < d[:, 3]) & (d[:, 3] <= pred.height)).all(), (name, d)
        assert ((DETECTION_FLOOR <= d[:, 4]) & (d[:, 4] <= 1)).all() and (np.diff(d[:, 4]) <= 0).all(), (name, d)
        if len(d):
            assert d[0, 0] <= pred.peak[0] <= d[0, 2] and d[0, 1] <= pred.peak[1] <= d[0, 3], name
        assert pred.boxes == pred.boxes_at(pred.threshold) and pred.fractured == (pred.probability >= pred.threshold)
    for name in (k for k, v in LABELS.items() if v):
        assert examples[name].detections, f"{name}: a fractured example without any detection"
    hs = det.operating_points["high_sensitivity"]
    assert examples["IMG0000319.jpg"].boxes_at(hs), "IMG0000319's fracture is not even a suspicious box"


def test_demo_writes_overlays_and_explains_the_boxes(tmp_path: Path) -> None:
    """`bonefrac demo` (make demo) runs the bundled model on the examples: the table, an overlay per example, the
    CSV with every detection, and a legend that says what the two kinds of boxes mean at this model's points."""
    from bonefrac.apps.cli import main

    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["demo", "--out", str(tmp_path)]) == 0
    out = text.getvalue()
    assert sorted(p.name.split("_", 1)[1] for p in tmp_path.glob("*.overlay.png")) == sorted(
        f"{k}.overlay.png" for k in LABELS
    )
    assert all(name in out for name in LABELS), out
    assert "'fracture' boxes" in out and "'suspicious' boxes" in out and "high_specificity" in out, out
    assert "detections column" in out and "heatmap" in out, out
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:7] == ["path", "probability", "fractured", "threshold", "operating_point", "boxes", "detections"]
    assert {"ood_score", "in_distribution", "warnings", "model_version", "error"} <= set(header)
    assert len(rows) == 1 + len(LABELS)


@pytest.mark.dataset
@pytest.mark.slow
def test_validation_auc_reproduces_the_model_card(det: FractureDetector, fracatlas_dir: Path, tmp_path: Path) -> None:
    """Re-evaluating the bundled model on its own validation split gives the AUC and the pointing game its
    checkpoint records."""
    from bonefrac.evaluation.evaluate import evaluate

    split = WEIGHTS / "split.json"
    m = evaluate(fracatlas_dir, tmp_path, split_file=split, subset="val", progress=False)
    recorded = det.info["validation"]["auc"]
    # The checkpoint's figure comes from the uint8 decode cache; predict reads the files: a tiny difference.
    assert abs(m["auc"] - recorded) < 0.01, (m["auc"], recorded)
    # The pointing game over the split's fractured images: a peak or two may move between the cache and the files.
    pointing = det.info["validation"]["pointing_game"]
    assert abs(m["localization"]["pointing_game"] - pointing) < 0.05, (m["localization"], pointing)
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    assert re.search(rf"{m['auc']:.3f}|{recorded:.3f}", card)
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == m["n"]


def test_fixture_dataset_exists() -> None:
    assert (FIXTURES / "labels.csv").is_file()
