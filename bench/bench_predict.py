"""Throughput of `bonefrac predict` on real files, side by side with a naive loop and the model ceiling.

    python bench/bench_predict.py [--n 800] [--naive-n 200]

- predict:  the whole `bonefrac predict FOLDER --csv ...` process (start-up, model load, decoding in
            worker threads, batched onnxruntime, CSV), wall clock, after one warm-up call that caches the
            ONNX export (done once per model).
- naive:    read_image -> preprocess -> eager torch, batch 1, one file after another.
- ceiling:  the model alone (onnxruntime, batch 16) on tensors that are already preprocessed.
Goals: predict >= 3x naive, and >= 0.8 of the ceiling. Also prints single-image latency with heatmap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import bundled_or_fresh, real_images

from bonefrac import FractureDetector, read_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--naive-n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    files = real_images(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = bundled_or_fresh(tmp)
        folder = tmp / "in"
        folder.mkdir()
        for i, f in enumerate(files):
            os.symlink(f.resolve(), folder / f"{i:05d}_{f.name}")
        cmd = [sys.executable, "-m", "bonefrac", "predict", "--model", str(model_path), "--no-progress"]
        subprocess.run([*cmd, str(files[0])], check=True, capture_output=True)  # warm-up: caches the ONNX export
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, str(folder), "--csv", str(tmp / "out.csv"), "--batch-size", str(args.batch_size)],
                           capture_output=True, text=True)  # fmt: skip
        t_predict = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"bonefrac predict failed: {r.stderr}")
        predict_ips = len(files) / t_predict

        t0 = time.perf_counter()
        subprocess.run([*cmd, str(files[0])], capture_output=True, check=True)
        t_startup = time.perf_counter() - t0  # interpreter + imports + model load + one image

        torch.set_num_threads(2)
        det_torch = FractureDetector.load(model_path, backend="torch")
        naive = files[: args.naive_n]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for f in naive:
                x = det_torch.preprocess(read_image(f))
                torch.sigmoid(det_torch.model(x[None]))
        naive_ips = len(naive) / (time.perf_counter() - t0)

        det = FractureDetector.load(model_path, backend="onnx")
        list(det.predict_many(files[:32], batch_size=args.batch_size))  # warm-up
        t0 = time.perf_counter()
        n_steady = sum(1 for _ in det.predict_many(files, batch_size=args.batch_size, workers=2))
        steady_ips = n_steady / (time.perf_counter() - t0)

        x = np.stack([det.preprocess(read_image(f)).numpy() for f in files[: args.batch_size * 4]])
        det.backend.run(x[: args.batch_size])  # warm-up
        t0 = time.perf_counter()
        reps = max(1, len(files) // len(x) // 4)
        for _ in range(reps):
            for s in range(0, len(x), args.batch_size):
                det.backend.run(x[s : s + args.batch_size])
        ceiling_ips = reps * len(x) / (time.perf_counter() - t0)

        lat = []
        for f in files[:20]:
            t0 = time.perf_counter()
            det.predict(f, heatmap=True)
            lat.append(1000 * (time.perf_counter() - t0))

    print(f"{len(files)} real files, model {det.version} ({det.spec.image_size}px), {os.cpu_count()} CPUs")
    print(f"bonefrac predict (whole process): {predict_ips:7.1f} images/s  ({t_predict:.1f} s)")
    print(f"  of which start-up (python, imports, model load, 1 image): {t_startup:.1f} s")
    print(f"naive loop (eager torch, batch 1): {naive_ips:7.1f} images/s  (on {len(naive)} files)")
    print(f"model-compute ceiling (onnx, b{args.batch_size}): {ceiling_ips:7.1f} images/s")
    print(f"predict_many in one process (steady state): {steady_ips:7.1f} images/s")
    steady = steady_ips / naive_ips
    print(f"ratio predict/naive:   {predict_ips / naive_ips:.2f}x  (goal >= 3); steady state {steady:.2f}x")
    print(
        f"ratio predict/ceiling: {predict_ips / ceiling_ips:.2f}   (goal >= 0.80); steady state "
        f"{steady_ips / ceiling_ips:.2f}"
    )
    print(f"single-image latency with heatmap (onnx): median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")


if __name__ == "__main__":
    main()
