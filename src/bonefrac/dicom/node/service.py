"""`DicomNode`: the SCP, the tracker, the spool and the worker put together, started and stopped.

Starting: the spool is scanned first; every study an earlier run acknowledged but did not finish (stopped,
killed, crashed, power cut) is scheduled before the node listens. Stopping (Ctrl-C, SIGTERM): no new
association is accepted and open ones are aborted; the study being predicted is finished, written and sent;
the studies still being received or waiting stay in the spool, for the next start. Logs name studies by a
digest of their Study Instance UID and never write a patient identifier or a UID.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from bonefrac.dicom.node.config import NodeConfig, is_loopback
from bonefrac.dicom.node.scp import StorageSCP
from bonefrac.dicom.node.spool import Spool
from bonefrac.dicom.node.tracker import StudyTracker
from bonefrac.dicom.node.worker import Worker
from bonefrac.dicom.send import NodeConfigError

if TYPE_CHECKING:
    from bonefrac.inference.detector import FractureDetector

log = logging.getLogger("bonefrac.dicom.node")


class DicomNode:
    """The DICOM node. `start` returns at once; `run` blocks until Ctrl-C / SIGTERM (or `stop`)."""

    def __init__(self, detector: FractureDetector, config: NodeConfig, model_name: str | None = None) -> None:
        self.detector = detector
        self.config = config
        self.spool = Spool(config.out / "spool")
        self.tracker = StudyTracker(config.study_idle, config.max_pending)
        self.worker = Worker(detector, config, model_name or f"bonefrac {detector.spec.arch}", self.tracker, self.spool)
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._stopping = threading.Event()

    @property
    def processed(self) -> list[str]:
        """Study digests, in the order their results were written (for tests)."""
        return self.worker.processed

    def start(self) -> None:
        self.detector.check_operating_point(self.config.operating_point)  # fail before listening
        scp = StorageSCP(self.config, self.tracker, self.spool)  # (resolves --allow hosts: fails before listening)
        self.spool.folder.mkdir(parents=True, exist_ok=True)
        recovered = list(self.spool.recover())
        for study, paths in recovered:
            self.tracker.recovered(study, paths)
        try:
            self._server = scp.start()
        except OSError as e:
            raise NodeConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror}") from None
        for name, target in (("watch", self.tracker.watch), ("work", self.worker.run)):
            thread = threading.Thread(target=target, name=f"dicom-node-{name}", daemon=True)
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
        if recovered:
            n = sum(len(paths) for _, paths in recovered)
            log.info("resuming %d studies (%d images) received before the last stop", len(recovered), n)
        if not is_loopback(self.config.host) and not self.config.allow:
            log.warning(
                "listening beyond loopback (%s) with no --allow list: any device that reaches this port may send",
                self.config.host,
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
        studies, images = self.tracker.stop()
        for thread in self._threads:
            if not (thread.name.endswith("work") and self.worker.warming.is_set()):
                thread.join()  # (a warm-up has nothing to finish: it is left to end with the process)
        self._threads = []
        if studies:
            log.info("%d unfinished studies (%d images) stay in the spool for the next start", studies, images)
