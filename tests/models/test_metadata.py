"""The model facts tell the truth: validation figures only at the thresholds the model uses, and no path of
the machine that trained or calibrated it (issue 22 point 5)."""

from __future__ import annotations

from bonefrac.models.metadata import measured_operating_points, model_facts, without_machine_paths
from bonefrac.spec import ModelSpec

# As the bundled model was before it was recalibrated: validation figures at the training thresholds,
# the calibration record at the thresholds `calibrate` chose (and now in use).
OLD = {"default": 0.2063, "high_sensitivity": 0.1185, "high_specificity": 0.2063}
NEW = {"default": 0.2637, "high_sensitivity": 0.0952, "high_specificity": 0.3657}
INFO = {
    "dataset": "/work/shared/data/fracatlas",
    "config": {"dataset": "/work/shared/data/fracatlas", "out": "/work/runs/v2", "cache_dir": "/tmp/c", "seed": 0},
    "validation": {
        "auc": 0.94,
        "operating_points": {k: {"threshold": t, "sensitivity": 0.87, "specificity": 0.93} for k, t in OLD.items()},
    },
    "calibration": {
        "fitted_on": "/work/shared/data/fracatlas",
        "split_file": "/work/main/src/bonefrac/weights/split.json",
        "at_operating_points": {
            "default": {"threshold": NEW["default"], "sensitivity": 0.868, "specificity": 0.926},
            "high_sensitivity": {"threshold": NEW["high_sensitivity"], "sensitivity": 0.904, "specificity": 0.796},
            "high_specificity": {"threshold": NEW["high_specificity"], "sensitivity": 0.781, "specificity": 0.952},
        },
    },
}


def _strings(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_validation_figures_are_those_at_the_thresholds_in_use() -> None:
    spec = ModelSpec(arch="seed_cnn", image_size=64, operating_points=dict(NEW))
    v = model_facts(spec, INFO, "v", "0" * 64)["validation"]
    assert v["operating_points"]["high_specificity"] == INFO["calibration"]["at_operating_points"]["high_specificity"]
    assert {k: s["threshold"] for k, s in v["operating_points"].items()} == NEW and v["not_measured"] == []
    assert v["auc"] == 0.94  # threshold-free figures stay


def test_a_threshold_never_measured_says_so() -> None:
    spec = ModelSpec(arch="seed_cnn", image_size=64, operating_points={**NEW, "high_specificity": 0.5})
    v = model_facts(spec, INFO, "v", "0" * 64)["validation"]
    assert "high_specificity" not in v["operating_points"] and v["not_measured"] == ["high_specificity"]
    assert measured_operating_points({"custom": 0.3}, INFO) == {"custom": None}
    # the training thresholds still find the training figures: matched by threshold, whatever the name
    assert measured_operating_points({"x": OLD["high_sensitivity"]}, INFO)["x"]["sensitivity"] == 0.87


def test_no_path_of_the_training_machine() -> None:
    spec = ModelSpec(arch="seed_cnn", image_size=64, operating_points=dict(NEW))
    facts = model_facts(spec, INFO, "v", "0" * 64)
    assert not [s for s in _strings(facts) if "/" in s]
    clean = without_machine_paths(INFO)
    assert clean["config"] == {"dataset": "fracatlas", "seed": 0} and clean["dataset"] == "fracatlas"
    assert clean["calibration"]["fitted_on"] == "fracatlas" and clean["calibration"]["split_file"] == "split.json"
    assert INFO["config"]["out"] == "/work/runs/v2"  # the caller's dict is left alone
