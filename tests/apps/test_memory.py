"""Memory stays bounded on big images (issue: an 8000 x 8000 upload once took 6.3 GB): the peak resident memory
of a prediction with overlay, in the CLI's and the server's path, measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _models import make_checkpoint
from PIL import Image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads resident memory from /proc"),
]

# Runs in a child process: samples this process's resident set every 2 ms while `work` runs and prints the peak
# above the resident set just before it, in MB.
_PROBE = textwrap.dedent(
    """
    import io, json, os, sys, threading, time
    from pathlib import Path
    from bonefrac import FractureDetector
    from bonefrac.apps.predict import write_overlay
    from bonefrac.apps.server.app import _predict_upload

    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def peak_of(work):
        before, peak, done = rss(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.002)
        t = threading.Thread(target=sample); t.start()
        try:
            work()
        finally:
            done.set(); t.join()
        return (max(peak[0], rss()) - before) / 2**20

    model, image, out = sys.argv[1:4]
    det = FractureDetector.load(model, backend="onnx")
    det.predict(sys.argv[4])  # warm: the session, imports, the first allocations
    def cli():
        (pred,) = det.predict_many([image], heatmap=True)
        write_overlay(pred, Path(out), 0)
    def server():
        with open(image, "rb") as f:
            _predict_upload(det, f, Path(image).name, "default", None, True)
    print(json.dumps({"cli": peak_of(cli), "server": peak_of(server)}))
    """
)


def _peaks(model: Path, image: Path, warm: Path, tmp_path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model), str(image), str(tmp_path), str(warm)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt", image_size=256)


def _radiograph_like(height: int, width: int) -> np.ndarray:
    """Smooth structure with some texture, in [0, 1] (an outer product: cheap to make at 64 megapixels)."""
    rows = 0.5 + 0.3 * np.sin(np.arange(height, dtype=np.float32) / 61.0)
    cols = 0.6 + 0.4 * np.cos(np.arange(width, dtype=np.float32) / 97.0) ** 2
    return np.outer(rows, cols)


@pytest.mark.parametrize(
    ("shape", "dtype", "limit_mb"),
    [((4300, 3500), np.uint16, 400), ((8000, 8000), np.uint8, 1024)],
    ids=["4300x3500 16-bit DR under 400 MB", "8000x8000 PNG under 1 GB"],
)
def test_a_big_image_with_overlay_stays_in_bounded_memory(
    model: Path, tmp_path: Path, shape: tuple[int, int], dtype: type, limit_mb: int
) -> None:
    big = tmp_path / "big.png"
    top = np.iinfo(dtype).max
    Image.fromarray((_radiograph_like(*shape) * top).astype(dtype)).save(big, compress_level=1)
    warm = tmp_path / "warm.png"
    Image.new("L", (300, 400), 128).save(warm)
    peaks = _peaks(model, big, warm, tmp_path)
    assert peaks["cli"] < limit_mb and peaks["server"] < limit_mb, peaks
    assert len(list(tmp_path.glob("*.overlay.png"))) == 1
