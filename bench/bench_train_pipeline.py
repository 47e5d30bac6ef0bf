"""Is the training input pipeline the bottleneck? Times one training step split into its parts.

Prints the fraction of step time spent in the model's forward/backward/optimizer step, against loading
a batch from the decode cache, augmenting and normalising it. Goal: the model dominates (ratio near 1).

    python bench/bench_train_pipeline.py [--steps 8] [--image-size 256] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import real_images

from bonefrac.models.registry import build_model
from bonefrac.preprocess import normalize
from bonefrac.spec import ModelSpec
from bonefrac.train.augment import Augment
from bonefrac.train.data import DecodeCache, Record
from bonefrac.train.loop import load_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arch", default="efficientnet_lite0")
    args = ap.parse_args()
    torch.set_num_threads(2)
    paths = real_images(args.batch_size * args.steps)
    records = [Record(str(p), i % 2) for i, p in enumerate(paths)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = DecodeCache(Path(tmp), args.image_size)
        t0 = time.perf_counter()
        cache.build([r.path for r in records], progress=False)
        print(f"decode cache: {len(set(paths))} images in {time.perf_counter() - t0:.1f} s (once per dataset)")
        spec = ModelSpec(arch=args.arch, image_size=args.image_size)
        model = build_model(spec).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        augment, gen = Augment(), torch.Generator().manual_seed(0)
        t_data = t_model = 0.0
        for step in range(args.steps + 1):  # step 0 warms up and is not counted
            idx = list(range(step % args.steps * args.batch_size, (step % args.steps + 1) * args.batch_size))
            a = time.perf_counter()
            x, y = load_batch(cache, records, idx)
            x = normalize(augment(x, gen), spec).contiguous(memory_format=torch.channels_last)
            b = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            c = time.perf_counter()
            if step:
                t_data, t_model = t_data + (b - a), t_model + (c - b)
    n = args.steps * args.batch_size
    print(f"{args.arch} {args.image_size}px, batch {args.batch_size}, {args.steps} steps, 2 threads")
    print(f"input pipeline (cache load + augment + normalise): {1000 * t_data / args.steps:8.1f} ms/step")
    print(f"model forward + backward + step:                   {1000 * t_model / args.steps:8.1f} ms/step")
    print(f"training throughput: {n / (t_data + t_model):.1f} images/s")
    print(f"ratio model/step time: {t_model / (t_data + t_model):.3f}  (1.0 = input pipeline costs nothing)")


if __name__ == "__main__":
    main()
