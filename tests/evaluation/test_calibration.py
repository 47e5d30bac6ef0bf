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
    record = recalibrate(
        FIXTURES, tmp_path / "site.pt", model=source, backend="torch", workers=1, progress=False, allow_small=True
    )
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


def _small_set(tmp_path: Path, n_each: int = 6) -> Path:
    """A 12-image CSV dataset (6 fractured, 6 not) of the fixture images, by absolute path."""
    import csv

    from _models import FIXTURES

    rows = list(csv.DictReader(open(FIXTURES / "labels.csv")))
    pick = [r for r in rows if r["fractured"] == "1"][:n_each] + [r for r in rows if r["fractured"] == "0"][:n_each]
    path = tmp_path / "site.csv"
    path.write_text("path,label\n" + "".join(f"{FIXTURES / 'images' / r['filename']},{r['fractured']}\n" for r in pick))
    return path


def _strings(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in [str(k), *_strings(v)]]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_calibrate_refuses_a_small_set_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _models import make_checkpoint

    from bonefrac.apps.cli import main

    source = make_checkpoint(tmp_path / "m.pt")
    site = _small_set(tmp_path)
    common = ["--model", str(source), "--backend", "torch", "--no-progress", "--workers", "1"]
    assert main(["calibrate", str(site), "--out", str(tmp_path / "x.pt"), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only 6 fractured and 6 other images" in err and "--allow-small" in err
    assert not (tmp_path / "x.pt").exists()


def test_calibrate_allow_small_records_its_caveats_and_no_path_of_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--allow-small fits the 12 images, prints each caveat and records them; the checkpoint names the data
    by name and content digest, and its validation figures are those at the thresholds it stores."""
    import torch
    from _models import make_checkpoint

    from bonefrac.apps.cli import main
    from bonefrac.datasets import content_digest
    from bonefrac.evaluation.metrics import operating_point_stats
    from bonefrac.models.checkpoint import atomic_save, sha256_file

    source = make_checkpoint(tmp_path / "m.pt")
    ckpt = torch.load(source, weights_only=True)
    ckpt["info"]["config"] = {"dataset": str(tmp_path / "data"), "out": str(tmp_path / "run"), "cache_dir": "/tmp/c"}
    ckpt["info"]["dataset"] = str(tmp_path / "data")
    site, out = _small_set(tmp_path), tmp_path / "site.pt"
    trained = [line.split(",")[0] for line in site.read_text().splitlines()[1:3]]
    ckpt["info"]["image_digests"] = {"train": [content_digest(p) for p in trained], "validation": []}
    atomic_save(ckpt, source)
    Path(f"{source}.sha256").write_text(f"{sha256_file(source)}  {source.name}\n")
    common = ["--model", str(source), "--backend", "torch", "--no-progress", "--workers", "1"]
    assert main(["calibrate", str(site), "--out", str(out), "--allow-small", *common]) == 0
    printed = capsys.readouterr().out
    after = torch.load(out, weights_only=True)
    info, spec = after["info"], after["spec"]
    record = info["calibration"]
    assert record["caveats"] and record["caveat"] == "; ".join(record["caveats"])
    assert record["caveats"][0].startswith("only 6 fractured and 6 other images")
    assert record["n_trained_on"] == 2 and record["caveats"][-1].startswith("2 of these images trained the model")
    assert all(f"caution: {c}" in printed for c in record["caveats"])
    assert record["fitted_on"] == "site.csv" and len(record["images_sha256"]) == 64
    leaked = [s for s in _strings(info) if str(tmp_path) in s or s.startswith("/")]
    assert not leaked, leaked
    # The validation figures are measured at the thresholds the model now uses, on these 12 images.
    val = info["validation"]
    assert {k: v["threshold"] for k, v in val["operating_points"].items()} == spec["operating_points"]
    assert val["n"] == 12 and val["measured_on"]["images_sha256"] == record["images_sha256"]
    from bonefrac.inference.detector import FractureDetector

    det = FractureDetector.load(out, backend="torch")
    rows = [line.split(",") for line in site.read_text().splitlines()[1:]]
    y = np.array([int(r[1]) for r in rows])
    p = np.array([det.predict(r[0], heatmap=False).probability for r in rows])
    for name, t in spec["operating_points"].items():
        assert val["operating_points"][name]["sensitivity"] == operating_point_stats(y, p, t)["sensitivity"]
    facts = det.facts()["validation"]
    assert facts["operating_points"].keys() == spec["operating_points"].keys() and facts["not_measured"] == []


def test_warnings_say_what_the_data_cannot_support() -> None:
    """Logits that do not rank the images: an AUC CI including 0.5, a collapsed scale; an operating point
    with sensitivity 0 is named."""
    from bonefrac.evaluation.calibration import warnings
    from bonefrac.evaluation.metrics import choose_operating_points, discrimination

    rng = np.random.default_rng(4)
    y = np.array([0, 1] * 40)
    z = rng.normal(0.0, 1.0, len(y))  # independent of the labels
    fit = fit_platt(z, y)
    p = apply(fit, z)
    points = choose_operating_points(y, p)
    v = discrimination(y, p, points)
    assert v["auc_ci95"][0] < 0.5 < v["auc_ci95"][1]
    said = warnings(y, p, fit, points, v, compare(y, z, IDENTITY, fit))
    assert any("includes 0.5: no evidence that the model discriminates" in w for w in said)
    assert not any(w.startswith("only ") for w in said)  # 40 of each: enough images
    # A scale near 0 puts every probability near the prevalence (the "ECE 0.000" at p = 0.43).
    flat = {"scale": 0.01, "bias": -0.28}
    said = warnings(y, apply(flat, z), flat, points, v, compare(y, z, IDENTITY, flat))
    assert any("squashes every image to a probability near 0.43" in w for w in said)
    zero = {**v, "operating_points": {**v["operating_points"]}}
    zero["operating_points"]["high_specificity"] = {**v["operating_points"]["high_specificity"], "sensitivity": 0.0}
    said = warnings(y, p, fit, points, zero, compare(y, z, IDENTITY, fit))
    assert any(w.startswith("high_specificity (threshold") and "sensitivity 0" in w for w in said)


def test_summary_prints_close_thresholds_distinctly() -> None:
    from bonefrac.evaluation.calibration import summary

    points = {
        "default": {"threshold": 0.43012, "sensitivity": 0.5, "specificity": 0.5},
        "high_sensitivity": {"threshold": 0.42981, "sensitivity": 0.9, "specificity": 0.1},
        "high_specificity": {"threshold": 0.43049, "sensitivity": 0.1, "specificity": 0.9},
    }
    record = {
        "n_images": 64, "n_fractured": 32, "fitted_on": "site", "subset": "all", "n_unreadable": 0,
        "ece_before": 0.1, "ece_after": 0.0, "brier_before": 0.3, "brier_after": 0.25,
        "previous_calibration": IDENTITY, "calibration": {"scale": 0.01, "bias": -0.3},
        "previous_operating_points": {"default": 0.5}, "at_operating_points": points, "caveats": ["a", "b"],
    }  # fmt: skip
    lines = summary(record).splitlines()
    printed = [line.split()[2] for line in lines if line.split()[0] in points]
    assert printed == ["0.4301", "0.4298", "0.4305"]
    assert lines[-2:] == ["caution: a", "caution: b"]
