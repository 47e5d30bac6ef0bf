"""Platt scaling: recovers a known calibration, lowers the ECE of a miscalibrated model, refuses what it
cannot fit; `bonefrac calibrate` keeps the weights and records what it was fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from bonefrac.evaluation.calibration import IDENTITY, CalibrationError, apply, compare, fit_platt
from bonefrac.evaluation.metrics import calibration


def _labels(z: np.ndarray, a: float, b: float, seed: int = 0) -> np.ndarray:
    """Labels drawn with probability sigmoid(a z + b): (a, b) is their true calibration."""
    return (np.random.default_rng(seed).random(len(z)) < expit(a * z + b)).astype(int)


@pytest.mark.parametrize(("a", "b"), [(0.4, -1.2), (2.5, 0.7), (1.0, 0.0)])
def test_fit_recovers_a_known_calibration(a: float, b: float) -> None:
    z = np.random.default_rng(1).normal(0.5, 2.0, 40_000)
    fit = fit_platt(z, _labels(z, a, b))
    assert fit["scale"] == pytest.approx(a, rel=0.05) and fit["bias"] == pytest.approx(b, abs=0.05)


def test_calibration_lowers_the_ece_of_an_overconfident_model() -> None:
    """The model's logits are 4x too large and shifted: its probabilities are far from the frequencies."""
    z = np.random.default_rng(2).normal(0.0, 3.0, 5000)
    y = _labels(z, 0.25, -1.0, seed=3)
    fit = fit_platt(z, y)
    c = compare(y, z, IDENTITY, fit)
    assert c["ece_before"] > 0.15 and c["ece_after"] < 0.03 and c["brier_after"] < c["brier_before"]
    assert c["ece_after"] == calibration(y, apply(fit, z))["ece"]  # metrics.calibration's figures, not others
    # the ranking is the model's: only the meaning of a probability moves
    assert np.array_equal(np.argsort(apply(fit, z), kind="stable"), np.argsort(z, kind="stable"))


def test_apply_is_the_sigmoid_of_the_scaled_logit() -> None:
    z = np.array([-30.0, -3.0, 0.0, 2.0, 30.0])
    assert apply({"scale": 2.0, "bias": 0.5}, z) == pytest.approx(expit(2.0 * z + 0.5), rel=1e-12, abs=1e-300)
    assert apply(IDENTITY, [0.0])[0] == 0.5


def test_separable_data_gets_a_finite_steep_fit() -> None:
    """Plain maximum likelihood diverges here; Platt's targets keep it finite and in the right direction."""
    z = np.concatenate([np.linspace(-3, -1, 30), np.linspace(1, 3, 10)])
    y = np.array([0] * 30 + [1] * 10)
    fit = fit_platt(z, y)
    assert np.isfinite(list(fit.values())).all() and fit["scale"] > 1
    p = apply(fit, z)
    assert p[y == 1].min() > 0.7 and p[y == 0].max() < 0.12
    # the fit's bias equation: the mean probability is the mean of Platt's targets 11/12 and 1/32
    assert p.mean() == pytest.approx((10 * 11 / 12 + 30 / 32) / 40, abs=1e-4)


def test_what_cannot_be_fitted_is_refused_in_one_sentence() -> None:
    z = np.linspace(-2, 2, 20)
    with pytest.raises(CalibrationError, match="both classes"):
        fit_platt(z, np.zeros(20))
    with pytest.raises(CalibrationError, match="equal"):
        fit_platt(np.full(20, 0.7), np.arange(20) % 2)
    with pytest.raises(CalibrationError, match="against their labels"):
        fit_platt(z, (z < 0).astype(int))  # the model's ranking inverted: no calibration turns it over
    with pytest.raises(CalibrationError, match="non-finite"):
        fit_platt(np.array([0.0, np.nan, 1.0]), np.array([0, 1, 1]))


def test_recalibrating_a_detector_moves_its_probability_and_its_detections_together(tmp_path: Path) -> None:
    """A lite0_centernet: the refit calibration reaches the image probability and every detection's score (the
    detections are scored from their own centre logits), from the same raw logits."""
    from _models import FIXTURE_IMAGES, FIXTURES, make_checkpoint

    from bonefrac.evaluation.calibration import recalibrate
    from bonefrac.inference.detector import FractureDetector

    source = make_checkpoint(tmp_path / "det.pt", arch="lite0_centernet", image_size=96)
    record = recalibrate(FIXTURES, tmp_path / "site.pt", model=source, backend="torch", workers=1, progress=False)
    assert record["n_images"] == len(FIXTURE_IMAGES) and record["calibration"]["scale"] > 0
    old, new = (FractureDetector.load(m, backend="torch") for m in (source, tmp_path / "site.pt"))
    points = new.operating_points
    assert points["high_sensitivity"] < points["default"] < points["high_specificity"]
    assert points == {k: v["threshold"] for k, v in record["at_operating_points"].items()}
    for path in FIXTURE_IMAGES[:3]:
        a, b = old.predict(path, heatmap=False), new.predict(path, heatmap=False)
        # the same weights through the same kernels: equal but for a few float32 eps of the logit
        assert b.logit == pytest.approx(a.logit, rel=1e-6, abs=1e-9)
        assert b.probability == pytest.approx(float(apply(record["calibration"], [a.logit])[0]), abs=1e-9)
        # each detection's score: sigmoid(a c + b) of its centre logit c (the source's calibration: the identity)
        for d_old, d_new in zip(a.detections, b.detections, strict=False):
            c = np.log(d_old[4] / (1 - d_old[4]))
            assert d_new[4] == pytest.approx(float(apply(record["calibration"], [c])[0]), abs=1e-6)
