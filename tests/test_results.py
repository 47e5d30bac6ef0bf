"""Results: one row / dict / table line per prediction, error and study; the study rule (maximum over views)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from dicom_helpers import radiograph_study

from bonefrac.results import (
    CSV_COLUMNS,
    STUDY_CSV_COLUMNS,
    STUDY_RULE,
    WARNINGS_SEPARATOR,
    Prediction,
    PredictionError,
    boxes_text,
    group_studies,
    study_key,
    study_result,
    verdict,
)


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


def test_prediction_row_and_table_line_are_its_dict_as_text() -> None:
    pred = replace(
        _pred("a.jpg", 0.7123456, 0.5),
        detections=[[1.04, 2.0, 30.0, 40.0, 0.7123456], [5.0, 6.0, 7.0, 8.0, 0.2]],
        warnings=["a.jpg: JPEG file is truncated; 37% of rows missing (filled grey)", "second"],
    )
    pred = pred.decided_at("default", 0.5)  # boxes: the detections scoring >= 0.5
    row, d = pred.to_row(), pred.to_dict()
    assert list(row) == CSV_COLUMNS
    assert row["probability"] == "0.712346" and row["fractured"] == "1" and row["threshold"] == "0.500000"
    assert row["operating_point"] == "default" and row["model_version"] == "test" and row["error"] == ""
    # One box format in both columns: "x0 y0 x1 y1 score;...", the values of to_dict.
    assert row["boxes"] == "1.0 2.0 30.0 40.0 0.712346" == boxes_text(d["boxes"])
    assert [[float(v) for v in b.split()] for b in row["detections"].split(";")] == d["detections"]
    assert row["warnings"].split(WARNINGS_SEPARATOR) == pred.warnings
    line = pred.table_line(10)
    assert line.startswith("a.jpg     ") and verdict(True) in line and "0.712" in line
    assert line.endswith("warning: a.jpg: JPEG file is truncated; 37% of rows missing (filled grey)  warning: second")
    assert "warning" not in _pred("b.jpg", 0.1).table_line(10) and verdict(False) in _pred("b.jpg", 0.1).table_line(10)


def test_error_and_study_rows_fill_the_same_columns() -> None:
    error = PredictionError("x.jpg", "x.jpg: empty file")
    assert list(error.to_row()) == CSV_COLUMNS and error.to_row()["error"] == "x.jpg: empty file"
    assert error.to_row()["probability"] == "" and "ERROR  x.jpg: empty file" in error.table_line(8)
    study = study_result("s1", [_pred("a.jpg", 0.2), _pred("b.jpg", 0.7)])
    row = study.to_row()
    assert list(row) == CSV_COLUMNS + STUDY_CSV_COLUMNS and row["level"] == "study" and row["study"] == "s1"
    assert row["probability"] == "0.700000" and row["fractured"] == "1" and row["path"] == ""
    assert study.table_line(12).endswith("FRACTURE     (2 views, maximum over views)")
    empty = study_result("s2", [], ["c.jpg"])
    assert empty.to_row()["probability"] == "" and empty.to_row()["error"] == empty.to_dict()["error"]
    assert "ERROR" in empty.table_line(12)
