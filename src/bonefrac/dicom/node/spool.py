"""The node's spool: every acknowledged image is on disk, durably, until its study's results are sent.

Layout: `<out>/spool/<study digest>/<image digest>.<nonce>.dcm`. A C-STORE is answered Success only after
`Spool.write` has returned: the bytes are written to a hidden temporary file, fsync'd, renamed to their final
name and the folder fsync'd (so the name survives a power cut too, not only the bytes). A crash or `kill -9`
between the write and the rename leaves a temporary file, which was never acknowledged and is deleted by
`recover`; everything else in the spool was acknowledged, and `recover` hands it back on the next start.

Names carry digests only (never a UID or a patient identifier). The nonce keeps two copies of one image
apart: a copy that arrives while the first is being predicted must not overwrite the file the worker reads,
nor be deleted with it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from bonefrac.dicom.report import study_digest as digest

SUFFIX = ".dcm"
_TEMPORARY = ".tmp-"


class Spool:
    """The folder of received images waiting for their study's results to be sent."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Store one image durably and return its path; only then may its C-STORE be acknowledged."""
        study = self.folder / digest(study_uid)
        if not study.is_dir():
            study.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.folder)  # the new study folder's own name must survive a power cut as well
            _fsync_dir(self.folder.parent)
        name = f"{digest(sop_uid)}.{uuid.uuid4().hex[:8]}{SUFFIX}"
        tmp = study / f"{_TEMPORARY}{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(study / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(study)
        return study / name

    def recover(self) -> Iterator[tuple[str, list[Path]]]:
        """(study digest, its images) for every study left in the spool by an earlier run (stopped, killed or
        crashed). Temporary files (never acknowledged) are deleted; of two copies of an image the newer is kept."""
        if not self.folder.is_dir():
            return
        for study in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            for tmp in study.glob(f"{_TEMPORARY}*"):
                tmp.unlink(missing_ok=True)
            newest: dict[str, Path] = {}
            for path in sorted(study.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime_ns):
                image = path.name.split(".", 1)[0]
                if image in newest:
                    newest[image].unlink(missing_ok=True)
                newest[image] = path
            if newest:
                yield study.name, list(newest.values())
            else:
                _remove_empty(study)

    def release(self, paths: list[Path]) -> None:
        """Delete a study's images once its results are sent (or kept in `--out` as undeliverable); its folder
        goes too unless images of a later round of the study arrived meanwhile."""
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in paths}:
            _remove_empty(folder)

    def move(self, paths: list[Path], destination: Path) -> None:
        """Move a study's images out of the spool, to `destination` (a study that cannot be predicted: it must
        not come back on every start, nor be lost)."""
        destination.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.exists():
                shutil.move(path, destination / path.name)
        self.release(paths)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: a later round of the study is spooled there
        pass
