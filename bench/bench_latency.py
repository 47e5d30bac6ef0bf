"""Single-image latency: `FractureDetector.predict(path, heatmap=True)` after the model is loaded.

    python bench/bench_latency.py [[LABEL=]CHECKPOINT ...] [--runs 30] [--backend auto]

What a user of the API or the web page waits for per image: read, preprocess, model, boxes and the heatmap at
display size. Each model is loaded (its ONNX export cached) and warmed up on 3 files; then the models predict the
same `--runs` different FracAtlas files one at a time, alternating file by file so that a slow spell of the host
lands on all of them. Prints median, 90th percentile and max in ms. Goal (issue 16.7): median under ~100 ms.
Default model: the bundled one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from _common import real_images

from bonefrac import FractureDetector

#: Issue 16.7: one image with its heatmap in under ~100 ms after load.
GOAL_MS = 100.0
WARM_UP = 3


def load(path: str | None, backend: str = "auto") -> FractureDetector:
    """The model, warmed up (first calls pay for lazy imports and onnxruntime's first runs)."""
    det = FractureDetector.load(path, backend=backend)
    for f in real_images(WARM_UP):
        det.predict(f, heatmap=True)
    return det


def latencies(dets: dict[str, FractureDetector], files: list[Path]) -> dict[str, list[float]]:
    """ms per `predict(f, heatmap=True)` of each model on each file, the models alternating file by file."""
    ms: dict[str, list[float]] = {label: [] for label in dets}
    for f in files:
        for label, det in dets.items():
            t0 = time.perf_counter()
            det.predict(f, heatmap=True)
            ms[label].append(1000 * (time.perf_counter() - t0))
    return ms


def summary(label: str, det: FractureDetector, ms: list[float]) -> str:
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    median = statistics.median(ms)
    verdict = "meets" if median < GOAL_MS else "MISSES"
    return (
        f"{label}: {det.version} ({det.spec.arch}, {det.spec.image_size}px, {det.backend.name}): "
        f"median {median:.1f} ms, p90 {p90:.1f}, max {max(ms):.1f} over {len(ms)} images "
        f"({verdict} the goal of < {GOAL_MS:.0f} ms)"
    )


def labelled(args: list[str]) -> dict[str, str | None]:
    """`[LABEL=]PATH` arguments -> {label: path}; no argument: the bundled model."""
    if not args:
        return {"bundled": None}
    out: dict[str, str | None] = {}
    for a in args:
        label, sep, path = a.rpartition("=")
        out[label if sep else Path(path).name] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="*", help="[LABEL=]checkpoint or run folder (default: the bundled model)")
    ap.add_argument("--runs", type=int, default=30, help="images timed per model (default 30)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"), help="default auto (onnx)")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    dets = {label: load(path, a.backend) for label, path in labelled(a.models).items()}
    files = real_images(WARM_UP + a.runs)[WARM_UP:]  # files the warm-up did not read (no page cache head start)
    for label, ms in latencies(dets, files).items():
        print(summary(label, dets[label], ms))


if __name__ == "__main__":
    main()
