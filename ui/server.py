"""The UI's HTTP server: static assets shipped in the package, and JSON endpoints.

Standard library only (``ThreadingHTTPServer``): the UI must come with
``pip install stagetrace`` and nothing else, and it serves one user.

Security, as the collector's receivers (collector/cli.py): loopback by default; a
non-loopback address needs ``--allow-remote``, and then always a token (the CLI
makes one when none is given). The token is accepted as ``Authorization: Bearer``
or as a cookie that ``/?token=...`` sets (a browser cannot add headers to a link).
On loopback, the Host header must name loopback (no DNS rebinding from a web page).
Requests are bounded: 8 KiB of URL, 64 KiB of body, 30 s per read; investigations
(seconds of CPU) run one at a time.

Endpoints (``GET`` unless said):
``/``, ``/trace/<id>``, ``/map`` -> the page; ``/static/<file>``;
``/api/search?<filters>[&fit=1]``, ``/api/map?<window>``, ``/api/trace/<id>``,
``POST /api/investigate`` (JSON object of the same string parameters plus ``kind``);
``/api/health``.
"""

from __future__ import annotations

import hmac
import http.cookies
import json
import logging
import mimetypes
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

from stagetrace.backend import Backend
from stagetrace.errors import BackendError, NotFound, UserError

from . import api

log = logging.getLogger("stagetrace.ui")

MAX_URL_BYTES = 8 << 10
MAX_BODY_BYTES = 64 << 10
READ_TIMEOUT_S = 30.0
COOKIE = "stagetrace_ui_token"
_PAGES = ("/", "/map")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
# Styles are set from script (bar widths, positions); scripts only from our own files.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _static_files() -> dict[str, bytes]:
    """The shipped assets (ui/static/*), read once: the set of servable names is fixed."""
    root = resources.files("stagetrace.ui") / "static"
    out = {}
    for entry in root.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            out[entry.name] = entry.read_bytes()
    return out


@dataclass(slots=True)
class UIConfig:
    open_backend: Callable[[], Backend]
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    loopback_only_hosts: bool = True  # check the Host header (bound to loopback)
    tls: ssl.SSLContext | None = None


class UIServer:
    """One running UI. ``start()`` binds and serves on a thread; ``stop()`` shuts down."""

    def __init__(self, config: UIConfig) -> None:
        self.config = config
        self.static = _static_files()
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()  # the embedded store is not thread-safe
        self._investigating = threading.Semaphore(1)
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.warming: threading.Thread | None = None  # the warm-up started by start()

    # --- backend access -----------------------------------------------------------

    def with_backend(self, fn: Callable[[Backend], Any]) -> Any:
        with self._backend_lock:
            if self._backend is None:
                self._backend = self.config.open_backend()
            return fn(self._backend)

    def warm(self) -> threading.Thread:
        """Open the store and do what a first search would (:func:`.fastscan.warm`) in a
        background thread (returned), so the page's first search does not pay for it."""
        def run() -> None:
            from . import fastscan

            try:
                self.with_backend(lambda b: fastscan.warm(store) if (store := fastscan.embedded_store(b)) else None)
            except Exception:  # the first search will meet the same problem and report it
                log.debug("UI warm-up failed", exc_info=True)
        t = threading.Thread(target=run, name="ui-warmup", daemon=True)
        t.start()
        return t

    def investigate(self, req: api.InvestigateRequest) -> Any:
        """Investigations get their own backend, so browsing stays responsive meanwhile."""
        if not self._investigating.acquire(blocking=False):
            raise _Busy("an investigation is already running; try again when it has finished")
        try:
            backend = self.config.open_backend()
            try:
                return api.investigate(backend, req)
            finally:
                backend.close()
        finally:
            self._investigating.release()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"ui": self})
        httpd = _Server((self.config.host, self.config.port), handler)
        httpd.daemon_threads = True
        httpd.tls = self.config.tls
        self.httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="ui-http", daemon=True)
        self._thread.start()
        self.warming = self.warm()

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None


class _Busy(Exception):
    pass


class _Server(ThreadingHTTPServer):
    """TLS, when configured, is negotiated on the connection's own thread: a client that
    stalls or speaks plain HTTP must not hold up the accept loop."""

    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(READ_TIMEOUT_S)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    ui: UIServer
    server_version = "stagetrace-ui"
    sys_version = ""
    timeout = READ_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s %s", self.address_string(), format % args)

    # --- replies ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/"):
            self._json(status, {"error": message})
        else:
            self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    # --- checks ------------------------------------------------------------------------

    def _authorized(self, query: dict[str, list[str]]) -> bool | None:
        """True: go on; False: refused (sent); None: redirected after setting the cookie."""
        cfg = self.ui.config
        if cfg.loopback_only_hosts:
            host = (self.headers.get("Host") or "").strip().lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in _LOOPBACK_HOSTS:
                self._error(403, "this UI only answers to localhost / 127.0.0.1 (Host header)")
                return False
        if cfg.token is None:
            return True
        want = cfg.token.encode()
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), want):
            return True
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie") or "")
        except http.cookies.CookieError:
            pass
        c = cookies.get(COOKIE)
        if c is not None and hmac.compare_digest(c.value.encode(), want):
            return True
        given = query.get("token", [""])[-1]
        if given and hmac.compare_digest(given.encode(), want) and self.command == "GET" \
                and not self.path.startswith("/api/"):
            rest = {k: v for k, v in query.items() if k != "token"}
            loc = urllib.parse.urlsplit(self.path).path + (("?" + urllib.parse.urlencode(rest, doseq=True))
                                                             if rest else "")
            secure = "; Secure" if cfg.tls is not None else ""
            self._send(303, b"", "text/plain", {"Location": loc,
                                                "Set-Cookie": f"{COOKIE}={cfg.token}; HttpOnly; SameSite=Strict; "
                                                              f"Path=/{secure}"})
            return None
        self._error(401, "missing or invalid token: open the URL `stagetrace ui` printed (it carries ?token=)")
        return False

    def _parse(self) -> tuple[str, dict[str, list[str]]] | None:
        if len(self.path) > MAX_URL_BYTES:
            self._error(414, f"URL longer than {MAX_URL_BYTES} bytes")
            return None
        parts = urllib.parse.urlsplit(self.path)
        try:
            query = urllib.parse.parse_qs(parts.query, keep_blank_values=False, strict_parsing=False,
                                          max_num_fields=200)
        except ValueError as exc:
            self._error(400, f"bad query string: {exc}")
            return None
        return parts.path, query

    # --- dispatch -------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        path, query = parsed
        if not self._authorized(query):
            return
        if path in _PAGES or path.startswith("/trace/"):
            self._send(200, self.ui.static["index.html"], "text/html; charset=utf-8")
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
            body = self.ui.static.get(name)
            if body is None:
                self._error(404, f"no such file: {name}")
                return
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, body, ctype)
        elif path == "/api/health":
            self._json(200, {"status": "ok"})
        elif path == "/api/search":
            self._api(lambda: self.ui.with_backend(
                lambda b: api.search(b, api.parse_filters(query), fit=api.wants_fit(query))))
        elif path == "/api/map":
            def run_map() -> Any:
                f = api.parse_filters(query)
                return self.ui.with_backend(lambda b: api.service_map(b, f.start_ns, f.end_ns))
            self._api(run_map)
        elif path.startswith("/api/trace/"):
            tid = urllib.parse.unquote(path[len("/api/trace/"):])
            self._api(lambda: self.ui.with_backend(lambda b: api.trace(b, tid)))
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"not found: {path}")

    def do_POST(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        path, query = parsed
        if not self._authorized({}):
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self._error(411, "a Content-Length is required")
            return
        n = int(length)
        if n > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._error(413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(n)
        if path != "/api/investigate":
            self._error(404, f"not found: {path}")
            return
        try:
            doc = json.loads(body or b"{}")
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            params = {str(k): [str(v)] for k, v in doc.items() if v is not None and v != ""}
        except ValueError as exc:
            self._error(400, f"bad JSON body: {exc}")
            return
        self._api(lambda: self.ui.investigate(api.parse_investigate(params)))

    def _api(self, fn: Callable[[], Any]) -> None:
        try:
            doc = fn()
        except NotFound as exc:
            self._json(404, {"error": str(exc)})
        except BackendError as exc:
            self._json(502, {"error": str(exc)})
        except UserError as exc:
            self._json(400, {"error": str(exc)})
        except _Busy as exc:
            self._send(429, json.dumps({"error": str(exc)}).encode(), "application/json", {"Retry-After": "2"})
        except Exception as exc:  # one bad request must not kill the server; the log has the traceback
            log.exception("request %s failed", self.path)
            self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        else:
            self._json(200, doc)
