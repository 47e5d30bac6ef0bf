"""`TrainConfig`, and the checks that refuse a training run before it decodes or writes anything.

Free of torch, so that `bonefrac train` with a bad argument answers in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bonefrac.errors import BonefracError, DatasetError
from bonefrac.models import registry
from bonefrac.spec import REDUCE_FROM
from bonefrac.train.distributed import DEVICES

#: The architectures `models.registry` builds (its names import no torch).
ARCHS = tuple(registry.ARCHS)

#: The arithmetic of training (`--precision`; "auto": mixed precision on a GPU, bf16 where it supports it,
#: else fp16 with loss scaling; fp32 on a CPU). Where it runs: `distributed.DEVICES`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Settings a resumed run may change: where it runs and for how long, not what it computes. The device and
#: the precision are where and how: a run begun on a CPU may continue on a GPU (in mixed precision).
RESUMABLE_CHANGES = frozenset({"out", "epochs", "patience", "cache_dir", "threads", "progress", "device", "precision"})

#: What a training run writes into its folder (`--overwrite` removes these, and nothing else).
RUN_FILES = (
    "model.pt",
    "model.pt.sha256",
    "last.pt",
    "history.csv",
    "learning_curve.png",
    "split.json",
    "run.json",
)


class ConfigError(BonefracError):
    """A training setting that cannot work (a bad value, or a run folder that is not free)."""


@dataclass
class TrainConfig:
    dataset: str
    out: str
    arch: str = "efficientnet_lite0"
    epochs: int = 12
    image_size: int = 256
    reduce_from: int = REDUCE_FROM  # preprocessing: images this many times the input size are read reduced
    batch_size: int = 32
    lr: float = 6e-4
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    ema_decay: float = 0.995
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0
    split_file: str | None = None
    cache_dir: str | None = None
    threads: int | None = None
    loc_weight: float = 0.5  # box supervision of the heatmap, where the dataset has fracture boxes
    init_from: str | None = None  # start from this checkpoint's weights instead of ImageNet
    max_train_images: int | None = None  # for smoke tests only
    crop_size: int = 256  # detectors: training crops of the (image_size) input, at its scale
    backbone_lr_scale: float = 1.0  # the pretrained backbone's learning rate, as a share of --lr
    device: str = "auto"  # one of DEVICES
    precision: str = "auto"  # one of PRECISIONS
    progress: bool = True

    def check(self) -> TrainConfig:
        """Raise `ConfigError` (one line, naming the option) for a setting that cannot work; else `self`."""
        if self.arch not in ARCHS:
            raise ConfigError(f"--arch {self.arch}: unknown; choose one of {', '.join(ARCHS)}")
        for name, value, choices in (("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise ConfigError(f"--{name} {value}: unknown; choose one of {', '.join(choices)}")
        _at_least("epochs", self.epochs, 1)
        _at_least("image-size", self.image_size, 32)  # the models downsample by 32
        _at_least("reduce-from", self.reduce_from, 2)  # reduced images stay >= 2x the input
        _at_least("batch-size", self.batch_size, 1)
        _at_least("patience", self.patience, 1)
        _at_least("seed", self.seed, 0)
        for name, value in (("threads", self.threads), ("max-train-images", self.max_train_images)):
            if value is not None:
                _at_least(name, value, 1)
        for name, value in (
            ("lr", self.lr),
            ("weight-decay", self.weight_decay),
            ("warmup-epochs", self.warmup_epochs),
            ("loc-weight", self.loc_weight),
            ("backbone-lr-scale", self.backbone_lr_scale),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name} {value}: must be a number of at least 0")
        if registry.get_kind(registry.kind_of(self.arch)).trains_on_crops:  # whole cells of the stride-8 grid
            _at_least("crop-size", self.crop_size, 32)
            if self.crop_size % 8 or self.crop_size > self.image_size:
                raise ConfigError(f"--crop-size {self.crop_size}: must be a multiple of 8, at most --image-size")
        if not (isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1):
            raise ConfigError(f"--ema-decay {self.ema_decay}: must be at least 0 and below 1")
        # The split holds out one of k folds, k = round(1 / fraction) >= 2: above 0.5 would silently be 0.5.
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction <= 0.5):
            raise ConfigError(f"--val-fraction {self.val_fraction}: must be above 0 and at most 0.5")
        if not Path(self.dataset).exists():
            raise DatasetError(f"{self.dataset}: no such dataset folder or CSV file")
        for name, path in (("split", self.split_file), ("init-from", self.init_from)):
            if path is not None and not Path(path).exists():
                raise ConfigError(f"--{name} {path}: no such file")
        if Path(self.out).is_file():
            raise ConfigError(f"--out {self.out}: is a file; the run folder must be a folder")
        return self

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The settings, other than `RESUMABLE_CHANGES`, where this config differs from a saved one, as
        'name VALUE (run: SAVED)'."""
        out = []
        for f in fields(self):
            if f.name in RESUMABLE_CHANGES or f.name not in saved:
                continue
            mine, theirs = getattr(self, f.name), saved[f.name]
            if mine != theirs and not _same_path(f.name, mine, theirs):
                out.append(f"--{f.name.replace('_', '-')} {mine} (run: {theirs})")
        return out


def _at_least(name: str, value: object, low: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ConfigError(f"--{name} {value}: must be a whole number of at least {low}")


def _same_path(name: str, a: object, b: object) -> bool:
    """Paths given differently (relative, absolute, through a link) that lead to the same place."""
    if name not in ("dataset", "split_file", "init_from") or not (isinstance(a, str) and isinstance(b, str)):
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def saved_config(out: Path) -> dict[str, Any] | None:
    """The config recorded in a run folder's run.json, if any."""
    try:
        return json.loads((out / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_run_folder(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to train over a finished run without --resume or --overwrite, and to resume a run with other
    settings (which would continue, say, 224 px epochs at 128 px)."""
    out = Path(cfg.out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or start it again)")
    if resume:
        saved = saved_config(out)
        changed = cfg.differences(saved) if saved is not None else []
        if changed:
            raise ConfigError(f"--resume: {out} was trained with other settings: {'; '.join(changed)}")
        return
    done = [name for name in ("model.pt", "last.pt") if (out / name).is_file()]
    if done and not overwrite:
        raise ConfigError(
            f"{out} already holds a trained run ({', '.join(done)}): add --resume to continue it "
            "or --overwrite to start it again"
        )


def check_start(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Everything that can be refused before training starts: the settings, then the run folder (on the
    process that owns it: rank 0 under torchrun, which sets RANK before any process group exists)."""
    cfg.check()
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_folder(cfg, resume, overwrite)
