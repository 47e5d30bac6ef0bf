"""Which layout a dataset path is, and `load_dataset`, which reads any of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bonefrac.datasets.coco import COCO_FILE_NAMES, load_coco
from bonefrac.datasets.fracatlas import find_fracatlas_root, load_fracatlas_download
from bonefrac.datasets.records import Record, load_class_folders, load_csv, load_labels_csv
from bonefrac.datasets.yolo import find_data_yaml, load_yolo
from bonefrac.errors import DatasetError

LAYOUTS = ("labels_csv", "fracatlas", "yolo", "coco", "class_folders", "csv")
#: How messages and `bonefrac inspect` name each layout.
LAYOUT_NAMES = {
    "labels_csv": "labels.csv folder",
    "fracatlas": "FracAtlas download",
    "yolo": "Ultralytics YOLO",
    "coco": "COCO",
    "class_folders": "class folders",
    "csv": "path,label CSV",
}

#: What every command that reads a labelled dataset says of its argument and of --fracture-class.
DATASET_HELP = (
    "a labelled dataset: a labels.csv folder, class folders, a path,label CSV, a COCO JSON, a YOLO data.yaml "
    "or the unpacked FracAtlas download (`bonefrac inspect` shows what it holds)"
)
FRACTURE_CLASS_HELP = (
    "COCO/YOLO category that means fracture (repeatable; default: the categories named fracture or fractured, "
    "or the only one); boxes of other categories are ignored"
)

#: The layouts whose categories are chosen with `fracture_classes`, and the one with subsets of its own.
_WITH_CATEGORIES = ("coco", "yolo")
_WITH_SUBSETS = ("yolo",)


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """(layout, the file or folder its reader takes) for a dataset path; DatasetError when none fits."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset folder or CSV file")
    if path.is_file():
        suffix = path.suffix.lower()
        return ("coco" if suffix == ".json" else "yolo" if suffix in (".yaml", ".yml") else "csv"), path
    if (path / "labels.csv").is_file():
        return "labels_csv", path
    if (root := find_fracatlas_root(path)) is not None:
        return "fracatlas", root
    if (yaml := find_data_yaml(path)) is not None:
        return "yolo", yaml
    if (coco := next((path / n for n in COCO_FILE_NAMES if (path / n).is_file()), None)) is not None:
        return "coco", coco
    if (path / "fractured").is_dir() and (path / "not_fractured").is_dir():
        return "class_folders", path
    raise DatasetError(
        f"{path}: not a dataset. Expected labels.csv + images/, the FracAtlas download (dataset.csv + "
        "images/Fractured), a YOLO data.yaml, a COCO annotations.json, fractured/ + not_fractured/ folders, "
        "or a CSV file"
    )


def dataset_file(path: str | Path) -> Path:
    """The file or folder the layout's reader takes (the data.yaml of a YOLO folder, and so on)."""
    return detect_layout(path)[1]


def load_dataset(
    path: str | Path, *, subset: str | None = None, fracture_classes: Sequence[str] | None = None
) -> list[Record]:
    """Read any supported layout into records, in a stable order.

    Args:
        path: a dataset folder or file (see the module docstring for the layouts).
        subset: train, val or test of a layout that has its own (YOLO); None reads every subset.
        fracture_classes: the category names that mean fracture (COCO, YOLO); default: those named
            fracture or fractured, or the only category.

    Raises:
        DatasetError: one line naming the file and the entry at fault.
    """
    layout, where = detect_layout(path)
    if subset is not None and layout not in _WITH_SUBSETS:
        raise DatasetError(f"{path}: a {LAYOUT_NAMES[layout]} has no subsets of its own (a YOLO data.yaml has)")
    if fracture_classes and layout not in _WITH_CATEGORIES:
        raise DatasetError(f"{path}: a {LAYOUT_NAMES[layout]} has no categories to choose (COCO and YOLO have)")
    if layout == "labels_csv":
        return load_labels_csv(where)
    if layout == "fracatlas":
        return load_fracatlas_download(where)
    if layout == "yolo":
        return load_yolo(where, subset, fracture_classes)
    if layout == "coco":
        return load_coco(where, fracture_classes)
    if layout == "class_folders":
        return load_class_folders(where)
    return load_csv(where)
