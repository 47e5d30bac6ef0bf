"""COCO detection files: `images`, `annotations` (bbox [x, y, w, h] in pixels) and `categories`.

An image with no box of a fracture category is normal; boxes of other categories are ignored. File names
are looked up beside the JSON, then in an `images/` folder next to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bonefrac.datasets.annotations import box_in_image, fracture_class_ids, image_size
from bonefrac.datasets.records import Record, checked
from bonefrac.datasets.splits import group_duplicates
from bonefrac.errors import DatasetError

#: The names a COCO file gets in a dataset folder: bonefrac's and Roboflow's COCO export.
COCO_FILE_NAMES = ("annotations.json", "_annotations.coco.json")


def load_coco(json_path: Path, fracture_classes: Sequence[str] | None = None) -> list[Record]:
    """Records of a COCO detection file, sorted by file name, byte-identical images grouped."""
    doc = read_coco(json_path)
    boxes = coco_fracture_boxes(doc, json_path, fracture_classes)
    records = []
    for i, image in enumerate(doc["images"]):
        file_name = str(image["file_name"])
        at = f"{json_path.name} images[{i}] (id {image['id']})"
        path = _locate(json_path.parent, file_name)
        if path is None:
            raise DatasetError(f"{at}: {file_name}: no such file beside the JSON or in images/")
        found = boxes.get(image["id"], [])
        records.append(Record(str(path), int(bool(found)), boxes=found, name=file_name))
    records.sort(key=lambda r: r.key)
    return group_duplicates(checked(records, json_path))


def read_coco(json_path: Path) -> dict[str, Any]:
    """The parsed file, its top level checked: `images` and `categories` lists, `annotations` (may be absent)."""
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_path}: not a JSON file ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_path}: cannot be read ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{json_path}: not a COCO detection file (needs 'images', 'annotations', 'categories')")
    if not isinstance(doc.get("categories"), list):
        raise DatasetError(f"{json_path}: no 'categories' list (which category is a fracture?)")
    doc.setdefault("annotations", [])
    return doc


def coco_fracture_boxes(
    doc: dict[str, Any], json_path: Path, fracture_classes: Sequence[str] | None = None
) -> dict[Any, list[list[float]]]:
    """{image id: fracture boxes [x0, y0, x1, y1]}, every entry checked: unique ids, known images and
    categories, four-number boxes inside their image (the JSON's width/height, else the file's header)."""
    name = json_path.name
    names: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        cid = _field(cat, "id", f"{name} categories[{i}]")
        if cid in names:
            raise DatasetError(f"{name} categories[{i}]: duplicate category id {cid}")
        names[cid] = str(_field(cat, "name", f"{name} categories[{i}]"))
    fracture_ids = fracture_class_ids(names, fracture_classes, name)
    images: dict[Any, dict[str, Any]] = {}
    for i, image in enumerate(doc["images"]):
        iid = _field(image, "id", f"{name} images[{i}]")
        _field(image, "file_name", f"{name} images[{i}]")
        if iid in images:
            raise DatasetError(f"{name} images[{i}]: duplicate image id {iid}")
        images[iid] = image
    boxes: dict[Any, list[list[float]]] = {}
    seen: set[Any] = set()
    for i, ann in enumerate(doc["annotations"]):
        at = f"{name} annotations[{i}]"
        aid = ann.get("id") if isinstance(ann, dict) else None
        if aid is not None:
            at += f" (id {aid})"
            if aid in seen:
                raise DatasetError(f"{at}: duplicate annotation id {aid}")
            seen.add(aid)
        image = images.get(_field(ann, "image_id", at))
        if image is None:
            raise DatasetError(f"{at}: image_id {ann['image_id']} is not in images")
        category = _field(ann, "category_id", at)
        if category not in names:
            raise DatasetError(f"{at}: unknown category_id {category}")
        if category not in fracture_ids:
            continue  # another finding (hardware, a text marker): not a fracture, and not counted as one
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(f"{at}: bbox {bbox!r} is not [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        width, height = _size(image, json_path)
        boxes.setdefault(image["id"], []).append(box_in_image([x, y, x + w, y + h], width, height, at))
    return boxes


def _size(image: dict[str, Any], json_path: Path) -> tuple[int, int]:
    """The image's size as the JSON states it; read from the file's header (and remembered) when absent."""
    if not (_is_number(image.get("width")) and _is_number(image.get("height"))):
        path = _locate(json_path.parent, str(image["file_name"]))
        if path is None:
            raise DatasetError(f"{json_path.name} image id {image['id']}: {image['file_name']}: no such file")
        image["width"], image["height"] = image_size(path)
    return int(image["width"]), int(image["height"])


def _locate(folder: Path, file_name: str) -> Path | None:
    if os.path.isabs(file_name):
        return Path(file_name) if Path(file_name).is_file() else None
    for candidate in (folder / file_name, folder / "images" / file_name):
        if candidate.is_file():
            return candidate
    return None


def _field(entry: Any, key: str, at: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{at}: no '{key}'")
    return entry[key]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
