"""The model side of distributed training: global-batch BatchNorm and dropout, and the `wrap` that installs
them with DistributedDataParallel around the model.

`distributed` holds the process side (ranks, sharding, collectives) and its contract: a torchrun run treats
each image as one process would. It stays free of torch at import, for `bonefrac predict`; this module is
imported by training only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bonefrac.train.distributed import device, is_dist, local_rank, rank, shard, world_size


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
        # In x's memory layout, as F.dropout's mask (empty_like): bernoulli_ fills memory in order, so a
        # channels_last input (the detector's class-activation map) would otherwise get other masks.
        cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if cl else torch.contiguous_format
        mask = torch.empty((self.global_batch * rows, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
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
