"""torch.distributed glue. Every function is a no-op in a plain single process, so the training loop is
the same code with or without torchrun (`gloo` on CPU, `nccl` when CUDA is present).

The contract that makes a DDP run equivalent to one process: `--batch-size` is the global batch; every
rank walks the same seeded order, takes the same global batch and keeps every `world_size`-th item of it
(`shard`). Whatever is random per image (augmentation, dropout masks) is drawn for the whole global batch
with the same RNG state on every rank and cut to this rank's rows, and BatchNorm statistics are
computed over the whole global batch (`SyncBatchNorm2d`), so each image is treated as in one process.

This module is the process side (ranks, sharding, collectives) and imports torch only when called, for
`bonefrac predict`; the model side (those layers, and the DistributedDataParallel wrap) is `distributed_model`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
S = TypeVar("S")  # a list, or a tensor's rows

#: How long a rank waits in a collective before the run fails: rank 0 may be decoding a large dataset
#: into the cache while the others wait at a barrier, so this is far above torch's NCCL default.
TIMEOUT = timedelta(minutes=float(os.environ.get("BONEFRAC_DIST_TIMEOUT_MIN", "60")))


#: Where `device` puts this process: "auto" (its GPU when CUDA is present, else the CPU), "cpu" or "cuda".
DEVICES = ("auto", "cpu", "cuda")
_device_choice = "auto"


def init_from_env(device_choice: str = "auto") -> bool:
    """Choose the device (`choose_device`), and join the process group when launched by torchrun
    (WORLD_SIZE > 1). Returns True when distributed."""
    choose_device(device_choice)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_dist()
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    on_gpu = device().type == "cuda" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank())  # one GPU per process, chosen before NCCL starts
    # NCCL for GPUs; gloo on CPUs, also on a GPU machine told --device cpu (NCCL moves only CUDA tensors).
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=TIMEOUT)
    return True


def choose_device(choice: str) -> None:
    """Set where `device` puts this process: one of `DEVICES`."""
    global _device_choice
    if choice not in DEVICES:
        raise ValueError(f"device {choice!r}: choose one of {', '.join(DEVICES)}")
    _device_choice = choice


def is_dist() -> bool:
    # torch is imported lazily: a process that never imported it (ONNX inference) is not distributed.
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def rank() -> int:
    return _dist().get_rank() if is_dist() else 0


def local_rank() -> int:
    """This process's index on its own node (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return _dist().get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where this process computes: its own GPU (cuda:LOCAL_RANK) when CUDA is present or chosen, else the
    CPU (`choose_device`). A "cuda" choice without CUDA is the caller's to refuse (training does, at set-up)."""
    import torch

    if _device_choice == "cpu" or (_device_choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank())


def barrier() -> None:
    if is_dist():
        _dist().barrier()


@contextmanager
def node_first() -> Iterator[None]:
    """Run the block on each node's first process, then on the others: the first builds a cache (decoded
    images, an ONNX export) and the others find it built. Exactly one barrier on every rank."""
    first = local_rank() == 0
    if not first:
        barrier()
    yield
    if first:
        barrier()


def _comm_device() -> torch.device:
    import torch

    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    return device() if is_dist() and _dist().get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank: decisions made once (the split, the resume state), and no other rank
    has to read rank 0's files, so the run folder need not be on a shared filesystem."""
    if not is_dist():
        return obj
    box: list[Any] = [obj if is_main() else None]
    _dist().broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather_to_main(items: list[T]) -> list[T]:
    """Concatenate every rank's list on rank 0 (rank order); other ranks get []."""
    if not is_dist():
        return items
    parts: list[Any] = [None] * world_size() if is_main() else []
    _dist().gather_object(items, parts if is_main() else None, dst=0)
    return [x for part in parts for x in part] if is_main() else []


def shard(items: S) -> S:
    """This rank's share: every `world_size`-th item from `rank`, so shards differ by at most one.
    Works on lists and on tensors (rows)."""
    return items[rank() :: world_size()] if is_dist() else items


def gather_predictions(predict: Callable[[list[Any]], np.ndarray], items: list[Any]) -> np.ndarray:
    """Predict on this rank's shard, gather all shards, and return results in the original order on
    every rank (so every rank takes the same decisions: best epoch, early stopping)."""
    if not is_dist():
        return predict(items)
    idx = list(range(len(items)))[rank() :: world_size()]
    local = np.asarray(predict([items[i] for i in idx]))
    parts: list[Any] = [None] * world_size()
    _dist().all_gather_object(parts, (idx, local))
    # The dtype and row shape one process would return (an empty shard's placeholder must not decide them):
    # one value per item, or a row per item (a detector's logit and heatmap peak).
    filled = [values for part_idx, values in parts if part_idx]
    dtype = np.result_type(*(v.dtype for v in filled)) if filled else local.dtype
    out = np.zeros((len(items), *(filled[0].shape[1:] if filled else ())), dtype=dtype)
    for part_idx, values in parts:
        out[part_idx] = values
    return out


def sum_ints(values: list[int]) -> list[int]:
    """Element-wise sums over all ranks of equal-length integer lists, in one collective."""
    if not is_dist():
        return values
    import torch

    t = torch.tensor(values, dtype=torch.int64, device=_comm_device())
    _dist().all_reduce(t)
    return [int(v) for v in t.tolist()]


def mean_over_ranks(values: list[float]) -> list[float]:
    """Element-wise mean over ranks of equal-length lists (per-step losses -> the global batch's loss)."""
    if not is_dist():
        return values
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    _dist().all_reduce(t)
    return (t / world_size()).tolist()


def cleanup() -> None:
    if is_dist():
        _dist().destroy_process_group()
