"""Train-time augmentation: batched, on the CPU, in torch (so it runs inside the training step).

Geometric changes also warp the fracture-box masks, so box supervision follows the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Batched train-time augmentation on [0, 1] tensors (N, 1, S, S), on the CPU.

    Radiograph-appropriate: small rotations and zoom (patients are not positioned identically),
    horizontal flips (left and right limbs), gamma and contrast changes (exposure and processing differ
    between sites). No vertical flips, no colour.
    """

    rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.06
    flip_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: float = 0.15

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random parameters for `n` images, (n, 7): angle (rad), scale, flip, tx, ty, gamma, contrast.

        Drawn apart from `apply` so that distributed training can draw them for the whole global batch
        on every rank and keep its own rows: each image gets the same augmentation as in one process.
        """

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        angle = uniform(-self.rotate_deg, self.rotate_deg) * math.pi / 180
        scale = uniform(*self.scale)
        flip = torch.where(torch.rand(n, generator=generator) < self.flip_p, -1.0, 1.0)
        tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
        gamma = uniform(*self.gamma)
        contrast = uniform(1 - self.contrast, 1 + self.contrast)
        return torch.stack([angle, scale, flip, tx, ty, gamma, contrast], 1)

    def apply(
        self, x: torch.Tensor, params: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment (N, 1, S, S) in [0, 1] with (N, 7) parameters from `sample`; returns (images, masks).

        Fracture-box `masks` (N, 1, S, S) get the same geometric warp (not the intensity changes); without
        masks the second item is None."""
        n = x.shape[0]
        angle, scale, flip, tx, ty, gamma, contrast = params.unbind(1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1).to(
            x.dtype
        )
        both = x if masks is None else torch.cat([x, masks.to(x.dtype)], 1)
        grid = F.affine_grid(theta, list(both.shape), align_corners=False)
        both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = both[:, :1].clamp(0, 1) ** gamma.view(n, 1, 1, 1)
        c = contrast.view(n, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * c + mean).clamp(0, 1)
        return x, (None if masks is None else both[:, 1:])
