"""`inspect_dataset` and its text: counts, boxes, unreadable images, boxes outside, duplicates, the layout."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import replicas

from bonefrac.datasets import format_summary, inspect_dataset


def test_summary_of_the_fixture_dataset(fixtures_dir: Path) -> None:
    s = inspect_dataset(fixtures_dir)
    assert (s.layout, s.images, s.classes) == ("labels_csv", 14, {"fractured": 7, "not fractured": 7})
    assert s.regions["leg"] == {"fractured": 1, "not fractured": 4}
    assert s.regions["mixed:hand+shoulder"] == {"fractured": 1}
    assert (s.boxes, s.boxes_per_image) == (8, {1: 6, 2: 1})
    assert s.box_width_px[0] == 11.5 and s.box_height_px[-1] == 87.7  # min and max
    assert s.duplicates == [["IMG0001763.jpg", "IMG0002615.jpg"], ["IMG0004308.jpg", "IMG0004347.jpg"]]
    assert not (s.unreadable or s.boxes_outside or s.conflicting_duplicates or s.subsets)
    json.dumps(s.to_dict())  # serialisable as it is
    text = format_summary(s)
    assert "images    14: 7 fractured, 7 not fractured" in text
    assert "boxes     8 on 7 of 7 fractured images (boxes per image 1: 6, 2: 1)" in text
    assert "exact duplicates (4 images, same bytes): 2\n  IMG0001763.jpg = IMG0002615.jpg" in text
    assert "unreadable images: none" in text and "boxes outside their image: none" in text


def test_problems_a_labels_csv_does_not_stop_are_reported(fixtures_dir: Path, tmp_path: Path) -> None:
    """labels.csv boxes are not checked when read (training copes); inspect shows them, with unreadable
    files and duplicates whose labels disagree."""
    shutil.copytree(fixtures_dir / "images", tmp_path / "images")
    with open(fixtures_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[3]["boxes"] = "300 400 420 470"  # IMG0001763.jpg is 373x454
    rows[13]["fractured"] = "1"  # IMG0004347.jpg: the same bytes as IMG0004308.jpg (0)
    (tmp_path / "images" / rows[0]["filename"]).write_bytes(b"")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    s = inspect_dataset(tmp_path)
    assert s.unreadable == ["IMG0000505.jpg: cannot read the image size (empty file)"]
    assert s.boxes_outside == ["IMG0001763.jpg: box [300 400 420 470] outside its 373x454 image"]
    assert s.conflicting_duplicates == [["IMG0004308.jpg", "IMG0004347.jpg"]]
    text = format_summary(s)
    assert "unreadable images: 1\n  IMG0000505.jpg: cannot read" in text
    assert "  of which labelled differently: 1\n  IMG0004308.jpg = IMG0004347.jpg" in text


@pytest.mark.parametrize("subset", [None, "val"])
def test_yolo_summary_shows_subsets(tmp_path: Path, subset: str | None) -> None:
    root = replicas.yolo_folder(tmp_path / "yolo", replicas.truth())
    s = inspect_dataset(root, subset=subset)
    assert s.layout == "yolo" and s.subset == subset
    assert set(s.subsets) == ({"train", "val"} if subset is None else {"val"})
    assert sum(sum(c.values()) for c in s.subsets.values()) == s.images
    assert s.regions == {"unknown": s.classes}
    text = format_summary(s)
    assert text.startswith(f"dataset   {root} (Ultralytics YOLO{', subset val' if subset else ''})")
    assert "  val   " in text
    if subset is None:  # IMG0004308.jpg (val) and IMG0004347.jpg (train) are the same bytes
        assert s.duplicates_across_subsets == [["images/train/IMG0004347.jpg", "images/val/IMG0004308.jpg"]]
        assert "  of which in two subsets: 1\n  images/train/IMG0004347.jpg = images/val/IMG0004308.jpg" in text
    else:
        assert not s.duplicates_across_subsets
