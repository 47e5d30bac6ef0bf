"""The web page and REST API: `create_app(detector)` serves `/`, `/api/predict`, `/api/model`, `/healthz`.

    bonefrac serve --model runs/lite0-256          # the command line is cli.py's `serve`

The detector is loaded once by the caller and injected into the routes with `Depends`, so tests build the
app around a tiny model and no app exists at import time. The server holds no image logic of its own:
uploads go through the same `read_image` -> `FractureDetector.predict` -> overlay path as the CLI.
With a token in the settings every route but the page, /healthz and the docs needs it. User errors come back
as 4xx `{"error": "..."}`; anything else is logged and answered with a bare 500 (`server_middleware`).
Each request is logged once (`middleware.RequestLog`): a request id, size, outcome and time; the upload's file
name, which often carries a patient's name, only with `log_filenames`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import re
import shutil
import socket
import sys
import tempfile
import traceback
import warnings
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, BinaryIO, get_type_hints

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from PIL import Image
from pydantic import BaseModel, create_model

from bonefrac._version import __version__
from bonefrac.apps.server.middleware import (
    RequestLog,
    TokenAuth,
    UploadLimit,
    add_error_handlers,
    json_error,
    set_outcome,
)
from bonefrac.apps.server.settings import ServerSettings
from bonefrac.errors import BonefracError, ImageReadError, ImageTooLargeError
from bonefrac.inference.decode import display_shape
from bonefrac.inference.detector import FractureDetector
from bonefrac.io.read import ImageReadWarning, XrayImage
from bonefrac.models.metadata import jsonable
from bonefrac.paths import WEIGHTS_DIR
from bonefrac.render import PNG_COMPRESS_LEVEL, display_grey, heatmap_rgba, read_for_display, render_overlay
from bonefrac.results import Prediction, verdict

__all__ = ["ServerSettings", "create_app", "serve"]

logger = logging.getLogger("bonefrac.apps.server.app")

# The page is self-contained (inline CSS/JS, images as data: URLs); this policy makes the browser enforce it.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The heatmap is smooth (upsampled from the model's feature grid): 256 px carries all of it, and the browser
# scales it onto the radiograph. Colouring and encoding it at 3000 px would cost more than the model.
HEATMAP_SIDE = 256
_THRESHOLD_HELP = (
    "a custom threshold, 0 < t < 1, to decide at instead of the operating point (operating_point becomes "
    '"custom"); as a query or a form field'
)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
# Declares the token in the OpenAPI schema, so /docs offers "Authorize"; TokenAuth has checked it already.
_BEARER = HTTPBearer(auto_error=False, description="the server's access token (`--token` or $BONEFRAC_TOKEN)")


def _response_fields() -> dict[str, Any]:
    """`Prediction`'s fields as `Prediction.to_dict()` gives them (no heatmap array; a field with a default may
    be absent or null), plus what the page needs to re-decide and draw without a re-upload: the thresholds of
    the named operating points, and the pictures."""
    hints = get_type_hints(Prediction)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Prediction):
        if f.name == "heatmap":
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        fields[f.name] = (hints[f.name] | None, None) if has_default else (hints[f.name], ...)
    extras = {"thresholds": (dict[str, float], ...)}
    return fields | extras | {name: (str | None, None) for name in ("image_png", "heatmap_png", "overlay_png")}


#: The response of /api/predict, derived from the `Prediction` dataclass (never a hand copy of its fields).
PredictionResponse = create_model("PredictionResponse", **_response_fields())


class ErrorResponse(BaseModel):
    error: str


# ---------------------------------------------------------------- dependencies
def get_detector(request: Request) -> FractureDetector:
    return request.app.state.detector


def get_limiter(request: Request) -> anyio.CapacityLimiter:
    return request.app.state.limiter


DetectorDep = Annotated[FractureDetector, Depends(get_detector)]
LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (413, "upload over the size limit, or an image declaring too many pixels"),
        (415, "not a readable X-ray image (JPEG, PNG or DICOM)"),
        (422, "no `file` field, an unknown operating point, or a threshold outside (0, 1)"),
    )
}

router = APIRouter()  # open: the page and the liveness probe
api = APIRouter()  # behind the token when there is one


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.page, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/healthz", summary="Liveness: 200 once the model is loaded")
async def healthz(detector: DetectorDep) -> dict[str, str]:
    return {"status": "ok"}


@api.get("/api/model", summary="Model card facts: version, architecture, operating points, validation")
async def model_info(detector: DetectorDep) -> dict[str, Any]:
    return model_facts(detector)


@api.post(
    "/api/predict",
    response_model=PredictionResponse,
    responses=_ERRORS,
    summary="Fracture probability, decision, boxes and heatmap pictures for one radiograph",
)
async def predict(
    request: Request,
    detector: DetectorDep,
    limiter: LimiterDep,
    file: Annotated[UploadFile, File(description="a JPEG, PNG or DICOM radiograph (sniffed by content)")],
    operating_point: Annotated[str, Query(description="threshold to decide at: a key of `thresholds`")] = "default",
    threshold: Annotated[float | None, Query(gt=0, lt=1, description=_THRESHOLD_HELP)] = None,
    threshold_form: Annotated[float | None, Form(alias="threshold", gt=0, lt=1, description=_THRESHOLD_HELP)] = None,
    images: Annotated[bool, Query(description="include image_png, heatmap_png, overlay_png (base64)")] = True,
) -> JSONResponse:
    name = sanitize_filename(file.filename)
    if operating_point not in detector.operating_points:
        choices = ", ".join(detector.operating_points)
        return json_error(422, f"unknown operating point {operating_point!r}; choose one of {choices}")
    if threshold is not None and threshold_form is not None and threshold != threshold_form:
        return json_error(422, "threshold: given twice (query and form) with different values")
    threshold = threshold if threshold is not None else threshold_form
    try:
        # Decoding, the model and PNG encoding all block: run them in a worker thread, at most
        # `concurrency` at once, so the event loop stays free for /healthz and new connections.
        body = await anyio.to_thread.run_sync(
            _predict_upload,
            detector,
            file.file,
            name,
            operating_point,
            threshold,
            images,
            request.app.state.settings.any_modality,
            limiter=limiter,
        )
    except ImageTooLargeError as e:  # before ImageReadError: it is a subclass
        return _refused(request, 413, name, e)
    except ImageReadError as e:
        return _refused(request, 415, name, e)
    except BonefracError as e:
        return _refused(request, 422, name, e)
    except Exception:  # noqa: BLE001 - logged here, with the upload's name taken out of the traceback
        trace = traceback.format_exc()
        if not request.app.state.settings.log_filenames:
            trace = trace.replace(name, "<upload>")
        logger.error("request %s: internal error\n%s", request.state.request_id, trace.rstrip())
        set_outcome(request.scope, "internal error", name)
        return json_error(500, "internal error")
    decision = verdict(body["fractured"])
    warned = f", {len(body['warnings'])} warning(s)" if body.get("warnings") else ""
    set_outcome(request.scope, f"{decision} p={body['probability']:.3f} at {body['operating_point']}{warned}", name)
    return JSONResponse(body)


# ---------------------------------------------------------------- the work, in a worker thread
def _predict_upload(
    detector: FractureDetector,
    upload: BinaryIO,
    name: str,
    operating_point: str,
    threshold: float | None,
    images: bool,
    any_modality: bool = False,
) -> dict[str, Any]:
    # read_image takes a path; the upload keeps its (sanitised) name so error messages name the user's file.
    with tempfile.TemporaryDirectory(prefix="bonefrac-upload-") as tmp:
        path = Path(tmp) / name
        with open(path, "wb") as f:
            shutil.copyfileobj(upload, f, 1 << 20)
        pred = detector.predict(
            path, operating_point=operating_point, threshold=threshold, heatmap=images, any_modality=any_modality
        )
        pred = replace(pred, path=name)
        shown = read_for_display(path) if images else None
    # to_dict carries the detections whatever the decision: with the thresholds, the page re-decides and
    # draws the "suspicious" and "fracture" boxes at any point without a re-upload.
    body = pred.to_dict()
    body["thresholds"] = detector.operating_points
    if shown is not None:
        body.update(pictures(shown, pred, detector.operating_points))
    return jsonable(body)


def pictures(image: XrayImage, pred: Prediction, operating_points: dict[str, float]) -> dict[str, str]:
    """Base64 PNGs for the page to layer with CSS: the plain radiograph and the heatmap alone (RGBA, alpha
    following heat) at display size; plus the overlay exactly as `--overlay-dir` draws it."""
    if pred.heatmap is None:
        raise RuntimeError("pictures need a prediction made with a heatmap")
    grey = display_grey(image, display_shape(pred.height, pred.width))
    return {
        "image_png": _b64(_png(Image.fromarray(grey))),
        "heatmap_png": _b64(_png(heatmap_rgba(pred.heatmap, HEATMAP_SIDE))),
        "overlay_png": _b64(_png(render_overlay(image, pred, operating_points=operating_points))),
    }


def model_facts(detector: FractureDetector) -> dict[str, Any]:
    """What `/api/model` shows: the detector's facts, and the model card when it is the bundled model."""
    return {**detector.facts(), "model_card": bundled_model_card(detector.sha256), "bonefrac_version": __version__}


def bundled_model_card(sha256: str, weights: Path | None = None) -> str | None:
    """weights/MODEL_CARD.md, but only for the weights it describes: another model must not wear it."""
    weights = weights or WEIGHTS_DIR
    card, sidecar = weights / "MODEL_CARD.md", weights / "model.pt.sha256"
    try:
        if card.is_file() and sidecar.is_file() and sidecar.read_text().split()[:1] == [sha256]:
            return card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        logger.warning("bundled model card could not be read")
    return None


# ---------------------------------------------------------------- small helpers
def sanitize_filename(filename: str | None) -> str:
    """The upload's base name, safe as a file name and in logs: no folders, no control characters."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = _UNSAFE_NAME.sub("_", name).strip(" .")
    if len(name) > 120:  # keep the extension: it is how read_image recognises a preamble-less DICOM
        suffix = Path(name).suffix[:16]
        name = name[: 120 - len(suffix)] + suffix
    return name or "upload"


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _refused(request: Request, status: int, name: str, e: BonefracError) -> JSONResponse:
    """The client's answer names its file; the log's outcome does not (the name is logged apart, if allowed)."""
    message = str(e)
    set_outcome(request.scope, "refused: " + message.removeprefix(f"{name}: ").replace(name, "<upload>"), name)
    return json_error(status, message)


def create_app(detector: FractureDetector, settings: ServerSettings | None = None) -> FastAPI:
    """The web app around one loaded detector."""
    settings = settings or ServerSettings()
    app = FastAPI(
        title="bonefrac",
        version=__version__,
        description="Find bone fractures in X-ray images. Research software, not a medical device.",
        docs_url=None,  # served by add_offline_docs, without a CDN
        redoc_url=None,
    )
    app.state.detector = detector
    app.state.settings = settings
    app.state.limiter = anyio.CapacityLimiter(settings.concurrency)
    app.state.page = (resources.files("bonefrac.apps.server") / "static" / "index.html").read_text(encoding="utf-8")
    app.include_router(router)
    app.include_router(api, dependencies=[Depends(_BEARER)] if settings.token else [])
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    if settings.token:  # added last, so it runs first: a request without the token is never read further
        app.add_middleware(TokenAuth, token=settings.token)
    app.add_middleware(RequestLog, log_filenames=settings.log_filenames)  # outermost: every request, refused too
    add_error_handlers(app)
    add_offline_docs(app)
    return app


def add_offline_docs(app: FastAPI) -> None:
    """Serve the OpenAPI docs page with Swagger UI's files from the `swagger-ui-bundle` package instead of
    FastAPI's default CDN, so /docs works on a hospital network with no internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def serve(detector: FractureDetector, settings: ServerSettings, sock: socket.socket | None = None) -> None:
    """Run uvicorn around `detector` until interrupted (`bonefrac serve`) on `sock` (bound by `settings.bind`
    if not given), after saying what whoever starts it must know: where it listens and, loudly, how it is
    exposed. Nothing claims to be serving before the port is ours."""
    import uvicorn

    sock = sock or settings.bind()
    for warning in settings.warnings():
        print(f"bonefrac: WARNING: {warning}", file=sys.stderr)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    access = "access token required" if settings.token else "no access token"
    port = sock.getsockname()[1]  # the one the system chose, for --port 0
    print(
        f"bonefrac: serving {detector.version} on http://{host}:{port}/ ({access}; API docs at /docs)",
        file=sys.stderr,
    )
    # The response carries each image's warnings; Python's own warning line would name the uploaded file.
    warnings.filterwarnings("ignore", category=ImageReadWarning)
    # uvicorn's access log is replaced by RequestLog's line (which has the request id and no query string).
    config = uvicorn.Config(create_app(detector, settings), log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
