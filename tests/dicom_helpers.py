"""DICOM radiographs made from the real JPEG fixtures, and the network helpers the DICOM node tests share.

The radiographs are DX (for presentation) Part 10 files written by `make_variants.dicom`, with fake,
non-identifying patient data that the tests then look for in logs (it must never appear there).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from make_variants import FIXTURES, PATIENT_ID, PATIENT_NAME, dicom

VIEW_IMAGES = ("IMG0002553.jpg", "IMG0001089.jpg")
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
IDENTIFIERS = (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, "Doe", "19700101")


def ct_small() -> Path:
    """pydicom's bundled CT image: a SOP class the node must refuse."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def radiograph_study(folder: Path, images: tuple[str, ...] = VIEW_IMAGES, study_uid: str | None = None) -> list[Path]:
    """One DX study (a series of `images`, one view each) with patient and study modules filled in."""
    from pydicom.uid import generate_uid

    from bonefrac.io.read import read_image

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i, name in enumerate(images, start=1):
        grey = np.round(read_image(FIXTURES / "images" / name).pixels * 255).astype(np.uint8)
        paths.append(
            dicom(
                folder / f"view{i}.dcm",
                grey,
                bits_stored=8,
                patient=True,
                PatientSex="F",
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=series_uid,
                StudyDate="20240102",
                StudyTime="101500",
                AccessionNumber="ACC-17",
                ReferringPhysicianName="",
                StudyID="17",
                SeriesNumber=1,
                InstanceNumber=i,
                Manufacturer="TestVendor",
                PatientOrientation=["P", "F"],
            )
        )
    return paths


def corrupt_radiograph(folder: Path) -> Path:
    """A DX file whose header is fine but whose pixel data is 100 bytes for a 454 x 398 image."""
    grey = np.zeros((398, 454), np.uint8)
    return dicom(
        folder / "corrupt.dcm",
        grey,
        bits_stored=8,
        raw_pixel_bytes=b"\0" * 100,
        StudyInstanceUID="1.2.826.0.1.3680043.8.498.99",
        SeriesInstanceUID="1.2.826.0.1.3680043.8.498.99.1",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str) -> str:
    """The tool's path, or skip the test saying how `make test` installs it."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (`make dicom-tools` installs orthanc, dcmtk and dicom3tools as root)")
    return path


class StoreCollector:
    """A storage SCP standing in for the PACS: accepts SR and Secondary Capture, keeps what it receives."""

    def __init__(self, ae_title: str = "PACS", sop_classes: tuple[str, ...] = (SR_STORAGE, SC_STORAGE)) -> None:
        from pynetdicom import AE, evt

        self.ae_title = ae_title
        self.received: list[Any] = []
        self.got = threading.Event()
        ae = AE(ae_title=ae_title)
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        self.got.set()
        return 0x0000

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Any]:
        """What has arrived once there are `n` datasets, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self._server.shutdown()


def scu(port: int, contexts: list[str], ae_title: str = "BONEFRAC") -> Any:
    """An established association from a pynetdicom SCU to the node on `port` (the caller releases it)."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    for sop_class in contexts:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    return assoc
