"""bonefrac against a real PACS: Orthanc on loopback (its own config, free ports, storage in tmp) sends a
study to the bonefrac node and gets the SR and the overlays back in the same study.

1. The command a hospital runs (`bonefrac dicom-node` as a subprocess, stopped with SIGTERM), Orthanc asked
   through its REST API to C-STORE the study: the SR's probabilities equal `bonefrac predict --json`'s.
2. The Lua auto-routing script of the README (tools/orthanc-route-to-bonefrac.lua): uploading is enough.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _models import make_checkpoint
from dicom_helpers import free_port, radiograph_study

from bonefrac.apps.predict import PredictOptions, run_predict
from bonefrac.dicom.node import Destination, DicomNode, NodeConfig
from bonefrac.dicom.report import report_probabilities
from bonefrac.inference.detector import FractureDetector

ROUTE_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "orthanc-route-to-bonefrac.lua"


class Orthanc:
    """An Orthanc server on loopback with the bonefrac node as modality "bonefrac"."""

    def __init__(self, folder: Path, node_port: int, lua: Path | None = None) -> None:
        binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            pytest.skip("Orthanc not installed (`make dicom-tools` installs Debian's orthanc as root)")
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "bonefrac-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"bonefrac": ["BONEFRAC", "127.0.0.1", node_port]},
            "Plugins": [],
            "StableAge": 1,
            "LuaScripts": [str(lua)] if lua else [],
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text(errors='replace')}")
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, body: bytes | dict) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return json.loads(self.request("POST", path, data))

    def upload(self, paths: list[Path]) -> str:
        """Upload DICOM files; returns Orthanc's id of their (one) study."""
        studies = {self.post("/instances", p.read_bytes())["ParentStudy"] for p in paths}
        assert len(studies) == 1
        return studies.pop()

    def wait_for_instances(self, study: str, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            instances = self.get(f"/studies/{study}/instances")
            if len(instances) >= n or time.monotonic() > deadline:
                return instances
            time.sleep(0.2)

    def modality(self, instance: dict) -> str:
        return self.get(f"/series/{instance['ParentSeries']}")["MainDicomTags"]["Modality"]

    def dataset(self, instance: dict) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.request("GET", f"/instances/{instance['ID']}/file")))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "m.pt")


def _node_command(model: Path, port: int, orthanc: Orthanc, out: Path, study_idle: float = 0.5) -> list[str]:
    cmd = [sys.executable, "-m", "bonefrac", "dicom-node", "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--out", str(out), "--study-idle", str(study_idle)]
    return cmd + ["--model", str(model), "--backend", "torch"]


def _start_node_command(model: Path, port: int, orthanc: Orthanc, out: Path) -> subprocess.Popen[str]:
    return _start(_node_command(model, port, orthanc, out))


def _start(cmd: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "listening as BONEFRAC" not in line:
        proc.kill()
        pytest.fail(f"bonefrac dicom-node did not start: {line}{proc.stderr.read()}")
    return proc


def test_orthanc_stores_the_study_to_the_node_and_gets_sr_and_overlays_back(model: Path, tmp_path: Path) -> None:
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    node = None
    try:
        node = _start_node_command(model, node_port, orthanc, tmp_path / "results")
        views = radiograph_study(tmp_path / "in")
        study = orthanc.upload(views)
        job = orthanc.post("/modalities/bonefrac/store", {"Resources": [study], "Synchronous": True})
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 2
        instances = orthanc.wait_for_instances(study, 5)
        assert sorted(orthanc.modality(i) for i in instances) == ["DX", "DX", "OT", "OT", "SR"]
        assert len(orthanc.get("/studies")) == 1  # the results joined the study: no new study appeared
        (sr,) = [orthanc.dataset(i) for i in instances if orthanc.modality(i) == "SR"]
        source = pydicom.dcmread(views[0], stop_before_pixels=True)
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
        # What `bonefrac predict --json` prints for the same files (its writer, in this process: no second
        # interpreter start).
        out = io.StringIO()
        detector = FractureDetector.load(model, backend="torch")
        assert run_predict(detector, [str(p) for p in views], PredictOptions(json=True, progress=False), out) == 0
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        uid = {str(p): str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in views}
        expected = {uid[d["path"]]: d["probability"] for d in lines}  # each view by its SOP Instance UID
        expected["study"] = max(expected.values())
        assert report_probabilities(sr) == pytest.approx(expected, abs=1e-6)  # (--json rounds to 6 decimals)
        node.send_signal(signal.SIGTERM)
        # (generous: the interpreter's exit after torch has run took 12-36 s on a loaded 2-core host)
        assert node.wait(timeout=120) == 0
        assert node.stderr is not None and "stopping" in node.stderr.read()
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        orthanc.stop()


def test_kill_9_right_after_the_acknowledgement_loses_nothing(model: Path, tmp_path: Path) -> None:
    """Orthanc was told Success for every image, so it will not send them again: the node killed with SIGKILL
    before predicting (a study idle time it never reaches) finds them in its spool when the same command starts
    again, and the SR and overlays arrive."""
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    command = _node_command(model, node_port, orthanc, tmp_path / "results", study_idle=600)
    node = None
    try:
        node = _start(command)
        study = orthanc.upload(radiograph_study(tmp_path / "in"))
        job = orthanc.post("/modalities/bonefrac/store", {"Resources": [study], "Synchronous": True})
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 2  # both acknowledged
        node.kill()
        node.wait(timeout=30)
        assert len(orthanc.get(f"/studies/{study}/instances")) == 2  # nothing came back before the kill
        assert len(list((tmp_path / "results" / "spool").rglob("*.dcm"))) == 2
        node = _start(command)
        instances = orthanc.wait_for_instances(study, 5)
        assert sorted(orthanc.modality(i) for i in instances) == ["DX", "DX", "OT", "OT", "SR"]
        deadline = time.monotonic() + 30  # the spool empties once the results are sent
        while list((tmp_path / "results" / "spool").rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list((tmp_path / "results" / "spool").rglob("*.dcm"))
        node.send_signal(signal.SIGTERM)
        # (generous: the interpreter's exit after torch has run took 12-36 s on a loaded 2-core host)
        assert node.wait(timeout=120) == 0
        assert node.stderr is not None and "resuming 1 studies (2 images)" in node.stderr.read()
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        orthanc.stop()


@pytest.fixture
def detector(model: Path) -> FractureDetector:
    return FractureDetector.load(model, backend="torch")


@pytest.fixture
def routed(detector: FractureDetector, tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with the README's Lua routing script, and a node (in-process: started in milliseconds)."""
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port, lua=ROUTE_SCRIPT)
    node = DicomNode(
        detector,
        NodeConfig(
            port=node_port,
            host="127.0.0.1",
            out=tmp_path / "results",
            send_to=Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
            study_idle=0.3,
        ),
    )
    node.start()
    yield orthanc
    node.stop()
    orthanc.stop()


def test_the_readme_lua_script_routes_new_radiographs_and_only_them(routed: Orthanc, tmp_path: Path) -> None:
    study = routed.upload(radiograph_study(tmp_path / "in"))
    instances = routed.wait_for_instances(study, 5)
    assert sorted(routed.modality(i) for i in instances) == ["DX", "DX", "OT", "OT", "SR"]
    time.sleep(2.5)  # the results' own series become stable too: the script must not send them round again
    assert len(routed.get(f"/studies/{study}/instances")) == 5
    jobs = [routed.get(f"/jobs/{j}") for j in routed.get("/jobs")]
    assert [j["State"] for j in jobs] == ["Success"]
