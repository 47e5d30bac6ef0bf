"""Which studies are waiting, and when one is complete: the node's bookkeeping, shared by the SCP's threads
(images arriving, associations closing) and the worker (taking complete studies, releasing them).

A study is complete once every association that brought images of it has ended (released, or aborted by the
peer: the images acknowledged before the abort count, their sender was told they are stored) and no new image
of it has arrived for `study_idle` seconds. Studies found in the spool at start are complete at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Study:
    """One round of a study: the images received since its previous round was handed to the worker."""

    digest: str
    files: dict[str, Path] = field(default_factory=dict)  # image digest -> spooled file
    open_associations: set[int] = field(default_factory=set)
    last_received: float = field(default_factory=time.monotonic)


class StudyTracker:
    """Studies being received, studies ready for the worker, and the bound on images waiting."""

    def __init__(self, study_idle: float, max_pending: int) -> None:
        self.study_idle = study_idle
        self.max_pending = max_pending
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._studies: dict[str, Study] = {}
        self._ready: deque[Study] = deque()
        self.pending = 0  # images spooled (or being spooled) and not yet released

    def reserve(self) -> str | None:
        """Make room for one more image; None when done, else why not (the C-STORE answers out of resources).
        Reserved before the image is written, so that parallel associations cannot overshoot the bound."""
        with self._lock:
            if self.stopping.is_set():
                return "node is stopping"
            if self.pending >= self.max_pending:
                return f"{self.pending} images already waiting"
            self.pending += 1
            return None

    def unreserve(self) -> None:
        with self._lock:
            self.pending -= 1

    def add(self, study: str, image: str, path: Path, association: int) -> None:
        """Record a spooled image (reserved before); a second copy of an image replaces the first."""
        with self._lock:
            entry = self._studies.setdefault(study, Study(study))
            if image in entry.files:
                self.pending -= 1
                entry.files[image].unlink(missing_ok=True)
            entry.files[image] = path
            entry.open_associations.add(association)
            entry.last_received = time.monotonic()

    def recovered(self, study: str, paths: list[Path]) -> None:
        """Schedule a study found in the spool at start (its images were acknowledged by an earlier run)."""
        with self._changed:
            self.pending += len(paths)
            self._ready.append(Study(study, {p.name.split(".", 1)[0]: p for p in paths}))
            self._changed.notify_all()

    def closed(self, association: int) -> None:
        with self._changed:
            for study in self._studies.values():
                study.open_associations.discard(association)
            self._changed.notify_all()

    def watch(self) -> None:
        """Move complete studies to the ready queue until `stop` (run in a thread of its own)."""
        while not self.stopping.is_set():
            with self._changed:
                now = time.monotonic()
                done = [
                    key
                    for key, s in self._studies.items()
                    if not s.open_associations and now - s.last_received >= self.study_idle
                ]
                for key in done:
                    self._ready.append(self._studies.pop(key))
                if done:
                    self._changed.notify_all()
                self._changed.wait(min(0.2, self.study_idle / 4 or 0.05))

    def next_ready(self) -> Study | None:
        """The next complete study, waiting for one; None once stopping."""
        with self._changed:
            while not self._ready and not self.stopping.is_set():
                self._changed.wait()
            return None if self.stopping.is_set() else self._ready.popleft()

    def release(self, study: Study) -> None:
        with self._lock:
            self.pending -= len(study.files)

    def stop(self) -> tuple[int, int]:
        """Stop handing out studies; returns (studies, images) left waiting (they stay in the spool)."""
        with self._changed:
            self.stopping.set()
            self._changed.notify_all()
            left = list(self._ready) + list(self._studies.values())
        return len(left), sum(len(s.files) for s in left)
