"""The web server's settings and the rule for exposing it, importable without FastAPI: `bonefrac serve` builds
them (and shows their defaults in `--help`) without slowing down every other command.

The rule: a server reachable from other machines answers only requests that carry its access token, unless
whoever starts it says explicitly that it should not (`insecure_no_token`). On loopback a token is optional.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass, field

from bonefrac.errors import BonefracError

#: The environment variable `bonefrac serve` reads the access token from (safer than `--token`: a command line
#: is visible to every user of the machine in `ps`).
TOKEN_ENV = "BONEFRAC_TOKEN"
#: Shorter tokens are accepted with a warning: a guessable token on a hospital network is no protection.
MIN_TOKEN_LENGTH = 16
# What an HTTP header carries intact after "Bearer " (RFC 6750's token68, a little wider): no spaces, ASCII.
_TOKEN_CHARS = re.compile(r"[!-~]+")


class ServerSettingsError(BonefracError, ValueError):
    """Settings the server cannot start with (a limit out of range, an exposed server with no token)."""


def is_loopback(host: str) -> bool:
    """True when `host` accepts connections from this machine only. A host name other than localhost may
    resolve to any interface, so it counts as exposed."""
    import ipaddress  # here, not at the top: only `serve` needs it, not every `bonefrac` command

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """One server's address, limits and access token, fixed at start-up.

    Attributes:
        host: interface to listen on; anything but loopback needs `token` (or `insecure_no_token`).
        port: TCP port.
        max_upload_mb: largest request body accepted, in MB of 2**20 bytes (multipart overhead included).
        concurrency: predictions running at once; more requests wait their turn off the event loop.
        token: when set, every request but the page, /healthz and the API docs must send
            `Authorization: Bearer <token>` (on any host). Never shown in a repr or a log.
        insecure_no_token: serve a non-loopback host without a token (the caller was warned).
        any_modality: predict on uploads that are not projection radiographs too (refused by default).
        log_filenames: name each upload in the request log (off by default: file names often carry a
            patient's name; the log has a request id, size, outcome and time instead).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 50.0
    concurrency: int = 2
    token: str | None = field(default=None, repr=False)
    insecure_no_token: bool = False
    any_modality: bool = False
    log_filenames: bool = False

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ServerSettingsError(f"the upload limit must be positive, not {self.max_upload_mb:g} MB")
        if self.concurrency < 1:
            raise ServerSettingsError(f"concurrency must be at least 1, not {self.concurrency}")
        if not 0 <= self.port <= 65535:
            raise ServerSettingsError(f"the port must be 0-65535, not {self.port}")
        if self.token is not None and not _TOKEN_CHARS.fullmatch(self.token):
            raise ServerSettingsError("the access token must be printable ASCII, no spaces (it travels in a header)")
        if not self.token and not self.insecure_no_token and not is_loopback(self.host):
            raise ServerSettingsError(
                f"serving on {self.host} (reachable from other machines) needs an access token: set {TOKEN_ENV} "
                "or pass --token, or pass --insecure-no-token to serve without one"
            )

    def bind(self) -> socket.socket:
        """A socket bound to `host`:`port` (not yet listening), for uvicorn to serve on: taken before the model
        loads and before anything claims to be serving, so a busy port is one error line, not a false start."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: no wait after a restart
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as e:
            sock.close()
            reason = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise ServerSettingsError(f"cannot serve on {self.host}:{self.port}: {reason}") from None
        sock.set_inheritable(True)
        return sock

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)

    def warnings(self) -> list[str]:
        """What whoever starts this server should read: no token while exposed, a short token, plain HTTP."""
        found = []
        if self.exposed and not self.token:
            found.append(
                f"serving on {self.host} with NO ACCESS TOKEN (--insecure-no-token): anyone who can reach port "
                f"{self.port} can send images to this server and use its model"
            )
        if self.token and len(self.token) < MIN_TOKEN_LENGTH:
            found.append(
                f"the access token has {len(self.token)} characters; use a long random one, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if self.exposed:
            what = "images, results and the token" if self.token else "images and results"
            found.append(
                f"this server speaks plain HTTP: {what} cross the network unencrypted; "
                "put a TLS reverse proxy in front of it (README: Web page and REST API)"
            )
        return found
