"""What stands between the network and the routes, as ASGI middleware and exception handlers: one log line per
request, the access token checked before anything else, request bodies capped while they stream in, and every
error answered as `{"error": "..."}`. What a client sends can cause a 4xx here, never a 500 or a stack trace."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("bonefrac.apps.server.app")

#: Reachable without the token: the page (static, it asks for the token), the liveness probe (load balancers
#: and orchestrators probe without credentials; it says only "ok") and the API docs (the schema is public,
#: like the source). Everything else, unknown paths included, needs the token.
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/docs-assets/",)


class RequestLog:
    """ASGI middleware, the outermost: one log line per request, with a request id (also sent back as the
    `X-Request-ID` header, for a user to quote), the method and path (no query), the bytes received, the
    status, what came of it and the time taken. What came of it is what the route or the token check put in
    `scope["state"]["outcome"]`; the upload's file name, which often carries a patient's name, is added only
    when the server was started with `--log-filenames` (`scope["state"]["filename"]`)."""

    def __init__(self, app: ASGIApp, log_filenames: bool = False) -> None:
        self.app = app
        self.log_filenames = log_filenames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(4)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start, size, status = time.perf_counter(), 0, 500

        async def counting_receive() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, counting_receive, tagged_send)
        finally:
            outcome = state.get("outcome") or ("internal error" if status >= 500 else "")
            name = state.get("filename") if self.log_filenames else None
            level = logging.ERROR if status >= 500 else logging.WARNING if status == 401 else logging.INFO
            logger.log(
                level,
                "request %s: %s %s, %s received -> %d%s%s in %.0f ms",
                request_id,
                scope.get("method"),
                scope.get("path"),
                _bytes(size),
                status,
                f" {outcome}" if outcome else "",
                f" (file {name!r})" if name else "",
                (time.perf_counter() - start) * 1000,
            )


def set_outcome(scope: Scope, outcome: str, filename: str | None = None) -> None:
    """What `RequestLog` says came of this request (and the upload's name, logged only if allowed)."""
    state = scope.setdefault("state", {})
    state["outcome"] = outcome
    if filename is not None:
        state["filename"] = filename


def _bytes(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class TokenAuth:
    """ASGI middleware: 401 unless the request sends `Authorization: Bearer <token>`, decided from the headers
    before the app reads a byte of the body. Tokens are compared as SHA-256 digests with `hmac.compare_digest`:
    constant time, and the length of the token does not leak either."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = _bearer_token(scope)
        if given is not None and hmac.compare_digest(hashlib.sha256(given).digest(), self._digest):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none is served today; refused all the same (403 before the handshake)
            await send({"type": "websocket.close", "code": 1008})
            return
        if given is None:
            reason, challenge = "no access token", "Bearer"
            message = "this server needs an access token: send the header 'Authorization: Bearer <token>'"
        else:
            reason = message = "wrong access token"
            challenge = 'Bearer error="invalid_token"'
        client = (scope.get("client") or ("?",))[0]
        set_outcome(scope, f"{reason} (from {client})")
        await json_error(401, message, {"WWW-Authenticate": challenge})(scope, receive, send)


def _bearer_token(scope: Scope) -> bytes | None:
    """The token of the first `Authorization: Bearer ...` header (the scheme is case-insensitive), or None."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None


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
        set_outcome(scope, f"upload over the {limit} limit")
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
    request_id = request.scope.get("state", {}).get("request_id", "-")
    logger.error("request %s: internal error on %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return json_error(500, "internal error")


def add_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": "..."}`: HTTP errors (404, 405, 400), request validation (422, instead of
    FastAPI's detail list), and a catch-all 500 for anything unexpected."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
