"""The FracAtlas download (figshare doi:10.6084/m9.figshare.22363012, `FracAtlas.zip`) as unpacked:

    FracAtlas/
      images/Fractured/IMG*.jpg, images/Non_fractured/IMG*.jpg
      dataset.csv        image_id, hand, leg, hip, shoulder, mixed, hardware, multiscan, fractured,
                         fracture_count, frontal, lateral, oblique (0/1 flags; fracture_count a number)
      Annotations/COCO JSON/COCO_fracture_masks.json   boxes and masks of the fractured images only
      Annotations/YOLO/<stem>.txt                      normalised boxes (used when the COCO file is absent)
      Annotations/PASCAL VOC/, Utilities/Fracture Split/{train,valid,test}.csv  (not read: the split lists
                         fractured images only, so it cannot split a classifier's data)

The label is the folder an image is in, not dataset.csv's `fractured`: one image (IMG0003298.jpg) is 0 in the
CSV but sits in Fractured with a fracture box, and the folder agrees with the annotations. A name found in both
folders is labelled by its fracture boxes (else by dataset.csv) rather than refused: one public conversion
script of the download reports "wrong folder copies", so a stray copy may exist.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from bonefrac.datasets.annotations import image_size
from bonefrac.datasets.coco import coco_fracture_boxes, read_coco
from bonefrac.datasets.records import Record, checked, parse_label, read_csv
from bonefrac.datasets.splits import group_duplicates
from bonefrac.datasets.yolo import read_label_file
from bonefrac.errors import DatasetError

FOLDERS = {"Fractured": 1, "Non_fractured": 0}
REGIONS = ("hand", "leg", "hip", "shoulder")
VIEWS = ("frontal", "lateral", "oblique")
COCO_JSON = Path("Annotations", "COCO JSON", "COCO_fracture_masks.json")
YOLO_LABELS = Path("Annotations", "YOLO")


def find_fracatlas_root(path: Path) -> Path | None:
    """`path` itself, or the `FracAtlas/` folder the zip unpacks to inside it."""
    for root in (path, path / "FracAtlas"):
        if (root / "dataset.csv").is_file() and (root / "images" / "Fractured").is_dir():
            return root
    return None


def load_fracatlas_download(root: Path) -> list[Record]:
    """Records keyed by file name (as in bonefrac's FracAtlas labels.csv), with body region, hardware,
    multiscan, views and fracture boxes; byte-identical images grouped."""
    on_disk, in_both = _images_on_disk(root)
    columns, rows = read_csv(root / "dataset.csv")
    if not {"image_id", "fractured"} <= {c.strip().lower() for c in columns}:
        raise DatasetError(f"{root / 'dataset.csv'}: needs 'image_id' and 'fractured' columns")
    boxes = _fracture_boxes(root, on_disk)
    records: list[Record] = []
    relabelled: list[str] = []
    for i, raw in enumerate(rows):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        at = f"dataset.csv row {i + 2}"
        name = row["image_id"]
        if not name:
            raise DatasetError(f"{at}: empty image_id")
        if name not in on_disk:
            seen = any(r.name == name for r in records)
            what = "is listed twice" if seen else "no such image in images/Fractured or images/Non_fractured"
            raise DatasetError(f"{at}: {name}: {what}")
        path, label = on_disk.pop(name)
        if name in in_both:  # a copy in each folder: its fracture boxes decide, else dataset.csv
            label = 1 if boxes.get(name) else parse_label(row["fractured"], at)
            path = root / "images" / ("Fractured" if label else "Non_fractured") / name
            relabelled.append(f"{name} (fractured={row['fractured']}, in both folders)")
        elif parse_label(row["fractured"], at) != label:
            relabelled.append(f"{name} (fractured={row['fractured']}, in {path.parent.name})")
        flags = {c: _flag(row, c, at) for c in (*REGIONS, "mixed", "hardware", "multiscan", *VIEWS)}
        records.append(
            Record(
                str(path),
                label,
                region=_region(flags),
                boxes=boxes.pop(name, []) if label else [],
                hardware=flags["hardware"],
                name=name,
                multiscan=flags["multiscan"],
                views="+".join(v for v in VIEWS if flags[v]),
            )
        )
    if relabelled:  # the folder agrees with the annotations (IMG0003298.jpg has a box in the COCO file)
        warnings.warn(f"labelled by folder, not dataset.csv: {', '.join(relabelled)}", stacklevel=2)
    if on_disk:
        names = sorted(on_disk)
        warnings.warn(
            f"{len(names)} images not in dataset.csv, labelled by folder: {', '.join(names[:5])}", stacklevel=2
        )
        records += [
            Record(str(p), label, boxes=boxes.pop(n, []) if label else [], name=n)
            for n, (p, label) in sorted(on_disk.items())
        ]
    if unused := sorted(n for n in boxes if boxes[n]):
        warnings.warn(
            f"fracture boxes of images that are not fractured or absent, ignored: {', '.join(unused[:5])}", stacklevel=2
        )
    return group_duplicates(checked(records, root))


def _images_on_disk(root: Path) -> tuple[dict[str, tuple[Path, int]], set[str]]:
    """{file name: (path, label by folder)}, and the names found in both folders (their entry: Fractured)."""
    found: dict[str, tuple[Path, int]] = {}
    both: set[str] = set()
    for folder, label in FOLDERS.items():  # Fractured first: a name in both keeps its Fractured copy
        for p in sorted((root / "images" / folder).glob("*")) if (root / "images" / folder).is_dir() else ():
            if p.is_file() and not p.name.startswith("."):
                if p.name in found:
                    both.add(p.name)
                    continue
                found[p.name] = (p, label)
    return found, both


def _fracture_boxes(root: Path, on_disk: dict[str, tuple[Path, int]]) -> dict[str, list[list[float]]]:
    """{file name: boxes} from the COCO file, else from the YOLO labels, else none."""
    if (root / COCO_JSON).is_file():
        doc = read_coco(root / COCO_JSON)
        for image in doc["images"]:  # sizes the JSON leaves out come from the image's header
            name = Path(str(image.get("file_name", ""))).name
            if ("width" not in image or "height" not in image) and name in on_disk:
                image["width"], image["height"] = image_size(on_disk[name][0])
        by_id = coco_fracture_boxes(doc, root / COCO_JSON)
        return {Path(str(im["file_name"])).name: by_id[im["id"]] for im in doc["images"] if im["id"] in by_id}
    if (root / YOLO_LABELS).is_dir():
        names = {0: "fractured"}
        found = {
            n: read_label_file(root / YOLO_LABELS / f"{p.stem}.txt", p, names, {0}, root)
            for n, (p, _) in on_disk.items()
        }
        return {n: b for n, b in found.items() if b}
    return {}


def _flag(row: dict[str, str], column: str, at: str) -> int:
    value = row.get(column, "")
    try:
        return int(float(value)) if value else 0
    except ValueError:
        raise DatasetError(f"{at}: {column} {value!r} is not 0/1") from None


def _region(flags: dict[str, int]) -> str:
    """hand, leg, hip, shoulder; `mixed:` + the regions for images showing several; unknown when none."""
    shown = [r for r in REGIONS if flags[r]]
    if flags["mixed"] or len(shown) > 1:
        return "mixed:" + "+".join(shown) if shown else "mixed"
    return shown[0] if shown else "unknown"
