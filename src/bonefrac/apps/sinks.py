"""The outputs of `bonefrac predict`: each a small `Sink` that is handed every result once, with its image.

table / JSON lines (stdout), CSV, COCO, overlay PNGs, DICOM results. Every sink gets each input's `Entry` (the
result and the image it was predicted from, decoded once by `FractureDetector.predict_many`) in input order,
then `close`. Text sinks write and flush as results come, so a run stopped by Ctrl-C leaves every result
printed so far in the CSV too; the COCO file is one JSON document, written by `close` (also after Ctrl-C).
Results serialise themselves (`Prediction.to_dict`, `to_row`, `table_line`): no sink formats a field.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bonefrac.io.image import XrayImage
from bonefrac.results import CSV_COLUMNS, STUDY_CSV_COLUMNS, Prediction, PredictionError, StudyResult, rounded_boxes

if TYPE_CHECKING:
    from bonefrac.dicom.writer import DicomResultsWriter

#: The one category of `--coco` files.
COCO_CATEGORY = {"id": 1, "name": "fracture", "supercategory": "bone"}


@dataclass
class Entry:
    """One input's result on its way to the sinks.

    Attributes:
        index: the input's position among all inputs (overlay names, COCO image ids).
        result: its `Prediction`, or the `PredictionError` that replaced it.
        image: the image it was predicted from, at display size (`detector.display_image`); None for a
            file that could not be read, and for results gathered from other ranks.
        study: its study key, with `--by-study` (tagged on its JSON line and CSV row).
    """

    index: int
    result: Prediction | PredictionError
    image: XrayImage | None = None
    study: str | None = None

    @property
    def tags(self) -> dict[str, str]:
        return {"level": "image", "study": self.study} if self.study is not None else {}


class Sink:
    """An output: `write` each entry, `write_study` each study line (with --by-study), then `close`."""

    #: Whether the sink needs the decoded image (run on every rank) or only the result (on rank 0).
    needs_image = False

    def write(self, entry: Entry) -> None:
        raise NotImplementedError

    def write_study(self, study: StudyResult) -> None:  # noqa: B027 (most outputs have no study lines)
        """A study's line, after all image lines (not after Ctrl-C: a study may miss views then)."""

    def close(self, interrupted: bool = False) -> None:  # noqa: B027
        """Finish the output; `interrupted` after Ctrl-C (the entries written so far are all there are)."""


def print_line(line: str, out: IO[str]) -> None:
    """A line of the table or JSON, flushed: through tqdm's writer, which lifts a progress bar on the same
    terminal out of the way and redraws it below, so the two never interleave. (No bar without tqdm.)"""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        tqdm.write(line, file=out)
    else:
        print(line, file=out)
    out.flush()  # a reader of a pipe (or a Ctrl-C) sees every line as soon as its result is done


class TableSink(Sink):
    """The readable table on stdout: a header, one line per input (its warnings at the end), study lines."""

    def __init__(self, out: IO[str], width: int) -> None:
        self.out = out
        self.width = width
        self._started = False

    def header(self) -> str:
        return f"{'file':<{self.width}}  probability  decision     boxes"

    def _line(self, line: str) -> None:
        if not self._started:
            self._started = True
            print_line(self.header(), self.out)
        print_line(line, self.out)

    def write(self, entry: Entry) -> None:
        self._line(entry.result.table_line(self.width))

    def write_study(self, study: StudyResult) -> None:
        self._line(study.table_line(self.width))


class JsonLinesSink(Sink):
    """`--json`: one JSON object per input on stdout (`to_dict`), then one per study."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, entry: Entry) -> None:
        print_line(json.dumps(entry.result.to_dict() | entry.tags), self.out)

    def write_study(self, study: StudyResult) -> None:
        print_line(json.dumps(study.to_dict()), self.out)


class CsvSink(Sink):
    """`--csv`: a row per input (`to_row`), flushed as it is written; study rows at the end."""

    def __init__(self, path: str | Path, by_study: bool = False) -> None:
        self.path = Path(path)
        self.columns = CSV_COLUMNS + (STUDY_CSV_COLUMNS if by_study else [])
        self._file = open(self.path, "w", newline="")  # noqa: SIM115 (closed by `close`)
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()

    def _row(self, row: dict[str, str]) -> None:
        self._writer.writerow({column: row.get(column, "") for column in self.columns})
        self._file.flush()

    def write(self, entry: Entry) -> None:
        self._row(entry.result.to_row() | entry.tags)

    def write_study(self, study: StudyResult) -> None:
        self._row(study.to_row())

    def close(self, interrupted: bool = False) -> None:
        self._file.close()


class CocoSink(Sink):
    """`--coco`: COCO-format predictions (images, the fracture category, one annotation per detection with
    its score), loadable by pycocotools and FiftyOne. Written atomically by `close`: a reader never sees
    half a file. Inputs that could not be read have no size and are left out."""

    def __init__(self, path: str | Path, inputs: list[str], model_version: str) -> None:
        self.path = Path(path)
        self.roots = [Path(p) for p in inputs if Path(p).is_dir()]
        self.model_version = model_version
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def file_name(self, path: str) -> str:
        """The file's path relative to the input folder it was found in; a file given by itself: its name."""
        for root in self.roots:
            if Path(path).is_relative_to(root):
                return Path(path).relative_to(root).as_posix()
        return Path(path).name

    def write(self, entry: Entry) -> None:
        res = entry.result
        if not isinstance(res, Prediction):
            return
        image_id = entry.index + 1  # COCO ids start at 1 (0 reads as "no id" in some tools)
        self.images.append(
            {"id": image_id, "file_name": self.file_name(res.path or ""), "width": res.width, "height": res.height}
        )
        for x0, y0, x1, y1, score in rounded_boxes(res.detections):  # the values of --json's detections
            w, h = round(x1 - x0, 1), round(y1 - y0, 1)
            self.annotations.append(
                {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": COCO_CATEGORY["id"],
                 "bbox": [x0, y0, w, h], "area": round(w * h, 2), "score": score, "iscrowd": 0}
            )  # fmt: skip

    def close(self, interrupted: bool = False) -> None:
        document = {
            "info": {"description": "bonefrac predictions", "version": self.model_version},
            "images": self.images,
            "categories": [COCO_CATEGORY],
            "annotations": self.annotations,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(document))
        tmp.replace(self.path)


class OverlaySink(Sink):
    """`--overlay-dir`: an overlay PNG per predicted input, drawn on the image already decoded."""

    needs_image = True

    def __init__(self, folder: str | Path, operating_points: dict[str, float]) -> None:
        self.folder = Path(folder)
        self.operating_points = operating_points

    def write(self, entry: Entry) -> None:
        if isinstance(entry.result, Prediction):
            write_overlay(entry.result, self.folder, entry.index, self.operating_points, entry.image)


def write_overlay(
    pred: Prediction,
    folder: Path,
    index: int,
    operating_points: dict[str, float] | None = None,
    image: XrayImage | None = None,
) -> None:
    """The overlay PNG of one prediction (made with a heatmap) on `image` (the file is read again at display
    size only when no image is given); its boxes drawn as fracture / suspicious at `operating_points`."""
    from bonefrac.render import PNG_COMPRESS_LEVEL, overlay_name, read_for_display, render_overlay

    assert pred.path is not None
    picture = render_overlay(image or read_for_display(pred.path), pred, operating_points=operating_points)
    picture.save(folder / overlay_name(pred.path, index), compress_level=PNG_COMPRESS_LEVEL)


class DicomSink(Sink):
    """`--dicom-out`: a Secondary Capture overlay per DICOM view as it comes (on its decoded image), a
    Structured Report per study at `close`; other inputs are noted once in the summary."""

    needs_image = True

    def __init__(self, writer: DicomResultsWriter) -> None:
        self.writer = writer
        self.summary: list[str] = []

    def write(self, entry: Entry) -> None:
        res = entry.result
        if not isinstance(res, Prediction) or res.path is None or entry.image is None:
            return
        self.writer.add_prediction(res, entry.image)

    def close(self, interrupted: bool = False) -> None:
        if interrupted:  # a study's report needs all its views: none is written from a part of them
            self.summary = [f"DICOM results: overlays only in {self.writer.out_dir} (interrupted: no reports)"]
            return
        self.writer.close()
        self.summary = self.writer.summary()
