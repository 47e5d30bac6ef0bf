"""Small faithful replicas of each dataset layout, written at test time from the 14 committed fixture
radiographs and their rows in tests/fixtures/labels.csv (the truth every layout must give back).

The FracAtlas download replica follows the unpacked figshare zip: images/Fractured, images/Non_fractured,
dataset.csv (image_id, hand, leg, hip, shoulder, mixed, hardware, multiscan, fractured, fracture_count,
frontal, lateral, oblique), Annotations/COCO JSON/COCO_fracture_masks.json (fractured images only, with
masks), Annotations/YOLO/<stem>.txt (every image, empty for the normal ones), Annotations/PASCAL VOC/<stem>.xml
and Utilities/Fracture Split/{train,valid,test}.csv.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from make_variants import FIXTURES

REGIONS = ("hand", "leg", "hip", "shoulder")
VIEWS = ("frontal", "lateral", "oblique")
#: The image that plays FracAtlas's IMG0003298.jpg: fractured=0 in dataset.csv, yet in Fractured with a box.
MISLABELLED = "IMG0002544.jpg"


def truth() -> list[dict]:
    """The fixture rows, typed: what every layout must give back for these images."""
    with open(FIXTURES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"] = int(r["fractured"])
        r["box_list"] = [[float(v) for v in b.split()] for b in filter(None, r["boxes"].split(";"))]
        r["size"] = (int(r["width"]), int(r["height"]))
        r["src"] = FIXTURES / "images" / r["filename"]
    return rows


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def coco_document(rows: list[dict], extra_category: bool = False) -> dict:
    """A COCO detection document: every row's image, a box (and rectangle mask) per fracture; with
    `extra_category`, an `implant` box on every hardware image that no reader may count as a fracture."""
    categories = [{"id": 1, "name": "fractured", "supercategory": "none"}]
    if extra_category:
        categories.append({"id": 2, "name": "implant", "supercategory": "none"})
    images, annotations = [], []
    for image_id, r in enumerate(rows, start=1):
        w, h = r["size"]
        images.append({"id": image_id, "file_name": r["filename"], "width": w, "height": h})
        boxes = [(1, b) for b in r["box_list"]]
        if extra_category and r["hardware"] == "1":
            boxes.append((2, [2.0, 3.0, 40.0, 50.0]))
        for category, (x0, y0, x1, y1) in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def yolo_lines(r: dict, fracture_class: int = 0) -> list[str]:
    w, h = r["size"]
    return [
        f"{fracture_class} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
        for x0, y0, x1, y1 in r["box_list"]
    ]


def fracatlas_download(root: Path, rows: list[dict]) -> Path:
    """The FracAtlas download as unpacked (FracAtlas/ inside `root`); returns the FracAtlas folder."""
    top = root / "FracAtlas"
    table = []
    for r in rows:
        folder = "Fractured" if r["label"] else "Non_fractured"
        (top / "images" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(r["src"], top / "images" / folder / r["filename"])
        region = r["body_region"]
        shown = region.split(":", 1)[1].split("+") if region.startswith("mixed:") else [region]
        flags = [int(x in shown) for x in REGIONS] + [int(region.startswith("mixed:"))]
        views = [int(v in r["views"].split("+")) for v in VIEWS]
        stated = 0 if r["filename"] == MISLABELLED else r["label"]
        table.append([r["filename"], *flags, r["hardware"], r["multiscan"], stated, len(r["box_list"]), *views])
    header = ["image_id", *REGIONS, "mixed", "hardware", "multiscan", "fractured", "fracture_count", *VIEWS]
    write_csv(top / "dataset.csv", header, table)
    fractured = [r for r in rows if r["label"]]
    coco = top / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    coco.parent.mkdir(parents=True)
    coco.write_text(json.dumps(coco_document(fractured)))
    for r in rows:
        stem = Path(r["filename"]).stem
        (top / "Annotations" / "YOLO").mkdir(parents=True, exist_ok=True)
        (top / "Annotations" / "YOLO" / f"{stem}.txt").write_text("".join(f"{s}\n" for s in yolo_lines(r)))
    for r in fractured:
        voc = top / "Annotations" / "PASCAL VOC" / f"{Path(r['filename']).stem}.xml"
        voc.parent.mkdir(parents=True, exist_ok=True)
        voc.write_text(f"<annotation><filename>{r['filename']}</filename></annotation>")
    for name, part in (("train", fractured[:-2]), ("valid", fractured[-2:-1]), ("test", fractured[-1:])):
        write_csv(top / "Utilities" / "Fracture Split" / f"{name}.csv", ["image_id"], [[r["filename"]] for r in part])
    return top


def coco_folder(root: Path, rows: list[dict]) -> Path:
    """annotations.json with the images in images/ (the first one beside the JSON), an implant category."""
    (root / "images").mkdir(parents=True)
    for i, r in enumerate(rows):
        shutil.copy(r["src"], (root if i == 0 else root / "images") / r["filename"])
    (root / "annotations.json").write_text(json.dumps(coco_document(rows, extra_category=True)))
    return root


def yolo_folder(root: Path, rows: list[dict]) -> Path:
    """data.yaml + images/{train,val} + labels/{train,val}; names as a mapping with an `implant` class 0
    and `fracture` 1; normal images get an empty label file or none at all."""
    for i, r in enumerate(rows):
        subset = "val" if i % 3 == 0 else "train"
        (root / "images" / subset).mkdir(parents=True, exist_ok=True)
        (root / "labels" / subset).mkdir(parents=True, exist_ok=True)
        shutil.copy(r["src"], root / "images" / subset / r["filename"])
        lines = yolo_lines(r, fracture_class=1)
        if r["hardware"] == "1":
            lines.append("0 0.1 0.1 0.05 0.05")
        if lines or i % 2:
            (root / "labels" / subset / f"{Path(r['filename']).stem}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(
        "# exported for bonefrac's tests\npath: .\ntrain: images/train\nval: images/val\n"
        "names:\n  0: implant\n  1: fracture\n"
    )
    return root


def class_folders(root: Path, rows: list[dict]) -> Path:
    for r in rows:
        folder = root / ("fractured" if r["label"] else "not_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(r["src"], folder / r["filename"])
    return root


def path_label_csv(root: Path, rows: list[dict]) -> Path:
    (root / "imgs").mkdir(parents=True)
    for r in rows:
        shutil.copy(r["src"], root / "imgs" / r["filename"])
    return write_csv(root / "list.csv", ["path", "label"], [[f"imgs/{r['filename']}", r["label"]] for r in rows])
