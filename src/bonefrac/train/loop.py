"""The fit loop: class-balanced loss, radiograph augmentation, AdamW + warmup/cosine, EMA weights,
best checkpoint by validation AUC, early stopping, and resume from the last finished epoch.

`fit` is a short loop over named steps: `set_up`, `restore`, `start_epoch`, `train_one_epoch`, `validate`,
`select_and_save`. torch's own pieces do the routine work: a `DataLoader` over the decode cache (its workers,
`DistributedSampler` sharding), `AveragedModel` for the EMA, `LambdaLR` for the schedule. Under torchrun the
same loop runs data-parallel (see `distributed`): `batch_size` is the global batch, split across ranks; only
rank 0 writes files, logs and shows progress; validation is sharded and gathered. On a GPU the steps run in
mixed precision (autocast; bf16, or fp16 with loss scaling); validation and the weights stay fp32.

Outputs in the run folder: model.pt (best, with operating points chosen on validation and its images' digests),
last.pt (resume state), history.csv, learning_curve.png, split.json, run.json (every command, versions, config).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
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
from bonefrac.train.config import ConfigError, TrainConfig, check_start
from bonefrac.train.data import (
    DecodeCache,
    Record,
    Targets,
    TrainingSet,
    WholeImages,
    image_digests,
    prepare_data,
    run_on_cache,
    training_loader,
)
from bonefrac.train.detector import CropSampler, hard_negatives_state, pointing_game, restore_hard_negatives
from bonefrac.train.ood import add_ood_statistics
from bonefrac.train.precision import MixedPrecision
from bonefrac.train.schedule import warmed_up_ema, warmup_cosine

__all__ = ["TrainConfig", "fit"]


def predict_cached(
    model: torch.nn.Module,
    spec: ModelSpec,
    cache: DecodeCache,
    records: list[Record],
    batch_size: int = 32,
    workers: int = 0,
) -> np.ndarray:
    """Raw (uncalibrated) image logits for records from the decode cache (validation during training), in
    fp32. For a detector, one row per image: the logit, then the heatmap peak's (x, y) on the cached grid."""
    model.eval()
    kind = kind_for(spec)
    return run_on_cache(
        lambda x: kind.validation_outputs(model, x.contiguous(memory_format=torch.channels_last)),
        spec, cache, records, batch_size, workers,
    )  # fmt: skip


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
    ema: AveragedModel  # validated and saved: `ema.module`
    opt: torch.optim.Optimizer
    schedule: LambdaLR  # stepped after every optimiser step
    precision: MixedPrecision  # fp32 on a CPU; bf16, or fp16 with loss scaling, on a GPU
    pos_weight: torch.Tensor
    samples: TrainingSet  # whole augmented images, or a detector's crops (`sampler`)
    loader: DataLoader  # this rank's share of each global batch of `samples`
    sampler: CropSampler | None = None  # detectors train on crops with CenterNet targets
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
        restore(run)
    if distributed.is_main():
        run_folder.record_invocation(run.out, cfg, len(run.train), len(run.val), run.first_epoch)
    for epoch in range(run.first_epoch, cfg.epochs):
        if run.stale >= cfg.patience:
            break  # early stopping
        t0 = time.time()
        start_epoch(run, epoch)
        train_loss, loc_loss, lr = train_one_epoch(run, epoch)
        train_seconds = time.time() - t0
        y, z, pointing = validate(run)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y).float())),
            "val_auc": auc(y, z),
            "val_pointing": pointing,
            "loc_loss": loc_loss,
            "lr": lr,
            "seconds": time.time() - t0,
            "train_images_per_s": len(run.loader) * run.loader.batch_size * distributed.world_size() / train_seconds,
        }
        select_and_save(run, epoch, row, y, z)
        distributed.barrier()  # ranks leave the epoch together, after rank 0's checkpoint is on disk
    if distributed.is_main():
        # The best model's out-of-distribution statistics (a detector's): train fits, validation thresholds.
        if (run.out / "model.pt").is_file():
            add_ood_statistics(run.out / "model.pt", run.cache, run.train, run.val, run.cfg.workers)
        print(f"best validation score {run.best_score:.4f}; model written to {run.out / 'model.pt'}")
    return run.out


def set_up(cfg: TrainConfig, overwrite: bool) -> Run:
    """The run folder, the model, its EMA, optimiser and schedule, and the data (split, decode cache, digests,
    the loader)."""
    out, world = Path(cfg.out), distributed.world_size()
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
        {"params": params, "weight_decay": wd, "lr": cfg.lr * (cfg.backbone_lr_scale if backbone else 1.0)}
        for backbone in (False, True)
        for wd, params in (
            (cfg.weight_decay, [p for p in model.parameters() if p.ndim > 1 and (id(p) in slow) == backbone]),
            (0.0, [p for p in model.parameters() if p.ndim <= 1 and (id(p) in slow) == backbone]),  # biases, norms
        )
        if params
    ]
    sampler = CropSampler.from_config(cfg, cache, train, spec) if kind.trains_on_crops else None
    use_boxes = cfg.loc_weight > 0 and any(r.boxes for r in train) and kind.box_supervision
    samples = TrainingSet(sampler or WholeImages(cache, train, box_masks=use_boxes), cfg.seed)
    loader = training_loader(samples, cfg.batch_size, cfg.seed, cfg.workers)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    steps = len(loader)  # the same global batches whatever the number of processes
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
        # Before `wrap`: the average is of the plain model (weights are identical on every rank after a step).
        ema=AveragedModel(model, multi_avg_fn=warmed_up_ema(cfg.ema_decay), use_buffers=True),
        step_model=distributed_model.wrap(model),  # `model` keeps its identity and parameters
        opt=opt,
        schedule=LambdaLR(opt, warmup_cosine(steps * cfg.epochs, int(cfg.warmup_epochs * steps))),
        precision=precision,
        pos_weight=torch.tensor((len(train) - n_pos) / max(n_pos, 1), device=dev),  # balance the classes
        samples=samples,
        loader=loader,
        sampler=sampler,
    )


def initial_model(cfg: TrainConfig, spec: ModelSpec) -> torch.nn.Module:
    """ImageNet (or random) weights, or a trained model's to fine-tune with this run's recipe."""
    if not cfg.init_from:
        return build_model(spec)
    model, init_spec, _ = load_model(cfg.init_from)
    same_kind = init_spec.image_size == spec.image_size and kind_for(init_spec) is kind_for(spec)
    if same_kind and init_spec.arch != spec.arch and hasattr(model, "adopt"):  # onto another grid (issue 24.3)
        return build_model(spec, pretrained=False).adopt(model)
    if (init_spec.arch, init_spec.image_size) != (spec.arch, spec.image_size):
        raise ConfigError(
            f"--init-from {cfg.init_from} is {init_spec.arch} at {init_spec.image_size}px; "
            f"this run is {spec.arch} at {spec.image_size}px"
        )
    return model


def start_epoch(run: Run, epoch: int) -> None:
    """Before each epoch: the samples may follow the model (`Samples.start_epoch`), and the order reshuffles."""
    if run.samples.start_epoch(epoch, run.ema.module):  # persistent workers hold the old samples: new ones
        run.loader = training_loader(run.samples, run.cfg.batch_size, run.cfg.seed, run.cfg.workers)
    run.loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]


def train_one_epoch(run: Run, epoch: int) -> tuple[float, float, float]:
    """One pass over the training samples; returns the mean loss, the box loss (nan without boxes) and the
    learning rate of the last step."""
    cfg = run.cfg
    run.model.train()
    losses, loc_losses, lr = [], [], float("nan")
    show = cfg.progress and distributed.is_main()
    with tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show) as bar:
        for x, targets in bar:
            lr = run.opt.param_groups[0]["lr"]
            loss, loc = step(run, x, targets)
            losses.append(loss)
            if loc is not None:
                loc_losses.append(loc)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")  # rank 0's share: a noisy estimate
    # The global batches' losses (each rank's terms are scaled so that their mean is the global one).
    losses = distributed.mean_over_ranks(losses)
    loc_losses = distributed.mean_over_ranks(loc_losses) if loc_losses else []
    return float(np.mean(losses)), float(np.mean(loc_losses)) if loc_losses else float("nan"), lr


def step(run: Run, x: torch.Tensor, targets: Targets) -> tuple[float, float | None]:
    """The model kind's forward and loss (`Kind.training_step`) on this rank's share of a global batch, the
    optimiser step (through the fp16 loss scaler; a pass-through otherwise), the EMA and the schedule.
    Returns this rank's loss and localisation part (None where there is none)."""
    world = distributed.world_size()
    x = normalize(x, run.spec).to(run.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    targets = {k: v.to(run.device, non_blocking=True) for k, v in targets.items()}
    distributed_model.set_global_batch(run.model, len(x) * world)
    # Equal shards: each rank's mean over its share, averaged by DDP, is the global batch's mean (share 1).
    ctx = StepContext(world, 1.0, distributed.sum_ints, run.pos_weight, run.cfg.loc_weight)
    with run.precision.autocast():
        loss, value, loc = kind_for(run.spec).training_step(run.step_model, x, targets, ctx)
    run.precision.step(loss, run.opt)
    run.ema.update_parameters(run.model)  # weights are identical on every rank after the step, so every EMA is too
    run.schedule.step()
    return value, loc


def validate(run: Run) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, the EMA model's raw image logits on the validation images and, for a detector, its pointing
    game (nan for a classifier); the same on every rank, so that every rank takes the same decisions."""

    def predict(records: list[Record]) -> np.ndarray:
        return predict_cached(run.ema.module, run.spec, run.cache, records, workers=run.cfg.workers)

    p = distributed.gather_predictions(predict, run.val)
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
    atomic_save(resume_state(run, epoch), run.out / "last.pt")


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


# ---------------------------------------------------------------- last.pt
def resume_state(run: Run, epoch: int) -> dict[str, Any]:
    """What `restore` needs to continue after `epoch` exactly as if the run had never stopped (last.pt)."""
    state = {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict(),  # the average and its count
        "optimizer": run.opt.state_dict(),
        "schedule": run.schedule.state_dict(),
        "epoch": epoch,
        "best_score": run.best_score,
        "stale": run.stale,
        "history": run.history,
        "torch_rng": torch.get_rng_state(),
        "scaler": run.precision.scaler.state_dict(),  # {} unless fp16
        "hard_negatives": hard_negatives_state(run.sampler),  # the crops the next epochs centre on
    }
    if run.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    return state


def restore(run: Run) -> None:
    """Continue from rank 0's last.pt (every rank receives it): weights, EMA, optimiser, schedule, RNG, history."""
    state = run_folder.read_last(run.out)
    if state is None:
        return
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.opt.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    # The coming step's rate from this run's schedule: --epochs may have changed it (equal when not).
    factor = run.schedule.lr_lambdas[0](run.schedule.last_epoch)
    for group, base in zip(run.opt.param_groups, run.schedule.base_lrs, strict=True):
        group["lr"] = base * factor
    if state.get("scaler") and run.precision.scaler.is_enabled():  # an fp16 run's loss scale, into fp16
        run.precision.scaler.load_state_dict(state["scaler"])
    run.first_epoch, run.best_score, run.stale = state["epoch"] + 1, state["best_score"], state["stale"]
    run.history = state["history"]
    if restore_hard_negatives(run.sampler, state.get("hard_negatives")):  # new samples: a new loader
        run.loader = training_loader(run.samples, run.cfg.batch_size, run.cfg.seed, run.cfg.workers)
    # Dropout and stochastic depth continue as if never stopped: they draw from the device's generator.
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    if distributed.is_main():
        print(f"resuming after epoch {run.first_epoch} (best validation score so far {run.best_score:.4f})")
