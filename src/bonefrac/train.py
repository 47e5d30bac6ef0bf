"""The fit loop: class-balanced loss, radiograph augmentation, AdamW + warmup/cosine, EMA weights,
best checkpoint by validation AUC, early stopping, and resume from the last finished epoch.

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

from . import __version__, distributed
from .checkpoint import atomic_save, save_model
from .data import DecodeCache, Record, load_dataset, load_split, save_split, split_dataset
from .errors import DatasetError
from .metrics import auc, auc_ci, choose_operating_points, operating_point_stats
from .models import ModelSpec, build_model
from .transforms import Augment, normalize


@dataclass
class TrainConfig:
    dataset: str
    out: str
    arch: str = "efficientnet_lite0"
    epochs: int = 12
    image_size: int = 256
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


def load_batch(
    cache: DecodeCache, records: list[Record], idx: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([cache.load(records[i].path) for i in idx]))[:, None].float().div_(255)
    y = torch.tensor([records[i].label for i in idx], dtype=torch.float32)
    return x, y


@torch.no_grad()
def predict_cached(
    model: torch.nn.Module, spec: ModelSpec, cache: DecodeCache, records: list[Record], batch_size: int = 64
) -> np.ndarray:
    """Probabilities for records from the decode cache (validation during training)."""
    model.eval()
    out = []
    for s in range(0, len(records), batch_size):
        x, _ = load_batch(cache, records, list(range(s, min(s + batch_size, len(records)))))
        x = normalize(x, spec).contiguous(memory_format=torch.channels_last)
        out.append(torch.sigmoid(model(x)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def prepare_data(cfg: TrainConfig, out: Path) -> tuple[list[Record], list[Record], DecodeCache]:
    records = load_dataset(cfg.dataset)
    split_path = Path(cfg.split_file) if cfg.split_file else out / "split.json"
    if split_path.is_file():
        split = load_split(split_path)  # resume, or a split chosen elsewhere: reuse it exactly
    else:
        split = split_dataset(records, cfg.val_fraction, cfg.seed)
    if distributed.is_main():
        save_split(split, out / "split.json")
    cache = DecodeCache(cfg.cache_dir, cfg.image_size)
    bad = cache.build([r.path for r in records], progress=cfg.progress and distributed.is_main())
    for err in bad.values():
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
    """Train a model as configured; returns the run folder. With `resume`, continue from last.pt."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = distributed.is_main()
    train, val, cache = prepare_data(cfg, out)
    spec = ModelSpec(arch=cfg.arch, image_size=cfg.image_size)
    model = build_model(spec).to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    ddp_model = distributed.wrap(model)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    n_pos = sum(r.label for r in train)
    pos_weight = torch.tensor((len(train) - n_pos) / max(n_pos, 1))  # balance the classes in the loss
    world = distributed.world_size()
    steps_per_epoch = len(train) // (cfg.batch_size * world) or 1
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    augment = Augment()
    start_epoch, best_auc, stale, history = 0, -1.0, 0, []
    last_path = out / "last.pt"
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
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
        # Seeded per epoch, identical on every rank, so a resumed or distributed run sees the same order.
        order = torch.randperm(
            len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        ).tolist()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1 + distributed.rank() * 7919)
        model.train()
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and main),
        )
        for step in bar:
            glob = epoch * steps_per_epoch + step
            for g in opt.param_groups:
                g["lr"] = lr_at(glob, total_steps, warmup, cfg.lr)
            idx = distributed.shard(
                order[step * cfg.batch_size * world : (step + 1) * cfg.batch_size * world]
            )
            x, y = load_batch(cache, train, idx)
            x = normalize(augment(x, gen), spec).contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(ddp_model(x), y, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(model)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        train_time = time.time() - t0
        p = distributed.gather_predictions(lambda recs: predict_cached(ema.module, spec, cache, recs), val)
        y = np.array([r.label for r in val])
        val_auc = auc(y, p)
        val_loss = float(
            F.binary_cross_entropy(torch.tensor(p).clamp(1e-6, 1 - 1e-6), torch.tensor(y).float())
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
            "train_images_per_s": steps_per_epoch * cfg.batch_size * world / train_time,
        }
        history.append(row)
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
        distributed.barrier()
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
