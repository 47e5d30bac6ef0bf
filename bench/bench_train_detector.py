"""Training speed of the detector: fp32 vs bf16 autocast, channels-last vs contiguous, side by side.

    python bench/bench_train_detector.py [--crop 256] [--batch-size 16] [--steps 3] [--rounds 2] [--threads N]

Times full training steps of `lite0_centernet` (forward, `detection_loss`, backward, AdamW) on `--crop` px
crops, through `precision.MixedPrecision` as `bonefrac train` runs them. Each configuration takes `--steps`
timed steps after one warm-up step, and the four configurations alternate for `--rounds` rounds, so load on
the machine falls on all of them alike; the best round of each is reported (the least disturbed), then its
speed relative to the training default (fp32, channels-last on a CPU).

The inputs are random crops with one random box each: the arithmetic of a step does not depend on the pixels,
and the data pipeline (decode cache, CropSampler) is the same for every configuration, so it is left out.
bf16 autocast pays only on CPUs with AVX512-BF16 (`mkldnn bf16` below); without it, oneDNN emulates bf16.
The load average is printed: other work on the machine skews every number here.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bonefrac.models.centernet import CenterNetLite0, detection_loss
from bonefrac.train.detector import centernet_targets
from bonefrac.train.precision import MixedPrecision

CONFIGS = [("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False)]  # (precision, channels-last)


def batch(n: int, crop: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n random crops, each with one box of 16-48 px somewhere inside, and their CenterNet targets."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((n, 1, crop, crop), dtype=np.float32)).sub_(0.5).div_(0.5)
    targets = []
    for _ in range(n):
        w, h = rng.uniform(16, 48, 2)
        x0, y0 = rng.uniform(0, crop - w), rng.uniform(0, crop - h)
        targets.append(centernet_targets(np.array([[x0, y0, x0 + w, y0 + h]], np.float32), crop))
    return x, {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}


def images_per_s(model: torch.nn.Module, precision: str, channels_last: bool, args: argparse.Namespace) -> float:
    """Images per second over `args.steps` training steps, after one untimed warm-up step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mp = MixedPrecision(precision, torch.device("cpu"))
    x, targets = batch(args.batch_size, args.crop, seed=0)
    x = x.contiguous(memory_format=fmt)
    for step in range(args.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        with mp.autocast():
            loss, _ = detection_loss(model(x), targets)
        mp.step(loss, opt)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"mkldnn bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"lite0_centernet, {args.crop} px crops, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")
    torch.manual_seed(0)
    base = CenterNetLite0()  # random weights: the speed does not depend on them
    speeds: dict[tuple[str, bool], list[float]] = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for precision, channels_last in CONFIGS:
            model = CenterNetLite0()
            model.load_state_dict(base.state_dict())  # every configuration starts from the same weights
            speeds[precision, channels_last].append(images_per_s(model, precision, channels_last, args))
    ref = max(speeds["fp32", True])
    print(f"{'precision':<10}{'layout':<16}{'images/s':>10}{'vs fp32 channels-last':>24}")
    for (precision, channels_last), s in speeds.items():
        layout = "channels-last" if channels_last else "contiguous"
        print(f"{precision:<10}{layout:<16}{max(s):>10.2f}{max(s) / ref:>23.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
