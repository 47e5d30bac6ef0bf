"""A training run's data: the decode cache (letterboxed images at the model's size, decoded once) and the
records of its train/val split. The dataset layouts, splits and content digests live in `bonefrac.datasets`."""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bonefrac.datasets import Record, content_digest, layout_split, load_dataset, load_split, save_split, split_dataset
from bonefrac.errors import BonefracError, DatasetError
from bonefrac.io.read import read_image
from bonefrac.paths import cache_dir
from bonefrac.preprocess import Geometry, letterbox_geometry, letterbox_image, reduction_factor
from bonefrac.spec import REDUCE_FROM
from bonefrac.train import distributed

if TYPE_CHECKING:
    from bonefrac.spec import ModelSpec
    from bonefrac.train.config import TrainConfig

CACHE_VERSION = 4  # bump when letterbox() or the entry format changes (4: reduce_from in the key)


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
        else:  # the layout's own train/val (a YOLO data.yaml), else a grouped stratified split
            split = layout_split(records) or split_dataset(records, cfg.val_fraction, cfg.seed)
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
