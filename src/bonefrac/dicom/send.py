"""Sending results to the PACS: the destination `AET@HOST:PORT` and one C-STORE association per study.

Used by the DICOM node (`dicom_node`) after each study; a failure is logged and the results stay on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bonefrac.errors import BonefracError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("bonefrac.dicom.node")

#: C-STORE statuses that mean stored: success, and the warnings (coercion, elements discarded, ...).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)
#: What results are offered in: Explicit then Implicit VR Little Endian, which every storage SCP accepts.
RESULT_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class NodeConfigError(BonefracError):
    """A `bonefrac dicom-node` option that cannot work (destination syntax, port)."""


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM storage SCP (the PACS), from `AET@HOST:PORT`."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        aet, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and 0 < int(port) < 65536 and len(aet) <= 16):
            raise NodeConfigError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs.example:4242")
        return cls(aet, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def send(datasets: list[Dataset], dest: Destination, ae_title: str, label: str) -> bool:
    """C-STORE `datasets` to `dest` on one association; logs the outcome. True when all were stored."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, RESULT_TRANSFER_SYNTAXES)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        log.error("study %s: could not associate with %s; results kept on disk only", label, dest)
        return False
    failed = []
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # the PACS refused this SOP class at association: send the others anyway
                failed.append(f"{ds.Modality} (SOP class not accepted)")
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code not in STORED:
                failed.append(f"{ds.Modality} (status {'none' if code is None else hex(code)})")
    finally:
        assoc.release()
    if failed:
        log.error("study %s: %s refused %s", label, dest, ", ".join(failed))
        return False
    log.info("study %s: sent %d objects to %s", label, len(datasets), dest)
    return True
