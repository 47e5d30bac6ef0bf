"""The REST API and page through FastAPI's TestClient: real fixture radiographs as JPEG, PNG and DICOM, every
kind of bad upload, limits, concurrency, no patient data or stack trace ever leaving the server, the access
token, and `bonefrac serve` (refusing an exposed server without a token, importing FastAPI only to serve)."""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_helpers import (
    IMAGES,
    PATIENT_ID,
    PATIENT_NAME,
    bomb_png,
    dicom_bytes,
    fixture_images,
    make_test_model,
    png_bytes,
)

from bonefrac import FractureDetector, read_image
from bonefrac.apps.server.app import bundled_model_card, create_app, sanitize_filename
from bonefrac.apps.server.middleware import TokenAuth, UploadLimit
from bonefrac.apps.server.settings import TOKEN_ENV, ServerSettings, ServerSettingsError
from bonefrac.io.read import ImageReadWarning
from bonefrac.render import render_overlay

PREDICTION_KEYS = {
    "path",
    "probability",
    "fractured",
    "threshold",
    "boxes",
    "operating_point",
    "operating_points",
    "peak",
    "width",
    "height",
    "model_version",
}
SECRETS = (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, "19700101")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def det(model_path: Path) -> FractureDetector:
    return FractureDetector.load(model_path, backend="torch")


@pytest.fixture(scope="module")
def client(det: FractureDetector) -> TestClient:
    return TestClient(create_app(det))


@pytest.fixture
def fracture_jpeg() -> Path:
    return fixture_images(fractured=True)[0]


def post(client: TestClient, name: str, data: bytes, **params: str) -> tuple[int, dict]:
    r = client.post("/api/predict", files={"file": (name, data)}, params=params)
    assert "Traceback" not in r.text
    return r.status_code, r.json()


def decode_png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


# ---------------------------------------------------------------- the good path
def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no external asset, works offline
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for anchor in ('id="file-input"', 'id="op-select"', 'id="toggle-heatmap"', 'id="opacity"', "/api/predict"):
        assert anchor in r.text


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN: works offline
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])


def test_predict_jpeg_is_the_detectors_prediction(
    client: TestClient, det: FractureDetector, fracture_jpeg: Path
) -> None:
    status, body = post(client, fracture_jpeg.name, fracture_jpeg.read_bytes())
    assert status == 200
    assert PREDICTION_KEYS <= set(body) and body["path"] == fracture_jpeg.name
    expected = det.predict(fracture_jpeg).to_dict()
    assert {k: body[k] for k in expected if k != "path"} == {k: v for k, v in expected.items() if k != "path"}
    assert body["thresholds"] == det.operating_points
    assert body["model_version"] == "test-seed_cnn-64"
    image, heat, overlay = (decode_png(body[k]) for k in ("image_png", "heatmap_png", "overlay_png"))
    assert image.size == (body["width"], body["height"])
    assert max(heat.size) == 256 and abs(heat.size[0] / heat.size[1] - image.size[0] / image.size[1]) < 0.01
    assert image.mode == "L" and heat.mode == "RGBA" and overlay.mode == "RGB"
    assert heat.getextrema()[3][1] > 0  # alpha follows the heat: somewhere the model looks
    cli_overlay = render_overlay(
        read_image(fracture_jpeg), det.predict(fracture_jpeg), operating_points=det.operating_points
    )
    assert overlay.size == cli_overlay.size and overlay.tobytes() == cli_overlay.tobytes()  # `--overlay-dir`'s


@pytest.mark.parametrize("op", ["default", "high_sensitivity", "high_specificity"])
def test_operating_point_matches_detector(client: TestClient, det: FractureDetector, op: str) -> None:
    for path in fixture_images()[:4]:
        status, body = post(client, path.name, path.read_bytes(), operating_point=op, images="false")
        assert status == 200 and "image_png" not in body
        expected = det.predict(path, operating_point=op).to_dict()
        assert {k: body[k] for k in expected if k != "path"} == {k: v for k, v in expected.items() if k != "path"}
        # Boxes for re-deciding on the page: the heatmap's boxes whatever the decision; the decided ones are them.
        assert body["detections"]
        assert body["boxes"] == (body["detections"] if body["fractured"] else [])


def test_png_and_dicom_give_the_jpegs_answer(client: TestClient, fracture_jpeg: Path) -> None:
    _, ref = post(client, "a.jpg", fracture_jpeg.read_bytes(), images="false")
    for name, data in (
        ("a.png", png_bytes(fracture_jpeg)),
        ("a.dcm", dicom_bytes(fracture_jpeg)),
        ("no_extension", dicom_bytes(fracture_jpeg)),
    ):
        status, body = post(client, name, data)
        assert status == 200, body
        assert (body["width"], body["height"]) == (ref["width"], ref["height"])
        assert body["probability"] == pytest.approx(ref["probability"], abs=2e-3)
        assert decode_png(body["image_png"]).size == (ref["width"], ref["height"])


def test_upload_name_is_sanitised(client: TestClient, fracture_jpeg: Path) -> None:
    status, body = post(client, "../../etc\\evil:*.jpg", fracture_jpeg.read_bytes(), images="false")
    assert status == 200 and body["path"] == "evil__.jpg"
    assert sanitize_filename("a\x00b\x07\nc.png") == "a_b__c.png"
    assert sanitize_filename(None) == sanitize_filename("..") == sanitize_filename("/") == "upload"
    assert sanitize_filename("C:\\scans\\hand.dcm") == "hand.dcm"
    long = sanitize_filename("x" * 500 + ".dcm")
    assert len(long) == 120 and long.endswith(".dcm")


def test_truncated_jpeg_is_read_with_a_warning(client: TestClient) -> None:
    data = (IMAGES / "IMG0004228.jpg").read_bytes()  # labelled jpeg_truncated in the fixtures
    with pytest.warns(ImageReadWarning):
        status, body = post(client, "cut.jpg", data, images="false")
    assert status == 200 and len(body["warnings"]) == 1
    assert re.fullmatch(r"cut\.jpg: JPEG file is truncated; \d+% of rows missing \(filled grey\)", body["warnings"][0])
    # A stub with most of the image gone is refused, not guessed at.
    status, body = post(client, "stub.jpg", data[: len(data) // 3], images="false")
    assert status == 415 and "missing" in body["error"]


# ---------------------------------------------------------------- bad input: 4xx with {"error"}, never a 500
@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("empty.jpg", b"", 415),
        ("notes.txt", b"patient had a fall, check the wrist\n" * 20, 415),
        ("noise.png", random.Random(0).randbytes(4096), 415),
        ("fake.jpg", b"\xff\xd8\xff\xe0" + random.Random(1).randbytes(2000), 415),  # JPEG magic, garbage after
        ("nopixels.dcm", dicom_bytes(None), 415),
        ("bomb.png", bomb_png(), 413),
    ],
)
def test_bad_uploads_are_refused_readably(client: TestClient, name: str, data: bytes, status: int) -> None:
    start = time.perf_counter()
    got, body = post(client, name, data)
    assert got == status and set(body) == {"error"} and body["error"]
    assert time.perf_counter() - start < 5  # the bomb is refused from its header, never decoded


def test_missing_file_field_is_422(client: TestClient, fracture_jpeg: Path) -> None:
    for kwargs in ({}, {"files": {"image": ("a.jpg", fracture_jpeg.read_bytes())}}, {"content": b"raw bytes"}):
        r = client.post("/api/predict", **kwargs)
        assert r.status_code == 422 and set(r.json()) == {"error"} and "file" in r.json()["error"]


def test_unknown_operating_point_is_422(client: TestClient, fracture_jpeg: Path) -> None:
    status, body = post(client, "a.jpg", fracture_jpeg.read_bytes(), operating_point="bogus")
    assert status == 422 and "high_sensitivity" in body["error"]


def test_unknown_route_and_method_give_json_errors(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.get("/api/predict")
    assert r.status_code == 405 and set(r.json()) == {"error"}


def test_upload_over_the_limit_is_413(det: FractureDetector) -> None:
    small = TestClient(create_app(det, ServerSettings(max_upload_mb=0.01)))  # ~10 KB
    big = os.urandom(64 * 1024)
    r = small.post("/api/predict", files={"file": ("big.jpg", big)})  # refused from Content-Length
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # A well-formed multipart body sent chunked (no Content-Length): refused by counting as it streams.
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
    body = head + big + b"\r\n--x--\r\n"
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
    r = small.post("/api/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert "content-length" not in r.request.headers


def test_body_is_never_read_past_the_limit() -> None:
    """Straight at the middleware: a body streaming in 1 KB messages is cut off just past 10 KB."""
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": pulled < 1000}

    async def app(scope: dict, receive_, send) -> None:  # an app that would read everything
        while (await receive_()).get("more_body"):
            pass

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(UploadLimit(app, max_bytes=10 * 1024), {"type": "http", "headers": []}, receive, send)
    assert sent[0]["status"] == 413 and pulled == 11


def test_internal_error_is_a_bare_500_logged_server_side(
    det: FractureDetector, fracture_jpeg: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("model exploded at /srv/secret/path")

    monkeypatch.setattr(det, "predict", broken)
    caplog.set_level(logging.ERROR, logger="bonefrac.apps.server.app")
    r = TestClient(create_app(det), raise_server_exceptions=False).post(
        "/api/predict", files={"file": ("a.jpg", fracture_jpeg.read_bytes())}
    )
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert "exploded" not in r.text and "Traceback" not in r.text
    assert any("Traceback" in rec.getMessage() and "exploded" in rec.getMessage() for rec in caplog.records)


def test_no_patient_data_in_responses_or_logs(
    client: TestClient, fracture_jpeg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = client.post("/api/predict", files={"file": ("study.dcm", dicom_bytes(fracture_jpeg))})
    bad = client.post("/api/predict", files={"file": ("nopixels.dcm", dicom_bytes(None))})
    assert (good.status_code, bad.status_code) == (200, 415)
    assert "-> 200 " in caplog.text and "-> 415 refused: " in caplog.text  # the logs were captured
    # The pictures are checked decoded: three letters like "Doe" turn up in any long base64 text by chance.
    pngs = {k: base64.b64decode(good.json().pop(k)) for k in ("image_png", "heatmap_png", "overlay_png")}
    fields = {k: v for k, v in good.json().items() if k not in pngs}
    texts = [str(fields), bad.text, caplog.text, *(str(rec.args) for rec in caplog.records)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    for data in pngs.values():  # compressed bytes: only the long secrets are meaningful to look for
        assert PATIENT_NAME.encode() not in data and PATIENT_ID.encode() not in data


def test_uploads_are_deleted(
    client: TestClient, fracture_jpeg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    post(client, "a.jpg", fracture_jpeg.read_bytes())
    post(client, "bad.jpg", b"not an image")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- model card
def test_model_facts(client: TestClient) -> None:
    r = client.get("/api/model")
    assert r.status_code == 200 and "/secret" not in r.text
    m = r.json()
    assert m["version"] == "test-seed_cnn-64" and m["arch"] == "seed_cnn" and m["image_size"] == 64
    assert m["operating_points"] == {"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
    assert m["kind"] == "classifier"
    assert m["calibration"] == {"scale": 1.0, "bias": 0.0, "fitted": None}  # never fitted: the identity
    assert m["training"]["dataset"] == "fracatlas" and m["training"]["n_train"] == 100
    assert m["training"]["config"] == {"arch": "seed_cnn", "epochs": 3, "dataset": "fracatlas"}
    assert m["validation"]["auc"] == 0.71 and m["validation"]["auc_ci95"] == [0.6, None]  # NaN -> null
    assert m["model_card"] is None  # the bundled card describes the bundled weights only


def test_model_facts_without_info(det: FractureDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(det, "info", {})
    m = TestClient(create_app(det)).get("/api/model").json()
    assert m["validation"] is None and m["training"]["n_train"] is None


def test_bundled_model_card_only_for_its_weights(tmp_path: Path) -> None:
    (tmp_path / "MODEL_CARD.md").write_text("# card\n")
    (tmp_path / "model.pt.sha256").write_text("abc123  model.pt\n")
    assert bundled_model_card("abc123", tmp_path) == "# card\n"
    assert bundled_model_card("other", tmp_path) is None
    assert bundled_model_card("abc123", tmp_path / "missing") is None


# ---------------------------------------------------------------- concurrency
def test_inference_is_bounded_and_off_the_event_loop(
    det: FractureDetector, fracture_jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_predict, release, entered = det.predict, threading.Event(), threading.Semaphore(0)
    lock, running, peak = threading.Lock(), [0], [0]

    def gated(*args: object, **kwargs: object) -> object:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        entered.release()
        try:
            release.wait(20)
            return real_predict(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(det, "predict", gated)
    data = fracture_jpeg.read_bytes()
    with TestClient(create_app(det, ServerSettings(concurrency=1))) as c:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(c.post("/api/predict", files={"file": ("a.jpg", data)}).status_code)
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert entered.acquire(timeout=10)
        start = time.perf_counter()
        assert c.get("/healthz").status_code == 200  # answered while a prediction blocks its thread
        assert time.perf_counter() - start < 2
        time.sleep(0.3)
        assert running[0] == 1  # the other two wait for the limiter, not in the model
        release.set()
        for t in threads:
            t.join(30)
    assert results == [200, 200, 200] and peak[0] == 1


# ---------------------------------------------------------------- access token
TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def locked(det: FractureDetector) -> TestClient:
    return TestClient(create_app(det, ServerSettings(token=TOKEN)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_is_required(locked: TestClient, fracture_jpeg: Path) -> None:
    upload = {"file": ("a.jpg", fracture_jpeg.read_bytes())}
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
        r = locked.get("/api/model", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {
            "error": "this server needs an access token: send the header 'Authorization: Bearer <token>'"
        }
    for wrong in ("wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        for r in (
            locked.get("/api/model", headers=bearer(wrong)),
            locked.post("/api/predict", files=upload, headers=bearer(wrong)),
        ):
            assert r.status_code == 401 and r.json() == {"error": "wrong access token"}
            assert "invalid_token" in r.headers["www-authenticate"]
    assert locked.get("/nope").status_code == 401  # deny by default: unknown paths too
    assert locked.get("/api/model", headers=bearer(TOKEN)).json()["version"] == "test-seed_cnn-64"
    assert locked.get("/api/model", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    r = locked.post("/api/predict", files=upload, headers=bearer(TOKEN), params={"images": "false"})
    assert r.status_code == 200 and 0 <= r.json()["probability"] <= 1


def test_open_paths_without_the_token(locked: TestClient) -> None:
    """The page (it asks for the token), the liveness probe and the API docs answer without it."""
    assert locked.get("/").status_code == 200 and 'id="token-form"' in locked.get("/").text
    assert locked.get("/healthz").json() == {"status": "ok"}
    assert locked.get("/docs").status_code == 200
    assert locked.get("/docs-assets/swagger-ui.css").status_code == 200
    spec = locked.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"  # /docs offers Authorize
    assert "security" in spec["paths"]["/api/predict"]["post"] and "security" not in spec["paths"]["/healthz"]["get"]


def test_tokens_are_compared_in_constant_time(locked: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import bonefrac.apps.server.middleware as middleware

    calls: list[tuple[bytes, bytes]] = []
    real = middleware.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    assert locked.get("/api/model", headers=bearer("x")).status_code == 401
    assert locked.get("/api/model", headers=bearer(TOKEN)).status_code == 200
    # Digests of equal length whatever the token's: neither its value nor its length leaks through timing.
    assert len(calls) == 2 and {len(a) for pair in calls for a in pair} == {32}


def test_no_token_no_body_read() -> None:
    """A request without the token is answered from its headers: not one body message is pulled."""
    pulled, reached = 0, False

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def app(scope: dict, receive_, send) -> None:
        nonlocal reached
        reached = True

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": [], "client": ("10.0.0.9", 1)}
    anyio.run(TokenAuth(app, token=TOKEN), scope, receive, send)
    assert sent[0]["status"] == 401 and pulled == 0 and not reached


def test_exposed_server_needs_a_token() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.20", "fracture-server.example.org"):
        with pytest.raises(ServerSettingsError, match=f"serving on {re.escape(host)} .* needs an access token"):
            ServerSettings(host=host)
        assert ServerSettings(host=host, token=TOKEN).token == TOKEN
        insecure = ServerSettings(host=host, insecure_no_token=True)
        assert any("NO ACCESS TOKEN" in w for w in insecure.warnings())
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert ServerSettings(host=host).warnings() == []  # loopback: no token needed, nothing to warn about
    assert any("TLS" in w for w in ServerSettings(host="0.0.0.0", token=TOKEN).warnings())
    assert any("6 characters" in w for w in ServerSettings(token="s3cret").warnings())
    for bad in ("two words", "tab\there", "naïve", ""):
        with pytest.raises(ServerSettingsError, match="printable ASCII"):
            ServerSettings(token=bad)
    assert TOKEN not in repr(ServerSettings(token=TOKEN))  # settings may be logged; the token never is
    with pytest.raises(ValueError):
        ServerSettings(concurrency=0)


# ---------------------------------------------------------------- bonefrac serve
def bonefrac(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != TOKEN_ENV}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env={**env, "PYTHONWARNINGS": "ignore"}
    )


def test_serve_refuses_an_exposed_address_without_a_token(tmp_path: Path) -> None:
    start = time.perf_counter()
    r = bonefrac("-m", "bonefrac", "serve", "--host", "0.0.0.0", "--model", str(tmp_path / "never-loaded.pt"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "bonefrac: error: serving on 0.0.0.0 (reachable from other machines) needs an access token: set "
        "BONEFRAC_TOKEN or pass --token, or pass --insecure-no-token to serve without one"
    ]
    assert time.perf_counter() - start < 30  # refused before the model (which does not exist) is looked at


def test_serve_takes_the_token_from_the_environment(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bonefrac.apps.server.app
    from bonefrac.apps.cli import main

    served: list[ServerSettings] = []
    monkeypatch.setattr(bonefrac.apps.server.app, "serve", lambda det, settings, sock: served.append(settings))
    monkeypatch.setattr(ServerSettings, "bind", lambda self: socket.socket())  # no port taken by this test
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # the test run's logging stays as it is
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-0123456789")
    args = ["serve", "--host", "0.0.0.0", "--port", "8765", "--model", str(model_path), "--backend", "torch"]
    assert main(args) == 0 and main([*args, "--token", TOKEN]) == 0
    assert [s.token for s in served] == ["from-the-environment-0123456789", TOKEN]  # --token wins
    assert (served[0].host, served[0].port, served[0].max_upload_mb, served[0].concurrency) == ("0.0.0.0", 8765, 50, 2)
    monkeypatch.setenv(TOKEN_ENV, "")  # an empty variable is no token
    assert main(args) == 1 and main([*args, "--insecure-no-token"]) == 0
    assert served[-1].token is None and served[-1].insecure_no_token


def test_serve_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    from bonefrac.apps.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and text.startswith("usage: bonefrac serve")
    for default in ("default 127.0.0.1", "default 8000", "default 50", "default 2", "default auto", "bundled model"):
        assert default in text
    assert f"default: ${TOKEN_ENV} if set" in text and "--insecure-no-token" in text


def test_predict_does_not_import_the_server(model_path: Path, fracture_jpeg: Path) -> None:
    """`bonefrac predict` starts fast: FastAPI, Starlette and uvicorn are imported by `serve` only. Importing
    the server module configures no logging (that is the `serve` command's job)."""
    r = bonefrac(
        "-X", "importtime", "-m", "bonefrac", "predict", str(fracture_jpeg), "--model", str(model_path),
        "--backend", "torch", "--json", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0 and '"probability"' in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "bonefrac.apps.cli" in imported and "bonefrac.inference.detector" in imported  # the import log is there
    server_side = {m for m in imported if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")}
    assert server_side | ({"bonefrac.apps.server.app", "bonefrac.apps.server.middleware"} & imported) == set()
    code = (
        "import logging, bonefrac.apps.server.app; print(len(logging.getLogger().handlers), logging.getLogger().level)"
    )
    assert bonefrac("-c", code).stdout.split() == ["0", str(logging.WARNING)]


def test_an_upload_that_is_not_a_radiograph_is_refused_unless_the_server_allows_any_modality(
    det: FractureDetector,
) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    status, body = post(TestClient(create_app(det)), ct.name, ct.read_bytes())
    assert status == 415 and "modality CT" in body["error"]
    allowing = TestClient(create_app(det, ServerSettings(any_modality=True)))
    status, body = post(allowing, ct.name, ct.read_bytes(), images="false")
    assert status == 200 and any("modality CT" in w for w in body["warnings"])


# ---------------------------------------------------------------- the request log: no identifiers
PATIENT_FILE = "DOE^JOHN_12345.jpg"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]


@pytest.mark.parametrize("log_filenames", [False, True])
def test_the_request_log_has_no_file_names_unless_asked(
    det: FractureDetector, caplog: pytest.LogCaptureFixture, log_filenames: bool
) -> None:
    truncated = (IMAGES / "IMG0004228.jpg").read_bytes()  # read with a warning that names the file
    client = TestClient(create_app(det, ServerSettings(log_filenames=log_filenames)))
    caplog.set_level(logging.DEBUG)
    with pytest.warns(ImageReadWarning):
        good = client.post("/api/predict", files={"file": (PATIENT_FILE, truncated)}, params={"images": "false"})
    bad = client.post("/api/predict", files={"file": ("DOE^JOHN_notes.jpg", b"not an image at all")})
    assert (good.status_code, bad.status_code) == (200, 415)
    assert PATIENT_FILE in good.json()["path"] and "DOE^JOHN_notes.jpg" in bad.json()["error"]  # the client's own
    lines = request_lines(caplog)
    assert len(lines) == 2  # one line per request
    ids = [good.headers["x-request-id"], bad.headers["x-request-id"]]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)
    size = f"{len(truncated) / 1000:.0f}"
    assert re.fullmatch(
        rf"request {ids[0]}: POST /api/predict, {size[:-1]}\d\.\d kB received -> 200 (FRACTURE|no fracture) "
        rf"p=0\.\d{{3}} "
        rf"at default, 1 warning\(s\)( \(file '{re.escape(PATIENT_FILE)}'\))? in \d+ ms",
        lines[0],
    ), lines[0]
    assert lines[1].startswith(f"request {ids[1]}: POST /api/predict, ")
    assert "-> 415 refused: not a recognised" in lines[1]
    everything = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert ("DOE" in everything) == log_filenames
    if log_filenames:
        assert f"(file '{PATIENT_FILE}')" in lines[0] and "(file 'DOE^JOHN_notes.jpg')" in lines[1]


def test_refusals_are_logged_once_with_their_reason(det: FractureDetector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    locked = TestClient(create_app(det, ServerSettings(token=TOKEN, max_upload_mb=0.01)))
    assert locked.get("/api/model").status_code == 401
    big = locked.post("/api/predict", files={"file": (PATIENT_FILE, os.urandom(64 * 1024))}, headers=bearer(TOKEN))
    assert big.status_code == 413
    lines = request_lines(caplog)
    assert len(lines) == 2 and "GET /api/model, 0 B received -> 401 no access token (from testclient)" in lines[0]
    assert "-> 413 upload over the 0.01 MB limit" in lines[1] and "DOE" not in caplog.text


def test_internal_errors_leave_the_file_name_out_of_the_traceback(
    det: FractureDetector, fracture_jpeg: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path, **kwargs: object) -> None:
        raise RuntimeError(f"could not handle {path}")

    monkeypatch.setattr(det, "predict", broken)
    caplog.set_level(logging.DEBUG)
    r = TestClient(create_app(det)).post("/api/predict", files={"file": (PATIENT_FILE, fracture_jpeg.read_bytes())})
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert "could not handle" in caplog.text and "<upload>" in caplog.text and "DOE" not in caplog.text
    assert request_lines(caplog)[-1].split(" -> ")[1].startswith("500 internal error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = bonefrac("-m", "bonefrac", "serve", "--port", str(port), "--model", str(tmp_path / "never-loaded.pt"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"bonefrac: error: cannot serve on 127.0.0.1:{port}: address already in use"]


@pytest.mark.slow
def test_a_real_server_logs_no_file_names(model_path: Path, tmp_path: Path) -> None:
    """`bonefrac serve` in its own process: its whole stderr (uvicorn's lines, Python warnings, the request log)
    holds no uploaded file name, and the port it says it serves on is the one it took (here chosen by the OS)."""
    import httpx

    log = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bonefrac", "serve", "--port", "0", "--model", str(model_path),
             "--backend", "torch"],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = found.group(1)
        while "Application startup complete" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        truncated = (IMAGES / "IMG0004228.jpg").read_bytes()
        ok = httpx.post(url + "api/predict", files={"file": (PATIENT_FILE, truncated)}, timeout=60)
        bad = httpx.post(url + "api/predict", files={"file": ("DOE^JOHN_notes.jpg", b"no image")}, timeout=60)
        assert (ok.status_code, bad.status_code) == (200, 415) and ok.json()["warnings"]
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert f"request {ok.headers['x-request-id']}: POST /api/predict" in text and "-> 415 refused" in text
    assert "DOE" not in text and "JOHN" not in text
