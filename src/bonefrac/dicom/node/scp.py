"""The node's storage SCP: who may associate, what is accepted, and a C-STORE answered Success only once the
image is durably in the spool.

What it accepts: C-ECHO, and C-STORE of CR, DX (for presentation and for processing) and Secondary Capture
images in the transfer syntaxes this installation can decode. Any other SOP class (CT, MR, ...) is refused at
association: its presentation context is rejected as "abstract syntax not supported" (PS3.8 9.3.3.2), so the
sender learns before sending a byte. The called AE title must be the node's own; with `--allow`, the calling
AE title (and the peer's address, where given) must be on the list. Every refused association is logged in one
line: calling and called AE title, peer address and reason (AE titles and addresses name devices, not patients).

A dataset that cannot be read as a radiograph gets a failure status (0xC000-range "cannot understand",
0xA900 "does not match SOP class") and one log line, checked on its header alone: its pixels are decoded
once, by the worker. Beyond `max_pending` waiting images a C-STORE gets 0xA700 "out of resources".
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bonefrac.dicom.node.config import (
    ACCEPTED_SOP_CLASSES,
    CANNOT_DECODE,
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    NodeConfig,
    decodable_transfer_syntaxes,
)
from bonefrac.dicom.node.spool import Spool, digest
from bonefrac.dicom.node.tracker import StudyTracker
from bonefrac.errors import BonefracError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("bonefrac.dicom.node")

#: A-ASSOCIATE-RJ (result source, diagnostic) -> reason (PS3.8 9.3.4).
REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context not supported",
    (1, 3): "calling AE title not allowed",
    (1, 7): "called AE title is not the node's",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "too many associations at once",
}


class StorageSCP:
    """pynetdicom's event handlers for the node, and the AE that serves them."""

    def __init__(self, config: NodeConfig, tracker: StudyTracker, spool: Spool) -> None:
        self.config = config
        self.tracker = tracker
        self.spool = spool
        # --allow: calling AE title -> addresses it may come from (empty: any address)
        self.allowed: dict[str, set[str]] = {}
        for rule in config.allow:
            self.allowed.setdefault(rule.ae_title, set()).update(rule.addresses())
        self.open_to_any_host = {rule.ae_title for rule in config.allow if rule.host is None}

    def start(self) -> Any:
        """Listen (non-blocking) and return pynetdicom's server."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        return ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)

    # ------------------------------------------------------------------ associations
    def _on_requested(self, event: Any) -> None:
        """Refuse a calling AE title (or its address) that `--allow` does not list: A-ASSOCIATE-RJ, permanent,
        "calling AE title not recognised"."""
        if not self.allowed:
            return
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        address = str(event.assoc.requestor.address)
        hosts = self.allowed.get(calling)
        if hosts is not None and (calling in self.open_to_any_host or address in hosts):
            return
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.is_rejected = True
        reason = "calling AE title not allowed" if hosts is None else "calling AE title not allowed from this address"
        _log_refused(request, address, reason)
        event.assoc.kill()

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own refusals (wrong called AE title, too many associations)."""
        rejection = event.assoc.acceptor.primitive
        key = (int(rejection.result_source or 0), int(rejection.diagnostic or 0))
        reason = REJECT_REASONS.get(key, f"source {key[0]}, diagnostic {key[1]}")
        _log_refused(event.assoc.requestor.primitive, str(event.assoc.requestor.address), reason)

    def _on_closed(self, event: Any) -> None:
        self.tracker.closed(id(event.assoc))

    # ------------------------------------------------------------------ C-STORE (pynetdicom's threads)
    def _on_store(self, event: Any) -> Any:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as e:
            log.warning("refused an image from %s: cannot decode the dataset (%s)", calling, type(e).__name__)
            return status(CANNOT_DECODE, "dataset cannot be decoded")
        try:
            return self._store(event, ds, calling)
        except Exception as e:  # never let one dataset take the node down
            log.warning("refused an image from %s: unexpected %s", calling, type(e).__name__)
            return status(CANNOT_UNDERSTAND, f"unexpected {type(e).__name__}")

    def _store(self, event: Any, ds: Dataset, calling: str) -> Any:
        study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        kind = ACCEPTED_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID), "image")
        if str(ds.get("Manufacturer", "")) == "bonefrac":
            log.info("ignored a %s from %s: a bonefrac result, not a radiograph", kind, calling)
            return SUCCESS  # sent back to us by a routing rule: accepting it stops the loop
        if not study_uid or not sop_uid or str(ds.get("SOPClassUID", "")) != str(event.request.AffectedSOPClassUID):
            log.warning("refused a %s from %s: no Study/SOP Instance UID or wrong SOP class", kind, calling)
            return status(DOES_NOT_MATCH_SOP_CLASS, "missing UIDs or SOP Class mismatch")
        try:
            check_header(ds, f"{digest(sop_uid)}.dcm")
        except BonefracError as e:
            reason = str(e).split(": ", 1)[-1]
            log.warning("refused a %s from %s (study %s): %s", kind, calling, digest(study_uid), reason)
            return status(CANNOT_UNDERSTAND, reason)
        full = self.tracker.reserve()
        if full is not None:
            log.warning("refused a %s from %s: %s", kind, calling, full)
            return status(OUT_OF_RESOURCES, full)
        try:
            path = self.spool.write(study_uid, sop_uid, event.encoded_dataset())
        except OSError as e:
            self.tracker.unreserve()
            log.error("refused a %s from %s: cannot spool it (%s)", kind, calling, e.strerror or type(e).__name__)
            return status(OUT_OF_RESOURCES, "cannot store the image")
        self.tracker.add(digest(study_uid), digest(sop_uid), path, id(event.assoc))
        return SUCCESS  # only now: the image is on disk, and is predicted even if the node dies right after


def check_header(ds: Dataset, name: str) -> None:
    """Refuse, from its header alone, an image the worker could not read or should not predict: the reader's
    checks before decoding (size, photometric, pixel data length) and the modality rule."""
    from bonefrac.io.dicom import check_pixel_length, header_meta
    from bonefrac.io.modality import check_radiograph_meta

    meta = header_meta(ds, name)
    check_pixel_length(ds, name)
    check_radiograph_meta(meta, name)


def status(code: int, comment: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _log_refused(request: Any, address: str, reason: str) -> None:
    calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
    log.warning("refused an association from %s to %s at %s: %s", calling, called, address, reason)
