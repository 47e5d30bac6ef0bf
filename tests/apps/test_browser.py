"""The page in a real browser: Debian's headless Chromium driven by Playwright against the real uvicorn server
on a loopback port. Upload real radiographs, read the result, switch operating point, set a custom threshold, see
the fracture and suspicious boxes, toggle the heatmap; and on a server with an access token, give the page the
token."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from server_helpers import IMAGES, fixture_images, make_test_detector, make_test_model

from bonefrac import FractureDetector
from bonefrac.apps.server.app import ServerSettings, create_app
from bonefrac.render import box_kinds

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

TOKEN = "browser-test-token-0123456789"
# Where to keep screenshots for a person to look at (unset: the test's own temporary folder).
SCREENSHOTS = Path(os.environ["BONEFRAC_SCREENSHOTS"]) if os.environ.get("BONEFRAC_SCREENSHOTS") else None

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_test_model(tmp_path_factory.mktemp("model") / "model.pt"), backend="torch")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app under a real uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    # Bind first and hand the socket to uvicorn: a free port with no window for another process to take it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server_url(det: FractureDetector) -> Iterator[str]:
    with serving(create_app(det)) as url:
        yield url


@pytest.fixture(scope="module")
def locked_url(det: FractureDetector) -> Iterator[str]:
    with serving(create_app(det, ServerSettings(token=TOKEN))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_upload_and_explore(browser, server_url: str, det: FractureDetector, tmp_path: Path) -> None:  # noqa: ANN001
    fracture, normal = fixture_images(fractured=True)[0], fixture_images(fractured=False)[0]
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not an X-ray\n")
    p = det.predict(fracture).probability

    page = browser.new_page(viewport={"width": 1360, "height": 860})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/api/predict" in r.url else None)

    page.goto(server_url)
    sync_api.expect(page.locator("#model-version")).to_have_text("test-seed_cnn-64")
    page.set_input_files("#file-input", [str(fracture), str(normal), str(not_an_image)])

    # The first file is shown: probability, decision, and the radiograph with its heatmap layered on top.
    sync_api.expect(page.locator("#probability")).to_have_text(f"{p:.3f}", timeout=30_000)
    page.wait_for_function("""() => ['image-base', 'image-heat'].every(id => {
        const im = document.getElementById(id); return im.complete && im.naturalWidth > 0; })""")
    assert page.locator("#image-base").evaluate("im => im.naturalWidth") == 373
    assert page.locator("#overlay-link").get_attribute("href").startswith("data:image/png;base64,")
    items = page.locator("#results li")
    sync_api.expect(items).to_have_count(3)
    sync_api.expect(items.nth(2)).to_contain_text("not a recognised image", timeout=30_000)
    sync_api.expect(items.nth(1)).to_contain_text("p = ", timeout=30_000)
    assert len(uploads) == 3

    # Switching operating point re-decides in the page from the probability and thresholds: no re-upload.
    # The boxes are drawn as the overlay draws them: solid fracture, dashed suspicious (overlay.box_kinds).
    detections = det.predict(fracture).detections
    rects, legend = page.locator("#boxes rect.box"), page.locator("#legend")

    def expect_decision(threshold: float) -> None:
        sync_api.expect(page.locator("#decision")).to_have_text("Fracture" if p >= threshold else "No fracture")
        sync_api.expect(page.locator("#decision-at")).to_contain_text(f"{threshold:.3f}")
        kinds = [kind for _, kind in box_kinds(detections, det.operating_points, threshold)]
        sync_api.expect(rects).to_have_count(len(kinds))
        for kind in ("fracture", "suspicious"):
            sync_api.expect(page.locator(f"#boxes rect.box.{kind}")).to_have_count(kinds.count(kind))
        sync_api.expect(page.locator("#boxes g.tag")).to_have_count(len(kinds))  # one number per box
        sync_api.expect(page.locator("#box-list li")).to_have_count(len(kinds) or 1)
        sync_api.expect(page.locator("#result-boxes")).to_contain_text(
            f"{sum(d[4] >= threshold for d in detections) or 'none'} at this threshold"
        )

    decisions = set()
    for op, threshold in sorted(det.operating_points.items(), key=lambda kv: -kv[1]):  # high_sensitivity last
        page.locator(f'#op-select button[data-op="{op}"]').click()
        expect_decision(threshold)
        sync_api.expect(page.locator("#threshold-value")).to_have_value(f"{threshold:.3f}")  # the control follows
        decisions.add(p >= threshold)
    assert len(uploads) == 3 and p >= det.operating_points["high_sensitivity"] and detections
    assert decisions == {True, False}  # the named points decide differently on this image
    sync_api.expect(legend).to_contain_text("fracture")
    sync_api.expect(legend).to_contain_text("suspicious")
    dashes = page.locator("#boxes rect.box.suspicious").first.evaluate("r => getComputedStyle(r).strokeDasharray")
    assert dashes not in ("", "none")  # at high_sensitivity this image has a suspicious box, drawn dashed

    # A custom threshold, typed or slid, re-decides in the page too: above the probability, then below it.
    for threshold, how in ((min(0.999, round(p + 0.05, 3)), "type"), (round(p * 0.5, 3), "slide")):
        if how == "type":
            page.locator("#threshold-value").fill(f"{threshold:.3f}")
        else:
            page.locator("#threshold").evaluate(
                f"el => {{ el.value = {threshold}; el.dispatchEvent(new Event('input')); }}"
            )
            sync_api.expect(page.locator("#threshold-value")).to_have_value(f"{threshold:.3f}")  # follows the slider
        expect_decision(threshold)
        sync_api.expect(page.locator("#op-help")).to_contain_text("Custom threshold")
        assert page.locator('#op-select button[aria-pressed="true"]').count() == 0
    sync_api.expect(items.first).to_contain_text("fracture")
    assert len(uploads) == 3  # still no re-upload

    heat = page.locator("#image-heat")
    sync_api.expect(heat).to_have_css("opacity", "0.45")
    page.locator("#toggle-heatmap").uncheck()
    sync_api.expect(heat).to_have_css("opacity", "0")
    page.locator("#toggle-heatmap").check()
    page.locator("#opacity").evaluate("el => { el.value = 70; el.dispatchEvent(new Event('input')); }")
    sync_api.expect(heat).to_have_css("opacity", "0.7")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # An upload made at a custom threshold asks the server to decide there (its overlay is drawn at it).
    page.set_input_files("#file-input", [str(fracture)])
    sync_api.expect(items).to_have_count(4)
    sync_api.expect(items.nth(3)).to_contain_text("p = ", timeout=30_000)
    assert uploads[-1].endswith(f"/api/predict?threshold={round(p * 0.5, 3)}")

    # A file that is not an X-ray shows a readable message, not a crash.
    items.nth(2).locator("button").click()
    sync_api.expect(page.locator("#error")).to_be_visible()
    sync_api.expect(page.locator("#error-message")).to_contain_text("notes.txt: not a recognised image")
    page.screenshot(path=str(tmp_path / "error.png"))
    assert [m for m in problems if "415" not in m] == []  # the 415 is notes.txt's, expected
    page.close()


def test_detector_boxes_on_the_page(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """A detector's answer: one solid fracture box and three dashed suspicious ones at its operating points;
    a custom threshold above the best detection leaves the suspicious boxes and calls the image normal."""
    det = make_test_detector(tmp_path / "detector.pt")
    image = fixture_images()[0]
    pred = det.predict(image)
    with serving(create_app(det)) as url:
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        page.set_input_files("#file-input", [str(image)])
        sync_api.expect(page.locator("#probability")).to_have_text(f"{pred.probability:.3f}", timeout=60_000)
        sync_api.expect(page.locator("#decision")).to_have_text("Fracture" if pred.fractured else "No fracture")
        sync_api.expect(page.locator("#boxes rect.box.fracture")).to_have_count(1)
        sync_api.expect(page.locator("#boxes rect.box.suspicious")).to_have_count(3)
        # Numbered as the overlay numbers them: tags 1-4 inside the image, apart; the list says what each is.
        sync_api.expect(page.locator("#boxes g.tag text")).to_have_text(["1", "2", "3", "4"])
        sync_api.expect(page.locator("#box-list li").first).to_have_text(f"1fracture {pred.detections[0][4]:.2f}")
        tags = page.locator("#boxes g.tag rect").evaluate_all(
            "rs => rs.map(r => [r.x.baseVal.value, r.y.baseVal.value, r.width.baseVal.value, r.height.baseVal.value])"
        )
        for i, (x, y, w, h) in enumerate(tags):
            assert 0 <= x and x + w <= pred.width and 0 <= y and y + h <= pred.height
            for x2, y2, w2, h2 in tags[i + 1 :]:
                assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
        sync_api.expect(page.locator("#legend")).to_contain_text("solid = fracture: scores from")
        sync_api.expect(page.locator("#legend")).to_contain_text("dashed = suspicious: scores from")
        above = max(pred.probability, pred.detections[0][4]) + 0.01  # above the image and every box
        page.locator("#threshold-value").fill(f"{min(0.999, above):.3f}")
        sync_api.expect(page.locator("#decision")).to_have_text("No fracture")
        sync_api.expect(page.locator("#boxes rect.box.fracture")).to_have_count(1)  # the kinds are the model's
        sync_api.expect(page.locator("#result-boxes")).to_contain_text("none at this threshold")
        page.screenshot(path=str(tmp_path / "detector.png"))
        # A truncated JPEG: its warning is shown by the decision, not only in the JSON.
        page.set_input_files("#file-input", [str(IMAGES / "IMG0004228.jpg")])
        page.locator("#results li").nth(1).locator("button").click()
        sync_api.expect(page.locator("#result-warnings li")).to_contain_text("JPEG file is truncated", timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "detector-warning.png") if SCREENSHOTS else str(tmp_path / "w.png"))
        assert problems == []
        page.close()


def test_page_with_an_access_token(browser, locked_url: str, det: FractureDetector) -> None:  # noqa: ANN001
    """On a server with a token the page asks for it once, keeps it for the tab, sends it as a Bearer header
    (never in a URL), and an upload made before the token is given waits for it instead of failing."""
    fracture = fixture_images(fractured=True)[0]
    p = det.predict(fracture).probability
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))) if "/api/" in r.url else None)

    page.goto(locked_url)
    sync_api.expect(page.locator("#token-form")).to_be_visible()
    sync_api.expect(page.locator("#model-version")).to_have_text("access token needed")
    page.set_input_files("#file-input", [str(fracture)])  # before the token: held, not failed
    sync_api.expect(page.locator("#results li")).to_contain_text("analysing")

    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    sync_api.expect(page.locator("#token-error")).to_have_text("wrong access token")
    sync_api.expect(page.locator("#token-form")).to_be_visible()

    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    sync_api.expect(page.locator("#model-version")).to_have_text("test-seed_cnn-64")
    sync_api.expect(page.locator("#token-form")).to_be_hidden()
    sync_api.expect(page.locator("#probability")).to_have_text(f"{p:.3f}", timeout=30_000)  # the held upload ran
    assert page.evaluate("sessionStorage.getItem('bonefrac-token')") == TOKEN

    page.reload()  # same tab: not asked again
    sync_api.expect(page.locator("#model-version")).to_have_text("test-seed_cnn-64")
    assert page.locator("#token-form").is_hidden()
    predicted = [auth for url, auth in sent if "/api/predict" in url]
    assert predicted and predicted[-1] == f"Bearer {TOKEN}"
    assert sent[-1] == (f"{locked_url}/api/model", f"Bearer {TOKEN}")
    assert all(TOKEN not in url for url, _ in sent) and TOKEN not in page.url
    assert problems == []
    page.close()
