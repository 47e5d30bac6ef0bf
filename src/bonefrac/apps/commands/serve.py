"""`bonefrac serve`: the web page and REST API."""

from __future__ import annotations

import argparse
import os

from bonefrac.apps.commands.common import precision_arg
from bonefrac.apps.extras import require_extra
from bonefrac.apps.server.settings import TOKEN_ENV, ServerSettings


def _serve(args: argparse.Namespace) -> int:
    require_extra("serve", "serve")
    import logging

    from bonefrac.apps.server.app import serve  # FastAPI and uvicorn: imported only to serve, not by every command
    from bonefrac.inference.detector import FractureDetector

    # Settings first: an exposed server without a token is refused before the model loads.
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        insecure_no_token=args.insecure_no_token,
        any_modality=args.any_modality,
        log_filenames=args.log_filenames,
    )
    # The port next, before the model loads: a busy port is one error line, and nothing claims to serve first.
    sock = settings.bind()
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(FractureDetector.load(args.model, backend=args.backend, precision=args.precision), settings, sock)
    finally:
        sock.close()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="web page + REST API (FastAPI); see `bonefrac serve --help`",
        description="Serve the fracture finder page and its REST API (OpenAPI docs at /docs). Any address but "
        f"loopback needs an access token (${TOKEN_ENV} or --token); put a TLS reverse proxy in front (README).",
    )
    s.add_argument(
        "--host",
        default=ServerSettings.host,
        help="interface to listen on (default %(default)s: this machine only; 0.0.0.0 = every interface)",
    )
    s.add_argument("--port", type=int, default=ServerSettings.port, help="TCP port (default %(default)d)")
    s.add_argument("--model", help="checkpoint file or training run folder (default: the bundled model)")
    s.add_argument(
        "--backend", default="auto", choices=["auto", "onnx", "torch"], help="default auto = onnx when available"
    )
    precision_arg(s)
    s.add_argument(
        "--max-upload-mb",
        type=float,
        default=ServerSettings.max_upload_mb,
        help="largest upload accepted, in MB (default %(default)g)",
    )
    s.add_argument(
        "--concurrency",
        type=int,
        default=ServerSettings.concurrency,
        help="predictions run at once (default %(default)d)",
    )
    s.add_argument(
        "--token",
        help=f"access token that requests must send as 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set, "
        f"else none; prefer ${TOKEN_ENV}: other users of this machine can read a command line)",
    )
    s.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="serve a non-loopback address without a token: anyone who reaches the port can use it",
    )
    s.add_argument(
        "--any-modality",
        action="store_true",
        help="also predict on uploads that are not projection radiographs (refused by default)",
    )
    s.add_argument(
        "--log-filenames",
        action="store_true",
        help="name each upload in the request log (off by default: file names often carry patient names)",
    )
    s.set_defaults(func=_serve)
