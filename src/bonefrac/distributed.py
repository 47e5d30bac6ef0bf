"""torch.distributed glue. Every function is a no-op in a plain single process, so the training loop is
the same code with or without torchrun (`gloo` on CPU, `nccl` when CUDA is present)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel when distributed (gradients all-reduced), the model itself otherwise."""
    if not is_dist():
        return model
    from torch.nn.parallel import DistributedDataParallel

    # BatchNorm statistics stay per rank (as with one process and the per-rank batch), buffers broadcast from rank 0.
    return DistributedDataParallel(model, broadcast_buffers=True)


def shard(items: list[T]) -> list[T]:
    """This rank's share of a list: every `world_size`-th item from `rank`, so shards differ by at most one."""
    return items[rank() :: world_size()] if is_dist() else items


def gather_predictions(predict: Callable[[list[Any]], np.ndarray], items: list[Any]) -> np.ndarray:
    """Predict on this rank's shard, gather all shards, and return results in the original order."""
    if not is_dist():
        return predict(items)
    idx = list(range(len(items)))[rank() :: world_size()]
    local = predict([items[i] for i in idx])
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (idx, np.asarray(local).tolist()))
    out = np.zeros(len(items), dtype=np.float64)
    for part_idx, values in parts:
        out[part_idx] = values
    return out


def sum_int(value: int) -> int:
    """Sum an integer over all ranks (e.g. failure counts, so every rank returns the same exit code)."""
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
