"""Dataset layouts, a grouped stratified split saved to disk, and the decode cache.

Three layouts, detected from the path:
- FracAtlas-style folder: `labels.csv` (filename, fractured, optional body_region, dup_group, boxes) + `images/`
- class folders: `fractured/` and `not_fractured/` (any depth below each)
- a CSV file with `path,label` columns (paths relative to the CSV's folder, or absolute)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bonefrac.errors import BonefracError, DatasetError
from bonefrac.io.read import find_images, read_image
from bonefrac.paths import cache_dir
from bonefrac.preprocess import Geometry, letterbox_geometry, letterbox_image, reduction_factor
from bonefrac.spec import REDUCE_FROM
from bonefrac.train import distributed

if TYPE_CHECKING:
    from bonefrac.spec import ModelSpec
    from bonefrac.train.config import TrainConfig

CACHE_VERSION = 4  # bump when letterbox() or the entry format changes (4: reduce_from in the key)


@dataclass
class Record:
    """One labelled image. `boxes` are [x0, y0, x1, y1] in the pixels of the image as read.

    `name` identifies the image in split files: the file name for FracAtlas folders, the path relative to
    the dataset root for class folders, the path as written for CSVs (so `IM0001` in two folders differ).
    """

    path: str
    label: int
    region: str = "unknown"
    group: str = ""
    boxes: list[list[float]] = field(default_factory=list)
    hardware: int | None = None
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or Path(self.path).name


def load_dataset(path: str | Path) -> list[Record]:
    """Read any supported layout into records, in a stable (sorted) order."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset folder or CSV file")
    if path.is_file():
        return _from_csv(path)
    if (path / "labels.csv").is_file():
        return _from_fracatlas(path)
    pos, neg = path / "fractured", path / "not_fractured"
    if pos.is_dir() and neg.is_dir():
        records = sorted(
            (
                Record(str(p), label, name=p.relative_to(path).as_posix())
                for label, folder in ((1, pos), (0, neg))
                for p in find_images([folder])
            ),
            key=lambda r: r.path,
        )
        return _checked(records, path)
    raise DatasetError(
        f"{path}: not a dataset. Expected labels.csv + images/, fractured/ + not_fractured/ folders, or a CSV file"
    )


def _parse_boxes(text: str) -> list[list[float]]:
    boxes = []
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        values = [float(v) for v in part.split()]
        if len(values) == 4:
            boxes.append(values)
    return boxes


def _label(value: str, where: str) -> int:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "fractured", "positive"):
        return 1
    if v in ("0", "false", "no", "not_fractured", "negative"):
        return 0
    raise DatasetError(f"{where}: label {value!r} is not 0/1")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Column names and rows of a UTF-8 CSV file; a byte-order mark (as Excel writes one) is fine."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a UTF-8 CSV file ({type(e).__name__})") from None


def _from_fracatlas(root: Path) -> list[Record]:
    labels = root / "labels.csv"
    return _records_from_csv(labels, root, "filename", "fractured", "dup_group", lambda name: root / "images" / name)


def _from_csv(path: Path) -> list[Record]:
    return _records_from_csv(path, path, "path", "label", "group", lambda name: path.parent / name)


def _records_from_csv(
    csv_path: Path, where: Path, path_col: str, label_col: str, group_col: str, locate: Callable[[str], Path]
) -> list[Record]:
    """Rows of a labels CSV -> records. `path_col` names the image (located by `locate` unless absolute)."""
    columns, rows = _read_csv(csv_path)
    if not {path_col, label_col} <= set(columns):
        raise DatasetError(f"{csv_path}: needs '{path_col}' and '{label_col}' columns")
    records = []
    for i, row in enumerate(rows):
        at = f"{csv_path.name} row {i + 2}"
        name = (row.get(path_col) or "").strip()
        if not name:
            raise DatasetError(f"{at}: empty {path_col}")
        hw = row.get("hardware")
        try:
            records.append(
                Record(
                    path=str(Path(name) if os.path.isabs(name) else locate(name)),
                    label=_label(row[label_col], at),
                    region=(row.get("body_region") or "unknown").strip() or "unknown",
                    group=(row.get(group_col) or "").strip(),
                    boxes=_parse_boxes(row.get("boxes", "")),
                    hardware=int(hw) if hw not in (None, "") else None,
                    name=name,
                )
            )
        except ValueError as e:  # a malformed box or hardware value
            raise DatasetError(f"{at}: {e}") from None
    return _checked(records, where)


def _checked(records: list[Record], where: Path) -> list[Record]:
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


# ---------------------------------------------------------------- split
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


# ---------------------------------------------------------------- decode cache
def cache_key(path: str, size: int, reduce_from: int = REDUCE_FROM) -> str:
    """Changes when the file (path, size in bytes, mtime) or the input size or the preprocessing changes."""
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{size}|r{reduce_from}|v{CACHE_VERSION}"
    return hashlib.sha1(ident.encode()).hexdigest()


def _decode_one(args: tuple[str, int, int, str]) -> str | None:
    path, size, reduce_from, target = args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncated JPEGs: the reader already handles them
            image = read_image(path, partial(reduction_factor, size=size, reduce_from=reduce_from))
            boxed, geometry = letterbox_image(image, size, reduce_from)
    except BonefracError as e:
        return str(e)
    # The size as read (EXIF applied) places fracture boxes on the cached grid; written before the
    # pixels, so an existing .npy always has its .hw.
    Path(f"{target[:-4]}.hw").write_text(f"{geometry.height} {geometry.width}")
    tmp = f"{target}.{os.getpid()}.tmp.npy"
    np.save(tmp, np.round(boxed * 255).astype(np.uint8))
    os.replace(tmp, target)  # atomic: a killed build never leaves a half-written entry
    return None


class DecodeCache:
    """Each image decoded and letterboxed once to the training size, stored as uint8 .npy on disk."""

    def __init__(self, root: str | Path | None = None, size: int = 256, reduce_from: int = REDUCE_FROM) -> None:
        """`size` and `reduce_from`: the preprocessing of the model being trained (its `ModelSpec`)."""
        self.root = Path(root) if root else cache_dir()
        self.size = size
        self.reduce_from = reduce_from
        self.dir = self.root / f"s{size}"

    def path_for(self, image_path: str) -> Path:
        return self.dir / f"{cache_key(image_path, self.size, self.reduce_from)}.npy"

    def build(self, paths: list[str], workers: int | None = None, progress: bool = True) -> dict[str, str]:
        """Decode what is missing; returns {path: error} for files that could not be read."""
        from tqdm import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        todo, errors = [], {}
        for p in paths:
            try:
                target = self.path_for(p)  # stats the file: a missing one is an error to report, not raise
            except OSError as e:
                reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot open ({e.strerror or e})"
                errors[p] = f"{Path(p).name}: {reason}"
                continue
            if not target.exists():
                todo.append((p, self.size, self.reduce_from, str(target)))
        if not todo:
            return errors
        workers = workers or min(os.cpu_count() or 1, 8)
        bar = tqdm(total=len(todo), desc=f"decode cache ({self.size}px)", disable=not progress, unit="img")
        if workers <= 1:
            results = map(_decode_one, todo)
        else:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers)
            results = pool.map(_decode_one, todo, chunksize=16)
        for (p, *_), err in zip(todo, results, strict=True):
            if err:
                errors[p] = err
            bar.update()
        bar.close()
        if workers > 1:
            pool.shutdown()
        return errors

    def load(self, image_path: str) -> np.ndarray:
        return np.load(self.path_for(image_path))

    def geometry(self, image_path: str) -> Geometry:
        """How the image sits in its cached (size x size) array."""
        h, w = map(int, self.path_for(image_path).with_suffix(".hw").read_text().split())
        return letterbox_geometry(h, w, self.size)


# ---------------------------------------------------------------- a training run's data
def prepare_data(cfg: TrainConfig, spec: ModelSpec, out: Path) -> tuple[list[Record], list[Record], DecodeCache]:
    """A training run's data: its split (made, or reused from `out` or --split; rank 0 decides), the decode
    cache at the model's preprocessing, and the training and validation records that could be read."""
    records = load_dataset(cfg.dataset)
    split: dict[str, str] | None = None
    if distributed.is_main():
        split_path = Path(cfg.split_file) if cfg.split_file else out / "split.json"
        if split_path.is_file():
            split = load_split(split_path)  # resume, or a split chosen elsewhere: reuse it exactly
        else:
            split = split_dataset(records, cfg.val_fraction, cfg.seed)
        save_split(split, out / "split.json")
    # Rank 0 decides and the others receive it: nobody reads a split.json while it is being written.
    split = distributed.broadcast_object(split)
    assert split is not None
    cache = DecodeCache(cfg.cache_dir, spec.image_size, spec.reduce_from)  # the preprocessing the model records
    paths = [r.path for r in records]
    # One process per node decodes first (the cache may be node-local); the others then find it built and
    # only re-try the unreadable files, so every rank drops the same records.
    with distributed.node_first():
        bad = cache.build(paths, progress=cfg.progress and distributed.is_main())
    for err in bad.values() if distributed.is_main() else ():
        print(f"skipping unreadable image: {err}", file=sys.stderr)
    records = [r for r in records if r.path not in bad]
    train = [r for r in records if split.get(r.key) == "train"]
    val = [r for r in records if split.get(r.key) == "val"]
    if cfg.max_train_images:
        train = train[: cfg.max_train_images]
    if not train or not val or len({r.label for r in val}) < 2:
        raise DatasetError("the split needs training images and validation images of both classes")
    return train, val, cache


def image_digests(train: list[Record], val: list[Record]) -> dict[str, list[str]]:
    """Content digests of the images the model learns from and is chosen on, stored in model.pt so that
    `evaluate` can tell how many of its images the model has seen (however they are named)."""
    return {"train": [content_digest(r.path) for r in train], "validation": [content_digest(r.path) for r in val]}
