"""1 process vs torchrun with 2 processes on this machine: training and sharded prediction, side by side.

    python bench/bench_ddp.py [--train-n 200] [--predict-n 400] [--image-size 128] [--batch-size 16]

- train:   `bonefrac train` (efficientnet_lite0, 1 epoch, global batch 16) on real radiographs with a warm
           decode cache. "loop" is history.csv's train_images_per_s (the training steps only); "wall" is
           the whole command (start-up, process group, validation, checkpoints).
           1 process runs with 2 threads; torchrun runs 2 processes with 1 thread each (its default).
           A third row, 1 process x 1 thread, separates "more processes" from "fewer threads per process".
- predict: `bonefrac predict FOLDER --csv` with the trained model, wall clock, torch and onnx backends,
           after a warm-up call that caches the ONNX export; the CSVs of both runs are checked equal.
The load average is printed: other work on the machine skews every number here.
The number of CPU cores bounds the gain: with 2 cores, 2 processes of 1 thread compete with 1 process of
2 threads for the same cores, so a ratio near 1 is the expected, honest result here; the value of DDP
is more machines (see README, "Scaling out with torchrun").
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATASET, real_images

from bonefrac.train.data import DecodeCache


def bonefrac(args: list[str], nproc: int, env: dict[str, str]) -> float:
    """Run `python -m bonefrac ARGS` (under torchrun when nproc > 1); returns the wall-clock seconds."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *launcher, "-m", "bonefrac", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode not in (0, 1):  # 1: some inputs unreadable, still a complete run
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-3000:]}")
    return seconds


def labelled_folder(files: list[Path], root: Path) -> Path:
    """A CSV dataset of the files (unique names, FracAtlas labels when known, else alternating)."""
    labels = {}
    if (DATASET / "labels.csv").is_file():
        with open(DATASET / "labels.csv", newline="") as f:
            labels = {row["filename"]: int(row["fractured"]) for row in csv.DictReader(f)}
    (root / "images").mkdir(parents=True)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, p in enumerate(files):
            name = f"{i:05d}_{p.name}"  # the fixtures repeat when FracAtlas is absent: keep keys unique
            os.symlink(p.resolve(), root / "images" / name)
            w.writerow([f"images/{name}", labels.get(p.name, i % 2)])
    return root / "data.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-n", type=int, default=200)
    ap.add_argument("--predict-n", type=int, default=400)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "BONEFRAC_CACHE": str(tmp / "cache")}
        env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process; one process gets --threads 2
        dataset = labelled_folder(real_images(args.train_n), tmp / "train")
        DecodeCache(tmp / "cache", args.image_size).build(
            [str(p) for p in sorted((tmp / "train" / "images").iterdir())], progress=False
        )
        common = ["train", str(dataset), "--arch", "efficientnet_lite0", "--image-size", str(args.image_size)]
        common += ["--batch-size", str(args.batch_size), "--epochs", "1", "--val-fraction", "0.1"]
        common += ["--cache-dir", str(tmp / "cache"), "--no-progress"]
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        print(f"train: efficientnet_lite0 {args.image_size}px, {args.train_n} images, 1 epoch, global batch "
              f"{args.batch_size}; {os.cpu_count()} CPU cores")  # fmt: skip
        train = {}
        for nproc, threads in ((1, 2), (1, 1), (2, 1)):
            out = tmp / f"run{nproc}x{threads}"
            wall = bonefrac([*common, "--out", str(out), "--threads", str(threads)], nproc, env)
            loop = float(next(csv.DictReader(open(out / "history.csv")))["train_images_per_s"])
            train[nproc, threads] = (loop, wall)
            print(f"  {nproc} process(es) x {threads} thread(s): loop {loop:6.1f} img/s   wall {wall:6.1f} s")
        for base in ((1, 2), (1, 1)):
            (loop1, wall1), (loop2, wall2) = train[base], train[2, 1]
            print(f"  torchrun 2x1 vs 1 process x {base[1]} thread(s): loop {loop2 / loop1:.2f}x   "
                  f"wall {wall1 / wall2:.2f}x (>1 = torchrun faster)")  # fmt: skip

        folder = tmp / "predict"
        folder.mkdir()
        for i, p in enumerate(real_images(args.predict_n)):
            os.symlink(p.resolve(), folder / f"{i:05d}_{p.name}")
        model = tmp / "run1x2" / "model.pt"
        print(f"predict: {args.predict_n} images, the model above, wall clock incl. start-up")
        for backend in ("torch", "onnx"):
            cmd = ["predict", "--model", str(model), "--backend", backend, "--no-progress"]
            bonefrac([*cmd, str(next(folder.iterdir()))], 1, env)  # warm-up: caches the ONNX export
            runs = {"1 process": (1, env), "1 process, OMP 1 thread": (1, {**env, "OMP_NUM_THREADS": "1"})}
            runs["torchrun 2 processes"] = (2, env)
            if backend == "onnx":  # onnxruntime sizes its own thread pool; OMP_NUM_THREADS does not apply
                del runs["1 process, OMP 1 thread"]
            walls = {}
            for name, (n, run_env) in runs.items():
                walls[name] = bonefrac([*cmd, str(folder), "--csv", str(tmp / f"{n}.csv")], n, run_env)
                print(f"  {backend:5s}  {name:24s} {args.predict_n / walls[name]:6.1f} img/s")
            rows = [[r["path"] for r in csv.DictReader(open(tmp / f"{n}.csv"))] for n in (1, 2)]
            assert rows[0] == rows[1], "the sharded CSV differs from one process's"
            print(f"  {backend:5s}  torchrun vs 1 process: {walls['1 process'] / walls['torchrun 2 processes']:.2f}x")
        print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
