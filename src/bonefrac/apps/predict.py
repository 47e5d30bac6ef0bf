"""`bonefrac predict`: many files in; one loop hands each result, with the image it was predicted from, to
every output once (`sinks`: table / JSON lines, CSV, COCO, overlay PNGs, DICOM results).

Ctrl-C stops the run between two results: every output then holds the same results, those printed so far
(the CSV's rows, the COCO file's images), a last stderr line says "interrupted after N of M", and the exit
code is 130. A second Ctrl-C stops at once.

Under torchrun the inputs are sharded across ranks (every `world_size`-th file, so every input exactly
once). Each rank writes its own overlay PNGs; the table, the JSON lines, the CSV rows and the COCO file are
gathered on rank 0, which writes them in input order, exactly as one process would (but at the end instead of
as they come). Only rank 0 shows progress and the summary; every rank returns the same exit code.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bonefrac.apps.sinks import (
    CocoSink,
    CsvSink,
    DicomSink,
    Entry,
    JsonLinesSink,
    OverlaySink,
    Sink,
    TableSink,
    write_overlay,
)
from bonefrac.errors import BonefracError
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE
from bonefrac.inference.detector import FractureDetector, ImageResult
from bonefrac.io.read import find_images
from bonefrac.results import CSV_COLUMNS, Prediction, PredictionError, group_studies, study_key, without_heatmap
from bonefrac.train import distributed

__all__ = ["CSV_COLUMNS", "PredictOptions", "run_predict", "write_overlay"]

#: The exit code after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


@dataclass
class PredictOptions:
    json: bool = False
    csv: str | None = None
    coco: str | None = None  # COCO-format predictions (images, categories, annotations) in this file
    overlay_dir: str | None = None
    operating_point: str = "default"
    threshold: float | None = None  # decide at this probability (operating point "custom") instead
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: bool = True
    any_modality: bool = False
    dicom_out: str | None = None  # an SR per study + an overlay per view, for DICOM inputs (dicom.writer)
    by_study: bool = False  # study lines after the image lines (studies: DICOM by Study Instance UID, else folder)


def stream(det: FractureDetector, files: list[Path], opts: PredictOptions) -> Iterator[ImageResult]:
    """(image, result) per file in input order; images only when an output draws on them."""
    draws = bool(opts.overlay_dir or opts.dicom_out)  # heatmaps and display-size images cost only when drawn
    kwargs = dict(batch_size=opts.batch_size, workers=opts.workers, operating_point=opts.operating_point,
                  threshold=opts.threshold, heatmap=draws, any_modality=opts.any_modality)  # fmt: skip
    results: Iterator[ImageResult] = (
        det.predict_many(files, with_images=True, **kwargs)
        if draws
        else ((None, r) for r in det.predict_many(files, with_images=False, **kwargs))
    )
    if not (opts.progress and distributed.is_main() and len(files) > 1):
        yield from results
        return
    from tqdm import tqdm

    with tqdm(results, total=len(files), desc="predict", unit="img", file=sys.stderr) as bar:
        yield from bar


def run_predict(det: FractureDetector, inputs: list[str], opts: PredictOptions, out: IO[str] | None = None) -> int:
    """Predict every image under `inputs`, writing to `out` (default: stdout at call time); returns the exit
    code (0 all predicted, 1 some failed, 130 interrupted by Ctrl-C)."""
    out = out or sys.stdout
    det.decision(opts.operating_point, opts.threshold)  # checked before anything starts, not after the bar
    files = find_images(inputs)
    if not files:
        raise BonefracError(f"no images found in {', '.join(inputs)} (looked for .jpg .jpeg .png .dcm and DICOM)")
    for name, path in (("CSV", opts.csv), ("COCO file", opts.coco)):
        if path and distributed.is_main() and not Path(path).parent.is_dir():
            raise BonefracError(f"{path}: the folder for the {name} does not exist")  # now, not after predicting
    if opts.dicom_out and distributed.is_dist():
        raise BonefracError("--dicom-out runs in one process, not under torchrun (a study's SR needs all its views)")
    width = min(60, max(len(str(f)) for f in files))
    image_sinks = _image_sinks(det, opts)
    text_sinks = _text_sinks(det, inputs, opts, out, width) if distributed.is_main() else []
    # One process writes its text outputs as results come; ranks hold theirs (no heatmaps or images, a few
    # hundred bytes per file) for rank 0 to write in input order, so lines of different ranks never interleave.
    streaming = not distributed.is_dist()
    mine = distributed.shard(list(enumerate(files)))
    held: list[Entry] = []
    keyed: list[tuple[int, str, Prediction | PredictionError]] = []  # --by-study: (index, study, result)
    done = n_failed = 0
    results = stream(det, [f for _, f in mine], opts)
    with _stop_on_ctrl_c(streaming) as stop:
        try:
            for (index, path), (image, res) in zip(mine, results, strict=True):
                key = study_key(path) if opts.by_study else None
                entry = Entry(index, res, image, key)
                for sink in image_sinks + (text_sinks if streaming else []):
                    sink.write(entry)
                if not streaming:
                    held.append(Entry(index, without_heatmap(res), None, key))
                if key is not None:
                    keyed.append((index, key, without_heatmap(res)))
                done += 1
                n_failed += isinstance(res, PredictionError)
                del entry, image, res  # the image and heatmap go now, not when the next result replaces them
                if stop.is_set():
                    break
        except KeyboardInterrupt:  # a second Ctrl-C (or one outside the main thread): stop where it was
            stop.set()
        finally:
            results.close()  # the workers finish their batches and stop; the progress bar closes
    interrupted = stop.is_set()
    for entry in sorted(distributed.gather_to_main(held), key=lambda e: e.index):
        for sink in text_sinks:
            sink.write(entry)
    keyed = sorted(distributed.gather_to_main(keyed), key=lambda k: k[0])
    done, n_failed = distributed.sum_ints([done, n_failed])
    if not interrupted:
        for study in group_studies((key, res) for _, key, res in keyed):
            for sink in text_sinks:
                sink.write_study(study)
    for sink in text_sinks + image_sinks:
        sink.close(interrupted)
    if distributed.is_main():
        out.flush()  # the table first, then the summary, also when both go to one terminal
        _summary(len(files), done, n_failed, interrupted, opts, image_sinks)
    # torchrun stops the other ranks as soon as one exits non-zero: nobody leaves before rank 0 has written.
    distributed.barrier()
    return INTERRUPTED if interrupted else 1 if n_failed else 0


def _image_sinks(det: FractureDetector, opts: PredictOptions) -> list[Sink]:
    """The outputs drawn on the decoded images, written by every rank (highdicom imported only for DICOM)."""
    sinks: list[Sink] = []
    if opts.overlay_dir:
        Path(opts.overlay_dir).mkdir(parents=True, exist_ok=True)
        sinks.append(OverlaySink(opts.overlay_dir, det.operating_points))
    if opts.dicom_out:
        from bonefrac.dicom.writer import DicomResultsWriter

        sinks.append(DicomSink(DicomResultsWriter(opts.dicom_out, f"bonefrac {det.spec.arch}", det.operating_points)))
    return sinks


def _text_sinks(det: FractureDetector, inputs: list[str], opts: PredictOptions, out: IO[str], width: int) -> list[Sink]:
    """The outputs of the results alone (stdout, CSV, COCO), written on rank 0."""
    sinks: list[Sink] = [JsonLinesSink(out) if opts.json else TableSink(out, width)]
    if opts.csv:
        sinks.append(CsvSink(opts.csv, by_study=opts.by_study))
    if opts.coco:
        sinks.append(CocoSink(opts.coco, inputs, det.version))
    return sinks


def _summary(n: int, done: int, n_failed: int, interrupted: bool, opts: PredictOptions, sinks: list[Sink]) -> None:
    where = f"; overlays in {opts.overlay_dir}" if opts.overlay_dir else ""
    where += f"; CSV in {opts.csv}" if opts.csv else ""
    where += f"; COCO in {opts.coco}" if opts.coco else ""
    print(f"{done - n_failed} of {done} images predicted, {n_failed} failed{where}", file=sys.stderr)
    for sink in sinks:
        if isinstance(sink, DicomSink):
            print("\n".join(sink.summary), file=sys.stderr)
    if interrupted:
        print(f"bonefrac: interrupted after {done} of {n}", file=sys.stderr)


@contextmanager
def _stop_on_ctrl_c(enabled: bool) -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C instead of a `KeyboardInterrupt`, so that the loop stops between two
    results, every output having been handed the same ones; the second Ctrl-C raises as usual. Only in the
    main thread of one process (torchrun's ranks must reach their collectives together: they stop at once)."""
    stop = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(_signum: int, _frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
