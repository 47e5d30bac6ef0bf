"""torch.distributed glue. Every function is a no-op in a plain single process, so the training loop is
the same code with or without torchrun (`gloo` on CPU, `nccl` when CUDA is present).

The contract that makes a DDP run equivalent to one process: `--batch-size` is the global batch; every
rank walks the same seeded order, takes the same global batch and keeps every `world_size`-th item of it
(`shard`). Whatever is random per image (augmentation, dropout masks) is drawn for the whole global batch
with the same RNG state on every rank and cut to this rank's rows, and BatchNorm statistics are
computed over the whole global batch (`SyncBatchNorm2d`), so each image is treated as in one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
S = TypeVar("S", bound=Sequence[Any] | torch.Tensor)  # a list, or a tensor's rows

#: How long a rank waits in a collective before the run fails: rank 0 may be decoding a large dataset
#: into the cache while the others wait at a barrier, so this is far above torch's NCCL default.
TIMEOUT = timedelta(minutes=float(os.environ.get("BONEFRAC_DIST_TIMEOUT_MIN", "60")))


def init_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_dist()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # one GPU per process, chosen before NCCL starts
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    return True


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def local_rank() -> int:
    """This process's index on its own node (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where this process computes: its own GPU when CUDA is present, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if is_dist():
        dist.barrier()


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
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    return device() if is_dist() and dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank: decisions made once (the split, the resume state), and no other rank
    has to read rank 0's files, so the run folder need not be on a shared filesystem."""
    if not is_dist():
        return obj
    box: list[Any] = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather_to_main(items: list[T]) -> list[T]:
    """Concatenate every rank's list on rank 0 (rank order); other ranks get []."""
    if not is_dist():
        return items
    parts: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object(items, parts if is_main() else None, dst=0)
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
    dist.all_gather_object(parts, (idx, local))
    # The dtype one process would return (an empty shard's placeholder array must not decide it).
    dtypes = [values.dtype for part_idx, values in parts if part_idx]
    out = np.zeros(len(items), dtype=np.result_type(*dtypes) if dtypes else local.dtype)
    for part_idx, values in parts:
        out[part_idx] = values
    return out


def sum_int(value: int) -> int:
    """Sum an integer over all ranks (e.g. failure counts, so every rank returns the same exit code)."""
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t)
    return int(t.item())


def mean_over_ranks(values: list[float]) -> list[float]:
    """Element-wise mean over ranks of equal-length lists (per-step losses -> the global batch's loss)."""
    if not is_dist():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / world_size()).tolist()


# ---------------------------------------------------------------- global-batch layers
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the backward sums the gradients too, because every rank's loss
    depends on every rank's input through the shared statistics."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch (all ranks), on the CPU too.

    torch.nn.SyncBatchNorm refuses CPU tensors, and per-rank statistics would normalise over half the
    batch that one process normalises over. Two passes (mean, then squared deviations), like
    F.batch_norm, so the variance does not lose precision to E[x^2] - E[x]^2 cancellation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        c = x.shape[1]
        shape = (1, c, 1, 1)
        stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() // c])]))
        n = stats[c]
        mean = stats[:c] / n
        var = _AllReduceSum.apply(((x - mean.view(shape)) ** 2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)  # unbiased, as BatchNorm2d
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class GlobalBatchDropout(nn.Dropout):
    """Dropout whose mask is drawn for the whole global batch, then cut to this rank's images (those
    `shard` gives it). Every rank has the same RNG state, so plain dropout would draw the same mask for
    different images on each rank; this draws exactly the mask one process draws (same shape, same RNG
    state, same ops as F.dropout on CPU).

    The input may hold several rows per image, image-major (the class-activation map runs the head on
    every cell: N*h*w rows); `global_batch` (images, set by `set_global_batch`) tells how many.
    """

    global_batch: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist()) or self.p == 0:
            return super().forward(x)
        mine = len(range(rank(), self.global_batch, world_size()))  # this rank's images
        if not mine or x.shape[0] % mine:
            raise RuntimeError(f"dropout input of {x.shape[0]} rows: call set_global_batch() before the step")
        rows = x.shape[0] // mine
        mask = torch.empty((self.global_batch * rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
        mask = shard(mask.bernoulli_(1 - self.p).unflatten(0, (self.global_batch, rows))).flatten(0, 1)
        return x * mask.div(1 - self.p)


def set_global_batch(model: nn.Module, n: int) -> None:
    """Tell the global-batch dropout layers how many images this training step's global batch holds."""
    for m in model.modules():
        if isinstance(m, GlobalBatchDropout):
            m.global_batch = n


def _globalize(model: nn.Module) -> None:
    """Swap BatchNorm2d and Dropout for their global-batch versions in place, sharing the parameters and
    buffers (so the optimiser, the EMA copy and the checkpoint keys are unchanged)."""
    on_gpu = device().type == "cuda"
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if type(child) is nn.BatchNorm2d and not on_gpu:
                new = SyncBatchNorm2d(
                    child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
                )
                new.weight, new.bias = child.weight, child.bias
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            elif type(child) is nn.Dropout:
                new = GlobalBatchDropout(child.p, child.inplace)
            if new is not None:
                setattr(parent, name, new.train(child.training))
    if on_gpu:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch's own, in place for non-BN roots


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel (gradients averaged over ranks) around `model` with global-batch BatchNorm
    and dropout when distributed; the model itself otherwise. `model` keeps its identity and parameters.

    Known gap: stochastic depth inside EfficientNet blocks (`MBConv.drop_path`) draws per rank, so those
    runs match one process in distribution but not image for image.
    """
    if not is_dist():
        return model
    from torch.nn.parallel import DistributedDataParallel

    _globalize(model)
    ids = [local_rank()] if device().type == "cuda" else None
    # Default buffer sync (from rank 0 at each forward): the BN running stats are equal on all ranks
    # already, so this is cheap insurance, not a correction.
    return DistributedDataParallel(model, device_ids=ids)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
