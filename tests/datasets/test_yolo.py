"""Ultralytics YOLO datasets: data.yaml variants, subsets, de-normalising boxes with header-read sizes, and one
line per malformed entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import make_variants as mv
import numpy as np
import pytest
import replicas

from bonefrac.datasets import load_dataset
from bonefrac.errors import DatasetError

FRACTURED = "IMG0002553.jpg"  # 454x373, one box
BOX = [268.4, 95.6, 289.5, 121.1]


@pytest.fixture
def yolo(tmp_path: Path) -> Path:
    return replicas.yolo_folder(tmp_path / "yolo", replicas.truth())


def label_of(root: Path, name: str) -> Path:
    return next(root.glob(f"labels/*/{Path(name).stem}.txt"))


def test_missing_and_empty_label_files_are_normal(yolo: Path) -> None:
    records = load_dataset(yolo)
    normal = [r for r in records if not r.label]
    assert len(normal) == 7 and not any(r.boxes for r in normal)
    missing = [r for r in normal if not (yolo / r.key.replace("images/", "labels/", 1)).with_suffix(".txt").exists()]
    assert missing and len(missing) < len(normal)  # both kinds are present


@pytest.mark.filterwarnings("ignore:.*only one class present")
def test_roboflow_export_layout_with_list_names_and_a_colab_path(tmp_path: Path) -> None:
    """Roboflow writes train/images + train/labels, `../train/images` entries and a flow list of names; a
    `path` from the machine that wrote it (Colab) does not exist here and falls back to the yaml's folder."""
    rows = replicas.truth()[:6]
    for i, r in enumerate(rows):
        subset = "valid" if i < 2 else "train"
        (tmp_path / subset / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / subset / "labels").mkdir(parents=True, exist_ok=True)
        shutil.copy(r["src"], tmp_path / subset / "images" / r["filename"])
        lines = replicas.yolo_lines(r)
        (tmp_path / subset / "labels" / f"{Path(r['filename']).stem}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "data.yaml").write_text(
        "path: /content/datasets/bones  # Colab\ntrain: ../train/images\nval: ../valid/images\n\nnc: 1\n"
        "names: ['fracture']\n\nroboflow:\n  workspace: someone\n  version: 3\n  url: https://universe.roboflow.com/x\n"
    )
    records = load_dataset(tmp_path / "data.yaml", subset="val")
    assert [r.key for r in records] == ["valid/images/IMG0000505.jpg", "valid/images/IMG0001089.jpg"]
    assert len(load_dataset(tmp_path)) == 6


def test_polygon_lines_give_their_bounding_box(yolo: Path) -> None:
    label = label_of(yolo, FRACTURED)
    x0, y0, x1, y1 = (v / s for v, s in zip(BOX, (454, 373, 454, 373), strict=True))
    label.write_text(f"1 {x0} {y0} {x1} {y0} {(x0 + x1) / 2} {y1} {x0} {y1}\n")
    r = next(r for r in load_dataset(yolo) if r.key.endswith(FRACTURED))
    assert np.allclose(r.boxes, [BOX], atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*only one class present")
def test_exif_rotated_and_dicom_images_are_sized_as_read(tmp_path: Path, grey: np.ndarray) -> None:
    """Boxes are fractions of the image as displayed: an EXIF-rotated JPEG's width is its stored height."""
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    h, w = grey.shape
    mv.jpeg_exif_orientation(grey, tmp_path / "images" / "val" / "turned.jpg", orientation=6)  # shown w x h swapped
    mv.dicom(tmp_path / "images" / "val" / "scan.dcm", grey, bits_stored=8)
    for stem in ("turned", "scan"):
        (tmp_path / "labels" / "val" / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("val: images/val\nnames: [fractured]\n")
    records = {Path(r.path).stem: r for r in load_dataset(tmp_path, subset="val")}
    assert records["turned"].boxes == [[h / 4, w / 4, 3 * h / 4, 3 * w / 4]]
    assert records["scan"].boxes == [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]


def test_subset_must_exist_and_images_may_not_be_in_two(yolo: Path) -> None:
    with pytest.raises(DatasetError, match=r"data.yaml: no 'test' subset \(it lists train, val\)"):
        load_dataset(yolo, subset="test")
    (yolo / "data.yaml").write_text(
        "train: images/train\nval: [images/val, images/train]\nnames: [implant, fracture]\n"
    )
    with pytest.raises(DatasetError, match=r"data.yaml: images/train/\S+ is in both train and val"):
        load_dataset(yolo)


@pytest.mark.filterwarnings("ignore:.*only one class present")
def test_a_text_file_can_list_a_subset(yolo: Path) -> None:
    (yolo / "val.txt").write_text("./images/val/IMG0000505.jpg\n\n./images/train/IMG0001910.jpg\n")
    (yolo / "data.yaml").write_text("val: val.txt\nnames: {0: implant, 1: fracture}\n")
    assert [r.key for r in load_dataset(yolo, subset="val")] == [
        "images/train/IMG0001910.jpg",
        "images/val/IMG0000505.jpg",
    ]
    (yolo / "val.txt").write_text("./images/val/gone.jpg\n")
    with pytest.raises(DatasetError, match=r"val.txt line 1: ./images/val/gone.jpg: no such image"):
        load_dataset(yolo, subset="val")


LINES = {
    "wrong_field_count": ("1 0.5 0.5 0.1", r"labels/\w+/IMG0002553.txt line 1: 4 fields; expected 5"),
    "six_fields": ("1 0.5 0.5 0.1 0.1 0.3", r"IMG0002553.txt line 1: 6 fields"),
    "not_numbers": ("1 0.5 0.5 wide 0.1", r"IMG0002553.txt line 1: '1 0.5 0.5 wide 0.1' is not numbers"),
    "unknown_class": ("7 0.5 0.5 0.1 0.1", r"IMG0002553.txt line 1: unknown class 7 \(data.yaml names \[0, 1\]\)"),
    "box_outside": ("1 0.95 0.5 0.2 0.1", r"IMG0002553.txt line 1: box \[.*\] lies outside its 454x373 image"),
    "empty_box": ("1 0.5 0.5 0 0.1", r"IMG0002553.txt line 1: empty box"),
}


@pytest.mark.parametrize("case", sorted(LINES))
def test_malformed_label_line_is_one_line_naming_file_and_line(yolo: Path, case: str) -> None:
    line, message = LINES[case]
    label_of(yolo, FRACTURED).write_text(f"\n{line}\n".replace("\n", "", 1))
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(yolo)
    assert "\n" not in str(e.value)


def test_a_box_a_hair_outside_is_clipped(yolo: Path) -> None:
    label_of(yolo, FRACTURED).write_text("1 0.9 0.5 0.2000005 0.1\n")  # reaches 1.0000002 of the width
    r = next(r for r in load_dataset(yolo) if r.key.endswith(FRACTURED))
    assert r.boxes[0][2] == 454.0


def test_label_without_image_names_the_label_file(yolo: Path) -> None:
    label = label_of(yolo, FRACTURED)
    next(yolo.glob(f"images/*/{FRACTURED}")).unlink()
    with pytest.raises(DatasetError, match=rf"labels/\w+/{label.name}: no image for this label file"):
        load_dataset(yolo)


def test_unreadable_image_with_a_fracture_line_names_the_label_line(yolo: Path) -> None:
    next(yolo.glob(f"images/*/{FRACTURED}")).write_bytes(b"not an image")
    with pytest.raises(
        DatasetError,
        match=r"IMG0002553.txt line 1: IMG0002553.jpg: cannot read the image size \(not a JPEG, PNG or DICOM image\)",
    ):
        load_dataset(yolo)


YAMLS = {
    "no_names": ("train: images/train\n", r"data.yaml: no 'names'"),
    "bad_names": ("train: images/train\nnames: {a: x}\n", r"names keys must be class numbers"),
    "missing_folder": ("train: images/nowhere\nnames: [x]\n", r"images 'images/nowhere' not found \(looked in"),
    "no_fracture_class": ("train: images/train\nnames: [a, b]\n", r"no category is named fracture"),
    "not_a_mapping": ("- a\n- b\n", r"not a YAML mapping"),
}


@pytest.mark.parametrize("case", sorted(YAMLS))
def test_malformed_data_yaml(yolo: Path, case: str) -> None:
    text, message = YAMLS[case]
    (yolo / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(yolo)


def test_subset_and_classes_are_refused_where_the_layout_has_none(fixtures_dir: Path) -> None:
    with pytest.raises(DatasetError, match="a labels.csv folder has no subsets of its own"):
        load_dataset(fixtures_dir, subset="val")
    with pytest.raises(DatasetError, match="a labels.csv folder has no categories to choose"):
        load_dataset(fixtures_dir, fracture_classes=["fracture"])


@pytest.mark.slow  # imports torch and builds a decode cache
def test_training_takes_the_split_the_yaml_defines(yolo: Path, tmp_path: Path) -> None:
    """A YOLO dataset trains on its train subset and is validated on its val subset, not on a random split."""
    from bonefrac.spec import ModelSpec
    from bonefrac.train.config import TrainConfig
    from bonefrac.train.data import prepare_data

    out = tmp_path / "run"
    out.mkdir()
    cfg = TrainConfig(dataset=str(yolo), out=str(out), image_size=64, cache_dir=str(tmp_path / "cache"), progress=False)
    train, val, _ = prepare_data(cfg, ModelSpec(image_size=64), out)
    assert {r.subset for r in train} == {"train"} and {r.subset for r in val} == {"val"}
    assert len(train) + len(val) == 14
    assert set(json.loads((out / "split.json").read_text()).values()) == {"train", "val"}
