"""The DICOM node: echo, store, refusals at association, failure statuses, aborts, the queue bound, the
study result sent back, logs without identifiers, and a clean stop on SIGTERM. dcmtk's echoscu/storescu
talk to it where installed; pynetdicom SCUs cover the rest everywhere."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from _models import make_checkpoint
from dicom_helpers import (
    IDENTIFIERS,
    SC_STORAGE,
    StoreCollector,
    corrupt_radiograph,
    ct_small,
    free_port,
    need,
    radiograph_study,
    scu,
)
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification

from bonefrac.dicom.node import Allow, Destination, DicomNode, NodeConfig, NodeConfigError, quiet_dicom_library_logs
from bonefrac.dicom.report import report_comments, report_probabilities, study_digest
from bonefrac.inference.detector import FractureDetector
from bonefrac.io.read import read_image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture(scope="module")
def detector(model: Path) -> FractureDetector:
    return FractureDetector.load(model, backend="torch")


@pytest.fixture
def pacs() -> Iterator[StoreCollector]:
    collector = StoreCollector()
    yield collector
    collector.close()


def _node(detector: FractureDetector, out: Path, pacs: StoreCollector | None = None, **config: object) -> DicomNode:
    send_to = Destination("PACS", "127.0.0.1", pacs.port) if pacs else None
    config = {"study_idle": 0.3, **config}
    quiet_dicom_library_logs()  # as `bonefrac dicom-node` does: the libraries' INFO lines quote UIDs
    node = DicomNode(detector, NodeConfig(port=0, host="127.0.0.1", out=out, send_to=send_to, **config))  # type: ignore[arg-type]
    node.start()
    return node


@pytest.fixture
def node(detector: FractureDetector, tmp_path: Path, pacs: StoreCollector) -> Iterator[DicomNode]:
    running = _node(detector, tmp_path / "out", pacs)
    yield running
    running.stop()


def _spooled(node: DicomNode) -> list[Path]:
    return list(node.spool.folder.rglob("*")) if node.spool.folder.exists() else []


def _drained(node: DicomNode, timeout: float = 10) -> bool:
    """Whether the node's spool empties (the worker releases it once the send to the PACS has returned)."""
    deadline = time.monotonic() + timeout
    while (node.tracker.pending or _spooled(node)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return node.tracker.pending == 0 and not _spooled(node)


def _store(port: int, paths: list[Path]) -> list[int]:
    assoc = scu(port, [DigitalXRayImageStorageForPresentation])
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_a_study_comes_back_as_one_sr_and_an_overlay_per_view(
    node: DicomNode, pacs: StoreCollector, detector: FractureDetector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    views = radiograph_study(tmp_path / "in")
    assoc = scu(node.port, [Verification])
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert _store(node.port, views[::-1]) == [0, 0]  # sent last view first
    got = pacs.wait_for(3)
    assert sorted(ds.Modality for ds in got) == ["OT", "OT", "SR"]
    study_uid = pydicom.dcmread(views[0], stop_before_pixels=True).StudyInstanceUID
    assert {ds.StudyInstanceUID for ds in got} == {study_uid}
    (sr,) = [ds for ds in got if ds.Modality == "SR"]
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in views]
    expected = [detector.predict(read_image(p)).probability for p in views]
    assert report_probabilities(sr) == pytest.approx(
        {"study": max(expected), uids[0]: expected[0], uids[1]: expected[1]}, abs=1e-9
    )
    # The report lists the views in acquisition order (instance number), not in the order they came in.
    groups = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()
    assert [(g.tracking_identifier, g.source_images[0].referenced_sop_instance_uid) for g in groups[1:]] == [
        ("view 1", uids[0]),
        ("view 2", uids[1]),
    ]
    written = sorted(p.name.split("_")[0] for p in (node.config.out / study_digest(study_uid)).iterdir())
    assert written == ["OT", "OT", "SR"]
    assert _drained(node)  # the received images are deleted once predicted
    # The log names the study by its digest; no patient identifier and no UID ever.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert study_digest(study_uid) in text and "sent 3 objects" in text
    assert not [s for s in (*IDENTIFIERS, study_uid, *uids) if s in text]


def test_dcmtk_echo_store_refused_ct_and_corrupt_file(
    node: DicomNode, pacs: StoreCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    echoscu, storescu = need("echoscu"), need("storescu")
    caplog.set_level(logging.INFO)
    target = ["-aec", "BONEFRAC", "127.0.0.1", str(node.port)]

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=60)

    assert run(echoscu, *target).returncode == 0
    ct = run(storescu, *target, ct_small())
    assert ct.returncode != 0 and "No presentation context for: (CT)" in ct.stderr  # refused at association
    corrupt = run(storescu, "-v", *target, corrupt_radiograph(tmp_path))
    assert "Received Store Response (Error: CannotUnderstand)" in corrupt.stderr, corrupt.stderr
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "pixel data" in refusals[0]  # one line for the bad dataset
    wrong_aet = run(storescu, "-aec", "OTHER", "127.0.0.1", str(node.port), ct_small())
    assert "Called AE Title Not Recognized" in wrong_aet.stderr
    views = radiograph_study(tmp_path / "in")
    assert run(storescu, *target, *views).returncode == 0
    assert sorted(ds.Modality for ds in pacs.wait_for(3)) == ["OT", "OT", "SR"]


def test_bad_datasets_get_failure_statuses_and_the_node_goes_on(node: DicomNode, tmp_path: Path) -> None:
    good, *_ = radiograph_study(tmp_path / "in", images=("IMG0001271.jpg",))
    no_study = pydicom.dcmread(good)
    del no_study.StudyInstanceUID
    corrupt = pydicom.dcmread(corrupt_radiograph(tmp_path))
    assoc = scu(node.port, [DigitalXRayImageStorageForPresentation])
    statuses = [int(assoc.send_c_store(ds).Status) for ds in (no_study, corrupt, pydicom.dcmread(good))]
    assoc.release()
    assert statuses == [0xA900, 0xC000, 0x0000]


def test_an_image_sent_twice_is_one_view(node: DicomNode, pacs: StoreCollector, tmp_path: Path) -> None:
    view, *_ = radiograph_study(tmp_path / "in", images=("IMG0001271.jpg",))
    assert _store(node.port, [view, view]) == [0, 0]
    (sr,) = [ds for ds in pacs.wait_for(2) if ds.Modality == "SR"]
    assert len(report_probabilities(sr)) == 2  # the study and its one view
    assert _drained(node)


def test_a_peer_that_aborts_mid_association_leaves_the_node_serving(
    node: DicomNode, pacs: StoreCollector, tmp_path: Path
) -> None:
    first, _ = radiograph_study(tmp_path / "in")
    assoc = scu(node.port, [DigitalXRayImageStorageForPresentation])
    assert int(assoc.send_c_store(pydicom.dcmread(first)).Status) == 0
    assoc.abort()
    with socket.create_connection(("127.0.0.1", node.port)) as raw:  # and a peer that speaks no DICOM at all
        raw.sendall(b"\x01\x00" + os.urandom(300))
    echo = scu(node.port, [Verification])
    assert int(echo.send_c_echo().Status) == 0
    echo.release()
    # The image acknowledged before the abort is still predicted: its sender was told it is stored.
    assert sorted(ds.Modality for ds in pacs.wait_for(2)) == ["OT", "SR"]


def test_the_queue_is_bounded_and_a_stop_keeps_what_was_acknowledged_for_the_next_start(
    detector: FractureDetector, tmp_path: Path, pacs: StoreCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = _node(detector, tmp_path / "out", pacs, max_pending=1, study_idle=600)
    try:
        views = radiograph_study(tmp_path / "in")
        assert _store(node.port, views) == [0x0000, 0xA700]  # out of resources: the sender retries later
    finally:
        node.stop()
    assert "1 unfinished studies (1 images) stay in the spool" in caplog.text
    assert len(list(node.spool.folder.rglob("*.dcm"))) == 1 and not node.processed
    # The same command started again predicts and sends the acknowledged image (the PACS will not resend it).
    again = _node(detector, tmp_path / "out", pacs, study_idle=600)
    try:
        assert sorted(ds.Modality for ds in pacs.wait_for(2)) == ["OT", "SR"]
        assert _drained(again)
    finally:
        again.stop()
    assert "resuming 1 studies (1 images)" in caplog.text


def test_results_the_pacs_refuses_or_cannot_take_stay_on_disk_and_are_logged(
    detector: FractureDetector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    views = radiograph_study(tmp_path / "in", images=("IMG0001271.jpg",))
    no_sr = StoreCollector(sop_classes=(SC_STORAGE,))  # a PACS that takes no Structured Report
    node = _node(detector, tmp_path / "a", no_sr)
    try:
        assert _store(node.port, views) == [0]
        assert [ds.Modality for ds in no_sr.wait_for(1)] == ["OT"]  # the overlay is sent all the same
    finally:
        node.stop()
        no_sr.close()
    assert "PACS@127.0.0.1" in caplog.text and "refused SR (SOP class not accepted)" in caplog.text
    node = _node(detector, tmp_path / "b")
    node.config.send_to = Destination("PACS", "127.0.0.1", free_port())  # nobody listens there
    try:
        assert _store(node.port, views) == [0]
        deadline = time.monotonic() + 30
        while not node.processed and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    assert "could not associate with PACS@127.0.0.1" in caplog.text
    for out in (tmp_path / "a", tmp_path / "b"):
        assert sorted(p.name[:2] for p in out.rglob("*.dcm")) == ["OT", "SR"]  # kept on disk


def test_the_warm_up_builds_real_results(detector: FractureDetector, tmp_path: Path) -> None:
    """The node pays its one-time costs on a synthetic study before the first real one (a silent failure
    there would only show as a slow first study)."""
    assert DicomNode(detector, NodeConfig(port=0, out=tmp_path)).worker.warm()


def test_destination_syntax_is_checked() -> None:
    assert Destination.parse("ORTHANC@pacs.example:4242") == Destination("ORTHANC", "pacs.example", 4242)
    for bad in ("ORTHANC@pacs.example", "pacs.example:4242", "@h:1", "A@h:0", "A@h:port", "SEVENTEEN_CHARS_X@h:1"):
        with pytest.raises(NodeConfigError, match="AET@HOST:PORT"):
            Destination.parse(bad)


def test_sigterm_stops_run_cleanly(detector: FractureDetector, tmp_path: Path) -> None:
    """`run` (what `bonefrac dicom-node` calls) serves until SIGTERM, then returns 0 and restores the handlers.
    (tests/dicom/test_pacs.py stops the real command the same way.)"""
    node = DicomNode(detector, NodeConfig(port=0, host="127.0.0.1", out=tmp_path / "out", study_idle=0.3))
    before = signal.getsignal(signal.SIGTERM)
    echoed: list[int] = []

    def client() -> None:
        deadline = time.monotonic() + 30
        while node._server is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assoc = scu(node.port, [Verification])
        echoed.append(int(assoc.send_c_echo().Status))
        assoc.release()
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client)
    thread.start()
    started = time.monotonic()
    assert node.run() == 0
    thread.join()
    assert echoed == [0] and time.monotonic() - started < 20
    assert signal.getsignal(signal.SIGTERM) == before
    assert not _spooled(node)


def _associates(port: int, calling: str, called: str = "BONEFRAC") -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


def test_allow_restricts_senders_and_every_refused_association_is_one_log_line(
    detector: FractureDetector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    allow = [Allow("ANYWHERE"), Allow("LOCAL", "127.0.0.1"), Allow("FARAWAY", "192.0.2.7")]
    node = _node(detector, tmp_path / "out", allow=allow)
    try:
        assert _associates(node.port, "ANYWHERE") and _associates(node.port, "LOCAL")
        assert not _associates(node.port, "FARAWAY")  # allowed, but from another address
        assert not _associates(node.port, "STRANGER")
        assert not _associates(node.port, "LOCAL", called="NOT_THE_NODE")
    finally:
        node.stop()
    refused = [r.getMessage() for r in caplog.records if "refused an association" in r.getMessage()]
    assert refused == [
        "refused an association from FARAWAY to BONEFRAC at 127.0.0.1: calling AE title not allowed from this address",
        "refused an association from STRANGER to BONEFRAC at 127.0.0.1: calling AE title not allowed",
        "refused an association from LOCAL to NOT_THE_NODE at 127.0.0.1: called AE title is not the node's",
    ]
    assert "beyond loopback" not in caplog.text


def test_listening_beyond_loopback_without_allow_warns(detector: FractureDetector, tmp_path: Path) -> None:
    assert Allow.parse("PACS@10.0.0.5") == Allow("PACS", "10.0.0.5") and Allow.parse("PACS") == Allow("PACS")
    for bad in ("", "@host", "PACS@", "SEVENTEEN_CHARS_X"):
        with pytest.raises(NodeConfigError, match="AET or AET@HOST"):
            Allow.parse(bad)
    node = DicomNode(detector, NodeConfig(port=0, host="0.0.0.0", out=tmp_path))
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("bonefrac.dicom.node").addHandler(handler)
    try:
        node.start()
    finally:
        node.stop()
        logging.getLogger("bonefrac.dicom.node").removeHandler(handler)
    assert any("listening beyond loopback (0.0.0.0) with no --allow list" in r for r in records)


def test_a_view_read_with_a_warning_carries_it_in_the_sr(node: DicomNode, pacs: StoreCollector, tmp_path: Path) -> None:
    """A multi-frame DX: the first frame is predicted, and the SR says so where the result is."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    view, *_ = radiograph_study(tmp_path / "in", images=("IMG0001271.jpg",))
    ds = pydicom.dcmread(view)
    frame = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame]).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = scu(node.port, [DigitalXRayImageStorageForPresentation])
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    (sr,) = [d for d in pacs.wait_for(2) if d.Modality == "SR"]
    (comment,) = report_comments(sr).values()
    assert "multi-frame DICOM (2 frames); reading the first" in comment
