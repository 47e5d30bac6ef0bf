"""COCO detection files: file resolution, the fracture-category rule, and one line per malformed entry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import replicas

from bonefrac.datasets import load_dataset
from bonefrac.errors import DatasetError


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    return replicas.coco_folder(tmp_path / "coco", replicas.truth())


def rewrite(folder: Path, change: Callable[[dict], None], name: str = "annotations.json") -> Path:
    doc = json.loads((folder / name).read_text())
    change(doc)
    (folder / name).write_text(json.dumps(doc))
    return folder


def test_any_json_file_is_read_as_coco_and_other_categories_are_ignored(coco: Path) -> None:
    renamed = coco / "instances_val.json"
    (coco / "annotations.json").rename(renamed)
    records = {r.key: r for r in load_dataset(renamed)}
    # IMG0000505.jpg sits beside the JSON, the others in images/
    assert Path(records["IMG0000505.jpg"].path).parent == coco
    hardware = {r["filename"] for r in replicas.truth() if r["hardware"] == "1"}
    for r in records.values():  # implant boxes are not fractures: the counts are the truth's
        truth = next(t for t in replicas.truth() if t["filename"] == r.key)
        assert len(r.boxes) == len(truth["box_list"]), (r.key, r.key in hardware)


def test_the_only_category_is_the_fracture_one_whatever_its_name(coco: Path) -> None:
    def one_category(doc: dict) -> None:
        doc["categories"] = [{"id": 1, "name": "break"}]
        doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] == 1]

    assert sum(r.label for r in load_dataset(rewrite(coco, one_category))) == 7


def test_fracture_classes_choose_the_categories(coco: Path) -> None:
    records = load_dataset(coco, fracture_classes=["Implant"])  # case-insensitive
    assert {r.key for r in records if r.label} == {r["filename"] for r in replicas.truth() if r["hardware"] == "1"}
    assert all(r.boxes == [[2.0, 3.0, 40.0, 50.0]] for r in records if r.label)
    both = load_dataset(coco, fracture_classes=["implant", "fractured"])
    assert sum(len(r.boxes) for r in both) == 8 + 2


def test_sizes_missing_from_the_json_are_read_from_the_image(coco: Path) -> None:
    def no_sizes(doc: dict) -> None:
        for image in doc["images"]:
            del image["width"], image["height"]

    assert sum(len(r.boxes) for r in load_dataset(rewrite(coco, no_sizes))) == 8


def _box(x: float, y: float, w: float, h: float) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["annotations"][0]["bbox"] = [x, y, w, h]

    return change


def _set(where: str, key: str, value: object, index: int = 0) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc[where][index][key] = value

    return change


MALFORMED = {
    "box_outside": (
        _box(300, 400, 100, 100),
        r"annotations.json annotations\[0\] \(id 1\): box \[300 400 400 500\] "
        r"lies outside its 373x454 image",
    ),
    "empty_box": (_box(10, 10, 0, 5), r"annotations\[0\] \(id 1\): empty box"),
    "bbox_not_four_numbers": (_box(1, 2, 3, "x"), r"annotations\[0\] \(id 1\): bbox .* is not \[x, y, width, height\]"),
    "missing_image": (
        _set("images", "file_name", "nowhere.jpg", 3),
        r"images\[3\] \(id 4\): nowhere.jpg: no such file",
    ),
    "unknown_category": (_set("annotations", "category_id", 9), r"annotations\[0\] \(id 1\): unknown category_id 9"),
    "unknown_image": (_set("annotations", "image_id", 99), r"annotations\[0\] \(id 1\): image_id 99 is not in images"),
    "duplicate_image_id": (_set("images", "id", 1, 1), r"images\[1\]: duplicate image id 1"),
    "duplicate_annotation_id": (_set("annotations", "id", 1, 1), r"annotations\[1\] \(id 1\): duplicate annotation id"),
    "duplicate_category_id": (_set("categories", "id", 1, 1), r"categories\[1\]: duplicate category id 1"),
    "no_fracture_category": (
        _set("categories", "name", "crack"),
        r"no category is named fracture or fractured \(categories: 'crack', 'implant'\); .*--fracture-class",
    ),
    "annotation_without_image_id": (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] .*no 'image_id'"),
    "duplicate_file_name": (_set("images", "file_name", "IMG0001089.jpg", 0), r"'IMG0001089.jpg' is listed twice"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_coco_is_one_line_naming_file_and_entry(coco: Path, case: str) -> None:
    change, message = MALFORMED[case]
    rewrite(coco, change)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(coco)
    assert "\n" not in str(e.value)


def test_unknown_fracture_class_and_non_coco_files(coco: Path) -> None:
    with pytest.raises(DatasetError, match=r"no category named 'fracture' \(categories: 'fractured', 'implant'\)"):
        load_dataset(coco, fracture_classes=["fracture"])
    (coco / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"annotations.json: not a JSON file \(.* at line 1\)"):
        load_dataset(coco)
    (coco / "annotations.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="no 'categories' list"):
        load_dataset(coco)
    (coco / "annotations.json").write_text("[]")
    with pytest.raises(DatasetError, match="not a COCO detection file"):
        load_dataset(coco)
