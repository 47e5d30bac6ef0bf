"""The same 14 radiographs written in every layout give the same records: labels and boxes everywhere,
regions, hardware, multiscan and views where the layout has them, duplicates grouped alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import replicas

from bonefrac.datasets import Record, detect_layout, layout_split, load_dataset


def by_file(records: list[Record]) -> dict[str, Record]:
    return {Path(r.path).name: r for r in records}


def duplicate_partition(records: list[Record]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for r in records:
        if r.group:
            groups.setdefault(r.group, set()).add(Path(r.path).name)
    return {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rows = replicas.truth()
    root = tmp_path_factory.mktemp("layouts")
    return {
        "labels_csv": replicas.FIXTURES,
        "fracatlas": replicas.fracatlas_download(root / "download", rows).parent,  # the folder the zip unpacks in
        "coco": replicas.coco_folder(root / "coco", rows),
        "yolo": replicas.yolo_folder(root / "yolo", rows),
        "class_folders": replicas.class_folders(root / "classes", rows),
        "csv": replicas.path_label_csv(root / "csv", rows),
    }


def load(path: Path) -> list[Record]:
    with pytest.warns(UserWarning) if detect_layout(path)[0] == "fracatlas" else _nothing():
        return load_dataset(path)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("layout", ["labels_csv", "fracatlas", "coco", "yolo", "class_folders", "csv"])
def test_every_layout_gives_the_fixture_truth(layouts: dict[str, Path], layout: str) -> None:
    assert detect_layout(layouts[layout])[0] == layout
    records = by_file(load(layouts[layout]))
    truth = {r["filename"]: r for r in replicas.truth()}
    assert set(records) == set(truth)
    for name, t in truth.items():
        r = records[name]
        assert r.label == t["label"], name
        if layout in ("class_folders", "csv"):
            continue  # labels only
        assert len(r.boxes) == len(t["box_list"]), name
        # within 0.01 px: YOLO keeps 6 decimals of a fraction of the image
        assert np.allclose(np.reshape(r.boxes, (-1, 4)), np.reshape(t["box_list"], (-1, 4)), atol=0.01), name
        if layout in ("labels_csv", "fracatlas"):
            assert (r.region, r.hardware, r.multiscan, r.views) == (
                t["body_region"],
                int(t["hardware"]),
                int(t["multiscan"]),
                t["views"],
            ), name
        else:
            assert r.region == "unknown" and r.hardware is None


def test_the_same_images_give_identical_records_in_fracatlas_layouts(layouts: dict[str, Path]) -> None:
    """The download and bonefrac's labels.csv agree field for field (file names as keys)."""
    mine, download = load(layouts["labels_csv"]), load(layouts["fracatlas"])
    fields = ("key", "label", "region", "boxes", "hardware", "multiscan", "views")
    assert [tuple(getattr(r, f) for f in fields) for r in download] == [
        tuple(getattr(r, f) for f in fields) for r in sorted(mine, key=lambda r: r.key)
    ]


@pytest.mark.parametrize("layout", ["fracatlas", "coco", "yolo"])
def test_byte_identical_images_are_grouped_as_labels_csv_groups_them(layouts: dict[str, Path], layout: str) -> None:
    expected = duplicate_partition(load(layouts["labels_csv"]))
    assert expected == {
        frozenset({"IMG0001763.jpg", "IMG0002615.jpg"}),
        frozenset({"IMG0004308.jpg", "IMG0004347.jpg"}),
    }
    assert duplicate_partition(load(layouts[layout])) == expected


def test_the_download_labels_by_folder_and_says_so(layouts: dict[str, Path]) -> None:
    """FracAtlas's IMG0003298.jpg is 0 in dataset.csv but in Fractured with a box: the folder wins."""
    with pytest.warns(UserWarning, match=f"labelled by folder, not dataset.csv: {replicas.MISLABELLED}"):
        records = by_file(load_dataset(layouts["fracatlas"]))
    assert records[replicas.MISLABELLED].label == 1 and records[replicas.MISLABELLED].boxes


def test_yolo_subsets_and_the_layout_split(layouts: dict[str, Path]) -> None:
    everything = load(layouts["yolo"])
    val = load_dataset(layouts["yolo"], subset="val")
    assert {r.key for r in val} == {r.key for r in everything if r.subset == "val"}
    assert all(r.key.startswith("images/val/") for r in val)
    split = layout_split(everything)
    assert split is not None and set(split.values()) == {"train", "val"}
    assert layout_split(load(layouts["labels_csv"])) is None  # no subsets of its own: split_dataset decides
