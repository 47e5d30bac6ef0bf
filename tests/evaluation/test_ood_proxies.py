"""tools/ood_proxies.py: each proxy transform gives a valid XrayImage (2-D float32 in [0, 1], meta sized to the
new pixels, no `reduced_by`), keeps the long side, and is the same for the same seed. No model is run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from bonefrac.datasets.records import Record
from bonefrac.io.image import XrayImage

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ood_proxies", ROOT / "tools" / "ood_proxies.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["ood_proxies"] = module
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


def _hand() -> tuple[XrayImage, Record]:
    """A dark 80x60 frame with a bright 'hand' off centre, as read reduced (meta keeps a larger full size)."""
    pixels = np.full((80, 60), 0.1, np.float32)
    pixels[30:70, 10:35] = np.linspace(0.5, 0.8, 25, dtype=np.float32)  # bone brighter than soft tissue
    meta = {"format": "jpeg", "height": 160, "width": 120, "reduced_by": 2}
    record = Record(path="hand.jpg", label=1, region="hand", boxes=[[12, 40, 20, 50]])
    return XrayImage(pixels, meta, "hand.jpg"), record


@pytest.mark.parametrize("name", list(TOOL.PROXIES))
def test_proxy_gives_a_valid_image(name: str) -> None:
    image, record = _hand()
    out = TOOL.PROXIES[name](image, record, np.random.default_rng(0), 32)
    again = TOOL.PROXIES[name](image, record, np.random.default_rng(0), 32)
    assert out.pixels.ndim == 2 and out.pixels.dtype == np.float32
    assert 0.0 <= out.pixels.min() <= out.pixels.max() <= 1.0 and np.ptp(out.pixels) > 0
    assert (out.meta["height"], out.meta["width"]) == out.pixels.shape and "reduced_by" not in out.meta
    assert max(out.pixels.shape) == max(image.pixels.shape)
    np.testing.assert_array_equal(out.pixels, again.pixels)
    assert image.pixels.min() == np.float32(0.1) and "reduced_by" in image.meta  # the source is left alone
