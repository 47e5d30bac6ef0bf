"""`TrainConfig`, and the checks that refuse a training run before it decodes or writes anything.

Free of torch, so that `bonefrac train` with a bad argument answers in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from bonefrac.datasets.layouts import DATASET_HELP, FRACTURE_CLASS_HELP
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
RESUMABLE_CHANGES = frozenset(
    {"out", "epochs", "patience", "cache_dir", "threads", "workers", "progress", "device", "precision"}
)

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


# ---------------------------------------------------------------- what a setting may be
@dataclass(frozen=True)
class Whole:
    """A whole number of at least `low`."""

    low: int

    def check(self, option: str, value: object) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= self.low):
            raise ConfigError(f"{option} {value}: must be a whole number of at least {self.low}")


@dataclass(frozen=True)
class Number:
    """A finite number of at least `low`."""

    low: float = 0

    def check(self, option: str, value: object) -> None:
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= self.low):
            raise ConfigError(f"{option} {value}: must be a number of at least {self.low:g}")


@dataclass(frozen=True)
class Between:
    """A number between `low` and `high`, each end included unless said open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def check(self, option: str, value: object) -> None:
        ok = isinstance(value, int | float) and (
            (self.low < value if self.low_open else self.low <= value)
            and (value < self.high if self.high_open else value <= self.high)
        )
        if not ok:
            low, high = "above" if self.low_open else "at least", "below" if self.high_open else "at most"
            raise ConfigError(f"{option} {value}: must be {low} {self.low:g} and {high} {self.high:g}")


@dataclass(frozen=True)
class OneOf:
    """One of `choices`; `listed`: the CLI offers them as argparse choices (else it names them in the help)."""

    choices: tuple[str, ...]
    listed: bool = True

    def check(self, option: str, value: object) -> None:
        if value not in self.choices:
            raise ConfigError(f"{option} {value}: unknown; choose one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Exists:
    """A path that exists (a file, or a folder)."""

    def check(self, option: str, value: object) -> None:
        if not Path(str(value)).exists():
            raise ConfigError(f"{option} {value}: no such file")


Bound = Whole | Number | Between | OneOf | Exists


def setting(
    default: Any = MISSING,
    help: str | None = None,
    bound: Bound | None = None,
    flag: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A `TrainConfig` field with what `bonefrac train` says about it and the values it accepts, declared once:
    `check` enforces `bound`, and the CLI builds its option from the rest (`help` None: a hidden option;
    `flag`: the option's name where it is not the field's, e.g. `--split` for `split_file`)."""
    meta = {"help": help, "bound": bound, "flag": flag, "metavar": metavar}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def flag_of(f: Field[Any]) -> str:
    """The command-line option of a `TrainConfig` field (`--batch-size` for `batch_size`)."""
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


@dataclass
class TrainConfig:
    """Everything that decides a training run. Each field's help and bounds are in its `setting`; `bonefrac
    train`'s options are generated from them (apps/commands/train.py)."""

    dataset: str = setting(help=DATASET_HELP)
    out: str = setting(help="run folder (checkpoints, logs, split)")
    arch: str = setting("efficientnet_lite0", f"{' | '.join(ARCHS)} (default %(default)s)", OneOf(ARCHS, listed=False))
    epochs: int = setting(12, "at most this many (default %(default)s)", Whole(1))
    image_size: int = setting(256, "model input side, pixels (default %(default)s)", Whole(32))  # models downsample 32x
    reduce_from: int = setting(
        REDUCE_FROM,
        "read images with a long side of K x the image size or more reduced by 2, 4 or 8 (JPEGs decoded at "
        "that scale: faster), never below 2x the size; recorded in the model (default %(default)s, as the bundled "
        "model; 8 reproduces models from before this option)",
        Whole(2),  # reduced images stay >= 2x the input
        metavar="K",
    )
    batch_size: int = setting(32, "global batch, split across torchrun ranks (default %(default)s)", Whole(1))
    lr: float = setting(6e-4, "peak learning rate (default %(default)g)", Number(0))
    weight_decay: float = setting(0.02, "AdamW (default %(default)g)", Number(0))
    backbone_lr_scale: float = setting(
        1.0, "detectors: the pretrained backbone's learning rate as a share of --lr (default %(default)g)", Number(0)
    )
    # Checked in `check`: its bounds depend on the architecture (whole cells of a detector's stride-8 grid).
    crop_size: int = setting(256, "detectors: side of the training crops, at the input's scale (default %(default)s)")
    warmup_epochs: float = setting(
        1.0, "linear learning-rate warm-up, then cosine decay (default %(default)g)", Number(0)
    )
    ema_decay: float = setting(
        0.995,
        "decay of the exponential moving average of the weights, which is validated and saved (default %(default)g)",
        Between(0, 1, high_open=True),
    )
    patience: int = setting(5, "early stopping: epochs without a better val AUC (default %(default)s)", Whole(1))
    # The split holds out one of k folds, k = round(1 / fraction) >= 2: above 0.5 would silently be 0.5.
    val_fraction: float = setting(
        0.2,
        "share held out for validation, above 0 and at most 0.5, rounded to 1 in k (default %(default)g)",
        Between(0, 0.5, low_open=True),
    )
    loc_weight: float = setting(
        0.5,
        "weight of the heatmap box-supervision loss when the dataset has fracture boxes, 0 = off (default %(default)g)",
        Number(0),
    )
    # Detectors, the v3 recipe (issue 24): each default reproduces v2's crops (`train.detector.CropSampler`).
    zoom_min: float = setting(
        0.8, "detectors: the crop window's zoom, log-uniform from this... (default %(default)g)", Between(0.1, 10)
    )
    zoom_max: float = setting(
        1.25, "...to this; a range other than 0.8-1.25 pads zoomed-out windows (default %(default)g)", Between(0.1, 10)
    )
    p_native: float = setting(
        0.0,
        "detectors: chance that a crop keeps v2's zoom (0.8-1.25, inside the image) instead of --zoom-min..max "
        "(default %(default)g)",
        Between(0, 1),
    )
    p_edge: float = setting(
        0.0, "detectors: chance that a box crop puts the box near a crop edge (default %(default)g)", Between(0, 1)
    )
    size_in_view: bool = setting(
        False, "detectors: regress box size and offset only for boxes wholly inside the crop (default: off)"
    )
    region_balance: bool = setting(
        False, "detectors: share each class's draws between body regions as sqrt(images) (default: off)"
    )
    small_box_factor: float = setting(
        1.0,
        "detectors: draws of fractured images whose smallest box is in the smallest third (default %(default)g)",
        Number(1),
    )
    photometric: float = setting(
        0.0,
        "detectors: chance of each of gamma, window, unsharp masking, noise and JPEG re-encoding, as other sites "
        "process radiographs (default %(default)g)",
        Between(0, 1),
    )
    hard_negative_every: int = setting(
        0, "detectors: every N epochs, mine the model's peaks on normal training images (default 0: off)", Whole(0)
    )
    p_hard_negative: float = setting(
        0.0,
        "detectors: chance that a mined image's crop is centred on one of its peaks (default %(default)g)",
        Between(0, 1),
    )
    hard_negative_images: int = setting(
        400, "detectors: normal images looked at per mining (0: all; default %(default)s)", Whole(0)
    )
    fracture_classes: list[str] | None = setting(None, FRACTURE_CLASS_HELP, flag="--fracture-class", metavar="NAME")
    seed: int = setting(0, "split, order and augmentation (default %(default)s)", Whole(0))
    init_from: str | None = setting(
        None, "fine-tune this checkpoint or run folder (default: none, start from ImageNet weights)", Exists()
    )
    split_file: str | None = setting(
        None, "reuse this split.json (default: make one from --val-fraction and --seed)", Exists(), flag="--split"
    )
    cache_dir: str | None = setting(None, "decode cache folder (default: $BONEFRAC_CACHE, else ~/.cache/bonefrac)")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice, one per core)", Whole(1))
    workers: int = setting(
        0,
        "DataLoader worker processes preparing the batches (default %(default)s: in the training process; "
        "workers pay only where cores are idle: bench/bench_train_pipeline.py)",
        Whole(0),
    )
    device: str = setting(
        "auto",
        "where to train: auto = a CUDA GPU when torch sees one (one per torchrun process), else the CPU "
        "(default %(default)s)",
        OneOf(DEVICES),
    )
    precision: str = setting(
        "auto",
        "training arithmetic: auto = mixed precision on a GPU (bf16 where supported, else fp16 with loss "
        "scaling), fp32 on a CPU; bf16 on a CPU pays only with AVX512-BF16 (default %(default)s)",
        OneOf(PRECISIONS),
    )
    max_train_images: int | None = setting(None, None, Whole(1))  # for smoke tests only: no help, a hidden option
    progress: bool = setting(True, "no progress bars (default: shown)")  # a switch on by default: --no-progress

    def check(self) -> TrainConfig:
        """Raise `ConfigError` (one line, naming the option) for a setting that cannot work; else `self`."""
        for f in fields(self):
            value, bound = getattr(self, f.name), f.metadata.get("bound")
            if bound is not None and value is not None:
                bound.check(flag_of(f), value)
        if registry.get_kind(registry.kind_of(self.arch)).trains_on_crops:  # whole cells of the stride-8 grid
            Whole(32).check("--crop-size", self.crop_size)
            if self.crop_size % 8 or self.crop_size > self.image_size:
                raise ConfigError(f"--crop-size {self.crop_size}: must be a multiple of 8, at most --image-size")
        if self.zoom_min > self.zoom_max:
            raise ConfigError(f"--zoom-min {self.zoom_min}: must be at most --zoom-max {self.zoom_max}")
        if not Path(self.dataset).exists():
            raise DatasetError(f"{self.dataset}: no such dataset folder or CSV file")
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
                out.append(f"{flag_of(f)} {mine} (run: {theirs})")
        return out


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
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, also set before any process group exists
    if cfg.batch_size % world:  # equal shards: DistributedSampler's, which together are one process's batch
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of {world} processes"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_folder(cfg, resume, overwrite)
