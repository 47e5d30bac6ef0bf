"""The optimisation schedule's two pieces that torch leaves to the caller: the EMA's update with a warmed-up
decay (for `torch.optim.swa_utils.AveragedModel`) and the learning-rate factor of each step (for `LambdaLR`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


def warmed_up_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """`AveragedModel`'s update: torch's EMA with the decay held at (1 + k) / (10 + k) for the k-th update while
    that is lower (the first weights are poor, and a short run would otherwise validate its initial ones)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's batch counters: copied, not averaged
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
            return
        k = int(n_averaged) + 1
        get_ema_multi_avg_fn(min(decay, (1 + k) / (10 + k)))(averaged, current, n_averaged)

    return update


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor of each step (`LambdaLR`): linear warm-up over `warmup` steps, then a cosine
    from 1 to 0.01 at step `total`. In closed form, so that a resumed run with more --epochs follows its new
    schedule, and each parameter group (the backbone's own rate) scales alike."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
