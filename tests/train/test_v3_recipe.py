"""The detector's v3 training recipe (issue 24 points 1, 2): the defaults draw v2's crops bit for bit; zoom,
edge-cutting, hard-negative crops keep their boxes and points on the pixels they name; zoom-out pads; the
photometric augmentation stays a float32 image in [0, 1]; the balanced pool; hard-negative mining."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bonefrac.models.centernet import detection_loss
from bonefrac.models.grid import STRIDE
from bonefrac.spec import ModelSpec
from bonefrac.train.augment import Photometric
from bonefrac.train.config import ConfigError, TrainConfig
from bonefrac.train.data import DecodeCache, Record
from bonefrac.train.detector import (
    MAX_BALANCE_REPEAT,
    CropSampler,
    centernet_targets,
    hard_negatives_state,
    mine,
    mining_subset,
    restore_hard_negatives,
)

SIZE, CROP = 128, 64
BG, FG = 20, 250


def _cache_entry(cache: DecodeCache, path: Path, pixels: np.ndarray, hw: tuple[int, int]) -> str:
    """A decode cache entry standing for `path` (never decoded): the cached pixels and the size as read."""
    path.write_bytes(b"stands for an image")
    target = cache.path_for(str(path))
    target.with_suffix(".hw").write_text(f"{hw[0]} {hw[1]}")
    np.save(target, pixels)
    return str(path)


@pytest.fixture()
def cache(tmp_path: Path) -> DecodeCache:
    cache = DecodeCache(tmp_path / "cache", SIZE)
    cache.dir.mkdir(parents=True)
    return cache


def _square(cache: DecodeCache, tmp_path: Path, name: str, box: list[float] | None = None, dot=None) -> str:
    """A square (SIZE x SIZE) dark image, with a bright rectangle at `box` or a bright 2 x 2 dot at `dot`."""
    pixels = np.full((SIZE, SIZE), BG, np.uint8)
    if box:
        x0, y0, x1, y1 = map(int, box)
        pixels[y0:y1, x0:x1] = FG
    if dot:
        pixels[dot[1] - 1 : dot[1] + 1, dot[0] - 1 : dot[0] + 1] = FG
    return _cache_entry(cache, tmp_path / name, pixels, (SIZE, SIZE))


def _bright(x: np.ndarray) -> np.ndarray:
    return x > (BG + FG) / 2 / 255


# ---------------------------------------------------------------- v2's sampler, as it was (commit d3ed9e6)
def _v2_start(rng, lo, hi, centre, window, size):  # noqa: ANN001, ANN202
    first = max(0.0, min(hi - window, centre - window + STRIDE))
    last = min(size - window, max(lo, centre - STRIDE))
    return int(rng.uniform(first, max(first, last)))


def _v2_sample(s: CropSampler, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    img, boxes = s.cache.load(s.records[i].path), s.boxes_on_grid(i)
    size = img.shape[0]
    window = min(size, round(s.crop / math.exp(rng.uniform(*np.log(s.scale)))))
    if len(boxes) and rng.random() < s.p_box:
        b = boxes[rng.integers(len(boxes))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x0 = _v2_start(rng, b[0], b[2], cx, window, size)
        y0 = _v2_start(rng, b[1], b[3], cy, window, size)
    else:
        x0, y0 = int(rng.integers(0, size - window + 1)), int(rng.integers(0, size - window + 1))
    patch = img[y0 : y0 + window, x0 : x0 + window]
    zoom = s.crop / window
    if window != s.crop:
        patch = np.asarray(Image.fromarray(patch).resize((s.crop, s.crop), Image.BILINEAR))
    x = patch.astype(np.float32) / 255.0
    boxes = (boxes - np.array([x0, y0, x0, y0], np.float32)) * zoom
    if rng.random() < s.flip_p:
        x = x[:, ::-1]
        boxes = np.stack([s.crop - boxes[:, 2], boxes[:, 1], s.crop - boxes[:, 0], boxes[:, 3]], 1)
    x = x ** rng.uniform(*s.gamma)
    c, shift = rng.uniform(1 - s.contrast, 1 + s.contrast), rng.uniform(-s.brightness, s.brightness)
    x = np.clip((x - 0.5) * c + 0.5 + shift, 0, 1)
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (centre_x >= 0) & (centre_x < s.crop) & (centre_y >= 0) & (centre_y < s.crop)
    return np.ascontiguousarray(x, np.float32), boxes[inside].reshape(-1, 4)


@pytest.mark.parametrize("crop", [CROP, SIZE])  # SIZE: windows up to 1.25 x the image, clamped as v2 did
def test_the_defaults_draw_v2s_crops_bit_for_bit(cache: DecodeCache, tmp_path: Path, crop: int) -> None:
    rng = np.random.default_rng(0)
    wide = _cache_entry(cache, tmp_path / "wide.png", rng.integers(0, 256, (SIZE, SIZE), np.uint8), (90, 200))
    records = [
        Record(_square(cache, tmp_path, "a.png", [70, 30, 90, 44]), 1, boxes=[[70, 30, 90, 44], [5, 100, 30, 120]]),
        Record(wide, 1, region="leg", boxes=[[10.0, 20.0, 60.0, 70.0]]),
        Record(_square(cache, tmp_path, "n.png"), 0, region="hand"),
    ]
    config = TrainConfig(dataset=".", out=".", arch="lite0_centernet", crop_size=crop)
    sampler = CropSampler.from_config(config, cache, records, ModelSpec(arch="lite0_centernet", image_size=SIZE))
    sampler.hard_negatives = {2: np.array([[64.0, 64.0]], np.float32)}  # ignored: p_hard_negative is 0 by default
    assert sampler.epoch_pool() == [0, 0, 1, 1, 2]
    for seed in range(60):
        for i in range(3):
            x, boxes = sampler.sample(i, np.random.default_rng(seed))
            x2, boxes2 = _v2_sample(sampler, i, np.random.default_rng(seed))
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(boxes, boxes2)


# ---------------------------------------------------------------- zoom, padding, edges, hard negatives
def test_wide_zoom_keeps_the_box_on_its_pixels(cache: DecodeCache, tmp_path: Path) -> None:
    box = [70.0, 30.0, 90.0, 44.0]
    record = Record(_square(cache, tmp_path, "a.png", box), 1, boxes=[box])
    s = CropSampler(cache, [record], crop=CROP, p_box=1.0, gamma=(1, 1), contrast=0, brightness=0)
    s.scale, s.pad, s.flip_p = (0.3, 3.0), True, 0.5
    for seed in range(40):
        x, boxes = s.sample(0, np.random.default_rng(seed))
        [(bx0, by0, bx1, by1)] = boxes
        zoom = (bx1 - bx0) / 20
        assert (by1 - by0) == pytest.approx(14 * zoom, rel=1e-5)  # one zoom for both sides
        cx, cy = round((bx0 + bx1) / 2), round((by0 + by1) / 2)
        if zoom > 0.8:  # the box's middle is bright, and a pixel well outside it dark
            assert _bright(x[min(cy, CROP - 1), min(cx, CROP - 1)]), seed
        ys, xs = np.nonzero(_bright(x))
        if len(xs):
            assert bx0 - 2 <= xs.min() and xs.max() <= bx1 + 1 and by0 - 2 <= ys.min() and ys.max() <= by1 + 1


def test_zoom_out_beyond_the_image_pads_with_the_letterbox_fill(cache: DecodeCache, tmp_path: Path) -> None:
    record = Record(_square(cache, tmp_path, "n.png"), 0)
    s = CropSampler(cache, [record], crop=CROP, gamma=(1, 1), contrast=0, brightness=0, flip_p=0)
    s.scale, s.pad = (0.25, 0.25), True  # a window of 256 px on a 128 px image: all of it, and padding
    for seed in range(10):
        x, boxes = s.sample(0, np.random.default_rng(seed))
        assert x.shape == (CROP, CROP) and len(boxes) == 0
        content = x > BG / 255 / 2
        assert content.sum() == pytest.approx((CROP / 2) ** 2, rel=0.1)  # the image is half the window's side
        assert (x == 0).sum() > CROP * CROP * 3 / 4 - CROP * 3  # the rest padded with 0
    s.pad = False  # v2: the window clamped to the image
    x, _ = s.sample(0, np.random.default_rng(0))
    assert np.isclose(x, BG / 255, atol=1e-3).all()


def test_edge_crops_put_the_box_centre_near_an_edge(cache: DecodeCache, tmp_path: Path) -> None:
    big = DecodeCache(cache.root, 256)
    big.dir.mkdir(parents=True)
    box = [120.0, 110.0, 136.0, 150.0]
    pixels = np.full((256, 256), BG, np.uint8)
    pixels[110:150, 120:136] = FG
    record = Record(_cache_entry(big, tmp_path / "big.png", pixels, (256, 256)), 1, boxes=[box])
    s = CropSampler(big, [record], crop=CROP, p_box=1.0, p_edge=1.0, gamma=(1, 1), contrast=0, brightness=0)
    s.scale = (1.0, 1.0)
    for seed in range(30):
        x, boxes = s.sample(0, np.random.default_rng(seed))
        [(bx0, by0, bx1, by1)] = boxes
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        nearest = min(cx, cy, CROP - cx, CROP - cy)
        assert STRIDE - 1 <= nearest <= CROP / 4 + 1, (seed, cx, cy)
        assert (bx1 - bx0, by1 - by0) == (16, 40)
        ys, xs = np.nonzero(_bright(x))  # the bright pixels are the box, clipped to the crop
        assert (xs.min(), xs.max() + 1) == (max(round(bx0), 0), min(round(bx1), CROP))
        assert (ys.min(), ys.max() + 1) == (max(round(by0), 0), min(round(by1), CROP))


def test_p_native_mixes_v2s_zoom_into_a_wide_range(cache: DecodeCache, tmp_path: Path) -> None:
    box = [56.0, 56.0, 76.0, 70.0]
    record = Record(_square(cache, tmp_path, "a.png", box), 1, boxes=[box])
    s = CropSampler(cache, [record], crop=CROP, p_box=1.0, gamma=(1, 1), contrast=0, brightness=0, flip_p=0)
    s.scale, s.pad = (2.5, 3.0), True  # wide draws are all >= 2.5x: any zoom under 1.3 is a native draw

    def zooms(p_native: float) -> np.ndarray:
        s.p_native = p_native
        return np.array(
            [
                (s.sample(0, np.random.default_rng(k))[1][0, 2] - s.sample(0, np.random.default_rng(k))[1][0, 0]) / 20
                for k in range(200)
            ]
        )

    assert (zooms(0.0) >= 2.4).all()
    z = zooms(0.5)
    native = z < 1.3
    assert 0.35 < native.mean() < 0.65  # about half the crops
    assert (z[native] >= 0.79).all() and (z[native] <= 1.26).all() and (z[~native] >= 2.4).all()


def test_size_in_view_regresses_only_boxes_wholly_in_the_crop() -> None:
    inside, cut = [8.0, 8.0, 40.0, 40.0], [30.0, 30.0, 80.0, 50.0]  # the second leaves a 64 px crop on the right
    boxes = np.array([inside, cut], np.float32)
    plain, in_view = centernet_targets(boxes, CROP), centernet_targets(boxes, CROP, in_view_only=True)
    assert plain["regress"].tolist()[:2] == [1.0, 1.0] and in_view["regress"].tolist()[:2] == [1.0, 0.0]
    assert in_view["mask"].tolist() == plain["mask"].tolist()  # both centres still train the heatmap...
    assert np.array_equal(in_view["heatmap"], plain["heatmap"]) and (in_view["heatmap"] == 1).sum() == 2
    # ...and a wrong size on the cut box costs nothing once it is out of the regression
    batch = {k: torch.from_numpy(v)[None] for k, v in in_view.items()}
    h = CROP // STRIDE
    heat, offset, global_logit = torch.zeros(1, 1, h, h), torch.zeros(1, 2, h, h), torch.zeros(1)
    size = torch.zeros(1, 2, h, h)
    size.view(1, 2, -1)[0, :, int(in_view["index"][0])] = torch.from_numpy(in_view["log_size"][0])
    _, exact = detection_loss((heat, size, offset, global_logit, None), batch)
    size.view(1, 2, -1)[0, :, int(in_view["index"][1])] = 5.0
    _, wrong_cut = detection_loss((heat, size, offset, global_logit, None), batch)
    assert wrong_cut["size"] == exact["size"] == 0.0
    batch["regress"] = torch.from_numpy(plain["regress"])[None]
    _, counted = detection_loss((heat, size, offset, global_logit, None), batch)
    assert counted["size"] > 1.0


@pytest.mark.parametrize("point", [(64, 64), (100, 40), (6, 122)])  # the last two: the window leaves the image
def test_a_hard_negative_crop_is_centred_on_its_point(cache: DecodeCache, tmp_path: Path, point) -> None:
    record = Record(_square(cache, tmp_path, "n.png", dot=point), 0)
    s = CropSampler(cache, [record], crop=CROP, gamma=(1, 1), contrast=0, brightness=0, flip_p=0, p_hard_negative=1)
    s.scale = (1.0, 1.0)
    s.hard_negatives = {0: np.array([point], np.float32)}
    for seed in range(5):
        x, boxes = s.sample(0, np.random.default_rng(seed))
        ys, xs = np.nonzero(_bright(x))
        assert len(boxes) == 0 and sorted(set(xs)) == [CROP // 2 - 1, CROP // 2] and sorted(set(ys)) == [31, 32]
    s.scale = (2.0, 2.0)  # zoomed in: still centred
    x, _ = s.sample(0, np.random.default_rng(0))
    ys, xs = np.nonzero(_bright(x))
    assert abs(xs.mean() - (CROP - 1) / 2) <= 1 and abs(ys.mean() - (CROP - 1) / 2) <= 1


# ---------------------------------------------------------------- photometric
def test_photometric_output_is_a_float32_image_in_0_1() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((256, 256), dtype=np.float32)
    x[:20] = 0.0
    x[-20:] = 1.0
    aug = Photometric(p=1.0)
    changed = 0
    for seed in range(12):
        y = aug(x, np.random.default_rng(seed))
        assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
        assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        changed += not np.allclose(y, x, atol=1e-2)
    assert changed == 12
    off = np.random.default_rng(1)
    assert Photometric(p=0.0)(x, off) is x and off.random() == np.random.default_rng(1).random()  # draws nothing


# ---------------------------------------------------------------- the pool
def test_region_balance_and_small_boxes_share_the_draws(cache: DecodeCache, tmp_path: Path) -> None:
    square = _square(cache, tmp_path, "a.png")
    records = (
        [Record(square, 1, region="hand", boxes=[[10, 10, 30 + i, 30 + i]]) for i in range(36)]  # sides 20..55
        + [Record(square, 1, region="hip", boxes=[[10, 10, 14, 14], [40, 40, 90, 90]]) for _ in range(2)]
        + [Record(square, 0, region="leg") for _ in range(100)]
        + [Record(square, 0, region="mixed:hand+hip") for _ in range(25)]
    )
    plain = CropSampler(cache, records).epoch_pool()
    assert len(plain) == 38 * 2 + 125
    pool = np.bincount(CropSampler(cache, records, region_balance=True).epoch_pool(), minlength=len(records))
    # Fractured draws (76) shared as sqrt(36) : sqrt(2), but at most 3 x 2 per hip image; normal (125) as 10 : 5.
    # Each image's fraction of a draw is rounded up at random: a group's total is off by a few binomial
    # standard deviations at most (sqrt(100 x 0.83 x 0.17) = 3.7 for the legs).
    assert pool[:36].sum() == pytest.approx(76 * 6 / (6 + math.sqrt(2)), abs=10)
    assert (pool[36:38] == MAX_BALANCE_REPEAT * 2).all()
    assert pool[38:138].sum() == pytest.approx(125 * 10 / 15, abs=12)
    assert pool[138:].sum() == pytest.approx(125 * 5 / 15, abs=10)
    assert pool[38:].max() <= MAX_BALANCE_REPEAT
    again = CropSampler(cache, records, region_balance=True).epoch_pool()
    assert np.array_equal(np.bincount(again, minlength=len(records)), pool)  # seeded: the same every time
    # The smallest third of the fractures (by their smallest box's longest side) drawn 3 x 2 times, the rest 2.
    drawn = np.bincount(CropSampler(cache, records, small_box_factor=3).epoch_pool(), minlength=len(records))
    assert (drawn[36:38] == 6).all() and drawn[35] == 2 and (drawn[38:] == 1).all()
    assert set(drawn[:38]) == {2, 6} and 10 <= (drawn[:38] == 6).sum() <= 14


# ---------------------------------------------------------------- mining
class PeakModel(nn.Module):
    """A detector whose centre heatmap has fixed local maxima (the first output is all `mine` reads)."""

    def __init__(self, cells: dict[tuple[int, int], float]) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.cells = cells

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = w = x.shape[-1] // STRIDE
        heat = torch.full((len(x), 1, h, w), -8.0)
        for (row, col), logit in self.cells.items():
            heat[:, 0, row, col] = logit
        return (heat * self.scale,)


def test_mining_keeps_the_top_peaks_inside_the_content(cache: DecodeCache, tmp_path: Path) -> None:
    # An image twice as wide as high: its content rows are 32..95 of 128 (cells 4..11).
    wide = _cache_entry(cache, tmp_path / "wide.png", np.full((SIZE, SIZE), BG, np.uint8), (100, 200))
    records = [Record(wide, 0), Record(_square(cache, tmp_path, "f.png"), 1, boxes=[[1, 1, 9, 9]])]
    s = CropSampler(cache, records)
    assert mining_subset(s, 400, 0) == [0]
    model = PeakModel({(5, 3): 2.0, (8, 12): 1.0, (10, 10): 0.5, (6, 7): -1.0, (1, 1): 5.0, (8, 13): -4.0})
    found = mine(model, ModelSpec(arch="lite0_centernet", image_size=SIZE), s, [0])
    # (1, 1) is on the padding; (8, 13) is below the floor; the top three of the rest, best first
    expected = [[(c + 0.5) * STRIDE, (r + 0.5) * STRIDE] for r, c in ((5, 3), (8, 12), (10, 10))]
    np.testing.assert_array_equal(found[0], expected)
    s.hard_negatives = found
    state = hard_negatives_state(s)
    assert state == {"wide.png": expected}
    fresh = CropSampler(cache, records)
    assert restore_hard_negatives(fresh, state) and not restore_hard_negatives(fresh, {})
    assert list(fresh.hard_negatives) == [0] and np.array_equal(fresh.hard_negatives[0], found[0])


# ---------------------------------------------------------------- settings
def test_recipe_settings_are_checked(tmp_path: Path) -> None:
    base = {"dataset": str(tmp_path), "out": str(tmp_path / "run"), "arch": "lite0_centernet"}
    TrainConfig(**base, zoom_min=0.5, zoom_max=3.0, p_edge=0.3, photometric=0.2, hard_negative_every=2).check()
    TrainConfig(**base, p_native=0.5, size_in_view=True).check()
    for bad, option in (
        ({"p_native": 1.2}, "--p-native"),
        ({"zoom_min": 2.0, "zoom_max": 1.0}, "--zoom-min"),
        ({"p_edge": 1.5}, "--p-edge"),
        ({"photometric": -0.1}, "--photometric"),
        ({"hard_negative_every": -1}, "--hard-negative-every"),
        ({"small_box_factor": -1.0}, "--small-box-factor"),
    ):
        with pytest.raises(ConfigError, match=option):
            TrainConfig(**base, **bad).check()
