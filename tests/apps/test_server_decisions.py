"""The REST API's decisions: detections whatever the decision, boxes at the decision's threshold, a custom
`threshold` (query or form field) validated to 0 < t < 1, and the same through a detector checkpoint."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_helpers import fixture_images, make_test_detector, make_test_model

from bonefrac import FractureDetector, read_image
from bonefrac.apps.server.app import create_app
from bonefrac.render import box_kinds, heat_alpha, render_overlay


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_test_model(tmp_path_factory.mktemp("model") / "model.pt"), backend="torch")


@pytest.fixture(scope="module")
def client(det: FractureDetector) -> TestClient:
    return TestClient(create_app(det))


def predict(client: TestClient, path: Path, data: dict | None = None, **params: str) -> tuple[int, dict]:
    r = client.post("/api/predict", files={"file": (path.name, path.read_bytes())}, data=data, params=params)
    assert "Traceback" not in r.text
    return r.status_code, r.json()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def kept(detections: list[list[float]], threshold: float) -> list[list[float]]:
    return [d for d in detections if d[4] >= threshold]


def test_detections_whatever_the_decision(client: TestClient, det: FractureDetector) -> None:
    for path in fixture_images()[:4]:
        status, body = predict(client, path, images="false")
        assert status == 200 and body["detections"] and "candidate_boxes" not in body
        expected = det.predict(path, heatmap=False)
        assert body["detections"] == expected.to_dict()["detections"]
        assert isinstance(body["logit"], float)
        for x0, y0, x1, y1, score in body["detections"]:
            assert 0 <= x0 < x1 <= body["width"] and 0 <= y0 < y1 <= body["height"] and 0 < score <= 1
        assert body["boxes"] == kept(body["detections"], body["threshold"])
        assert body["fractured"] == (body["probability"] >= body["threshold"])


def test_custom_threshold_decides(client: TestClient, det: FractureDetector) -> None:
    path = fixture_images(fractured=True)[0]
    p = det.predict(path, heatmap=False).probability
    for threshold in (p / 2, min(0.999, (p + 1) / 2)):  # one below the probability, one above
        status, body = predict(client, path, threshold=str(threshold), images="false")
        assert status == 200 and body["operating_point"] == "custom"
        assert body["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert body["fractured"] == (p >= threshold)
        assert body["boxes"] == kept(body["detections"], threshold) and bool(body["boxes"]) == body["fractured"]
        assert body["operating_points"] == {k: p >= t for k, t in det.operating_points.items()}  # still all named
        # The same as a form field, and with the pictures: the overlay is drawn at that decision.
        status, form = predict(client, path, data={"threshold": str(threshold)})
        assert status == 200 and {k: form[k] for k in body} == body and form["overlay_png"]
    # The threshold wins over the operating point it was sent with.
    status, body = predict(client, path, threshold="0.3", operating_point="high_specificity", images="false")
    assert status == 200 and (body["operating_point"], body["threshold"]) == ("custom", 0.3)


@pytest.mark.parametrize("bad", ["0", "1", "-0.2", "1.5", "nan", "inf", "half", ""])
def test_threshold_outside_the_open_unit_interval_is_422(client: TestClient, bad: str) -> None:
    path = fixture_images()[0]
    status, body = predict(client, path, threshold=bad)
    assert status == 422 and set(body) == {"error"} and body["error"].startswith("threshold")
    status, body = predict(client, path, data={"threshold": bad}, images="false")
    if bad == "":  # an empty form field is no field (as an HTML form sends an empty input)
        assert status == 200 and body["operating_point"] == "default"
    else:
        assert status == 422 and set(body) == {"error"} and body["error"].startswith("threshold")


def test_threshold_given_twice_must_agree(client: TestClient) -> None:
    path = fixture_images()[0]
    status, body = predict(client, path, data={"threshold": "0.4"}, threshold="0.6", images="false")
    assert status == 422 and "twice" in body["error"]
    status, body = predict(client, path, data={"threshold": "0.4"}, threshold="0.4", images="false")
    assert status == 200 and body["threshold"] == 0.4


def test_openapi_documents_the_threshold(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/predict"]["post"]
    assert any(p["name"] == "threshold" and p["in"] == "query" for p in op["parameters"])
    assert (
        "detections" in client.get("/openapi.json").json()["components"]["schemas"]["PredictionResponse"]["properties"]
    )


# ---------------------------------------------------------------- a detector checkpoint
@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return make_test_detector(tmp_path_factory.mktemp("detector") / "model.pt")


def test_detector_predictions_through_the_api(detector: FractureDetector) -> None:
    client = TestClient(create_app(detector))
    path = fixture_images()[0]
    pred = detector.predict(path)
    status, body = predict(client, path)
    assert status == 200 and body["detections"] == pred.to_dict()["detections"]
    for op, threshold in detector.operating_points.items():
        status, at = predict(client, path, operating_point=op, images="false")
        assert at["boxes"] == kept(body["detections"], threshold)
        assert at["fractured"] == (at["probability"] >= threshold)  # the image's decision; boxes score themselves
    assert len(kept(body["detections"], detector.operating_points["high_sensitivity"])) == 4
    # The overlay is the CLI's, with one fracture box and three suspicious ones at the model's points.
    assert [k for _, k in box_kinds(pred.detections, detector.operating_points, pred.threshold)] == [
        "fracture",
        *["suspicious"] * 3,
    ]
    overlay = render_overlay(read_image(path), pred, operating_points=detector.operating_points)
    assert decode_png(body["overlay_png"]).tobytes() == overlay.tobytes()
    # The heatmap layer's opacity follows the absolute heat: the page layers exactly `heatmap_rgba`.
    alpha = np.asarray(decode_png(body["heatmap_png"]))[..., 3]
    assert abs(int(alpha.max()) - 255 * float(heat_alpha(pred.heatmap.max()))) <= 3  # (resized to 256 px)


def test_detector_custom_threshold(detector: FractureDetector) -> None:
    client = TestClient(create_app(detector))
    path = fixture_images()[0]
    status, body = predict(client, path, images="false")
    scores = [d[4] for d in body["detections"]]
    threshold = (scores[1] + scores[2]) / 2  # between the second and third detection: two boxes
    status, body = predict(client, path, threshold=str(threshold), images="false")
    assert status == 200 and body["operating_point"] == "custom"
    assert body["boxes"] == body["detections"][:2] and body["fractured"] == (body["probability"] >= threshold)
    status, body = predict(client, path, threshold=str(min(0.999, scores[0] + 1e-3)), images="false")
    assert status == 200 and body["boxes"] == []
