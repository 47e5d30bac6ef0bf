"""The out-of-distribution score (`models.ood`): a Gaussian on features flags shifted ones; the detector's graph
and its ONNX export give `ood_features`; decoding fills `Prediction.ood_score` / `in_distribution` only for a
model with statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURE_IMAGES, make_checkpoint

from bonefrac.models.ood import FEATURES, OUTPUT, WARNING, OodGaussian, scores_and_flags

pytest.importorskip("sklearn")
pytestmark = pytest.mark.filterwarnings("ignore:.*JPEG file is truncated")


#: A fixed rotation and per-dimension scales far apart: correlated features, as pooled activations are.
_MIX = np.linalg.qr(np.random.default_rng(99).normal(size=(FEATURES, FEATURES)))[0]
_SCALE = np.geomspace(0.01, 10, FEATURES)


def _features(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return (rng.normal(size=(n, FEATURES)) + shift) @ _MIX * _SCALE + 3.0


def test_a_fitted_gaussian_flags_shifted_features_and_keeps_held_out_ones() -> None:
    rng = np.random.default_rng(0)
    fit = _features(rng, 2000)
    g = OodGaussian.fit(fit).with_threshold(_features(rng, 1000))
    fresh, shifted = _features(rng, 1000), _features(rng, 1000, shift=1.0)
    flagged_fresh = 1 - g.in_distribution(g.score(fresh)).mean()
    flagged_shifted = 1 - g.in_distribution(g.score(shifted)).mean()
    # A 0.99 quantile of 1000 held-out scores: about 1% of new in-distribution images above it (binomial,
    # +-0.6% at 2 sigma on 1000 images). d² is ~chi²(152): mean 152, sd 17, the threshold near 195; a shift of
    # 1 sd on each of the 152 dims adds 152 to it, putting nearly every shifted image past the threshold.
    assert flagged_fresh < 0.03
    assert flagged_shifted > 0.9
    assert g.score(shifted).mean() > g.score(fresh).mean() + 5  # +152 / 17 sd
    # The fit set's scores are z-scored: mean 0, sd 1 (by construction, to float64 rounding).
    s = g.score(fit)
    assert abs(s.mean()) < 1e-9 and s.std() == pytest.approx(1.0, rel=1e-9)


def test_the_statistics_round_trip_through_plain_json() -> None:
    import json

    rng = np.random.default_rng(2)
    g = OodGaussian.fit(_features(rng, 400)).with_threshold(_features(rng, 200))
    back = OodGaussian.from_dict(json.loads(json.dumps(g.to_dict())))
    x = _features(rng, 50)
    # float32 storage: relative 1e-6 per number; d² sums 152² products of them, so a few 1e-5 relative.
    np.testing.assert_allclose(back.score(x), g.score(x), rtol=1e-3, atol=1e-3)
    assert back.threshold == pytest.approx(g.threshold) and back.n_fit == 400 and back.n_threshold == 200


def test_without_statistics_or_features_every_image_gets_none() -> None:
    assert scores_and_flags(None, np.zeros((3, FEATURES)), 3) == [None] * 3
    assert scores_and_flags({"any": 1}, None, 2) == [None] * 2


@pytest.fixture(scope="module")
def detector_with_ood(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A tiny detector whose spec holds a Gaussian fitted on its own features of fixture images 1.., with the
    threshold just below the first image's score: that image is out of distribution, the others not."""
    import torch

    from bonefrac.io.read import read_image
    from bonefrac.models.centernet import pooled_features
    from bonefrac.models.checkpoint import load_model, save_model
    from bonefrac.preprocess import preprocess

    path = make_checkpoint(tmp_path_factory.mktemp("ood") / "plain.pt", arch="lite0_centernet", image_size=64)
    model, spec, info = load_model(path)
    x = np.stack([preprocess(read_image(p), spec)[0] for p in FIXTURE_IMAGES])
    feats = pooled_features(model, torch.from_numpy(x)).numpy()
    g = OodGaussian.fit(feats[1:])
    scores = g.score(feats)
    from dataclasses import replace

    g = replace(g, threshold=float((scores[0] + scores[1:].max()) / 2))
    assert scores[0] > scores[1:].max()  # (held out of the fit: it lies further than the fit images)
    spec.ood = g.to_dict()
    out = path.with_name("ood.pt")
    save_model(model, spec, out, info)
    return out, feats


def test_the_detector_graph_and_its_onnx_export_give_the_features(
    detector_with_ood: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from bonefrac.inference.backends import OnnxBackend, TorchBackend
    from bonefrac.inference.export import export_onnx
    from bonefrac.io.read import read_image
    from bonefrac.models.checkpoint import load_model
    from bonefrac.preprocess import preprocess

    path, feats = detector_with_ood
    model, spec, info = load_model(path)
    x = np.stack([preprocess(read_image(p), spec)[0] for p in FIXTURE_IMAGES[:3]])
    torch_out = TorchBackend(model, spec.image_size).run(x)
    onnx_out = OnnxBackend(export_onnx(model, spec, tmp_path / "m.onnx", info)).run(x)
    assert torch_out[OUTPUT].shape == onnx_out[OUTPUT].shape == (3, FEATURES)
    # Channel means of activations of order 1: float32 kernels differ by ~1e-6 relative per op.
    np.testing.assert_allclose(onnx_out[OUTPUT], torch_out[OUTPUT], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(torch_out[OUTPUT], feats[:3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_decoding_fills_the_score_and_warns_out_of_distribution(
    detector_with_ood: tuple[Path, np.ndarray], backend: str
) -> None:
    from bonefrac.inference.detector import FractureDetector

    det = FractureDetector.load(detector_with_ood[0], backend=backend)
    first, second = det.predict(FIXTURE_IMAGES[0]), det.predict(FIXTURE_IMAGES[1])
    assert first.in_distribution is False and WARNING in first.warnings
    assert second.in_distribution is True and WARNING not in second.warnings
    assert first.ood_score > second.ood_score
    d = first.to_dict()
    assert d["in_distribution"] is False and d["ood_score"] == pytest.approx(first.ood_score, abs=1e-4)
    row = first.to_row()
    assert row["in_distribution"] == "0" and WARNING in row["warnings"] and float(row["ood_score"]) > 0
    assert WARNING in first.table_line(10)


def test_a_model_without_statistics_gives_none(tiny_detector: Path, tiny_classifier: Path) -> None:
    from bonefrac.inference.detector import FractureDetector

    for path in (tiny_detector, tiny_classifier):
        p = FractureDetector.load(path).predict(FIXTURE_IMAGES[0])
        assert p.ood_score is None and p.in_distribution is None and WARNING not in p.warnings
        assert p.to_dict()["ood_score"] is None and p.to_row()["in_distribution"] == ""
