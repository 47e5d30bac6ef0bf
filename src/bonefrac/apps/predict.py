"""`bonefrac predict`: many files in, a table / JSON lines / CSV / overlay PNGs out.

Under torchrun the inputs are sharded across ranks (every `world_size`-th file, so every input exactly
once). Each rank writes its own overlay PNGs; the table, the JSON lines and the CSV rows are gathered on
rank 0, which writes them in input order, exactly as one process would (but at the end instead of as
they come). Only rank 0 shows progress and the summary; every rank returns the same exit code.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bonefrac.errors import BonefracError
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE
from bonefrac.inference.detector import FractureDetector
from bonefrac.io.read import find_images
from bonefrac.results import (
    STUDY_CSV_COLUMNS,
    Prediction,
    PredictionError,
    group_studies,
    study_csv_row,
    study_key,
    study_line,
    without_heatmap,
)
from bonefrac.train import distributed

if TYPE_CHECKING:
    from bonefrac.dicom.results import DicomResultsWriter

CSV_COLUMNS = ["path", "probability", "fractured", "threshold", "boxes", "detections", "error"]


@dataclass
class PredictOptions:
    json: bool = False
    csv: str | None = None
    overlay_dir: str | None = None
    operating_point: str = "default"
    threshold: float | None = None  # decide at this probability (operating point "custom") instead
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: bool = True
    any_modality: bool = False
    dicom_out: str | None = None  # an SR per study + an overlay per view, for DICOM inputs (dicom_results)
    by_study: bool = False  # study lines after the image lines (studies: DICOM by Study Instance UID, else folder)


def csv_row(res: Prediction | PredictionError) -> dict[str, str]:
    if isinstance(res, PredictionError):
        return {
            "path": res.path,
            "probability": "",
            "fractured": "",
            "threshold": "",
            "boxes": "",
            "detections": "",
            "error": res.error,
        }
    d = res.to_dict()
    return {
        "path": str(d["path"]),
        "probability": f"{d['probability']:.6f}",
        "fractured": str(int(d["fractured"])),
        "threshold": f"{d['threshold']:.6f}",
        "boxes": json.dumps(d["boxes"]),
        "detections": boxes_text(d["detections"]),
        "error": "",
    }


def boxes_text(boxes: list[list[float]]) -> str:
    """Boxes as in a dataset's labels.csv ("x0 y0 x1 y1;..."), each with its score: "x0 y0 x1 y1 score;..."."""
    return ";".join(" ".join(str(float(v)) for v in b) for b in boxes)


def _table_line(res: Prediction | PredictionError, width: int) -> str:
    if isinstance(res, PredictionError):
        return f"{res.path:<{width}}  ERROR  {res.error}"
    verdict = "FRACTURE" if res.fractured else "no fracture"
    return f"{res.path:<{width}}  {res.probability:11.3f}  {verdict:<11}  {len(res.boxes)}"


def stream(det: FractureDetector, files: list[Path], opts: PredictOptions) -> Iterator[Prediction | PredictionError]:
    results = det.predict_many(
        files,
        batch_size=opts.batch_size,
        workers=opts.workers,
        operating_point=opts.operating_point,
        threshold=opts.threshold,
        heatmap=bool(opts.overlay_dir or opts.dicom_out),
        any_modality=opts.any_modality,
    )
    if not (opts.progress and distributed.is_main() and len(files) > 1):
        yield from results
        return
    from tqdm import tqdm

    with tqdm(results, total=len(files), desc="predict", unit="img", file=sys.stderr) as bar:
        yield from bar


def _print(line: str, out: IO[str]) -> None:
    """A line of the table or JSON: through tqdm's writer, which lifts a progress bar on the same terminal
    out of the way and redraws it below, so the two never interleave. (No bar without tqdm imported.)"""
    if "tqdm" not in sys.modules:
        print(line, file=out)
        return
    from tqdm import tqdm

    tqdm.write(line, file=out)


def run_predict(det: FractureDetector, inputs: list[str], opts: PredictOptions, out: IO[str] | None = None) -> int:
    """Predict every image under `inputs`, writing to `out` (default: stdout at call time); returns the exit
    code (0 all predicted, 1 some failed)."""
    out = out or sys.stdout
    det.decision(opts.operating_point, opts.threshold)  # checked before anything starts, not after the bar
    files = find_images(inputs)
    if not files:
        raise BonefracError(f"no images found in {', '.join(inputs)} (looked for .jpg .jpeg .png .dcm and DICOM)")
    if opts.csv and distributed.is_main() and not Path(opts.csv).parent.is_dir():
        raise BonefracError(f"{opts.csv}: the folder for the CSV does not exist")  # now, not after predicting
    if opts.overlay_dir:
        Path(opts.overlay_dir).mkdir(parents=True, exist_ok=True)
    dicom = _dicom_writer(det, opts)
    mine = distributed.shard(list(enumerate(files)))
    # One process streams its lines as they come; ranks hold theirs (no heatmaps, a few hundred bytes per
    # file) for rank 0 to print in input order, so lines of different ranks never interleave.
    stream_lines = not distributed.is_dist()
    n_failed = 0
    width = min(60, max(len(str(f)) for f in files))
    header = f"{'file':<{width}}  probability  decision     boxes"
    if not opts.json and stream_lines:
        _print(header, out)
    lines: list[tuple[int, str]] = []
    rows: list[tuple[int, dict[str, str]]] = []
    keyed: list[tuple[int, str, Prediction | PredictionError]] = []  # --by-study: (index, study, result)
    for (index, path), res in zip(mine, stream(det, [f for _, f in mine], opts), strict=True):
        n_failed += isinstance(res, PredictionError)
        key = study_key(path) if opts.by_study else None
        keyed += [(index, key, without_heatmap(res))] if key is not None else []
        study_keys = {"level": "image", "study": key} if key is not None else {}
        line = json.dumps(res.to_dict() | study_keys) if opts.json else _table_line(res, width)
        if stream_lines:
            _print(line, out)
        else:
            lines.append((index, line))
        if opts.csv:
            rows.append((index, csv_row(res) | study_keys))
        if opts.overlay_dir and isinstance(res, Prediction):
            write_overlay(res, Path(opts.overlay_dir), index, det.operating_points)
        if dicom is not None and isinstance(res, Prediction):
            dicom.add_prediction(res)
    lines = sorted(distributed.gather_to_main(lines))
    rows = sorted(distributed.gather_to_main(rows), key=lambda r: r[0])
    keyed = sorted(distributed.gather_to_main(keyed), key=lambda r: r[0])
    n_failed = distributed.sum_int(n_failed)
    if distributed.is_main():
        if lines:
            print("\n".join(([] if opts.json else [header]) + [line for _, line in lines]), file=out)
        studies = group_studies((key, res) for _, key, res in keyed)
        if studies:
            print("\n".join(study_line(s, opts.json, width) for s in studies), file=out)
        if opts.csv:
            columns = CSV_COLUMNS + (STUDY_CSV_COLUMNS if opts.by_study else [])
            write_csv(Path(opts.csv), [row for _, row in rows] + [study_csv_row(s) for s in studies], columns)
        n = len(files)
        where = f"; overlays in {opts.overlay_dir}" if opts.overlay_dir else ""
        where += f"; CSV in {opts.csv}" if opts.csv else ""
        out.flush()  # the table first, then the summary, also when both go to one terminal
        print(f"{n - n_failed} of {n} images predicted, {n_failed} failed{where}", file=sys.stderr)
        if dicom is not None:
            dicom.close()
            print("\n".join(dicom.summary()), file=sys.stderr)
    # torchrun stops the other ranks as soon as one exits non-zero: nobody leaves before rank 0 has written.
    distributed.barrier()
    return 1 if n_failed else 0


def write_overlay(pred: Prediction, folder: Path, index: int, operating_points: dict[str, float] | None = None) -> None:
    """The overlay PNG of one prediction (made with a heatmap), from the file read again at display size;
    its boxes drawn as fracture / suspicious at the model's `operating_points` (`overlay.box_kinds`)."""
    from bonefrac.render import PNG_COMPRESS_LEVEL, overlay_name, read_for_display, render_overlay

    assert pred.path is not None
    picture = render_overlay(read_for_display(pred.path), pred, operating_points=operating_points)
    picture.save(folder / overlay_name(pred.path, index), compress_level=PNG_COMPRESS_LEVEL)


def _dicom_writer(det: FractureDetector, opts: PredictOptions) -> DicomResultsWriter | None:
    """--dicom-out's writer (highdicom imported only then). One process only: a study's report needs all of
    its views, which torchrun would spread over ranks."""
    if not opts.dicom_out:
        return None
    if distributed.is_dist():
        raise BonefracError("--dicom-out runs in one process, not under torchrun (a study's SR needs all its views)")
    from bonefrac.dicom.results import DicomResultsWriter

    return DicomResultsWriter(opts.dicom_out, f"bonefrac {det.spec.arch}", det.operating_points)


def write_csv(csv_path: Path, rows: list[dict[str, str]], columns: list[str] = CSV_COLUMNS) -> None:
    """Write the results CSV atomically: a killed run never leaves a truncated file that looks complete."""
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(csv_path)
