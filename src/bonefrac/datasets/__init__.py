"""Labelled datasets in the layouts users have, read into `Record`s; splits; content digests; `inspect`.

`load_dataset(path)` recognises the layout from what is on disk (`detect_layout` says which):
- `labels_csv`: a FracAtlas-style folder, `labels.csv` (filename, fractured, ...) + `images/`
- `fracatlas`: the FracAtlas download as unpacked (`dataset.csv`, `images/Fractured`, `images/Non_fractured`)
- `yolo`: an Ultralytics YOLO dataset (a `data.yaml`, or the folder holding one)
- `coco`: a COCO detection file (any `.json`, or a folder holding `annotations.json`)
- `class_folders`: `fractured/` and `not_fractured/` folders
- `csv`: a CSV file with `path,label` columns
"""

from __future__ import annotations

from bonefrac.datasets.inspect import DatasetSummary, format_summary, inspect_dataset
from bonefrac.datasets.layouts import LAYOUT_NAMES, LAYOUTS, dataset_file, detect_layout, load_dataset
from bonefrac.datasets.records import Record
from bonefrac.datasets.splits import (
    content_digest,
    group_duplicates,
    layout_split,
    load_split,
    save_split,
    split_dataset,
)

__all__ = [
    "LAYOUT_NAMES",
    "LAYOUTS",
    "DatasetSummary",
    "Record",
    "content_digest",
    "dataset_file",
    "detect_layout",
    "format_summary",
    "group_duplicates",
    "inspect_dataset",
    "layout_split",
    "load_dataset",
    "load_split",
    "save_split",
    "split_dataset",
]
