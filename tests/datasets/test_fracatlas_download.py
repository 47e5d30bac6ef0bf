"""The FracAtlas download as unpacked: where it is found, where boxes come from, and malformed input."""

from __future__ import annotations

import csv
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import replicas

from bonefrac.datasets import detect_layout, load_dataset
from bonefrac.errors import DatasetError


@pytest.fixture
def download(tmp_path: Path) -> Path:
    return replicas.fracatlas_download(tmp_path, replicas.truth())


def load(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mislabelled row's notice: its own test checks it
        return {r.key: r for r in load_dataset(path)}


def edit_csv(top: Path, change: Callable[[list[list[str]]], object]) -> None:
    with open(top / "dataset.csv", newline="") as f:
        rows = list(csv.reader(f))
    change(rows)
    with open(top / "dataset.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_found_as_unpacked_or_inside_the_folder_it_was_unpacked_in(download: Path) -> None:
    assert detect_layout(download) == ("fracatlas", download)
    assert detect_layout(download.parent) == ("fracatlas", download)


def test_boxes_come_from_the_yolo_labels_when_the_coco_file_is_absent(download: Path) -> None:
    from_coco = load(download)
    shutil.rmtree(download / "Annotations" / "COCO JSON")
    from_yolo = load(download)
    for key, r in from_coco.items():
        assert len(r.boxes) == len(from_yolo[key].boxes)
        for a, b in zip(r.boxes, from_yolo[key].boxes, strict=True):
            assert a == pytest.approx(b, abs=0.01)
    shutil.rmtree(download / "Annotations")
    assert sum(r.label for r in load(download).values()) == 7  # labels without boxes still


@pytest.mark.filterwarnings("ignore:labelled by folder, not dataset.csv")
def test_images_missing_from_dataset_csv_are_kept_and_named(download: Path) -> None:
    edit_csv(download, lambda rows: rows.pop(1))
    with pytest.warns(UserWarning, match="1 images not in dataset.csv, labelled by folder: IMG0000505.jpg"):
        records = {r.key: r for r in load_dataset(download)}
    assert records["IMG0000505.jpg"].label == 0 and records["IMG0000505.jpg"].region == "unknown"


def _row_image(rows: list[list[str]], index: int, value: str) -> None:
    rows[index][0] = value


MALFORMED = {
    "missing_image": (
        lambda rows: _row_image(rows, 3, "IMG9999999.jpg"),
        r"dataset.csv row 4: IMG9999999.jpg: no such image in images/Fractured or images/Non_fractured",
    ),
    "duplicate_row": (lambda rows: rows.append(list(rows[2])), r"dataset.csv row 16: IMG0001089.jpg: is listed twice"),
    "empty_image_id": (lambda rows: _row_image(rows, 2, ""), r"dataset.csv row 3: empty image_id"),
    "bad_flag": (lambda rows: rows[2].__setitem__(1, "yes"), r"dataset.csv row 3: hand 'yes' is not 0/1"),
    "bad_fractured": (lambda rows: rows[2].__setitem__(8, "maybe"), r"dataset.csv row 3: label 'maybe' is not 0/1"),
    "no_image_id_column": (lambda rows: rows[0].__setitem__(0, "file"), r"needs 'image_id' and 'fractured' columns"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dataset_csv(download: Path, case: str) -> None:
    change, message = MALFORMED[case]
    edit_csv(download, change)
    with pytest.raises(DatasetError, match=message):
        load(download)


def test_an_image_in_both_folders_is_labelled_by_its_boxes(download: Path) -> None:
    """A name in both folders (a copy left in the wrong one): its fracture boxes decide, else dataset.csv."""
    for name in ("IMG0002553.jpg", "IMG0002544.jpg"):  # boxes; boxes, and fractured=0 in dataset.csv
        shutil.copy(download / "images" / "Fractured" / name, download / "images" / "Non_fractured")
    shutil.copy(download / "images" / "Non_fractured" / "IMG0001089.jpg", download / "images" / "Fractured")
    with pytest.warns(UserWarning, match=r"IMG0001089.jpg \(fractured=0, in both folders\)"):
        records = {r.key: r for r in load_dataset(download)}
    assert len(records) == 14
    assert records["IMG0002553.jpg"].label == records["IMG0002544.jpg"].label == 1
    assert records["IMG0001089.jpg"].label == 0 and "Non_fractured" in records["IMG0001089.jpg"].path


def test_a_coco_box_outside_its_image_names_the_annotation(download: Path) -> None:
    coco = download / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    coco.write_text(coco.read_text().replace('"width": 373', '"width": 37', 1))
    with pytest.raises(DatasetError, match=r"COCO_fracture_masks.json annotations\[0\] \(id 1\): box .* outside"):
        load(download)
