"""Peak memory and time of one prediction on a big radiograph, with and without the overlay, in the CLI's path
(`predict_many` + the overlay writer) and the server's (`_predict_upload` with pictures).

    python bench/bench_memory.py [--model CHECKPOINT]

Each case runs in a fresh process that samples its own resident set every 2 ms; the figure is the peak above
the resident set just before the call (after the model is loaded and warmed on a small image).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from _common import bundled_or_fresh
from PIL import Image

PROBE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from pathlib import Path
    from bonefrac import FractureDetector
    from bonefrac.apps.predict import write_overlay
    from bonefrac.apps.server.app import _predict_upload

    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def measure(work):
        before, peak, done = rss(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss()); time.sleep(0.002)
        t = threading.Thread(target=sample); t.start(); t0 = time.perf_counter()
        work()
        seconds = time.perf_counter() - t0; done.set(); t.join()
        return {"mb": round((max(peak[0], rss()) - before) / 2**20), "s": round(seconds, 2)}

    model, image, out, warm, case = sys.argv[1:6]
    det = FractureDetector.load(model, backend="onnx")
    det.predict(warm)
    def cli(overlay):
        (pred,) = det.predict_many([image], heatmap=overlay)
        if overlay:
            write_overlay(pred, Path(out), 0)
    def server(overlay):
        with open(image, "rb") as f:
            _predict_upload(det, f, Path(image).name, "default", None, overlay)
    path, overlay = case.split("-")
    print(json.dumps(measure(lambda: (cli if path == "cli" else server)(overlay == "overlay"))))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="a checkpoint or run folder (default: the bundled model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else bundled_or_fresh(tmp)
        rows, cols = np.arange(8000, dtype=np.float32), np.arange(8000, dtype=np.float32)
        pattern = np.outer(0.5 + 0.3 * np.sin(rows / 61.0), 0.6 + 0.4 * np.cos(cols / 97.0) ** 2)
        images = {
            "4300x3500 16-bit PNG": tmp / "dr.png",
            "8000x8000 8-bit PNG": tmp / "big.png",
        }
        Image.fromarray((pattern[:4300, :3500] * 65535).astype(np.uint16)).save(images["4300x3500 16-bit PNG"])
        Image.fromarray((pattern * 255).astype(np.uint8)).save(images["8000x8000 8-bit PNG"])
        warm = tmp / "warm.png"
        Image.new("L", (300, 400), 128).save(warm)
        print(f"{'image':<22} {'path':<7} {'overlay':<8} {'peak MB':>8} {'seconds':>8}")
        for name, image in images.items():
            for case in ("cli-none", "cli-overlay", "server-none", "server-overlay"):
                cmd = [sys.executable, "-c", PROBE, str(model), str(image), str(tmp), str(warm), case]
                r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                where, overlay = case.split("-")
                print(f"{name:<22} {where:<7} {overlay:<8} {r['mb']:>8} {r['s']:>8}")


if __name__ == "__main__":
    main()
