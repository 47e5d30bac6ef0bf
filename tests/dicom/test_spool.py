"""The node's spool on its own (no network, no model): what was acknowledged survives a stop or a crash and
comes back on the next start; what was never acknowledged (a half-written temporary file) does not."""

from __future__ import annotations

import os
from pathlib import Path

from bonefrac.dicom.node.spool import Spool, digest
from bonefrac.dicom.node.tracker import StudyTracker

STUDY, OTHER = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def test_spooled_images_are_named_by_digests_only_and_recovered_by_study(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = spool.write(STUDY, f"{STUDY}.1", b"first view")
    b = spool.write(STUDY, f"{STUDY}.2", b"second view")
    c = spool.write(OTHER, f"{OTHER}.1", b"other study")
    assert a.parent == b.parent == spool.folder / digest(STUDY) and c.parent == spool.folder / digest(OTHER)
    assert not [p for p in spool.folder.rglob("*") if STUDY in p.name or OTHER in p.name]  # no UID in a name
    # A crash between the write and the rename: the temporary file was never acknowledged.
    (a.parent / ".tmp-half.dcm").write_bytes(b"half")
    # A new process (a restart) sees the same folder.
    found = dict(Spool(tmp_path / "spool").recover())
    assert {k: sorted(p.read_bytes() for p in v) for k, v in found.items()} == {
        digest(STUDY): [b"first view", b"second view"],
        digest(OTHER): [b"other study"],
    }
    assert not (a.parent / ".tmp-half.dcm").exists()


def test_of_two_copies_of_an_image_the_newer_is_recovered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    old = spool.write(STUDY, f"{STUDY}.1", b"old")
    new = spool.write(STUDY, f"{STUDY}.1", b"new")
    os.utime(old, ns=(1, 1))  # (mtimes can tie on coarse filesystems: make the order explicit)
    ((_, paths),) = list(spool.recover())
    assert [p.read_bytes() for p in paths] == [b"new"] and not old.exists() and new.exists()


def test_release_removes_the_study_folder_unless_a_later_round_arrived(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.write(STUDY, f"{STUDY}.1", b"round one")
    later = spool.write(STUDY, f"{STUDY}.1", b"round two: the same image sent again while round one was predicted")
    spool.release([first])
    assert later.exists() and not first.exists()
    spool.release([later])
    assert not (spool.folder / digest(STUDY)).exists()
    spool.move([spool.write(STUDY, f"{STUDY}.3", b"x")], tmp_path / "unpredicted")
    assert [p.read_bytes() for p in (tmp_path / "unpredicted").iterdir()] == [b"x"] and not list(spool.recover())


def test_recovered_studies_are_ready_at_once_and_count_against_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.write(STUDY, f"{STUDY}.{i}", b"view")
    tracker = StudyTracker(study_idle=600, max_pending=3)
    for study, paths in spool.recover():
        tracker.recovered(study, paths)
    assert tracker.reserve() == "3 images already waiting"
    ready = tracker.next_ready()  # no idle wait: their associations ended with the earlier run
    assert ready is not None and ready.digest == digest(STUDY) and len(ready.files) == 3
    tracker.release(ready)
    assert tracker.pending == 0 and tracker.reserve() is None
