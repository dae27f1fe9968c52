"""The admin web server that ``serve`` runs: HTTP, the token, strict headers; pages elsewhere.

The standard library's ``ThreadingHTTPServer`` in a daemon thread, no JavaScript. Only GET
and HEAD are served. With ``[admin] token`` set, every path but ``/healthz`` needs
``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (the links of a page then carry it, and
no log line shows it). The pages themselves are ``admin/pages.py``, built from the node's
read-only :class:`~scanet_node.admin.view.NodeView`.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from scanet_node.admin.pages import (
    Pages,
    Request,
    Response,
    token_required,
    unavailable,
)
from scanet_node.admin.render import CSS_SHA256
from scanet_node.errors import ListenerError

if TYPE_CHECKING:
    from scanet_node.admin.view import NodeView

logger = logging.getLogger(__name__)

_TOKEN_IN_TEXT = re.compile(r"token=[^&\s'\"]*")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        f"default-src 'none'; img-src 'self'; style-src 'sha256-{CSS_SHA256}'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def authorised(token: str | None, authorization: str | None, query_token: str | None) -> bool:
    """True when no ``token`` is configured, or the request carries it (a bearer
    ``authorization`` header, else ``?token=``); compared in constant time."""
    if not token:
        return True
    given = None
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    elif query_token is not None:
        given = query_token
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class AdminApp:
    """Turns a request target into a :class:`Response`: the token checked, then the page.
    No sockets here."""

    def __init__(self, view: NodeView) -> None:
        self.token = view.settings.admin.token
        self.pages = Pages(view)

    def handle(self, target: str, authorization: str | None) -> Response:
        """Answer a GET of ``target`` (path and query)."""
        parts = urlsplit(target)
        path = parts.path
        tokens = parse_qs(parts.query).get("token")
        query_token = tokens[0] if tokens else None
        if path == "/healthz":
            return self.pages.healthz()
        if not authorised(self.token, authorization, query_token):
            return token_required('Bearer realm="scanet-node"')
        request = Request(path, query_token if self.token else None)
        try:
            return self.pages.route(request)
        except Exception:
            logger.exception("admin page %s failed", path)
            return unavailable(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: AdminApp


class _Handler(BaseHTTPRequestHandler):
    """Serves GET and HEAD from the app; 405 for any other method."""

    server_version = "scanet-node"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client does not hold a thread for ever

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # its body, if any, is never read
            self._send(
                Response(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    b"read-only: GET and HEAD only\n",
                    content_type="text/plain; charset=utf-8",
                    headers={"Allow": "GET, HEAD", "Connection": "close"},
                )
            )
            return False
        return True

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        app: AdminApp = self.server.app  # type: ignore[attr-defined]
        self._send(app.handle(self.path, self.headers.get("Authorization")))

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query: a ?token= never reaches the log.
        logger.debug(
            "admin %s %s -> %s",
            self.command,
            urlsplit(self.path).path,
            code,
            extra={"peer": self.client_address[0]},
        )

    def log_message(self, format: str, *args: Any) -> None:
        text = _TOKEN_IN_TEXT.sub("token=***", format % args)
        logger.info("admin page: %s", text, extra={"peer": self.client_address[0]})


class AdminServer:
    """The admin web server of a running node, in a daemon thread.

    Parameters
    ----------
    view
        What the pages may read of the node (built by ``service.Node``).
    """

    def __init__(self, view: NodeView) -> None:
        self.settings = view.settings.admin
        self.app = AdminApp(view)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind ``[admin] host``/``port`` and serve; return the bound address."""
        admin = self.settings
        try:
            server = _Server((admin.host, admin.port), _Handler)
        except OSError as exc:
            raise ListenerError(
                f"cannot serve the admin page on {admin.host}:{admin.port} "
                f"([admin] host/port): {exc.strerror or exc}"
            ) from exc
        server.app = self.app
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="admin-http",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        logger.info("admin page on %s", self.url)
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the admin server is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's base URL."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
