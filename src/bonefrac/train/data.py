"""A training run's data: the decode cache (letterboxed images at the model's size, decoded once), the
records of its train/val split, and the torch datasets and loaders over the cache. The dataset layouts,
splits and content digests live in `bonefrac.datasets`.

Every training sample draws from its own seed, `item_seed(seed, epoch, j)` for the j-th sample of the epoch's
pool, so a sample is the same whichever process (torchrun rank), DataLoader worker or resumed run makes it.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from bonefrac.datasets import Record, content_digest, layout_split, load_dataset, load_split, save_split, split_dataset
from bonefrac.errors import BonefracError, DatasetError
from bonefrac.io.read import read_image
from bonefrac.paths import cache_dir
from bonefrac.preprocess import Geometry, box_mask, letterbox_geometry, letterbox_image, normalize, reduction_factor
from bonefrac.spec import REDUCE_FROM
from bonefrac.train import distributed
from bonefrac.train.augment import Augment

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
    records = load_dataset(cfg.dataset, fracture_classes=cfg.fracture_classes)
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


# ---------------------------------------------------------------- torch datasets over the cache
Targets = dict[str, torch.Tensor]


def item_seed(seed: int, epoch: int, j: int) -> int:
    """The seed of the `j`-th sample of epoch `epoch`'s pool (independent streams: numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, j]).generate_state(1, np.uint64)[0])


class Samples(Protocol):
    """Where a run's training samples come from: `WholeImages` (classifiers), `train.detector.CropSampler`."""

    def epoch_pool(self) -> list[int]:
        """The record indices of one epoch, before shuffling (a record may appear more than once)."""
        ...

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, Targets]:
        """Record `i`'s sample drawn from `seed`: (1, S, S) in [0, 1] (or as `collate` takes it), its targets."""
        ...

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        """Called before each epoch with the model as trained so far; True if the samples changed (then
        the loader starts fresh workers, which hold a copy of this object)."""
        ...

    # Optional: `collate(items) -> (x, targets)`, a batch made of items (where work pays batched).


@dataclass
class WholeImages:
    """A classifier's samples: the whole cached image with its label, its augmentation's parameters and, for
    box supervision, its fracture-box mask, warped alike. Scaling and augmentation run batched in `collate`, each image
    by its own parameters: per image, every small operation would pay a round of the thread pool."""

    cache: DecodeCache
    records: list[Record]
    augment: Augment = field(default_factory=Augment)
    box_masks: bool = False

    def epoch_pool(self) -> list[int]:
        return list(range(len(self.records)))

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, Targets]:
        r = self.records[i]
        x = torch.from_numpy(self.cache.load(r.path))[None]  # uint8: `collate` scales the batch
        targets = {"label": torch.tensor(float(r.label)), "augment": self.augment.sample(1, _generator(seed))[0]}
        if self.box_masks:
            grid = box_mask(r.boxes, self.cache.geometry(r.path)) if r.boxes else np.zeros(x.shape[1:], np.float32)
            targets["masks"] = torch.from_numpy(grid)[None]
        return x, targets

    def collate(self, items: list[tuple[torch.Tensor, Targets]]) -> tuple[torch.Tensor, Targets]:
        x, targets = default_collate(items)
        x, masks = self.augment.apply(x.float().div_(255), targets.pop("augment"), targets.get("masks"))
        return x, targets if masks is None else {**targets, "masks": masks}

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        return False


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TrainingSet(Dataset):
    """A run's training samples, keyed (epoch, j): `samples`' item for the j-th entry of its pool, drawn from
    `item_seed(seed, epoch, j)`."""

    def __init__(self, samples: Samples, seed: int) -> None:
        self.samples, self.seed = samples, seed
        self.pool = samples.epoch_pool()

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Targets]:
        epoch, j = key
        return self.samples.item(self.pool[j], item_seed(self.seed, epoch, j))

    def collate(self, items: list[tuple[torch.Tensor, Targets]]) -> tuple[torch.Tensor, Targets]:
        """A batch of items: the samples' own `collate` where they have one (batched work), else stacked."""
        return getattr(self.samples, "collate", default_collate)(items)

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        """The samples' refresh before `epoch` (`Samples.start_epoch`); True if they changed."""
        changed = self.samples.start_epoch(epoch, model)
        if changed:
            self.pool = self.samples.epoch_pool()
        return changed


class EpochSampler(DistributedSampler):
    """`DistributedSampler` whose keys carry the epoch, (epoch, index): persistent workers keep the dataset
    they started with, so the epoch reaches them with each key."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, j) for j in super().__iter__())


def _seed_worker(worker_id: int) -> None:
    # Samples draw from their own seeds; this makes anything reaching for the global RNGs reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def training_loader(data: TrainingSet, batch_size: int, seed: int, workers: int = 0) -> DataLoader:
    """This process's share of each global batch of `batch_size` samples (`batch_size` a multiple of the
    processes: `train.loop.set_up` checks it).

    The epoch's order is a permutation seeded by (`seed`, epoch), the same on every rank, cut into global
    batches; `DistributedSampler` gives each rank every `world_size`-th sample of it, so rank r's k-th batch
    is global batch k's samples r, r + world, ...: together, the batch one process takes. An epoch is its
    whole global batches; a pool smaller than one batch makes one batch (under torchrun, of the largest
    multiple of the processes in it). Call `sampler.set_epoch(epoch)` before each epoch.
    """
    world, n = distributed.world_size(), len(data)
    per_rank = min(batch_size, n - n % world) // world
    sampler = EpochSampler(data, world, distributed.rank(), shuffle=True, seed=seed * 1000, drop_last=True)
    return DataLoader(
        data,
        batch_size=per_rank,
        sampler=sampler,
        collate_fn=data.collate,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=distributed.device().type == "cuda",
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),  # the workers' seeds; the global RNG is left alone
    )


class CachedImages(Dataset):
    """The cached images of `records`, (1, S, S) in [0, 1], in order (validation: whole images)."""

    def __init__(self, cache: DecodeCache, records: list[Record]) -> None:
        self.cache, self.records = cache, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.cache.load(self.records[i].path))[None].float().div_(255)


def image_loader(cache: DecodeCache, records: list[Record], batch_size: int = 32, workers: int = 0) -> DataLoader:
    """Batches of `CachedImages`, in order."""
    return DataLoader(
        CachedImages(cache, records),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(0),  # an iterator draws a seed: not from the global RNG
    )


@torch.no_grad()
def run_on_cache(
    fn: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    cache: DecodeCache,
    records: list[Record],
    batch_size: int = 32,
    workers: int = 0,
) -> np.ndarray:
    """`fn` (a model's forward) on each batch of `records` from the decode cache, normalised as the model reads
    them and on this rank's device; its rows in the records' order, as numpy (validation, OOD features)."""
    out = [
        fn(normalize(x, spec).to(distributed.device())).float().cpu().numpy()
        for x in image_loader(cache, records, batch_size, workers)
    ]
    return np.concatenate(out) if out else np.zeros(0)
