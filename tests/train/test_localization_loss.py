from __future__ import annotations

import math

import torch

from bonefrac.models.classifier import localization_loss


def test_loss_rewards_a_heatmap_peaking_inside_the_box() -> None:
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., 0:16, 48:64] = 1.0  # the top-right cell of a 4x4 grid
    good = torch.zeros(1, 4, 4)
    good[0, 0, 3] = 5.0
    bad = torch.zeros(1, 4, 4)
    bad[0, 3, 0] = 5.0
    flat = torch.zeros(1, 4, 4)
    assert localization_loss(flat, masks).item() == torch.tensor(math.log(16)).item()
    assert localization_loss(good, masks) < localization_loss(flat, masks) < localization_loss(bad, masks)


def test_only_relative_heat_matters_and_negatives_are_ignored() -> None:
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 0:8, 0:8] = 1.0  # image 0 has a box; image 1 (a negative) has none
    cam = torch.randn(2, 4, 4)
    shifted = cam.clone()
    shifted[0] += 7.0  # the image logit (mean) moves; the spatial pattern does not
    shifted[1] = torch.randn(4, 4) * 100  # anything at all for the negative
    assert torch.allclose(localization_loss(cam, masks), localization_loss(shifted, masks))
    assert localization_loss(cam, torch.zeros(2, 1, 32, 32)).item() == 0.0
