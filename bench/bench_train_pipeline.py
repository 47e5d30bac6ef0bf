"""Is the training input pipeline the bottleneck, and do DataLoader workers pay? Times training steps as the
loop runs them (`train.data.training_loader` over the decode cache, then the model kind's step), with 0, 1 and
2 worker processes side by side, and the input pipeline alone (the loader without the model).

Prints images/s for each worker count and its ratio to 0 workers (the batches made in the training process),
and the share of a step that the model takes when the batches are made in the training process. Goal: the
model dominates (share near 1); workers are the default only where they measure faster.

    python bench/bench_train_pipeline.py [--steps 8] [--image-size 256] [--batch-size 32] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import real_images

from bonefrac.datasets import Record
from bonefrac.models.kinds.base import StepContext
from bonefrac.models.registry import build_model, kind_for
from bonefrac.preprocess import normalize
from bonefrac.spec import ModelSpec
from bonefrac.train.data import DecodeCache, TrainingSet, WholeImages, training_loader
from bonefrac.train.detector import CropSampler


def timed_steps(loader: torch.utils.data.DataLoader, spec: ModelSpec, steps: int, model_too: bool) -> float:
    """Seconds for `steps` batches after the first (which starts the workers and warms the kernels)."""
    model = build_model(spec).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = StepContext(1, 1.0, lambda v: v, torch.tensor(1.0))
    loader.sampler.set_epoch(0)  # type: ignore[attr-defined]
    t0 = 0.0
    for i, (x, targets) in enumerate(loader):
        if i == 1:
            t0 = time.perf_counter()
        if model_too:
            x = normalize(x, spec).contiguous(memory_format=torch.channels_last)
            loss, _, _ = kind_for(spec).training_step(model, x, targets, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if i == steps:
            break
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arch", default="efficientnet_lite0", help="lite0_centernet: the detector's crops")
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    paths = real_images(args.batch_size * (args.steps + 1))
    records = [Record(str(p), i % 2) for i, p in enumerate(paths)]
    spec = ModelSpec(arch=args.arch, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = DecodeCache(Path(tmp), args.image_size)
        t0 = time.perf_counter()
        cache.build([r.path for r in records], progress=False)
        print(f"decode cache: {len(set(paths))} images in {time.perf_counter() - t0:.1f} s (once per dataset)")
        crops = kind_for(spec).trains_on_crops
        samples = CropSampler(cache, records, crop=args.crop_size) if crops else WholeImages(cache, records)
        data = TrainingSet(samples, seed=0)
        n = args.steps * args.batch_size
        what = f"{args.arch} {args.image_size}px" + (f" ({args.crop_size}px crops)" if crops else "")
        print(f"{what}, batch {args.batch_size}, {args.steps} steps, 2 torch threads in the training process")
        pipeline = timed_steps(training_loader(data, args.batch_size, 0, 0), spec, args.steps, model_too=False)
        print(f"input pipeline alone, 0 workers: {1000 * pipeline / args.steps:8.1f} ms/step")
        base = None
        for workers in args.workers:
            seconds = timed_steps(training_loader(data, args.batch_size, 0, workers), spec, args.steps, True)
            base = base or seconds
            print(f"training, {workers} workers: {n / seconds:6.1f} images/s  ({base / seconds:.2f} x 0 workers)")
            if workers == 0:
                print(
                    f"  share of a step in the model: {(seconds - pipeline) / seconds:.3f}  (1.0 = input costs nothing)"
                )


if __name__ == "__main__":
    main()
