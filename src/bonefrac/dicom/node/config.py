"""What the DICOM node is told (`NodeConfig`, `--allow`) and what it accepts (SOP classes, transfer syntaxes)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid

from bonefrac.dicom.send import Destination, NodeConfigError

ACCEPTED_SOP_CLASSES = {
    uid.ComputedRadiographyImageStorage: "CR",
    uid.DigitalXRayImageStorageForPresentation: "DX for presentation",
    uid.DigitalXRayImageStorageForProcessing: "DX for processing",
    uid.SecondaryCaptureImageStorage: "Secondary Capture",
}
# C-STORE statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE = 0xC210


@dataclass(frozen=True)
class Allow:
    """A sender allowed to associate, from `--allow AET[@HOST]`: its calling AE title, from `host` only if given."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Allow:
        aet, _, host = text.partition("@")
        if not aet or len(aet) > 16 or (_ and not host):
            raise NodeConfigError(f"--allow {text!r}: expected AET or AET@HOST, e.g. ORTHANC@pacs.example")
        return cls(aet, host or None)

    def addresses(self) -> set[str]:
        """The IP addresses `host` stands for (an address as given, a name resolved once, at start)."""
        if self.host is None:
            return set()
        try:
            return {str(ipaddress.ip_address(self.host))}
        except ValueError:
            pass
        try:
            return {str(info[4][0]) for info in socket.getaddrinfo(self.host, None)}
        except OSError:
            raise NodeConfigError(f"--allow {self}: cannot resolve host {self.host!r}") from None

    def __str__(self) -> str:
        return self.ae_title + (f"@{self.host}" if self.host else "")


@dataclass
class NodeConfig:
    """The node's settings (`bonefrac dicom-node`'s options). `allow` empty: any calling AE title may send."""

    port: int
    out: Path = Path("dicom-results")
    ae_title: str = "BONEFRAC"
    host: str = "127.0.0.1"
    send_to: Destination | None = None
    operating_point: str = "default"
    study_idle: float = 5.0
    max_pending: int = 500
    allow: list[Allow] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the node to this machine (`localhost` counts; `0.0.0.0` does not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def quiet_dicom_library_logs() -> None:
    """Show only warnings and errors of pynetdicom and highdicom, whose INFO/DEBUG lines quote UIDs and dataset
    contents, so that a node's log holds no identifier. Process-wide logging is the application's to set:
    `bonefrac dicom-node` calls this; a program embedding `DicomNode` decides for itself."""
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered to senders: uncompressed ones, and compressed ones pydicom can decode here."""
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
