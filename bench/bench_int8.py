"""int8 against fp32, side by side on this machine: the model alone, each stage of predict, the whole process.

    python bench/bench_int8.py [--n 800] [--rounds 3] [--latency-runs 30] [--model CHECKPOINT]

- CPU: the processor and the instruction sets int8 depends on (AVX-512 VNNI, AVX2 only).
- model alone: preprocessed tensors through each export, at batch sizes 1, 2 and 4, as predict runs them (one
  single-threaded run per core side by side) and as one run on every core; each configuration three times
  round-robin, median images/s. Chooses predict's batch size and thread split by measurement.
- stages: in one process, `predict_many`'s time per image in read, preprocess, model and decode (boxes, no
  heatmap), summed over its worker threads, for each precision.
- predict: the whole `bonefrac predict FOLDER --csv --precision P` process on the same files, the precisions
  alternating round by round (who goes first alternating too); median images/s and the median of the rounds'
  ratios int8 / fp32.
- latency: one image with its heatmap (`FractureDetector.predict(path, heatmap=True)`), median and p90 ms, one
  precision loaded at a time (`bench_latency.py`). Goal (issue 25.4): under ~40 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import real_images
from bench_latency import latencies
from bench_predict import predict_cmd, symlinked, timed_predict

from bonefrac import FractureDetector
from bonefrac.inference import detector as detector_module
from bonefrac.inference import precision as precision_module
from bonefrac.inference.backends import OnnxBackend, process_cores

PRECISIONS = ("fp32", "int8")
BATCH_SIZES = (1, 2, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--model", help="checkpoint with a model.int8.onnx beside it (default: the bundled model)")
    args = ap.parse_args()
    flags = precision_module._cpu_flags()
    print(f"CPU: {precision_module._cpu_name()}, {os.cpu_count()} cores; {flags or 'no AVX'}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    dets = {p: FractureDetector.load(args.model, backend="onnx", precision=p) for p in PRECISIONS}
    files = real_images(args.n)
    ready = np.stack([dets["fp32"]._prepare(f).tensor for f in files[:64]])
    model_alone(dets, ready)
    stages(dets, files[: min(len(files), 300)])
    del dets
    whole_process(args, files)
    models = dict.fromkeys(PRECISIONS, args.model)
    files = real_images(3 + args.latency_runs)[3:]
    for timed in latencies(models, files, precisions={p: p for p in PRECISIONS}).values():
        print("single image with heatmap, " + timed.summary())


def model_alone(dets: dict[str, FractureDetector], ready: np.ndarray) -> None:
    """images/s of each export on preprocessed tensors, per batch size and thread split."""
    cores = process_cores()
    results: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(3):
        for p, det in dets.items():
            base = det.backend
            assert isinstance(base, OnnxBackend)
            for b in BATCH_SIZES:
                for way, workers in (("one per core", cores), ("all threads", 1)):
                    backend = base.for_workers(workers)
                    backend.run(ready[:b])  # the session's first run allocates
                    batches = [ready[i : i + b] for i in range(0, len(ready) - b + 1, b)]
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(workers) as pool:
                        list(pool.map(backend.run, batches))
                    results.setdefault((p, b, way), []).append(len(batches) * b / (time.perf_counter() - t0))
    print("\nmodel alone, images/s (median of 3):")
    for p in dets:
        row = {k: statistics.median(v) for k, v in results.items() if k[0] == p}
        best = max(row, key=row.__getitem__)
        cells = ", ".join(f"batch {b} {way}: {row[p, b, way]:.1f}" for _, b, way in sorted(row))
        print(f"  {p}: {cells}; best: batch {best[1]} {best[2]}")
    for b in BATCH_SIZES:
        r = statistics.median(results["int8", b, "one per core"]) / statistics.median(
            results["fp32", b, "one per core"]
        )
        print(f"  int8 / fp32 at batch {b}, one run per core: {r:.2f}x")


class StageTimes:
    """Wall time per stage summed over predict_many's worker threads, by patching the stage functions."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.lock = threading.Lock()

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201 (any callable)
        def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with self.lock:
                    self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

        return timed


def stages(dets: dict[str, FractureDetector], files: list[Path]) -> None:
    print(f"\npredict_many stages, ms per image over {len(files)} files (summed over its worker threads):")
    names = {"read": "read_for_model", "preprocess": "preprocess", "decode": "predictions"}
    for p, det in dets.items():
        list(det.predict_many(files[:16]))  # warm-up
        st = StageTimes()
        saved = {k: getattr(detector_module, fn) for k, fn in names.items()}
        backend_run = OnnxBackend.run
        try:
            for k, fn in names.items():
                setattr(detector_module, fn, st.wrap(k, saved[k]))
            OnnxBackend.run = st.wrap("model", backend_run)  # type: ignore[method-assign]
            t0 = time.perf_counter()
            n = sum(1 for _ in det.predict_many(files))
            wall = time.perf_counter() - t0
        finally:
            for k, fn in names.items():
                setattr(detector_module, fn, saved[k])
            OnnxBackend.run = backend_run  # type: ignore[method-assign]
        parts = ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in st.totals.items())
        print(f"  {p}: {parts}; {n / wall:.1f} images/s in-process")


def whole_process(args: argparse.Namespace, files: list[Path]) -> None:
    runs: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = symlinked(files, Path(tmp) / "in")
        base = predict_cmd(args.model or FractureDetector.load(precision="fp32").checkpoint)
        cmds = {p: [*base, "--precision", p] for p in PRECISIONS}
        for r in range(args.rounds):
            for p in PRECISIONS[:: 1 if r % 2 == 0 else -1]:
                runs[p].append(timed_predict(cmds[p], folder, len(files), Path(tmp) / f"{p}.csv", 2))
    print(f"\n`bonefrac predict` on {len(files)} files, whole process, {args.rounds} alternating rounds:")
    for p in PRECISIONS:
        print(
            f"  {p}: {statistics.median(runs[p]):.1f} images/s (rounds " + ", ".join(f"{v:.1f}" for v in runs[p]) + ")"
        )
    ratios = [a / b for a, b in zip(runs["int8"], runs["fp32"], strict=True)]
    print(f"  int8 / fp32: {statistics.median(ratios):.2f}x (rounds " + ", ".join(f"{v:.2f}" for v in ratios) + ")")


if __name__ == "__main__":
    main()
