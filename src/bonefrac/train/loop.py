"""The fit loop: class-balanced loss, radiograph augmentation, AdamW + warmup/cosine, EMA weights,
best checkpoint by validation AUC, early stopping, and resume from the last finished epoch.

`fit` is a short loop over named steps: `set_up`, `restore`, `train_one_epoch`, `validate`,
`select_and_save`. Under torchrun the same loop runs data-parallel (see `distributed`): `batch_size` is the
global batch, split across ranks; only rank 0 writes files, logs and shows progress; validation is sharded
and gathered. On a GPU the steps run in mixed precision (autocast; bf16, or fp16 with loss scaling);
validation and the weights stay fp32.

Outputs in the run folder: model.pt (best, with operating points chosen on validation and the digests of
the images it was trained and validated on), last.pt (resume state), history.csv, learning_curve.png,
split.json, run.json (every command that trained the run, versions, config).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bonefrac._version import __version__
from bonefrac.errors import DatasetError
from bonefrac.evaluation.calibration import IDENTITY, CalibrationError, apply, compare, fit_platt
from bonefrac.evaluation.metrics import auc, choose_operating_points, discrimination
from bonefrac.models.checkpoint import atomic_save, load_model, save_model
from bonefrac.models.kinds.base import StepContext
from bonefrac.models.metadata import without_machine_paths
from bonefrac.models.registry import build_model, kind_for
from bonefrac.preprocess import normalize
from bonefrac.spec import ModelSpec
from bonefrac.train import ddp as distributed_model
from bonefrac.train import distributed, run_folder
from bonefrac.train.augment import Augment
from bonefrac.train.box_supervision import load_box_masks
from bonefrac.train.config import ConfigError, TrainConfig, check_start
from bonefrac.train.data import DecodeCache, Record, image_digests, prepare_data
from bonefrac.train.detector import CropSampler, pointing_game
from bonefrac.train.precision import MixedPrecision

__all__ = ["TrainConfig", "fit"]


class EMA:
    """Exponential moving average of the weights (evaluated and shipped; smoother than the raw weights)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm up: early weights are poor
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def load_batch(cache: DecodeCache, records: list[Record], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([cache.load(records[i].path) for i in idx]))[:, None].float().div_(255)
    y = torch.tensor([records[i].label for i in idx], dtype=torch.float32)
    return x, y


@torch.no_grad()
def predict_cached(
    model: torch.nn.Module, spec: ModelSpec, cache: DecodeCache, records: list[Record], batch_size: int = 32
) -> np.ndarray:
    """Raw (uncalibrated) image logits for records from the decode cache (validation during training), in
    fp32. For a detector, one row per image: the logit, then the heatmap peak's (x, y) on the cached grid."""
    model.eval()
    out = []
    for s in range(0, len(records), batch_size):
        x, _ = load_batch(cache, records, list(range(s, min(s + batch_size, len(records)))))
        x = normalize(x, spec).to(distributed.device()).contiguous(memory_format=torch.channels_last)
        out.append(kind_for(spec).validation_outputs(model, x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------- the loop and its steps
@dataclass
class Run:
    """What the loop works on: built by `set_up`, moved forward by `restore` and every epoch."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    spec: ModelSpec
    train: list[Record]
    val: list[Record]
    cache: DecodeCache
    image_digests: dict[str, list[str]]  # {"train": [...], "validation": [...]}, on rank 0
    model: torch.nn.Module  # the plain module: its state_dict is what is saved
    step_model: torch.nn.Module  # what a step calls: DistributedDataParallel around `model` under torchrun
    ema: EMA
    opt: torch.optim.Optimizer
    precision: MixedPrecision  # fp32 on a CPU; bf16, or fp16 with loss scaling, on a GPU
    pos_weight: torch.Tensor
    steps_per_epoch: int
    use_boxes: bool
    pool: list[int]  # the training indices of one epoch, before shuffling
    sampler: CropSampler | None = None  # detectors train on crops with CenterNet targets
    augment: Augment = field(default_factory=Augment)
    first_epoch: int = 0
    best_score: float = -1.0  # validation AUC; for a detector, AUC + pointing game
    stale: int = 0  # epochs since the best validation score (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)


def fit(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Train a model as configured; returns the run folder. With `resume`, continue from last.pt; with
    `overwrite`, start again in a folder that holds a finished run (otherwise refused).

    Under torchrun every rank runs this; rank 0 alone writes the run folder, and the others receive its
    decisions (split, resume state), so only rank 0 needs the folder.
    """
    check_start(cfg, resume, overwrite)  # bad settings fail here, before anything is decoded or written
    run = set_up(cfg, overwrite)
    if resume:
        run_folder.restore(run)
    if distributed.is_main():
        run_folder.record_invocation(run.out, cfg, len(run.train), len(run.val), run.first_epoch)
    for epoch in range(run.first_epoch, cfg.epochs):
        if run.stale >= cfg.patience:
            break  # early stopping
        t0 = time.time()
        train_loss, loc_loss = train_one_epoch(run, epoch)
        train_seconds = time.time() - t0
        y, z, pointing = validate(run)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y).float())),
            "val_auc": auc(y, z),
            "val_pointing": pointing,
            "loc_loss": loc_loss,
            "lr": run.opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
            "train_images_per_s": min(run.steps_per_epoch * cfg.batch_size, len(run.train)) / train_seconds,
        }
        select_and_save(run, epoch, row, y, z)
        distributed.barrier()  # ranks leave the epoch together, after rank 0's checkpoint is on disk
    if distributed.is_main():
        print(f"best validation score {run.best_score:.4f}; model written to {run.out / 'model.pt'}")
    return run.out


def set_up(cfg: TrainConfig, overwrite: bool) -> Run:
    """The run folder, the model, its EMA and optimiser, and the data (split, decode cache, digests)."""
    out, world = Path(cfg.out), distributed.world_size()
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch: it needs at least {world}")
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.choose_device(cfg.device)  # the CLI chose it already (before torchrun's process group)
    dev = distributed.device()
    precision = MixedPrecision(cfg.precision, dev)  # refuses an unusable --device or --precision
    spec = ModelSpec(arch=cfg.arch, image_size=cfg.image_size, reduce_from=cfg.reduce_from)
    # Built first: a wrong --init-from fails before any writing or decoding (no torch RNG is drawn in between).
    model = initial_model(cfg, spec).to(dev, memory_format=torch.channels_last)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            run_folder.clear(out)
    train, val, cache = prepare_data(cfg, spec, out)
    if len(train) < world:
        raise DatasetError(f"{len(train)} training images cannot be shared by {world} processes")
    kind = kind_for(spec)
    # A detector's new heads learn at the full rate, its ImageNet backbone at `backbone_lr_scale` of it.
    slow = {id(p) for p in kind.slow_parameters(model)}
    groups = [
        {"params": params, "weight_decay": wd, "lr_scale": cfg.backbone_lr_scale if backbone else 1.0}
        for backbone in (False, True)
        for wd, params in (
            (cfg.weight_decay, [p for p in model.parameters() if p.ndim > 1 and (id(p) in slow) == backbone]),
            (0.0, [p for p in model.parameters() if p.ndim <= 1 and (id(p) in slow) == backbone]),  # biases, norms
        )
        if params
    ]
    sampler = CropSampler(cache, train, crop=cfg.crop_size) if kind.trains_on_crops else None
    pool = sampler.epoch_pool() if sampler else list(range(len(train)))
    n_pos = sum(r.label for r in train)
    return Run(
        cfg=cfg,
        out=out,
        device=dev,
        spec=spec,
        train=train,
        val=val,
        cache=cache,
        image_digests=image_digests(train, val) if distributed.is_main() else {},
        model=model,
        ema=EMA(model, cfg.ema_decay),
        step_model=distributed_model.wrap(model),  # `model` keeps its identity and parameters
        opt=torch.optim.AdamW(groups, lr=cfg.lr),
        precision=precision,
        pos_weight=torch.tensor((len(train) - n_pos) / max(n_pos, 1), device=dev),  # balance the classes
        # The same steps and the same global batches whatever the number of processes.
        steps_per_epoch=len(pool) // cfg.batch_size or 1,
        use_boxes=cfg.loc_weight > 0 and any(r.boxes for r in train) and kind.box_supervision,
        pool=pool,
        sampler=sampler,
    )


def initial_model(cfg: TrainConfig, spec: ModelSpec) -> torch.nn.Module:
    """ImageNet weights (or random ones), or a trained model to fine-tune (e.g. to add box supervision to a
    classifier): its weights, this run's recipe."""
    if not cfg.init_from:
        return build_model(spec)
    model, init_spec, _ = load_model(cfg.init_from)
    if (init_spec.arch, init_spec.image_size) != (spec.arch, spec.image_size):
        raise ConfigError(
            f"--init-from {cfg.init_from} is {init_spec.arch} at {init_spec.image_size}px; "
            f"this run is {spec.arch} at {spec.image_size}px"
        )
    return model


def train_one_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One pass over the training images; returns the mean loss and box loss (nan without boxes)."""
    cfg = run.cfg
    # Seeded per epoch, identical on every rank, so a resumed or distributed run sees the same order
    # and the same augmentation (drawn for the global batch, each rank keeping its rows).
    perm = torch.randperm(len(run.pool), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
    order = [run.pool[j] for j in perm]
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1)
    total, warmup = run.steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * run.steps_per_epoch)
    run.model.train()
    losses, loc_losses = [], []
    show = cfg.progress and distributed.is_main()
    with tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show) as bar:
        for step in bar:
            for g in run.opt.param_groups:
                g["lr"] = lr_at(epoch * run.steps_per_epoch + step, total, warmup, cfg.lr) * g["lr_scale"]
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if run.sampler is not None:  # each crop seeded by its place in the run: the same on every rank
                first = cfg.seed * 10**9 + (epoch * run.steps_per_epoch + step) * cfg.batch_size
                loss, loc = detector_step(run, batch, list(range(first, first + len(batch))))
            else:
                loss, loc = train_step(run, batch, run.augment.sample(len(batch), gen))
            losses.append(loss)
            if loc is not None:
                loc_losses.append(loc)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")  # rank 0's share: a noisy estimate
    # The global batches' losses (each rank's terms are scaled so that their mean is the global one).
    losses = distributed.mean_over_ranks(losses)
    loc_losses = distributed.mean_over_ranks(loc_losses) if loc_losses else []
    return float(np.mean(losses)), float(np.mean(loc_losses)) if loc_losses else float("nan")


def train_step(run: Run, batch: list[int], params: torch.Tensor) -> tuple[float, float | None]:
    """One optimiser step on this rank's share of the global `batch`, augmented with `params` (drawn for
    the whole batch). Returns this rank's loss and box loss (None without boxes)."""
    world, dev = distributed.world_size(), run.device
    idx = distributed.shard(batch)
    x, y = load_batch(run.cache, run.train, idx)
    masks = load_box_masks(run.cache, run.train, idx) if run.use_boxes else None
    x, masks = run.augment.apply(x, distributed.shard(params), masks)
    x = normalize(x, run.spec).to(dev).contiguous(memory_format=torch.channels_last)
    # This rank's mean, weighted by its share of the global batch (1.0 for equal shards and in one
    # process): DDP's average over ranks is then exactly the global batch's mean loss and gradient.
    targets = {"label": y} if masks is None else {"label": y, "masks": masks}
    return kind_step(run, x, targets, share=len(idx) * world / len(batch), global_batch=len(batch))


def detector_step(run: Run, batch: list[int], seeds: list[int]) -> tuple[float, float | None]:
    """One optimiser step of a detector on this rank's share of the global `batch` of crops. Returns this
    rank's loss and its centre-heatmap part (scaled, like `train_step`'s, so that their mean over ranks is
    the global batch's)."""
    assert run.sampler is not None
    x, targets = run.sampler.batch(distributed.shard(batch), distributed.shard(seeds))
    x = normalize(x, run.spec).to(run.device).contiguous(memory_format=torch.channels_last)
    return kind_step(run, x, targets, share=1.0, global_batch=len(batch))


def kind_step(
    run: Run, x: torch.Tensor, targets: dict[str, torch.Tensor], share: float, global_batch: int
) -> tuple[float, float | None]:
    """The model kind's forward and loss (`Kind.training_step`) on this rank's batch, then the optimiser step.
    Returns this rank's loss and localisation part (None where there is none)."""
    targets = {k: v.to(run.device) for k, v in targets.items()}
    distributed_model.set_global_batch(run.model, global_batch)
    ctx = StepContext(distributed.world_size(), share, distributed.sum_ints, run.pos_weight, run.cfg.loc_weight)
    with run.precision.autocast():
        loss, value, loc = kind_for(run.spec).training_step(run.step_model, x, targets, ctx)
    optimise(run, loss)
    return value, loc


def optimise(run: Run, loss: torch.Tensor) -> None:
    """Backward, optimiser step (through the fp16 loss scaler, a pass-through otherwise), EMA update."""
    run.precision.step(loss, run.opt)
    run.ema.update(run.model)  # weights are identical on every rank after the step, so every EMA is too


def validate(run: Run) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, the EMA model's raw image logits on the validation images and, for a detector, its pointing
    game (nan for a classifier); the same on every rank, so that every rank takes the same decisions."""
    p = distributed.gather_predictions(lambda recs: predict_cached(run.ema.module, run.spec, run.cache, recs), run.val)
    y = np.array([r.label for r in run.val])
    if p.ndim == 1:
        return y, p, float("nan")
    assert run.sampler is not None
    return y, p[:, 0], pointing_game(run.sampler, run.val, p[:, 1:])


def select_and_save(run: Run, epoch: int, row: dict[str, float], y: np.ndarray, z: np.ndarray) -> None:
    """Keep the epoch's figures; on a better validation score save model.pt; always save last.pt (rank 0).
    `z`: the validation images' raw logits."""
    run.history.append(row)
    score = row["val_auc"] + (0.0 if math.isnan(row["val_pointing"]) else row["val_pointing"])
    improved = score > run.best_score
    run.best_score, run.stale = (score, 0) if improved else (run.best_score, run.stale + 1)
    if not distributed.is_main():
        return
    if improved:
        p, fit = calibrate(run, y, z)
        run.spec.operating_points = choose_operating_points(y, p)  # on the calibrated probabilities
        info = {
            "bonefrac_version": __version__,
            "trained_epochs": epoch + 1,
            "config": asdict(run.cfg),
            "dataset": str(run.cfg.dataset),
            "n_train": len(run.train),
            "n_val": len(run.val),
            "validation": {
                **discrimination(y, p, run.spec.operating_points),
                "pointing_game": row["val_pointing"],
                "calibration": {k: fit[k] for k in ("ece_before", "ece_after", "brier_before", "brier_after")},
            },
            "calibration": fit,
            "image_digests": run.image_digests,
        }
        save_model(run.ema.module, run.spec, run.out / "model.pt", without_machine_paths(info))
    tqdm.write(
        f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
        f"val AUC {row['val_auc']:.4f}  pointing {row['val_pointing']:.3f}{' *' if improved else ''}  "
        f"{row['train_images_per_s']:.1f} img/s"
    )
    run_folder.write_history(run.out, run.history)
    atomic_save(run_folder.resume_state(run, epoch), run.out / "last.pt")


def calibrate(run: Run, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Platt scaling fitted on the validation logits `z` into `run.spec.calibration`; returns the calibrated
    probabilities and the record of the fit (info["calibration"], as `bonefrac calibrate` writes it).

    In-sample: the same images choose the epoch, the calibration and the operating points, so the ECE
    "after" is optimistic. Where none can be fitted (an early epoch ranking the images backwards, equal
    logits), the identity stays and the record says why.
    """
    try:
        run.spec.calibration, error = fit_platt(z, y), None
    except CalibrationError as e:
        run.spec.calibration, error = dict(IDENTITY), str(e)
    fit = {
        "fitted_on": Path(run.cfg.dataset).name,  # a name, not a path of this machine
        "split_file": "split.json",
        "subset": "val",
        "n_images": int(len(y)),
        "n_fractured": int(np.sum(y)),
        **compare(y, z, IDENTITY, run.spec.calibration),
        "fitted_at": datetime.now(timezone.utc).date().isoformat(),
        "by": "bonefrac train (in-sample: the validation images that chose the epoch)",
        "error": error,
    }
    return apply(run.spec.calibration, z), fit
