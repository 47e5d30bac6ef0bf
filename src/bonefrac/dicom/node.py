"""`bonefrac dicom-node`: a DICOM storage SCP that predicts each study it receives and sends the results back.

What it accepts: C-ECHO, and C-STORE of CR, DX (for presentation and for processing) and Secondary Capture
images in the transfer syntaxes this installation can decode. Any other SOP class (CT, MR, ...) is refused at
association: its presentation context is rejected as "abstract syntax not supported" (PS3.8 9.3.3.2), so the
sender learns before sending a byte. The called AE title must be the node's own.

When a study is complete: once every association that brought images of it has ended (released, or aborted
by the peer: the images acknowledged before the abort count, their sender was told they are stored) and no
new image of it has arrived for `study_idle` seconds. One PACS "send study" job is one association, so the
study is predicted `study_idle` seconds after that association is released; a modality that sends each image
on its own association gets one report for the whole study as long as its images come less than `study_idle`
seconds apart.

For each complete study: every view is predicted; the results (`dicom_results`: one TID 1500 SR for the study
with the study's result and each view's, one Secondary Capture overlay per view) are written under
`out/<study digest>/` and sent with C-STORE to `send_to`. A view that cannot be read is logged and left out.

Robustness: a dataset that cannot be decoded or read as a radiograph gets a failure status (0xC000-range
"cannot understand", 0xA900 "does not match SOP class") and one log line; the node goes on. The received
images wait in `out/.incoming/` until their study is predicted; at most `max_pending` images wait at once,
beyond that a C-STORE gets 0xA700 "out of resources" (the sender retries later). Logs name studies by a
digest of their Study Instance UID and never write a patient identifier or a UID.

Stopping (Ctrl-C, SIGTERM): no new association is accepted and open ones are aborted; the study being
predicted is finished, written and sent; studies still being received or waiting are dropped (logged with
their count; their spooled images are deleted: the sender still holds them and can send them again).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonefrac.dicom.results import study_digest
from bonefrac.dicom.send import Destination, NodeConfigError, send
from bonefrac.errors import BonefracError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bonefrac.inference.detector import FractureDetector

log = logging.getLogger("bonefrac.dicom.node")


def quiet_dicom_library_logs() -> None:
    """Show only warnings and errors of pynetdicom and highdicom, whose INFO/DEBUG lines quote UIDs and dataset
    contents, so that a node's log holds no identifier. Process-wide logging is the application's to set:
    `bonefrac dicom-node` calls this; a program embedding `DicomNode` decides for itself."""
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)


CR = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES = {
    CR: "CR",
    DX_FOR_PRESENTATION: "DX for presentation",
    DX_FOR_PROCESSING: "DX for processing",
    SECONDARY_CAPTURE: "Secondary Capture",
}
# C-STORE statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE = 0xC210


@dataclass
class NodeConfig:
    port: int
    out: Path = Path("dicom-results")
    ae_title: str = "BONEFRAC"
    host: str = "0.0.0.0"
    send_to: Destination | None = None
    operating_point: str = "default"
    study_idle: float = 5.0
    max_pending: int = 500


@dataclass
class _Study:
    uid: str
    files: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> spooled file
    open_associations: set[int] = field(default_factory=set)
    last_received: float = field(default_factory=time.monotonic)

    @property
    def digest(self) -> str:
        return study_digest(self.uid)


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered to senders: uncompressed ones, and compressed ones pydicom can decode here."""
    from pydicom import uid
    from pydicom.pixels import get_decoder

    plain = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian]
    compressed = [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.RLELossless]
    compressed += [uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000]
    available = []
    for ts in compressed:
        try:
            if get_decoder(ts).is_available:
                available.append(ts)
        except (NotImplementedError, ValueError):
            continue
    return [str(ts) for ts in plain + available]


class DicomNode:
    """The storage SCP, the study tracker and the worker that predicts and sends. `start` returns at once;
    `run` blocks until Ctrl-C / SIGTERM (or `stop`)."""

    def __init__(self, detector: FractureDetector, config: NodeConfig, model_name: str | None = None) -> None:
        self.detector = detector
        self.config = config
        self.model_name = model_name or f"bonefrac {detector.spec.arch}"
        self.incoming = config.out / ".incoming"
        self._lock = threading.Lock()
        self._studies: dict[str, _Study] = {}
        self._ready: deque[_Study] = deque()
        self._n_pending = 0
        self._n_received = 0
        self._stopping = threading.Event()
        self._warming = threading.Event()
        self._wake = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self.processed: list[str] = []  # study digests, in the order their results were written (for tests)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        self.detector.check_operating_point(self.config.operating_point)  # fail before listening
        self.incoming.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_closed)]
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise NodeConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror}") from None
        for target in (self._watch_idle, self._work):
            thread = threading.Thread(target=target, name=f"dicom-node-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        where = f"; results to {self.config.send_to}" if self.config.send_to else ""
        log.info(
            "listening as %s on %s:%d (model %s, operating point %s); results in %s%s",
            self.config.ae_title,
            self.config.host,
            self.port,
            self.detector.version,
            self.config.operating_point,
            self.config.out,
            where,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.config.port

    def run(self) -> int:
        """Serve until Ctrl-C or SIGTERM, then stop as the module docstring says. Returns the exit code."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda *_: self._stopping.set())
        try:
            self.start()
            while not self._stopping.wait(0.5):
                pass
            log.info("stopping: finishing the study in progress, if any")
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()  # closes the socket and aborts open associations
            self._server = None
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            if not (thread.name.endswith("_work") and self._warming.is_set()):
                thread.join()  # (a warm-up has nothing to finish: it is left to end with the process)
        self._threads = []
        with self._lock:
            dropped = list(self._ready) + list(self._studies.values())
            self._ready.clear()
            self._studies.clear()
        if dropped:
            n = sum(len(s.files) for s in dropped)
            log.info("dropped %d unfinished studies (%d images; their senders still hold them)", len(dropped), n)
        shutil.rmtree(self.incoming, ignore_errors=True)

    # ------------------------------------------------------------------ receiving (pynetdicom's threads)
    def _on_store(self, event: Any) -> Any:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as e:
            log.warning("refused an image from %s: cannot decode the dataset (%s)", calling, type(e).__name__)
            return _status(CANNOT_DECODE, "dataset cannot be decoded")
        try:
            return self._store(event, ds, calling)
        except Exception as e:  # never let one dataset take the node down
            log.warning("refused an image from %s: unexpected %s", calling, type(e).__name__)
            return _status(CANNOT_UNDERSTAND, f"unexpected {type(e).__name__}")

    def _store(self, event: Any, ds: Dataset, calling: str) -> Any:
        study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        kind = ACCEPTED_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID), "image")
        if str(ds.get("Manufacturer", "")) == "bonefrac":
            log.info("ignored a %s from %s: a bonefrac result, not a radiograph", kind, calling)
            return SUCCESS  # sent back to us by a routing rule: accepting it stops the loop
        if not study_uid or not sop_uid or str(ds.get("SOPClassUID", "")) != str(event.request.AffectedSOPClassUID):
            log.warning("refused a %s from %s: no Study/SOP Instance UID or wrong SOP class", kind, calling)
            return _status(DOES_NOT_MATCH_SOP_CLASS, "missing UIDs or SOP Class mismatch")
        with self._lock:
            if self._stopping.is_set():
                return _status(OUT_OF_RESOURCES, "node is stopping")
            if self._n_pending >= self.config.max_pending:
                log.warning("refused a %s from %s: %d images already waiting", kind, calling, self._n_pending)
                return _status(OUT_OF_RESOURCES, "too many images waiting")
            self._n_pending += 1  # reserved now, so that parallel associations cannot overshoot the bound
            self._n_received += 1  # (in the name: an image sent again never overwrites one being predicted)
            path = self.incoming / f"{_digest(study_uid)}-{_digest(sop_uid)}-{self._n_received}.dcm"
        try:
            path.write_bytes(event.encoded_dataset())
            _check_readable(path)
        except Exception as e:
            with self._lock:
                self._n_pending -= 1
            path.unlink(missing_ok=True)
            reason = str(e).split(": ", 1)[-1] if isinstance(e, BonefracError) else type(e).__name__
            log.warning("refused a %s from %s (study %s): %s", kind, calling, _digest(study_uid), reason)
            return _status(CANNOT_UNDERSTAND, reason)
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study(study_uid))
            if sop_uid in study.files:
                self._n_pending -= 1  # the same image again: the newer copy replaces it
                study.files[sop_uid].unlink(missing_ok=True)
            study.files[sop_uid] = path
            study.open_associations.add(id(event.assoc))
            study.last_received = time.monotonic()
        return SUCCESS

    def _on_closed(self, event: Any) -> None:
        with self._wake:
            for study in self._studies.values():
                study.open_associations.discard(id(event.assoc))
            self._wake.notify_all()

    # ------------------------------------------------------------------ completing and predicting studies
    def _watch_idle(self) -> None:
        """Move studies that are complete (see the module docstring) to the worker's queue."""
        while not self._stopping.is_set():
            with self._wake:
                now = time.monotonic()
                done = [
                    uid
                    for uid, s in self._studies.items()
                    if not s.open_associations and now - s.last_received >= self.config.study_idle
                ]
                for uid in done:
                    self._ready.append(self._studies.pop(uid))
                if done:
                    self._wake.notify_all()
                self._wake.wait(min(0.2, self.config.study_idle / 4 or 0.05))

    def _work(self) -> None:
        self._warm()
        while True:
            with self._wake:
                while not self._ready and not self._stopping.is_set():
                    self._wake.wait()
                if self._stopping.is_set():
                    return  # queued studies are dropped by `stop`
                study = self._ready.popleft()
            try:
                self._process(study)
            except Exception as e:  # a failed study is logged; the node goes on with the next
                # (the exception's type only: a message from pydicom or highdicom may quote element values)
                log.error("study %s: failed (%s); nothing sent", study.digest, type(e).__name__)
            finally:
                with self._lock:
                    self._n_pending -= len(study.files)
                for path in study.files.values():
                    path.unlink(missing_ok=True)

    def _warm(self) -> bool:
        """Predict and build the results of a synthetic image once, while waiting for the first study: the
        one-time costs (imports, highdicom's tables of the standard, the model's first run: seconds on a small machine)
        are then not paid by the first study."""
        import numpy as np
        from pydicom.dataset import Dataset

        from bonefrac.dicom.results import StudyResults, with_type2_attributes
        from bonefrac.io.read import XrayImage

        self._warming.set()
        meta = {"format": "dicom", "modality": "DX", "sop_class_uid": DX_FOR_PRESENTATION}
        image = XrayImage(np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1)), meta)
        source = Dataset()
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
        source.SOPClassUID = DX_FOR_PRESENTATION
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
            self._warming.clear()

    def _headers(self, study: _Study) -> list[tuple[Dataset, Path]]:
        from bonefrac.dicom.results import read_source_header

        out = []
        for path in study.files.values():
            try:
                out.append((read_source_header(path), path))
            except BonefracError as e:
                log.warning("study %s: a view left out: %s", study.digest, str(e).split(": ", 1)[-1])
        return out

    def _process(self, study: _Study) -> None:
        from bonefrac.dicom.results import StudyResults, save_dataset
        from bonefrac.io.read import read_image

        started = time.monotonic()
        results = StudyResults(self.model_name, operating_points=self.detector.operating_points)
        out_dir = self.config.out / study.digest
        written: list[Dataset] = []
        for source, path in sorted(self._headers(study), key=lambda h: _view_order(h[0])):
            try:
                image = read_image(path)
                pred = self.detector.predict(image, operating_point=self.config.operating_point, heatmap=True)
                written.append(results.add_view(source, image, pred))
            except BonefracError as e:
                log.warning("study %s: a view left out: %s", study.digest, str(e).split(": ", 1)[-1])
        if not results.views:
            log.warning("study %s: no view could be predicted; nothing sent", study.digest)
            return
        written.insert(0, results.report())
        for ds in written:
            save_dataset(ds, out_dir)
        summary = results.study()
        verdict = "FRACTURE" if summary.fractured else "no fracture"
        log.info(
            "study %s: %d view(s), p=%.3f %s (%s) in %.1f s; results in %s",
            study.digest,
            len(results.views),
            summary.probability,
            verdict,
            summary.operating_point,
            time.monotonic() - started,
            out_dir,
        )
        self.processed.append(study.digest)
        if self.config.send_to is not None:
            send(written, self.config.send_to, self.config.ae_title, study.digest)


def _check_readable(path: Path) -> None:
    """Read the image as the worker will, and apply the modality rule: a corrupt, unsupported or
    non-radiograph image is refused now, with a status, rather than dropped later without one."""
    from bonefrac.io.modality import check_radiograph
    from bonefrac.io.read import read_image

    check_radiograph(read_image(path))


def _view_order(ds: Dataset) -> tuple[int, int, str]:
    """Views in the order of the acquisition (series, then instance number), whatever order they came in."""

    def number(keyword: str) -> int:
        try:
            return int(ds.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return number("SeriesNumber"), number("InstanceNumber"), str(ds.SOPInstanceUID)


def _status(code: int, comment: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _digest(uid: str) -> str:
    return study_digest(uid)  # (the same 12-hex digest names spooled images)
