"""`bonefrac inspect`: the CLI prints what `inspect_dataset` found, as text or JSON, for any layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bonefrac.apps.cli import main


def test_inspect_prints_the_layout_and_the_class_counts(
    fixtures_dir: Path, fixture_rows: list[dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(fixtures_dir)]) == 0
    out = capsys.readouterr().out
    fractured = sum(r["fractured"] == "1" for r in fixture_rows)
    assert "labels.csv folder" in out
    assert f"{len(fixture_rows)}: {fractured} fractured, {len(fixture_rows) - fractured} not fractured" in out


def test_inspect_json_counts_every_box(
    fixtures_dir: Path, fixture_rows: list[dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(fixtures_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    boxes = sum(len([b for b in r["boxes"].split(";") if b.strip()]) for r in fixture_rows)
    assert summary["layout"] == "labels_csv" and summary["images"] == len(fixture_rows)
    assert summary["boxes"] == boxes


def test_inspect_refuses_a_missing_dataset_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bonefrac: error:") and "nowhere" in err[0]
