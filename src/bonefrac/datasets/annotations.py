"""What COCO and YOLO share: which categories mean fracture, boxes checked against their image, image sizes
read from file headers only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bonefrac.errors import DatasetError
from bonefrac.io.read import is_dicom

#: Category names that mean fracture when the user names none (compared case-insensitively).
FRACTURE_NAMES = ("fracture", "fractured")

#: How far (pixels) a box may reach past its image's edge and still be taken, clipped to the edge: annotation
#: tools and the rounding of YOLO's normalised numbers put corners a fraction of a pixel outside.
EDGE_SLACK_PX = 1.0


def fracture_class_ids(names: dict[int, str], chosen: Sequence[str] | None, where: str) -> set[int]:
    """The category ids that mean fracture: those named in `chosen` (the CLI's --fracture-class), else those
    named fracture/fractured, else the only category. Boxes of every other category are ignored."""
    listed = ", ".join(repr(n) for n in names.values()) or "none"
    if chosen:
        wanted = {c.strip().lower() for c in chosen}
        unknown = sorted(wanted - {n.strip().lower() for n in names.values()})
        if unknown:
            raise DatasetError(f"{where}: no category named {unknown[0]!r} (categories: {listed})")
        return {i for i, n in names.items() if n.strip().lower() in wanted}
    ids = {i for i, n in names.items() if n.strip().lower() in FRACTURE_NAMES}
    if ids:
        return ids
    if len(names) == 1:
        return set(names)
    raise DatasetError(
        f"{where}: no category is named fracture or fractured (categories: {listed}); "
        "name the fracture categories with --fracture-class"
    )


def box_in_image(box: list[float], width: int, height: int, where: str) -> list[float]:
    """[x0, y0, x1, y1] checked against a (width x height) image: empty boxes and boxes reaching more than
    `EDGE_SLACK_PX` outside are errors; a corner within the slack is clipped to the edge."""
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise DatasetError(f"{where}: empty box {_fmt(box)}")
    s = EDGE_SLACK_PX
    if x0 < -s or y0 < -s or x1 > width + s or y1 > height + s:
        raise DatasetError(f"{where}: box {_fmt(box)} lies outside its {width}x{height} image")
    return [max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]


def _fmt(box: list[float]) -> str:
    return "[" + " ".join(f"{v:g}" for v in box) + "]"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as `read_image` returns it (EXIF orientation applied), from the file's
    header only: Pillow does not decode pixels to give the size, pydicom stops before the pixel data."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if is_dicom(head) or path.suffix.lower() in (".dcm", ".dicom"):
            import pydicom  # lazy: only DICOM datasets need it

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        with Image.open(path) as im:
            width, height = im.size
            try:  # orientations 5-8 turn the image by 90 degrees when read
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            except Exception:  # a broken EXIF block: read_image keeps the stored orientation too
                turned = False
        return (height, width) if turned else (width, height)
    except Exception as e:  # any failure to read a header is the same to the user
        raise DatasetError(f"{path.name}: cannot read the image size ({_reason(e, path)})") from None


def _reason(e: Exception, path: Path) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, UnidentifiedImageError):
        return "empty file" if path.stat().st_size == 0 else "not a JPEG, PNG or DICOM image"
    return f"{type(e).__name__}: {e}"
