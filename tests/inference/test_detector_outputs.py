"""A detector checkpoint (lite0_centernet) through the public API, both backends: detections in image
pixels, one score scale for the image, its boxes and its heatmap, calibration applied, ONNX == torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURE_IMAGES

from bonefrac import BonefracError, FractureDetector, Prediction
from bonefrac.inference.decode import DETECTION_FLOOR, MAX_DETECTIONS, display_shape, predictions
from bonefrac.io.image import XrayImage
from bonefrac.models.registry import kind_of
from bonefrac.preprocess import preprocess

IMAGES = FIXTURE_IMAGES[:3]


@pytest.fixture(scope="module")
def checkpoint(tiny_detector: Path) -> Path:
    return tiny_detector  # the session's lite0_centernet at 96 px and its ONNX export; only read here


@pytest.fixture(scope="module")
def torch_det(checkpoint: Path) -> FractureDetector:
    return FractureDetector.load(checkpoint, backend="torch")


@pytest.fixture(scope="module")
def onnx_det(checkpoint: Path) -> FractureDetector:
    return FractureDetector.load(checkpoint, backend="onnx")


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


@pytest.mark.numeric  # torch and onnxruntime kernels: make test runs it again with torch on AVX2
def test_onnx_and_torch_give_the_same_detections(torch_det: FractureDetector, onnx_det: FractureDetector) -> None:
    assert (torch_det.backend.name, onnx_det.backend.name) == ("torch", "onnx")
    assert kind_of(onnx_det.spec.arch) == "detector"
    for path in IMAGES:
        a, b = torch_det.predict(path), onnx_det.predict(path)
        # the same graph in two libraries' float32 kernels: the logit to 1e-4 of its size (a hundredfold above
        # their rounding), the bounded probability and [0, 1] heatmap absolutely; box corners are pixels of a
        # stride-8 grid, so 1e-2 of a pixel is ~1e-4 of the cell a score moves them within
        assert b.logit == pytest.approx(a.logit, rel=1e-4, abs=1e-6) and abs(a.probability - b.probability) < 1e-4
        assert len(a.detections) == len(b.detections) > 1
        assert np.allclose(a.detections, b.detections, atol=1e-2)  # pixels and scores
        assert np.abs(a.heatmap - b.heatmap).max() < 1e-4


def test_the_export_names_the_detectors_outputs_and_carries_the_calibration(onnx_det: FractureDetector) -> None:
    import onnx

    graph = onnx.load(onnx_det.backend.path)
    assert [o.name for o in graph.graph.output] == ["heatmap", "size", "offset", "global", "ood_features"]
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["arch"] == "lite0_centernet" and '"scale": 1.0' in props["calibration"]
    x = np.stack([preprocess(_read(p), onnx_det.spec)[0] for p in IMAGES[:2]])
    out = onnx_det.backend.run(x)
    cells = 96 // 8
    assert out["heatmap"].shape == (2, cells, cells) and out["size"].shape == out["offset"].shape == (
        2,
        2,
        cells,
        cells,
    )
    assert out["global"].shape == (2,)


def _read(path: Path) -> XrayImage:
    from bonefrac.io.read import read_image

    return read_image(path)


def test_detections_are_image_pixels_best_first_and_the_best_is_the_peak(onnx_det: FractureDetector) -> None:
    for path in IMAGES:
        pred = onnx_det.predict(path)
        scores = [d[4] for d in pred.detections]
        assert scores == sorted(scores, reverse=True) and len(scores) <= MAX_DETECTIONS
        assert min(scores) >= DETECTION_FLOOR
        for x0, y0, x1, y1, _ in pred.detections:
            assert 0 <= x0 < x1 <= pred.width and 0 <= y0 < y1 <= pred.height
        assert pred.probability == pytest.approx(_sigmoid(pred.logit), abs=1e-12)  # identity calibration
        x0, y0, x1, y1, _ = pred.detections[0]
        assert x0 <= pred.peak[0] <= x1 and y0 <= pred.peak[1] <= y1  # the best detection's centre
        assert all(isinstance(v, float) for d in pred.detections for v in d)  # JSON-ready, no numpy scalars


def test_boxes_are_the_detections_at_the_threshold(onnx_det: FractureDetector) -> None:
    pred = onnx_det.predict(IMAGES[0], heatmap=False)
    scores = [d[4] for d in pred.detections]
    for t in (scores[-1], float(np.median(scores)), scores[0], min(0.999, scores[0] + 1e-3)):
        decided = pred.decided_at("custom", t)
        assert decided.boxes == pred.boxes_at(t) == [d for d in pred.detections if d[4] >= t]
        assert decided.fractured == (pred.probability >= t)  # the image's decision; the boxes are the boxes' own
        direct = onnx_det.predict(IMAGES[0], heatmap=False, threshold=t)
        assert direct.to_dict() == decided.to_dict() and direct.operating_point == "custom"
    for name, t in onnx_det.operating_points.items():
        assert onnx_det.predict(IMAGES[0], operating_point=name, heatmap=False).boxes == pred.boxes_at(t)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(BonefracError, match="threshold"):
            onnx_det.predict(IMAGES[0], threshold=bad)


def test_calibration_rescales_every_score(onnx_det: FractureDetector) -> None:
    """probability = sigmoid(a z + b) for the same raw logit z; each detection rescored the same way."""
    x, g = preprocess(_read(IMAGES[1]), onnx_det.spec)
    outputs = onnx_det.backend.run(x[None])
    spec = onnx_det.spec
    plain = predictions(outputs, [g], [None], [[]], spec, "default", "v", heatmap=True)[0]
    low_spec = replace(spec, calibration={"scale": 2.0, "bias": -3.0})
    low = predictions(outputs, [g], [None], [[]], low_spec, "default", "v", heatmap=True)[0]
    assert low.logit == plain.logit and low.probability == pytest.approx(_sigmoid(2 * plain.logit - 3), abs=1e-12)
    assert low.probability < plain.probability
    z = [np.log(d[4] / (1 - d[4])) for d in plain.detections]
    expected = [[*d[:4], _sigmoid(2 * zi - 3)] for d, zi in zip(plain.detections, z, strict=True)]
    kept = [e for e in expected if e[4] >= DETECTION_FLOOR]
    assert kept and np.allclose(low.detections, kept)
    # The heatmap is absolute: no cell of a calibrated-low image glows, and nothing is stretched to 1.
    assert low.heatmap is not None and plain.heatmap is not None
    assert low.heatmap.max() < 0.5 and low.heatmap.max() <= low.probability + 1e-6
    assert plain.heatmap.min() > 0.0 and plain.heatmap.max() <= plain.probability + 1e-6
    # Through the public API (the constructor only stores): the same answer.
    det = FractureDetector(low_spec, onnx_det.backend, onnx_det.info)
    assert det.predict(IMAGES[1]).probability == pytest.approx(low.probability, abs=1e-6)


def test_predict_many_is_predict(onnx_det: FractureDetector) -> None:
    many = list(onnx_det.predict_many(IMAGES, batch_size=2, workers=2))
    for path, m in zip(IMAGES, many, strict=True):
        assert isinstance(m, Prediction)
        one = onnx_det.predict(path, heatmap=False)
        assert abs(m.probability - one.probability) < 1e-5 and m.peak == pytest.approx(one.peak, abs=1e-2)
        assert np.allclose(m.detections, one.detections, atol=1e-3)


def test_heatmap_full_and_display_size(torch_det: FractureDetector) -> None:
    rng = np.random.default_rng(0)
    big = XrayImage(rng.random((1900, 2400), dtype=np.float32), {})
    shown = torch_det.predict(big, any_modality=True)
    full = torch_det.predict(big, heatmap="full", any_modality=True)
    assert shown.heatmap is not None and shown.heatmap.shape == display_shape(1900, 2400) == (1267, 1600)
    assert full.heatmap is not None and full.heatmap.shape == (1900, 2400)
    assert abs(float(full.heatmap.max()) - float(shown.heatmap.max())) < 0.02
    for x0, y0, x1, y1, _ in full.detections:
        assert 0 <= x0 < x1 <= 2400 and 0 <= y0 < y1 <= 1900


@pytest.mark.numeric  # torch against onnxruntime
def test_bonefrac_export_checks_a_detectors_parity(checkpoint: Path, tmp_path: Path) -> None:
    from bonefrac.inference.export import export_model

    report = export_model(checkpoint, tmp_path / "detector.onnx", check_on=list(IMAGES[:2]))
    assert kind_of(report.spec.arch) == "detector" and report.parity_images == 2
    assert 0.0 <= report.max_probability_difference < 1e-4  # probabilities in [0, 1]: as in the test above
