"""The fit loop: class-balanced loss, radiograph augmentation, AdamW + warmup/cosine, EMA weights,
best checkpoint by validation AUC, early stopping, and resume from the last finished epoch.

Under torchrun the same loop runs data-parallel (see `distributed`): `batch_size` is the global batch, split
across ranks; only rank 0 writes files, logs and shows progress; validation is sharded and gathered.

Outputs in the run folder: model.pt (best, with operating points chosen on validation), last.pt (resume
state), history.csv, learning_curve.png, split.json, run.json (command line, versions, config).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, distributed, distributed_model
from .augment import Augment
from .checkpoint import atomic_save, load_model, save_model
from .data import DecodeCache, Record, load_dataset, load_split, save_split, split_dataset
from .errors import BonefracError, DatasetError
from .io import REDUCE_FROM
from .metrics import auc, auc_ci, choose_operating_points, operating_point_stats
from .models import ModelSpec, build_model
from .transforms import box_mask, normalize


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
    progress: bool = True


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


def load_box_masks(cache: DecodeCache, records: list[Record], idx: list[int]) -> torch.Tensor:
    """(N, 1, S, S) fracture-box masks on the cached grid; all zero for images without boxes."""
    masks = [
        box_mask(records[i].boxes, cache.geometry(records[i].path))
        if records[i].boxes
        else np.zeros((cache.size, cache.size), np.float32)
        for i in idx
    ]
    return torch.from_numpy(np.stack(masks))[:, None]


def box_targets(cam: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of each heatmap cell covered by boxes (N, h*w), and which images have any box (N,)."""
    target = F.adaptive_avg_pool2d(masks, cam.shape[-2:]).flatten(1)
    return target, target.sum(1) > 1e-6


def localization_loss(cam: torch.Tensor, masks: torch.Tensor, n_boxed: int | None = None) -> torch.Tensor:
    """Cross-entropy between the heatmap's spatial softmax and the share of each cell covered by boxes.

    It shapes only *where* the heatmap is high, relative to the rest of the image, so it does not fight
    the image-level logit (the heatmap's mean). Images without boxes (negatives) contribute nothing. The
    mean is over the boxed images here, or over `n_boxed` images: under DDP the global batch's count, so
    that the ranks' losses add up to the loss one process computes on the whole batch.
    """
    target, keep = box_targets(cam, masks)
    if not keep.any():
        return cam.sum() * 0.0  # keeps every parameter in the graph (DistributedDataParallel needs that)
    target = target[keep] / target[keep].sum(1, keepdim=True)
    per_image = -(target * F.log_softmax(cam[keep].flatten(1), dim=1)).sum(1)
    return per_image.mean() if n_boxed is None else per_image.sum() / n_boxed


@torch.no_grad()
def predict_cached(
    model: torch.nn.Module, spec: ModelSpec, cache: DecodeCache, records: list[Record], batch_size: int = 64
) -> np.ndarray:
    """Probabilities for records from the decode cache (validation during training)."""
    model.eval()
    out = []
    for s in range(0, len(records), batch_size):
        x, _ = load_batch(cache, records, list(range(s, min(s + batch_size, len(records)))))
        x = normalize(x, spec).to(distributed.device()).contiguous(memory_format=torch.channels_last)
        out.append(torch.sigmoid(model(x)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def prepare_data(cfg: TrainConfig, spec: ModelSpec, out: Path) -> tuple[list[Record], list[Record], DecodeCache]:
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


def validation_report(y: np.ndarray, p: np.ndarray, points: dict[str, float]) -> dict[str, Any]:
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "auc": auc(y, p),
        "auc_ci95": auc_ci(y, p),
        "operating_points": {k: operating_point_stats(y, p, t) for k, t in points.items()},
    }


def fit(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a model as configured; returns the run folder. With `resume`, continue from last.pt.

    Under torchrun every rank runs this; rank 0 alone writes the run folder, and the others receive its
    decisions (split, resume state), so only rank 0 needs the folder.
    """
    out = Path(cfg.out)
    main = distributed.is_main()
    world = distributed.world_size()
    if cfg.batch_size < world:
        raise BonefracError(f"--batch-size {cfg.batch_size} is the global batch: it needs at least {world}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = distributed.device()
    spec = ModelSpec(arch=cfg.arch, image_size=cfg.image_size, reduce_from=cfg.reduce_from)
    train, val, cache = prepare_data(cfg, spec, out)
    if len(train) < world:
        raise DatasetError(f"{len(train)} training images cannot be shared by {world} processes")
    if cfg.init_from:
        # Fine-tune a trained model (e.g. add box supervision to a classifier): its weights, this run's recipe.
        model, init_spec, _ = load_model(cfg.init_from)
        if (init_spec.arch, init_spec.image_size) != (spec.arch, spec.image_size):
            raise BonefracError(
                f"--init-from {cfg.init_from} is {init_spec.arch} at {init_spec.image_size}px; "
                f"this run is {spec.arch} at {spec.image_size}px"
            )
    else:
        model = build_model(spec)
    model = model.to(dev, memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    ddp_model = distributed_model.wrap(model)  # `model` stays the plain module: its state_dict is what we save
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    n_pos = sum(r.label for r in train)
    pos_weight = torch.tensor((len(train) - n_pos) / max(n_pos, 1), device=dev)  # balance the classes
    # The same steps and the same global batches whatever the number of processes.
    steps_per_epoch = len(train) // cfg.batch_size or 1
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    augment = Augment()
    use_boxes = cfg.loc_weight > 0 and any(r.boxes for r in train)
    start_epoch, best_auc, stale, history = 0, -1.0, 0, []
    last_path = out / "last.pt"
    state = (
        torch.load(last_path, map_location="cpu", weights_only=True)
        if resume and main and last_path.is_file()
        else None
    )
    state = distributed.broadcast_object(state)  # every rank resumes from rank 0's last.pt
    if state is not None:
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        ema.updates = state["ema_updates"]
        opt.load_state_dict(state["optimizer"])
        start_epoch, best_auc, stale = state["epoch"] + 1, state["best_auc"], state["stale"]
        torch.set_rng_state(state["torch_rng"])  # dropout / stochastic depth continue as if never stopped
        history = state["history"]
        if main:
            print(f"resuming after epoch {state['epoch'] + 1} (best val AUC so far {best_auc:.4f})")
    if main:
        write_run_info(out, cfg, len(train), len(val))
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        t0 = time.time()
        # Seeded per epoch, identical on every rank, so a resumed or distributed run sees the same order
        # and the same augmentation (drawn for the global batch, each rank keeping its rows).
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1)
        model.train()
        losses, loc_losses = [], []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and main),
        )
        for step in bar:
            glob = epoch * steps_per_epoch + step
            for g in opt.param_groups:
                g["lr"] = lr_at(glob, total_steps, warmup, cfg.lr)
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            params = augment.sample(len(batch), gen)
            idx = distributed.shard(batch)
            x, y = load_batch(cache, train, idx)
            masks = load_box_masks(cache, train, idx) if use_boxes else None
            x, masks = (
                augment.apply(x, distributed.shard(params), masks)
                if use_boxes
                else (
                    augment.apply(x, distributed.shard(params)),
                    None,
                )
            )
            x = normalize(x, spec).to(dev).contiguous(memory_format=torch.channels_last)
            y = y.to(dev)
            # This rank's mean, weighted by its share of the global batch (1.0 for equal shards and in one
            # process): DDP's average over ranks is then exactly the global batch's mean loss and gradient.
            share = len(idx) * world / len(batch)
            distributed_model.set_global_batch(model, len(batch))
            if use_boxes:
                logits, cam = ddp_model(x, return_cam=True)
                masks = masks.to(dev)
                # Ranks hold different numbers of boxed images: divide by the global batch's count, times
                # world for DDP's average (in one process: the plain mean, times 1).
                n_boxed = distributed.sum_int(int(box_targets(cam, masks)[1].sum())) if world > 1 else None
                loc = localization_loss(cam, masks, n_boxed) * world
                loc_losses.append(loc.item())
            else:
                logits, loc = ddp_model(x), 0.0
            bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            loss = bce * share + cfg.loc_weight * loc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(model)  # weights are identical on every rank after the step, so every EMA is too
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")  # rank 0's share: a noisy estimate
        train_time = time.time() - t0
        # The global batches' losses (each rank's terms are scaled so that their mean is the global one).
        losses = distributed.mean_over_ranks(losses)
        loc_losses = distributed.mean_over_ranks(loc_losses) if loc_losses else []
        p = distributed.gather_predictions(lambda recs: predict_cached(ema.module, spec, cache, recs), val)
        y = np.array([r.label for r in val])
        val_auc = auc(y, p)
        val_loss = float(F.binary_cross_entropy(torch.tensor(p).clamp(1e-6, 1 - 1e-6), torch.tensor(y).float()))
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "loc_loss": float(np.mean(loc_losses)) if loc_losses else float("nan"),
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
            "train_images_per_s": min(steps_per_epoch * cfg.batch_size, len(train)) / train_time,
        }
        history.append(row)
        # Every rank holds the same gathered predictions, hence takes the same best / early-stop decisions.
        improved = val_auc > best_auc
        best_auc, stale = (val_auc, 0) if improved else (best_auc, stale + 1)
        if main:
            if improved:
                spec.operating_points = choose_operating_points(y, p)
                info = {
                    "bonefrac_version": __version__,
                    "trained_epochs": epoch + 1,
                    "config": asdict(cfg),
                    "dataset": str(cfg.dataset),
                    "n_train": len(train),
                    "n_val": len(val),
                    "validation": validation_report(y, p, spec.operating_points),
                }
                save_model(ema.module, spec, out / "model.pt", info)
            tqdm.write(
                f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                f"val AUC {val_auc:.4f}{' *' if improved else ''}  {row['train_images_per_s']:.1f} img/s"
            )
            write_history(out, history)
            atomic_save(
                {
                    "model": model.state_dict(),
                    "ema": ema.module.state_dict(),
                    "ema_updates": ema.updates,
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "best_auc": best_auc,
                    "stale": stale,
                    "history": history,
                    "torch_rng": torch.get_rng_state(),
                },
                last_path,
            )
        distributed.barrier()  # ranks leave the epoch together, after rank 0's checkpoint is on disk
    if main:
        print(f"best validation AUC {best_auc:.4f}; model written to {out / 'model.pt'}")
    return out


def write_history(out: Path, history: list[dict[str, float]]) -> None:
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    from .report import plot_learning_curve

    plot_learning_curve(history, out / "learning_curve.png")


def write_run_info(out: Path, cfg: TrainConfig, n_train: int, n_val: int) -> None:
    info = {
        "command": sys.argv,
        "config": asdict(cfg),
        "n_train": n_train,
        "n_val": n_val,
        "versions": {
            "bonefrac": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "threads": torch.get_num_threads(),
        "world_size": distributed.world_size(),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2))
