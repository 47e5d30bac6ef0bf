"""`bonefrac inspect`: what a dataset holds before anyone trains on it. Images per class, region and subset,
box counts and sizes, unreadable images, boxes outside their image, and exact duplicates by content."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.datasets.annotations import EDGE_SLACK_PX, image_size
from bonefrac.datasets.layouts import LAYOUT_NAMES, detect_layout, load_dataset
from bonefrac.datasets.splits import duplicate_sets
from bonefrac.errors import DatasetError

#: The points of each box-size distribution: min, 10%, median, 90%, max.
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
CLASS_NAMES = {1: "fractured", 0: "not fractured"}
#: How many names a list in the text shows before "... and N more".
SHOWN = 10


@dataclass
class DatasetSummary:
    """What `inspect_dataset` found; `to_dict` for JSON, `format_summary` for the terminal."""

    path: str
    layout: str
    subset: str | None
    images: int
    classes: dict[str, int]
    regions: dict[str, dict[str, int]]
    subsets: dict[str, dict[str, int]]
    boxes: int
    boxes_per_image: dict[int, int]  # number of boxes -> fractured images with that many
    box_width_px: list[float] = field(default_factory=list)  # at QUANTILES
    box_height_px: list[float] = field(default_factory=list)
    box_area_percent: list[float] = field(default_factory=list)  # of the image's area
    unreadable: list[str] = field(default_factory=list)
    boxes_outside: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # keys of byte-identical images
    conflicting_duplicates: list[list[str]] = field(default_factory=list)  # ... whose labels differ
    duplicates_across_subsets: list[list[str]] = field(default_factory=list)  # ... in train and val (leakage)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_dataset(
    path: str | Path, *, subset: str | None = None, fracture_classes: Sequence[str] | None = None
) -> DatasetSummary:
    """Summarise a dataset in any layout. Reads each image's header (not its pixels) and hashes only the
    files whose size matches another's. Malformed annotations raise DatasetError as `load_dataset` does."""
    layout, _ = detect_layout(path)
    records = load_dataset(path, subset=subset, fracture_classes=fracture_classes)
    regions: dict[str, Counter[str]] = {}
    subsets: dict[str, Counter[str]] = {}
    widths, heights, areas, unreadable, outside = [], [], [], [], []
    for r in records:
        cls = CLASS_NAMES[r.label]
        regions.setdefault(r.region, Counter())[cls] += 1
        if r.subset:
            subsets.setdefault(r.subset, Counter())[cls] += 1
        try:
            w, h = image_size(Path(r.path))
        except DatasetError as e:
            unreadable.append(f"{r.key}: {str(e).split(': ', 1)[-1]}")
            continue
        for x0, y0, x1, y1 in r.boxes:
            s = EDGE_SLACK_PX
            if not (x1 > x0 and y1 > y0) or x0 < -s or y0 < -s or x1 > w + s or y1 > h + s:
                outside.append(f"{r.key}: box [{x0:g} {y0:g} {x1:g} {y1:g}] outside its {w}x{h} image")
            widths.append(x1 - x0)
            heights.append(y1 - y0)
            areas.append(100 * (x1 - x0) * (y1 - y0) / (w * h))
    sets = [[records[i] for i in s] for s in duplicate_sets([r.path for r in records])]
    return DatasetSummary(
        path=str(path),
        layout=layout,
        subset=subset,
        images=len(records),
        classes={CLASS_NAMES[k]: v for k, v in sorted(Counter(r.label for r in records).items(), reverse=True)},
        regions={k: dict(v) for k, v in sorted(regions.items())},
        subsets={k: dict(v) for k, v in subsets.items()},
        boxes=sum(len(r.boxes) for r in records),
        boxes_per_image=dict(sorted(Counter(len(r.boxes) for r in records if r.label).items())),
        box_width_px=_quantiles(widths),
        box_height_px=_quantiles(heights),
        box_area_percent=_quantiles(areas),
        unreadable=unreadable,
        boxes_outside=outside,
        duplicates=[[r.key for r in s] for s in sets],
        conflicting_duplicates=[[r.key for r in s] for s in sets if len({r.label for r in s}) > 1],
        duplicates_across_subsets=[[r.key for r in s] for s in sets if len({r.subset for r in s}) > 1],
    )


def _quantiles(values: list[float]) -> list[float]:
    return [round(float(q), 2) for q in np.quantile(values, QUANTILES)] if values else []


def format_summary(s: DatasetSummary) -> str:
    """The summary as plain text for the terminal."""
    subset = f", subset {s.subset}" if s.subset else ""
    lines = [
        f"dataset   {s.path} ({LAYOUT_NAMES.get(s.layout, s.layout)}{subset})",
        f"images    {s.images}: {_counts(s.classes)}",
    ]
    for name, counts in s.subsets.items():
        lines.append(f"  {name:<8}{sum(counts.values()):>6}: {_counts(counts)}")
    width = max([len(r) for r in s.regions] + [6])
    lines.append(f"{'regions':<{width + 10}}{'fractured':>10} {'not fractured':>14}")
    for region, counts in s.regions.items():
        lines.append(f"  {region:<{width + 8}}{counts.get('fractured', 0):>10} {counts.get('not fractured', 0):>14}")
    fractured = s.classes.get("fractured", 0)
    no_box = s.boxes_per_image.get(0, 0)
    per_image = ", ".join(f"{n}: {k}" for n, k in s.boxes_per_image.items())
    with_boxes = f"{fractured - no_box} of {fractured} fractured images"
    lines.append(f"boxes     {s.boxes} on {with_boxes} (boxes per image {per_image or '-'})")
    for label, values in (("width px", s.box_width_px), ("height px", s.box_height_px), ("area %", s.box_area_percent)):
        if values:
            points = "  ".join(
                f"{name} {v:g}" for name, v in zip(("min", "10%", "median", "90%", "max"), values, strict=True)
            )
            lines.append(f"  {label:<11}{points}")
    lines.append(_listing("unreadable images", s.unreadable))
    lines.append(_listing("boxes outside their image", s.boxes_outside))
    dup_images = sum(len(d) for d in s.duplicates)
    lines.append(_listing(f"exact duplicates ({dup_images} images, same bytes)", [" = ".join(d) for d in s.duplicates]))
    if s.conflicting_duplicates:
        lines.append(_listing("  of which labelled differently", [" = ".join(d) for d in s.conflicting_duplicates]))
    if s.duplicates_across_subsets:
        lines.append(_listing("  of which in two subsets", [" = ".join(d) for d in s.duplicates_across_subsets]))
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(c, 0)} {c}" for c in CLASS_NAMES.values())


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return f"{title}: none"
    more = f"\n  ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{title}: {len(items)}\n" + "\n".join(f"  {i}" for i in items[:SHOWN]) + more
