"""How fast are real radiographs read, and how much does a second worker buy when building the decode cache?

    python bench/bench_read.py [FOLDER] [--size 256] [--limit N]

- read_image:    every image in FOLDER (default ../shared/data/fracatlas/images), one after another.
- decode cache:  `DecodeCache.build` at --size px into a fresh temporary folder, with 1 and with 2 worker
                 processes (decode + letterbox + uint8 .npy per image).
- full-size:     the six ~2300 x 2900 FracAtlas originals, file -> model input, read whole (then box-reduced
                 in memory) vs read at reduced scale by libjpeg, as bonefrac does.
- 1024 px:       the largest FracAtlas files (long side 4x the input or more), file -> model input, as
                 models from before `ModelSpec.reduce_from` read them (whole, not reduced) vs decoded at 1/2
                 by libjpeg (the 4x rule).
Prints images/s for each, then the ratio of the two cache builds (2.0 would be perfect scaling on two idle
cores). Numbers are wall clock: anything else running on the machine slows them down, so the load
average at the start is printed too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

from _common import DATASET, stored_size

from bonefrac.errors import ImageReadError
from bonefrac.io.image import ImageReadWarning
from bonefrac.io.read import find_images, read_image
from bonefrac.preprocess import reduction_factor
from bonefrac.spec import LEGACY_REDUCE_FROM, REDUCE_FROM
from bonefrac.train.data import DecodeCache


def time_reads(paths: list[Path]) -> tuple[float, int]:
    """Seconds to read every file, and how many were refused."""
    refused = 0
    start = time.perf_counter()
    for path in paths:
        try:
            read_image(path)
        except ImageReadError:
            refused += 1
    return time.perf_counter() - start, refused


def time_cache_build(paths: list[str], size: int, workers: int) -> tuple[float, int]:
    """Seconds to build a decode cache from scratch, and how many files it reported as unreadable."""
    with tempfile.TemporaryDirectory(prefix="bonefrac-bench-") as tmp:
        start = time.perf_counter()
        errors = DecodeCache(Path(tmp), size).build(paths, workers=workers, progress=False)
        return time.perf_counter() - start, len(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=DATASET / "images", help="images to read (recursive)")
    ap.add_argument("--size", type=int, default=256, help="decode cache image size in pixels")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    args = ap.parse_args()
    if not args.folder.is_dir():
        ap.error(f"{args.folder}: no such folder (pass one, or put FracAtlas at {DATASET})")
    paths = find_images([args.folder])[: args.limit or None]
    if not paths:
        ap.error(f"{args.folder}: no images found")
    warnings.simplefilter("ignore", ImageReadWarning)  # truncated JPEGs are part of the data, not news here

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{len(paths)} images from {args.folder}; {os.cpu_count()} CPUs, load average at start {load}")
    seconds, refused = time_reads(paths)
    print(f"read_image:                    {len(paths) / seconds:8.1f} images/s  ({seconds:.1f} s, {refused} refused)")
    rates = {}
    for workers in (1, 2):
        seconds, errors = time_cache_build([str(p) for p in paths], args.size, workers)
        rates[workers] = len(paths) / seconds
        print(
            f"decode cache {args.size}px, workers={workers}:  {rates[workers]:8.1f} images/s"
            f"  ({seconds:.1f} s, {errors} unreadable)"
        )
    print(f"ratio decode cache workers=2 / workers=1: {rates[2] / rates[1]:.2f}  (2.00 = perfect scaling)")
    full_size = sorted((DATASET / "fullsize_samples").glob("*.jpg"))
    if full_size:
        whole, reduced = time_model_reads(full_size, args.size)
        print(
            f"full-size radiographs ({len(full_size)}, ~2300 x 2900) read + letterboxed for the model: whole image "
            f"{whole:.1f} ms, reduced read {reduced:.1f} ms per image (ratio {whole / reduced:.1f}x)"
        )
    # the files the two rules treat differently: reduced now, read whole by models from before the field
    large = [p for p in paths[:1500] if _rules_differ(stored_size(p), args.size)][:100]
    if large:
        whole, reduced = time_model_reads(large, args.size, legacy_whole=True)
        print(
            f"files of {REDUCE_FROM * args.size}+ px ({len(large)}) read + letterboxed: "
            f"whole (reduce_from={LEGACY_REDUCE_FROM}) "
            f"{whole:.2f} ms, at 1/2 (reduce_from={REDUCE_FROM}) {reduced:.2f} ms per image "
            f"(ratio {whole / reduced:.1f}x)"
        )


def _rules_differ(width_height: tuple[int, int], size: int) -> bool:
    w, h = width_height
    return reduction_factor(h, w, size, REDUCE_FROM) > 1 and reduction_factor(h, w, size, LEGACY_REDUCE_FROM) == 1


def time_model_reads(paths: list[Path], size: int, repeats: int = 5, legacy_whole: bool = False) -> tuple[float, float]:
    """Milliseconds per image to go from file to model input: full decode (+ box reduction in memory, or
    with `legacy_whole` none, as older models' 8x rule leaves these files), against the reduced read
    (libjpeg DCT scaling) that bonefrac uses."""
    from bonefrac.preprocess import letterbox_image

    def per_image(reduce_for: int | None, reduce_from: int) -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            for p in paths:
                reduce = partial(reduction_factor, size=reduce_for, reduce_from=reduce_from) if reduce_for else 1
                letterbox_image(read_image(p, reduce), size, reduce_from)
        return 1000 * (time.perf_counter() - t0) / (repeats * len(paths))

    return per_image(None, LEGACY_REDUCE_FROM if legacy_whole else REDUCE_FROM), per_image(size, REDUCE_FROM)


if __name__ == "__main__":
    main()
