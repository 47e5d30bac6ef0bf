"""The node's worker: predicts each complete study, writes its results under `--out/<study digest>/`, sends
them, and only then takes the study out of the spool.

For each complete study: every view is read once (the decoded image goes both to the model and to the
overlay), predicted, and its results built (`report`: one TID 1500 SR for the study with the study's result
and each view's, one Secondary Capture overlay per view). A view that cannot be read is logged and left out.
Results the PACS refuses, or that cannot be sent, stay in `--out/<study digest>/` (undeliverable, logged); a
study that cannot be predicted at all has its images moved to `--out/<study digest>/unpredicted/`. Either way
the study leaves the spool: it would fail again on every start.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bonefrac.dicom.node.config import NodeConfig
from bonefrac.dicom.node.spool import Spool
from bonefrac.dicom.node.tracker import Study, StudyTracker
from bonefrac.dicom.send import send
from bonefrac.errors import BonefracError
from bonefrac.results import verdict

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bonefrac.inference.detector import FractureDetector

log = logging.getLogger("bonefrac.dicom.node")


class Worker:
    """Takes complete studies from the tracker, one at a time, until it stops."""

    def __init__(
        self, detector: FractureDetector, config: NodeConfig, model_name: str, tracker: StudyTracker, spool: Spool
    ) -> None:
        self.detector = detector
        self.config = config
        self.model_name = model_name
        self.tracker = tracker
        self.spool = spool
        self.warming = threading.Event()
        self.processed: list[str] = []  # study digests, in the order their results were written (for tests)

    def run(self) -> None:
        self.warm()
        while (study := self.tracker.next_ready()) is not None:
            paths = list(study.files.values())
            where = self.config.out / study.digest / "unpredicted"
            try:
                if self.process(study):
                    self.spool.release(paths)
                else:
                    log.warning(
                        "study %s: no view could be predicted; nothing sent, images kept in %s", study.digest, where
                    )
                    self.spool.move(paths, where)
            except Exception as e:  # a failed study is logged; the node goes on with the next
                # (the exception's type only: a message from pydicom or highdicom may quote element values)
                log.error(
                    "study %s: failed (%s); nothing sent, images kept in %s", study.digest, type(e).__name__, where
                )
                self.spool.move(paths, where)
            finally:
                self.tracker.release(study)

    def warm(self) -> bool:
        """Predict and build the results of a synthetic image once, while waiting for the first study: the
        one-time costs (imports, highdicom's tables of the standard, the model's first run: seconds on a small
        machine) are then not paid by the first study."""
        import numpy as np
        from pydicom.dataset import Dataset
        from pydicom.uid import DigitalXRayImageStorageForPresentation as DX

        from bonefrac.dicom.report import StudyResults, with_type2_attributes
        from bonefrac.io.image import XrayImage

        self.warming.set()
        meta = {"format": "dicom", "modality": "DX", "sop_class_uid": DX}
        image = XrayImage(np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1)), meta)
        source = Dataset()
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
        source.SOPClassUID = DX
        source.Modality, source.Rows, source.Columns, source.SamplesPerPixel = "DX", 256, 256, 1
        source.PhotometricInterpretation, source.BitsAllocated = "MONOCHROME2", 8
        with_type2_attributes(source)
        try:
            pred = self.detector.predict(image, operating_point=self.config.operating_point, heatmap=True)
            results = StudyResults(self.model_name, operating_points=self.detector.operating_points)
            results.add_view(source, image, pred)
            results.report()
            return True
        except Exception as e:  # only a warm-up: the first study pays instead, and reports any real problem
            log.debug("warm-up failed: %s", type(e).__name__)
            return False
        finally:
            self.warming.clear()

    def process(self, study: Study) -> bool:
        """Predict, write and send one study's results (see the module docstring); False when no view could
        be predicted."""
        from bonefrac.dicom.report import StudyResults, save_dataset
        from bonefrac.io.read import read_image

        started = time.monotonic()
        results = StudyResults(self.model_name, operating_points=self.detector.operating_points)
        out_dir = self.config.out / study.digest
        written: list[Dataset] = []
        for source, path in sorted(self._headers(study), key=lambda h: _view_order(h[0])):
            try:
                image = read_image(path)  # the one decode of this image: the model and the overlay share it
                pred = self.detector.predict(image, operating_point=self.config.operating_point, heatmap=True)
                written.append(results.add_view(source, image, pred))
            except BonefracError as e:
                log.warning("study %s: a view left out: %s", study.digest, str(e).split(": ", 1)[-1])
        if not results.views:
            return False
        written.insert(0, results.report())
        for ds in written:
            save_dataset(ds, out_dir)
        summary = results.study()
        decision = verdict(summary.fractured)
        log.info(
            "study %s: %d view(s), p=%.3f %s (%s) in %.1f s; results in %s",
            study.digest,
            len(results.views),
            summary.probability,
            decision,
            summary.operating_point,
            time.monotonic() - started,
            out_dir,
        )
        self.processed.append(study.digest)
        if self.config.send_to is not None:
            send(written, self.config.send_to, self.config.ae_title, study.digest)  # logs an undeliverable study
        return True

    def _headers(self, study: Study) -> list[tuple[Dataset, Path]]:
        from bonefrac.dicom.report import read_source_header

        out = []
        for path in study.files.values():
            try:
                out.append((read_source_header(path), path))
            except BonefracError as e:
                log.warning("study %s: a view left out: %s", study.digest, str(e).split(": ", 1)[-1])
        return out


def _view_order(ds: Dataset) -> tuple[int, int, str]:
    """Views in the order of the acquisition (series, then instance number), whatever order they came in."""

    def number(keyword: str) -> int:
        try:
            return int(ds.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return number("SeriesNumber"), number("InstanceNumber"), str(ds.SOPInstanceUID)
