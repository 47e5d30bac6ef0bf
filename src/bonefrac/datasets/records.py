"""`Record`, and the three layouts bonefrac has always read: a FracAtlas-style `labels.csv` + `images/`, class
folders (`fractured/`, `not_fractured/`), and a CSV of `path,label` rows."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bonefrac.errors import DatasetError
from bonefrac.io.read import find_images


@dataclass
class Record:
    """One labelled image. `boxes` are [x0, y0, x1, y1] in the pixels of the image as read.

    `name` identifies the image in split files: the file name for FracAtlas folders, the path relative to
    the dataset root for class folders and YOLO, the path as written for CSVs and COCO (so `IM0001` in two
    folders differ). `subset` is the layout's own train/val/test assignment (YOLO), empty when it has none.
    """

    path: str
    label: int
    region: str = "unknown"
    group: str = ""
    boxes: list[list[float]] = field(default_factory=list)
    hardware: int | None = None
    name: str = ""
    multiscan: int | None = None
    views: str = ""
    subset: str = ""

    @property
    def key(self) -> str:
        return self.name or Path(self.path).name


def load_labels_csv(root: Path) -> list[Record]:
    """A FracAtlas-style folder: `labels.csv` (filename, fractured, ...) with the files in `images/`."""
    labels = root / "labels.csv"
    return _records_from_csv(labels, root, "filename", "fractured", "dup_group", lambda name: root / "images" / name)


def load_class_folders(root: Path) -> list[Record]:
    """`fractured/` and `not_fractured/` (any depth below each), keyed by the path relative to `root`."""
    records = sorted(
        (
            Record(str(p), label, name=p.relative_to(root).as_posix())
            for label, folder in ((1, root / "fractured"), (0, root / "not_fractured"))
            for p in find_images([folder])
        ),
        key=lambda r: r.path,
    )
    return checked(records, root)


def load_csv(path: Path) -> list[Record]:
    """A CSV with `path` and `label` columns (paths relative to the CSV's folder, or absolute)."""
    return _records_from_csv(path, path, "path", "label", "group", lambda name: path.parent / name)


def parse_boxes(text: str) -> list[list[float]]:
    boxes = []
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        values = [float(v) for v in part.split()]
        if len(values) == 4:
            boxes.append(values)
    return boxes


def parse_label(value: str, where: str) -> int:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "fractured", "positive"):
        return 1
    if v in ("0", "false", "no", "not_fractured", "negative"):
        return 0
    raise DatasetError(f"{where}: label {value!r} is not 0/1")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Column names and rows of a UTF-8 CSV file; a byte-order mark (as Excel writes one) is fine."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a UTF-8 CSV file ({type(e).__name__})") from None


def _optional_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _records_from_csv(
    csv_path: Path, where: Path, path_col: str, label_col: str, group_col: str, locate: Callable[[str], Path]
) -> list[Record]:
    """Rows of a labels CSV -> records. `path_col` names the image (located by `locate` unless absolute)."""
    columns, rows = read_csv(csv_path)
    if not {path_col, label_col} <= set(columns):
        raise DatasetError(f"{csv_path}: needs '{path_col}' and '{label_col}' columns")
    records = []
    for i, row in enumerate(rows):
        at = f"{csv_path.name} row {i + 2}"
        name = (row.get(path_col) or "").strip()
        if not name:
            raise DatasetError(f"{at}: empty {path_col}")
        try:
            records.append(
                Record(
                    path=str(Path(name) if os.path.isabs(name) else locate(name)),
                    label=parse_label(row[label_col], at),
                    region=(row.get("body_region") or "unknown").strip() or "unknown",
                    group=(row.get(group_col) or "").strip(),
                    boxes=parse_boxes(row.get("boxes", "")),
                    hardware=_optional_int(row.get("hardware")),
                    name=name,
                    multiscan=_optional_int(row.get("multiscan")),
                    views=(row.get("views") or "").strip(),
                )
            )
        except ValueError as e:  # a malformed box, hardware or multiscan value
            raise DatasetError(f"{at}: {e}") from None
    return checked(records, where)


def checked(records: list[Record], where: Path) -> list[Record]:
    """Every layout's records pass here: at least one image, warned when one class only, unique keys."""
    if not records:
        raise DatasetError(f"{where}: the dataset has no images")
    if len({r.label for r in records}) < 2:
        warnings.warn(f"{where}: only one class present", stacklevel=3)
    seen: set[str] = set()
    for r in records:
        if r.key in seen:  # split files are keyed by name: a repeat would silently join two images
            raise DatasetError(f"{where}: {r.key!r} is listed twice")
        seen.add(r.key)
    return records
