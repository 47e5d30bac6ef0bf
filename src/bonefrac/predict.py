"""`bonefrac predict`: many files in, a table / JSON lines / CSV / overlay PNGs out.

Under torchrun the inputs are sharded across ranks (every input exactly once); each rank writes a CSV
part and rank 0 merges them in input order.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import distributed
from .detector import FractureDetector, Prediction, PredictionError
from .errors import BonefracError
from .io import find_images

CSV_COLUMNS = ["path", "probability", "fractured", "threshold", "boxes", "error"]


@dataclass
class PredictOptions:
    json: bool = False
    csv: str | None = None
    overlay_dir: str | None = None
    operating_point: str = "default"
    batch_size: int = 16
    workers: int = 2
    progress: bool = True


def csv_row(res: Prediction | PredictionError) -> dict[str, str]:
    if isinstance(res, PredictionError):
        return {
            "path": res.path,
            "probability": "",
            "fractured": "",
            "threshold": "",
            "boxes": "",
            "error": res.error,
        }
    d = res.to_dict()
    return {
        "path": str(d["path"]),
        "probability": f"{d['probability']:.6f}",
        "fractured": str(int(d["fractured"])),
        "threshold": f"{d['threshold']:.6f}",
        "boxes": json.dumps(d["boxes"]),
        "error": "",
    }


def _table_line(res: Prediction | PredictionError, width: int) -> str:
    if isinstance(res, PredictionError):
        return f"{res.path:<{width}}  ERROR  {res.error}"
    verdict = "FRACTURE" if res.fractured else "no fracture"
    return f"{res.path:<{width}}  {res.probability:11.3f}  {verdict:<11}  {len(res.boxes)}"


def stream(det: FractureDetector, files: list[Path], opts: PredictOptions) -> Iterator[Prediction | PredictionError]:
    from tqdm import tqdm

    results = det.predict_many(
        files,
        batch_size=opts.batch_size,
        workers=opts.workers,
        operating_point=opts.operating_point,
        heatmaps=bool(opts.overlay_dir),
    )
    show = opts.progress and distributed.is_main() and len(files) > 1
    yield from tqdm(results, total=len(files), desc="predict", unit="img", disable=not show, file=sys.stderr)


def run_predict(det: FractureDetector, inputs: list[str], opts: PredictOptions, out: IO[str] = sys.stdout) -> int:
    """Predict every image under `inputs`; returns the exit code (0 all predicted, 1 some failed)."""
    files = find_images(inputs)
    if not files:
        raise BonefracError(f"no images found in {', '.join(inputs)} (looked for .jpg .jpeg .png .dcm and DICOM)")
    if opts.overlay_dir:
        Path(opts.overlay_dir).mkdir(parents=True, exist_ok=True)
    mine = distributed.shard(list(enumerate(files)))
    csv_path = Path(opts.csv) if opts.csv else None
    # Every rank (one, without torchrun) writes an indexed part; the main rank merges them in input order.
    part_path = csv_path.with_name(f"{csv_path.name}.part{distributed.rank()}") if csv_path else None
    n_failed = 0
    width = min(60, max(len(str(f)) for f in files))
    if not opts.json and not distributed.is_dist():
        print(f"{'file':<{width}}  probability  decision     boxes", file=out)
    csv_file = open(part_path, "w", newline="") if part_path else None  # noqa: SIM115 - closed below
    try:
        writer = csv.DictWriter(csv_file, fieldnames=["index", *CSV_COLUMNS]) if csv_file else None
        if writer:
            writer.writeheader()
        for (index, _), res in zip(mine, stream(det, [f for _, f in mine], opts), strict=True):
            n_failed += isinstance(res, PredictionError)
            if opts.json:
                print(json.dumps(res.to_dict()), file=out, flush=False)
            elif not distributed.is_dist():
                print(_table_line(res, width), file=out)
            if writer:
                writer.writerow({"index": index, **csv_row(res)})
            if opts.overlay_dir and isinstance(res, Prediction) and res.image is not None:
                from .overlay import overlay_name, render_overlay

                render_overlay(res.image, res).save(Path(opts.overlay_dir) / overlay_name(res.path, index))
                res.image = res.heatmap = None
    finally:
        if csv_file:
            csv_file.close()
    n_failed = distributed.sum_int(n_failed)
    if csv_path:
        distributed.barrier()
        if distributed.is_main():
            merge_csv_parts(csv_path, distributed.world_size())
    if distributed.is_main():
        n = len(files)
        where = f"; overlays in {opts.overlay_dir}" if opts.overlay_dir else ""
        where += f"; CSV in {csv_path}" if csv_path else ""
        print(f"{n - n_failed} of {n} images predicted, {n_failed} failed{where}", file=sys.stderr)
    return 1 if n_failed else 0


def merge_csv_parts(csv_path: Path, world: int) -> None:
    """Join per-rank parts into one CSV in input order, then remove the parts."""
    rows = []
    parts = [csv_path.with_name(f"{csv_path.name}.part{r}") for r in range(world)]
    for part in parts:
        with open(part, newline="") as f:
            rows += list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for part in parts:
        part.unlink()
