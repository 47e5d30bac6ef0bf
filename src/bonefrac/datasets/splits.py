"""Grouped stratified splits saved to disk, the layout's own split, and content digests (duplicates)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from bonefrac.datasets.records import Record
from bonefrac.errors import DatasetError


def split_dataset(records: list[Record], val_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Stratified split that keeps each duplicate group on one side. Returns {record.key: "train"|"val"}."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / val_fraction))
    labels = np.array([r.label for r in records])
    groups = np.array([r.group or r.key for r in records])
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        _, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    except ValueError as e:  # more folds than images or groups
        raise DatasetError(f"--val-fraction {val_fraction} holds out 1 in {n_splits}: too few images ({e})") from None
    val = set(val_idx.tolist())
    return {r.key: ("val" if i in val else "train") for i, r in enumerate(records)}


def layout_split(records: list[Record]) -> dict[str, str] | None:
    """The split the layout itself defines (a YOLO data.yaml's train/val/test), as {record.key: subset};
    None when the records carry no subsets or lack a train or val side (then `split_dataset` makes one)."""
    split = {r.key: r.subset for r in records if r.subset}
    if len(split) < len(records) or not {"train", "val"} <= set(split.values()):
        return None
    return split


def save_split(split: dict[str, str], path: Path) -> None:
    """Written atomically: `--resume` reads it back, and a kill mid-write must not leave half a split."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(sorted(split.items())), indent=0))
    os.replace(tmp, path)


def load_split(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def content_digest(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file's bytes. A model stores these for its training and
    validation images: they recognise an image however it is named or wherever it was copied."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def duplicate_sets(paths: list[str]) -> list[list[int]]:
    """Indices of byte-identical files, one list per set of two or more, by content digest.

    Only files whose size matches another file's are hashed: on a real dataset that is a small share, so
    finding duplicates costs a stat per file rather than reading every byte. Missing files are skipped."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        try:
            by_size[os.stat(p).st_size].append(i)
        except OSError:
            continue
    by_digest: dict[str, list[int]] = defaultdict(list)
    for same_size in by_size.values():
        for i in same_size if len(same_size) > 1 else ():
            try:
                by_digest[content_digest(paths[i])].append(i)
            except OSError:
                continue
    return sorted(sorted(v) for v in by_digest.values() if len(v) > 1)


def group_duplicates(records: list[Record]) -> list[Record]:
    """Give byte-identical images a shared `group` (`dup:` + digest) unless they have one: a split then keeps
    them on one side. Layouts without a duplicate column (COCO, YOLO, the FracAtlas download) go through this;
    FracAtlas itself has byte-identical images under different names."""
    paths = [r.path for r in records]
    for indices in duplicate_sets(paths):
        name = f"dup:{content_digest(paths[indices[0]])}"
        for i in indices:
            records[i].group = records[i].group or name
    return records
