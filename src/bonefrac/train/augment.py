"""Train-time augmentation. `Augment`: the classifier's, batched in torch (geometric changes also warp the
fracture-box masks, so box supervision follows the image). `Photometric`: other sites' processing on a
detector's crop, in numpy.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter


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


# ---------------------------------------------------------------- photometric: other sites' processing
# Photometric augmentation for other sites' processing: the same anatomy as another hospital's PACS shows it.
#
# FracAtlas comes from one source, and the detector ties itself to its look (histogram equalisation at test time
# drops its pointing from 0.74 to 0.40). Radiographs elsewhere differ in the detector's response curve (gamma),
# the window a technologist or the PACS chose (contrast, clipping), the edge enhancement most PACS apply (unsharp
# masking), quantum noise, and JPEG re-encoding on the way to a teaching file. Each is applied to a training crop
# with probability `p`, on a 256 px crop in about a millisecond (numpy, scipy.ndimage, PIL).
@dataclass
class Photometric:
    """Random gamma, window, unsharp masking, noise and JPEG quality, each with probability `p`.

    `__call__(x, rng)`: x (h, w) float32 in [0, 1] -> the same shape, float32 in [0, 1].
    """

    p: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.6)  # log-uniform
    window_low: tuple[float, float] = (-0.1, 0.2)  # the new black and white levels, in [0, 1] of the input:
    window_high: tuple[float, float] = (0.8, 1.1)  # above 0 / below 1 clips (a narrow window), outside compresses
    unsharp_sigma: tuple[float, float] = (1.0, 4.0)  # pixels of the crop
    unsharp_amount: tuple[float, float] = (0.3, 1.5)
    noise_sigma: tuple[float, float] = (0.005, 0.03)
    jpeg_quality: tuple[int, int] = (30, 95)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p <= 0:
            return x
        x = np.asarray(x, np.float32)
        if rng.random() < self.p:
            x = x ** np.float32(np.exp(rng.uniform(*np.log(self.gamma))))
        if rng.random() < self.p:
            lo, hi = rng.uniform(*self.window_low), rng.uniform(*self.window_high)
            x = (x - np.float32(lo)) / np.float32(hi - lo)
        if rng.random() < self.p:
            blurred = gaussian_filter(x, rng.uniform(*self.unsharp_sigma), mode="reflect")
            x = x + np.float32(rng.uniform(*self.unsharp_amount)) * (x - blurred)
        if rng.random() < self.p:
            x = x + rng.normal(0, rng.uniform(*self.noise_sigma), x.shape).astype(np.float32)
        x = np.clip(x, 0, 1)
        if rng.random() < self.p:
            x = jpeg(x, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        return np.ascontiguousarray(x, np.float32)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """`x` in [0, 1] through an 8-bit greyscale JPEG at `quality`, back in [0, 1] float32."""
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32) / 255.0
