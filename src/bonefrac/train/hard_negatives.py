"""Hard negatives (issue 24 point 2): where the detector fires on normal training images, to crop there.

On other sites' hand radiographs the detector's peak lands on a normal joint (IP, MCP, CMC, carpal) in 74% of
its misses: the joints outrank the fractures. Every few epochs the model looks at (a seeded subset of) the
normal training images whole, as at inference, and each image's top local maxima of the centre heatmap above a
floor are kept; `CropSampler` then centres some of those images' crops on them, with no box: the focal loss
pushes those cells down.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bonefrac.models.kinds.detector import STRIDE
from bonefrac.preprocess import normalize, resized_shape
from bonefrac.spec import ModelSpec
from bonefrac.train import distributed
from bonefrac.train.detector import CropSampler

TOP = 3  # peaks kept per image
FLOOR = 0.05  # sigmoid of the raw centre logit: below it a cell is no peak worth a crop


def mining_subset(sampler: CropSampler, limit: int | None, seed: int) -> list[int]:
    """The normal training images to look at: all of them, or `limit` of them drawn with `seed`, in order."""
    normals = [i for i, r in enumerate(sampler.records) if r.label == 0 and not r.boxes]
    if limit and len(normals) > limit:
        normals = sorted(np.random.default_rng(seed).choice(normals, limit, replace=False).tolist())
    return normals


@torch.no_grad()
def mine(
    model: torch.nn.Module, spec: ModelSpec, sampler: CropSampler, indices: list[int], batch_size: int = 16
) -> dict[int, np.ndarray]:
    """{record index: (k, 2) peak points (x, y) on the cached grid}, k <= TOP, for the images `indices` that
    have a peak above FLOOR inside their content. The model is put in eval mode; under torchrun each rank
    looks at its share and every rank receives all."""
    model.eval()
    device = next(model.parameters()).device

    def peaks_of(batch_indices: list[int]) -> np.ndarray:
        out = np.full((len(batch_indices), TOP, 2), np.nan, np.float32)
        for s in range(0, len(batch_indices), batch_size):
            chunk = batch_indices[s : s + batch_size]
            recs = [sampler.records[i] for i in chunk]
            x = torch.from_numpy(np.stack([sampler.cache.load(r.path) for r in recs]))[:, None].float().div_(255)
            x = normalize(x, spec).to(device).contiguous(memory_format=torch.channels_last)
            score = torch.sigmoid(model(x)[0].float())  # (n, 1, h, w) centre heatmap
            peak = (score == F.max_pool2d(score, 3, 1, 1)) & (score >= FLOOR)
            for j, r in enumerate(recs):
                g = sampler.cache.geometry(r.path)
                nh, nw = resized_shape(g.height, g.width, g.size)
                h, w = score.shape[-2:]
                centres_y = (torch.arange(h, device=device) + 0.5) * STRIDE
                centres_x = (torch.arange(w, device=device) + 0.5) * STRIDE
                content = ((centres_y >= g.pad_y) & (centres_y < g.pad_y + nh))[:, None] & (
                    (centres_x >= g.pad_x) & (centres_x < g.pad_x + nw)
                )[None]
                flat = torch.where(peak[j, 0] & content, score[j, 0], torch.zeros_like(score[j, 0])).flatten()
                values, cells = flat.topk(TOP)
                for k, (v, c) in enumerate(zip(values.tolist(), cells.tolist(), strict=True)):
                    if v > 0:
                        out[s + j, k] = ((c % w + 0.5) * STRIDE, (c // w + 0.5) * STRIDE)
        return out.reshape(len(batch_indices), -1)

    found = distributed.gather_predictions(peaks_of, indices).reshape(len(indices), TOP, 2)
    return {i: p[~np.isnan(p[:, 0])] for i, p in zip(indices, found, strict=True) if not np.isnan(p[0, 0])}


def to_state(sampler: CropSampler | None) -> dict[str, list[list[float]]]:
    """The mined points by image key, for last.pt (plain lists: loadable with weights_only); {} when none."""
    if sampler is None:
        return {}
    return {sampler.records[i].key: p.tolist() for i, p in sampler.hard_negatives.items()}


def restore(sampler: CropSampler | None, state: dict[str, list[list[float]]] | None) -> bool:
    """Put last.pt's mined points back into the sampler (a resumed run crops as if never stopped); True if any."""
    if sampler is None or not state:
        return False
    index = {r.key: i for i, r in enumerate(sampler.records)}
    sampler.hard_negatives = {
        index[k]: np.asarray(p, np.float32).reshape(-1, 2) for k, p in state.items() if k in index
    }
    return True
