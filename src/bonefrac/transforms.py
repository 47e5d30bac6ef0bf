"""The one preprocessing path (train, evaluate, predict, serve, export) and train-time augmentation.

file -> read_image -> `letterbox` (per-image min-max, aspect-preserving resize, zero padding to a square)
-> `normalize` (mean/std from the ModelSpec) -> model. `Geometry` records the resize and padding so a
heatmap on the model grid maps back onto the image as read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import XrayImage
from .models import ModelSpec


@dataclass(frozen=True)
class Geometry:
    """How an (height x width) image was placed in the (size x size) model input."""

    height: int
    width: int
    size: int
    scale: float
    pad_x: int
    pad_y: int

    def crop_content(self, upsampled: np.ndarray) -> np.ndarray:
        """The image's part of a (size, size) map (see `upsample_maps`), without the letterbox padding."""
        nh, nw = _resized_shape(self.height, self.width, self.size)
        return upsampled[self.pad_y : self.pad_y + nh, self.pad_x : self.pad_x + nw]

    def content_to_image(self, content: np.ndarray) -> np.ndarray:
        """A content map (from `crop_content`) resized onto the original (height, width) image."""
        t = torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return t[0, 0].numpy()

    def content_box_to_image(self, box: list[float]) -> list[float]:
        """[x0, y0, x1, y1, ...] in model-content pixels -> the same box in original image pixels."""
        nh, nw = _resized_shape(self.height, self.width, self.size)
        sx, sy = self.width / nw, self.height / nh
        x0, y0, x1, y1 = box[:4]
        return [
            min(x0 * sx, self.width),
            min(y0 * sy, self.height),
            min(x1 * sx, self.width),
            min(y1 * sy, self.height),
            *box[4:],
        ]


def upsample_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps on the feature grid -> (N, size, size), bicubic, in one call for a whole batch (per
    image, the call overhead costs more than the model).

    Bicubic, not bilinear: a bilinear surface peaks exactly on a feature-grid point (every 32 px), a bicubic
    one between points, towards the warmer neighbours. On validation fractures this moved the peak into the
    ground-truth box a quarter more often (pointing game 0.25 -> 0.33).
    """
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[:, 0].numpy()


def _resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox_geometry(height: int, width: int, size: int) -> Geometry:
    """Where an (height x width) image lands in the (size x size) model input."""
    nh, nw = _resized_shape(height, width, size)
    return Geometry(height, width, size, nh / height, (size - nw) // 2, (size - nh) // 2)


def box_mask(boxes: list[list[float]], geometry: Geometry) -> np.ndarray:
    """(size, size) float32 mask, 1 inside any [x0, y0, x1, y1] box given in image pixels."""
    g = geometry
    nh, nw = _resized_shape(g.height, g.width, g.size)
    sx, sy = nw / g.width, nh / g.height
    mask = np.zeros((g.size, g.size), dtype=np.float32)
    for x0, y0, x1, y1 in (b[:4] for b in boxes):
        c0, c1 = int(np.floor(x0 * sx + g.pad_x)), int(np.ceil(x1 * sx + g.pad_x))
        r0, r1 = int(np.floor(y0 * sy + g.pad_y)), int(np.ceil(y1 * sy + g.pad_y))
        mask[max(r0, 0) : min(r1, g.size), max(c0, 0) : min(c1, g.size)] = 1.0
    return mask


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Stretch to the full [0, 1] range, resize the long side to `size` (antialiased), pad to a square.

    Per-image min-max makes the model input the same for any re-encoding of one radiograph (8/16-bit,
    DICOM windows) and for any linear intensity scaling.
    """
    h, w = pixels.shape
    lo, hi = float(pixels.min()), float(pixels.max())
    g = letterbox_geometry(h, w, size)
    nh, nw = _resized_shape(h, w, size)
    out = np.zeros((size, size), dtype=np.float32)
    if hi > lo:
        # Resizing is linear (its weights sum to 1), so the min-max scaling is applied after it, to the
        # small image: the same values up to float rounding, without full-resolution temporaries.
        raw = np.ascontiguousarray(pixels, dtype=np.float32)
        resized = np.asarray(Image.fromarray(raw, mode="F").resize((nw, nh), Image.BILINEAR))
        out[g.pad_y : g.pad_y + nh, g.pad_x : g.pad_x + nw] = np.clip((resized - lo) / (hi - lo), 0.0, 1.0)
    return out, g


def normalize(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[0, 1] intensities -> model input. Works on (1, H, W) and (N, 1, H, W)."""
    return (x - spec.mean) / spec.std


def preprocess(image: XrayImage, spec: ModelSpec) -> tuple[torch.Tensor, Geometry]:
    """An `XrayImage` -> normalised float32 tensor (1, size, size) plus the geometry to undo."""
    boxed, geometry = letterbox(image.pixels, spec.image_size)
    return normalize(torch.from_numpy(boxed)[None], spec), geometry


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
        return self.apply(x, self.sample(x.shape[0], generator))

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
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augment (N, 1, S, S) in [0, 1] with (N, 7) parameters from `sample`. With `masks` (N, 1, S, S),
        fracture-box masks get the same geometric warp (not the intensity changes) and are returned too."""
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
        return x if masks is None else (x, both[:, 1:])
