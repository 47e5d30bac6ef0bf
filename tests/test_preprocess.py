from __future__ import annotations

import numpy as np
import pytest
import torch

from bonefrac.io.read import XrayImage
from bonefrac.models.classifier import ModelSpec
from bonefrac.models.kinds.classifier import content_box_to_image, content_map, heatmap_on_image
from bonefrac.preprocess import letterbox, preprocess
from bonefrac.train.augment import Augment


@pytest.mark.parametrize("shape", [(373, 454), (454, 373), (1024, 1024), (50, 300)])
def test_letterbox_keeps_aspect_and_pads_symmetrically(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    out, g = letterbox(pixels, 128)
    assert out.shape == (128, 128) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    h, w = shape
    nh, nw = round(h * 128 / max(h, w)), round(w * 128 / max(h, w))
    assert (g.pad_y, g.pad_x) == ((128 - nh) // 2, (128 - nw) // 2)
    # the padding is zero, the content is not
    if g.pad_y:
        assert not out[: g.pad_y].any()
    if g.pad_x:
        assert not out[:, : g.pad_x].any()


def test_min_max_makes_input_invariant_to_linear_intensity_changes() -> None:
    pixels = np.random.default_rng(1).random((200, 160), dtype=np.float32)
    a, _ = letterbox(pixels, 64)
    b, _ = letterbox(pixels * 0.25 + 0.5, 64)  # e.g. a 12-bit image stored in 16 bits, plus an offset
    # equal up to float rounding, which may tip a value at a rounding boundary of the 8-bit grid
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6 and (a == b).mean() > 0.99


def test_heatmap_maps_back_onto_the_original_geometry() -> None:
    """A hot cell on the model grid lands at the same relative place in the original image."""
    image = XrayImage(np.random.default_rng(2).random((300, 600), dtype=np.float32))
    spec = ModelSpec(image_size=256)
    x, g = preprocess(image, spec)
    assert x.shape == (1, 256, 256)
    heat = np.zeros((256, 256), dtype=np.float32)
    # content spans rows pad_y .. pad_y+128; mark the model-grid point for image pixel (x=450, y=75)
    heat[g.pad_y + round(75 * g.scale), g.pad_x + round(450 * g.scale)] = 1.0
    full = heatmap_on_image(content_map(heat, g), g, full=True)  # the detector's path
    assert full.shape == (300, 600)
    y, x_ = np.unravel_index(np.argmax(full), full.shape)
    assert abs(x_ - 450) <= 3 and abs(y - 75) <= 3
    box = content_box_to_image([64.0, 32.0, 128.0, 64.0, 0.9], g)
    assert box == pytest.approx([150.0, 75.0, 300.0, 150.0, 0.9])


def test_normalisation_uses_spec() -> None:
    image = XrayImage(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    x, _ = preprocess(image, ModelSpec(image_size=64, mean=0.5, std=0.25))
    assert x.min().item() == pytest.approx(-2.0, abs=1e-3) and x.max().item() == pytest.approx(2.0, abs=1e-3)


def test_augment_is_seeded_and_stays_in_range() -> None:
    x = torch.rand(4, 1, 64, 64)
    a = Augment()(x, torch.Generator().manual_seed(3))
    b = Augment()(x, torch.Generator().manual_seed(3))
    c = Augment()(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_box_mask_lands_where_letterbox_puts_the_box() -> None:
    from bonefrac.preprocess import box_mask, letterbox_geometry

    g = letterbox_geometry(300, 600, 128)  # scale 128/600, padded top and bottom
    mask = box_mask([[300, 150, 360, 210]], g)
    rows, cols = np.nonzero(mask)
    s = 128 / 600
    assert abs(cols.min() - (300 * s + g.pad_x)) <= 1 and abs(cols.max() + 1 - (360 * s + g.pad_x)) <= 1
    assert abs(rows.min() - (150 * s + g.pad_y)) <= 1 and abs(rows.max() + 1 - (210 * s + g.pad_y)) <= 1
    assert letterbox(np.zeros((300, 600), np.float32), 128)[1] == g


def test_augment_moves_masks_with_the_image_but_not_their_values() -> None:
    aug = Augment()
    x = torch.zeros(2, 1, 64, 64)
    x[:, :, 10:20, 40:50] = 1.0  # a bright square...
    masks = (x > 0).float()  # ...and its mask
    params = aug.sample(2, torch.Generator().manual_seed(0))
    params[:, 5:] = 1.0  # no gamma or contrast change, so the image is warped exactly like the mask
    xa, ma = aug.apply(x, params, masks)
    assert torch.allclose(xa, ma, atol=1e-5)
    params[:, 5] = 2.0  # gamma changes the image's values, never the mask's
    xb, mb = aug.apply(x, params, masks)
    assert torch.allclose(mb, ma) and not torch.allclose(xb, ma, atol=1e-3)
    identity = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]] * 2)
    _, m0 = aug.apply(x, identity, masks)
    assert torch.allclose(m0, masks, atol=1e-5)


def test_the_inference_graph_upsamples_the_cam_bicubic_onto_the_input() -> None:
    """A 4 x 4 CAM with one hot cell, upsampled onto a 64 px input: the peak sits at the centre of that cell's
    16 x 16 block (not at its corner, as nearest or align_corners=True would put it), bicubic rings below zero
    beside it (bilinear never does), and a flat map stays flat."""
    from torch import nn

    from bonefrac.models.classifier import ClassifierHead, FractureNet, LogitAndCam

    class GivenMap(FractureNet):  # forward_features returns the map; the head copies it: CAM = the map
        def __init__(self, cam: torch.Tensor) -> None:
            super().__init__()
            self.cam = cam
            self.head = ClassifierHead(1, 0.0)
            nn.init.ones_(self.head.fc.weight)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.cam.expand(x.shape[0], 1, *self.cam.shape)

    hot = torch.zeros(4, 4)
    hot[1, 2] = 1.0  # rows 16-31, columns 32-47 of the input: centre (23.5, 39.5)
    x = torch.zeros(2, 1, 64, 64)
    with torch.no_grad():
        logits, up = LogitAndCam(GivenMap(hot).eval(), 64)(x)
        _, flat = LogitAndCam(GivenMap(torch.full((4, 4), 0.3)).eval(), 64)(x)
    assert up.shape == (2, 64, 64) and torch.allclose(logits, torch.full((2,), 1 / 16))  # the map's mean
    assert divmod(int(up[0].argmax()), 64) == (23, 39) and torch.isclose(up[0, 23, 39], up[0, 24, 40])
    assert up.min() < -0.05 and 0.9 < up.max() <= 1.0
    assert torch.allclose(flat, torch.full_like(flat, 0.3))
    expected = torch.nn.functional.interpolate(hot[None, None], size=(64, 64), mode="bicubic", align_corners=False)
    assert torch.allclose(up[0], expected[0, 0], atol=1e-6)  # exactly torch's bicubic, as two products


def test_heatmap_on_the_full_image_is_bilinear_upsampling() -> None:
    from bonefrac.preprocess import letterbox_geometry

    g = letterbox_geometry(900, 700, 64)
    content = np.random.default_rng(6).random((64, 50), dtype=np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(content)[None, None], size=(900, 700), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.abs(heatmap_on_image(content, g, full=True) - expected).max() < 1e-4
