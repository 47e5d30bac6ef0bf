"""Ultralytics YOLO datasets: a `data.yaml` (`path`, `train`/`val`/`test`, `names`), images under
`images/<subset>` and one `labels/<subset>/<stem>.txt` per image of normalised `class cx cy w h` lines.

Image and label folders are paired as Ultralytics pairs them (the last `images` folder of the image's path
becomes `labels`). A missing or empty label file means a normal image. Boxes are de-normalised with the image
size read from the file's header, and only for images that have a fracture line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bonefrac.datasets.annotations import box_in_image, fracture_class_ids, image_size
from bonefrac.datasets.records import Record, checked
from bonefrac.datasets.splits import group_duplicates
from bonefrac.errors import DatasetError
from bonefrac.io.read import find_images

SUBSETS = ("train", "val", "test")
YAML_NAMES = ("data.yaml", "data.yml")


def find_data_yaml(folder: Path) -> Path | None:
    return next((folder / n for n in YAML_NAMES if (folder / n).is_file()), None)


def load_yolo(
    yaml_path: Path, subset: str | None = None, fracture_classes: Sequence[str] | None = None
) -> list[Record]:
    """Records of one subset (train, val or test), or of every subset the yaml names when `subset` is None;
    `Record.subset` says which. Keys are paths relative to the dataset root, so two subsets never collide."""
    doc = read_yaml(yaml_path)
    names = _names(doc, yaml_path)
    fracture_ids = fracture_class_ids(names, fracture_classes, yaml_path.name)
    present = [s for s in SUBSETS if doc.get(s)]
    if subset is not None and subset not in present:
        raise DatasetError(f"{yaml_path}: no {subset!r} subset (it lists {', '.join(present) or 'none'})")
    subsets = [subset] if subset else present
    base = _base(doc, yaml_path, subsets)
    records: list[Record] = []
    owner: dict[str, str] = {}
    for s in subsets:
        for image in _images(base, doc[s], yaml_path, s):
            key = _rel(image, base)
            if key in owner:  # one image in two subsets: a model would be validated on what it trained on
                raise DatasetError(f"{yaml_path.name}: {key} is in both {owner[key]} and {s}")
            owner[key] = s
            boxes = read_label_file(label_path(image), image, names, fracture_ids, base)
            records.append(Record(str(image), int(bool(boxes)), boxes=boxes, name=key, subset=s))
    listed = [_resolve(base, e) for s in subsets for e in _entries(doc[s])]
    if all(x is not None and x.is_dir() for x in listed):  # a text list may name only some of a folder's images
        _check_orphans(records, base)
    return group_duplicates(checked(records, yaml_path))


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `/images/` of the path becomes `/labels/`, the suffix `.txt`."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if images in text:
        text = labels.join(text.rsplit(images, 1))
    return Path(text).with_suffix(".txt")


def _names(doc: dict[str, Any], yaml_path: Path) -> dict[int, str]:
    names = doc.get("names")
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{yaml_path}: names keys must be class numbers, got {list(names)}") from None
    raise DatasetError(f"{yaml_path}: no 'names' (a list, or a mapping of class number to name)")


def _base(doc: dict[str, Any], yaml_path: Path, subsets: list[str]) -> Path:
    """The dataset root: the yaml's `path` (relative to the yaml's folder), else the yaml's folder. A `path`
    that does not exist here (written on another machine, such as /content/datasets/x) falls back to the
    yaml's folder, where the subsets are looked for too."""
    here = yaml_path.parent
    candidates = []
    if doc.get("path"):
        p = Path(str(doc["path"]))
        candidates.append(p if p.is_absolute() else here / p)
    candidates.append(here)
    for base in candidates:
        if all(_resolve(base, e) is not None for s in subsets for e in _entries(doc[s])):
            return base
    missing = next(e for s in subsets for e in _entries(doc[s]) if _resolve(candidates[-1], e) is None)
    looked = " or ".join(str(c) for c in candidates)
    raise DatasetError(f"{yaml_path}: images {missing!r} not found (looked in {looked})")


def _entries(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _resolve(base: Path, entry: str) -> Path | None:
    x = Path(entry) if os.path.isabs(entry) else base / entry
    if not x.exists() and entry.startswith("../"):  # Roboflow's `train: ../train/images`, as Ultralytics reads it
        x = base / entry[3:]
    return x if x.exists() else None


def _images(base: Path, value: Any, yaml_path: Path, subset: str) -> list[Path]:
    """A subset's images: folders (searched recursively) or text files listing one image per line."""
    images: list[Path] = []
    for entry in _entries(value):
        x = _resolve(base, entry)
        assert x is not None  # _base checked it
        if x.is_dir():
            images += find_images([x])
            continue
        for number, line in enumerate(x.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line:
                p = Path(line) if os.path.isabs(line) else x.parent / line.removeprefix("./")
                if not p.is_file():
                    raise DatasetError(f"{x.name} line {number}: {line}: no such image")
                images.append(p)
    if not images:
        raise DatasetError(f"{yaml_path}: the {subset} subset has no images")
    return sorted(images)


def read_label_file(
    path: Path, image: Path, names: dict[int, str], fracture_ids: set[int], base: Path
) -> list[list[float]]:
    """Fracture boxes [x0, y0, x1, y1] in pixels from one label file; none when it is missing or empty."""
    if not path.is_file():
        return []
    boxes: list[list[float]] = []
    size: tuple[int, int] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        at = f"{_rel(path, base)} line {number}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DatasetError(f"{at}: {len(fields)} fields; expected 5 (class x_center y_center width height)")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{at}: {line.strip()!r} is not numbers") from None
        cls = int(values[0])
        if cls != values[0] or cls not in names:
            raise DatasetError(f"{at}: unknown class {fields[0]} (data.yaml names {sorted(names)})")
        if cls not in fracture_ids:
            continue  # another category: ignored, not a fracture
        if size is None:
            try:
                size = image_size(image)
            except DatasetError as e:
                raise DatasetError(f"{at}: {e}") from None
        width, height = size
        if len(fields) == 5:  # a box: centre and size, normalised
            cx, cy, w, h = values[1:]
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        else:  # a segment polygon x1 y1 x2 y2 ...: its bounding box, as Ultralytics derives one
            xs, ys = values[1::2], values[2::2]
            box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
        boxes.append(box_in_image(box, width, height, at))
    return boxes


def _check_orphans(records: list[Record], base: Path) -> None:
    """A label file in a labels folder with no image of that name: its image is missing."""
    expected = {label_path(Path(r.path)) for r in records}
    folders = {label_path(Path(r.path)).parent for r in records} - {Path(r.path).parent for r in records}
    for folder in sorted(f for f in folders if f.is_dir()):
        for txt in sorted(folder.glob("*.txt")):
            if txt not in expected and txt.name != "classes.txt":  # labelImg writes classes.txt beside
                raise DatasetError(f"{_rel(txt, base)}: no image for this label file")


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a `data.yaml`; DatasetError naming the file (and line) when it is not one."""
    import yaml  # PyYAML's safe loader: plain data only, no Python objects

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DatasetError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: not a YAML mapping (expected keys such as path, train, val, names)")
    return doc
