"""The server's edge: request bodies capped while they stream in, every error as `{"error": "..."}`, and
upload names made safe. What a user sends can cause a 4xx here, never a 500 or a stack trace."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("bonefrac.server")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def sanitize_filename(filename: str | None) -> str:
    """The upload's base name, safe as a file name and in logs: no folders, no control characters."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = _UNSAFE_NAME.sub("_", name).strip(" .")
    if len(name) > 120:  # keep the extension: it is how read_image recognises a preamble-less DICOM
        suffix = Path(name).suffix[:16]
        name = name[: 120 - len(suffix)] + suffix
    return name or "upload"


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, from Content-Length before anything is read, and
    again while the body streams in (chunked uploads have none), so no body is ever read past the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app makes of a cut-off body (a 400), the answer is our 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = f"{self.max_bytes / 2**20:.3g} MB"
        # Connection: close, since the rest of the body is never read.
        await json_error(413, f"upload too large: the limit is {limit}", {"Connection": "close"})(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return json_error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query")]
        if loc == ["file"] and err.get("type") == "missing":
            problems.append("no file uploaded: send the image as the multipart/form-data field 'file'")
        else:
            problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return json_error(422, "; ".join(problems) or "invalid request")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback stays in the server log; the client learns nothing about the internals.
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_error(500, "internal error")


def add_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": "..."}`: HTTP errors (404, 405, 400), request validation (422, instead of
    FastAPI's detail list), and a catch-all 500 for anything unexpected."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)


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
