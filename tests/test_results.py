"""Study-level results: the maximum over views, decided at the views' threshold; grouping by study."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_helpers import radiograph_study

from bonefrac.results import STUDY_RULE, Prediction, PredictionError, group_studies, study_key, study_result


def _pred(path: str, p: float, threshold: float = 0.5, point: str = "default") -> Prediction:
    return Prediction(
        path=path,
        probability=p,
        fractured=p >= threshold,
        threshold=threshold,
        operating_point=point,
        operating_points={point: p >= threshold},
        boxes=[],
        model_version="test",
        width=10,
        height=10,
    )


def test_study_probability_is_the_maximum_over_views_at_the_views_threshold() -> None:
    views = [_pred("a.jpg", 0.2), _pred("b.jpg", 0.7), _pred("c.jpg", 0.4)]
    s = study_result("s1", views)
    assert s.probability == 0.7 and s.fractured and s.threshold == 0.5 and s.operating_point == "default"
    # One positive view makes the study positive; no positive view, no positive study (not mean, not noisy-OR).
    negative = study_result("s2", [_pred("a.jpg", 0.45), _pred("b.jpg", 0.45)])
    assert negative.probability == 0.45 and not negative.fractured
    d = s.to_dict()
    assert d["level"] == "study" and d["rule"] == STUDY_RULE == "maximum over views"
    assert d["views"] == ["a.jpg", "b.jpg", "c.jpg"] and d["probability"] == 0.7


def test_views_decided_at_different_operating_points_are_refused() -> None:
    with pytest.raises(ValueError, match="different operating points"):
        study_result("s", [_pred("a", 0.3), _pred("b", 0.3, 0.2, "high_sensitivity")])


def test_group_studies_keeps_first_appearance_order_and_failed_views() -> None:
    results = [
        ("x", _pred("x/1.jpg", 0.1)),
        ("y", _pred("y/1.jpg", 0.9)),
        ("x", PredictionError("x/2.jpg", "x/2.jpg: corrupt")),
        ("x", _pred("x/3.jpg", 0.6)),
        ("z", PredictionError("z/1.jpg", "z/1.jpg: corrupt")),
    ]
    studies = group_studies(results)
    assert [s.study for s in studies] == ["x", "y", "z"]
    assert studies[0].probability == 0.6 and studies[0].failed == ["x/2.jpg"]
    assert studies[0].to_dict()["failed_views"] == ["x/2.jpg"]
    assert studies[2].probability is None and "error" in studies[2].to_dict()


def test_study_key_is_the_study_instance_uid_for_dicom_else_the_folder(tmp_path: Path) -> None:
    views = radiograph_study(tmp_path / "dicom", study_uid="1.2.826.0.1.3680043.8.498.4242")
    assert {study_key(p) for p in views} == {"1.2.826.0.1.3680043.8.498.4242"}
    jpeg = tmp_path / "wrist" / "a.jpg"
    jpeg.parent.mkdir()
    jpeg.write_bytes(b"\xff\xd8 not really")
    assert study_key(jpeg) == str(tmp_path / "wrist")
