"""The receive layer: OTLP/gRPC and OTLP/HTTP in front of one :class:`Ingestor`.

Both protocols share admission control, decoding, validation and the
write-ahead append, so they answer the same request the same way. Status codes
follow the OTLP specification (opentelemetry-proto/docs/specification.md):

===========================  ==========================  =============================
situation                    OTLP/HTTP                   OTLP/gRPC
===========================  ==========================  =============================
accepted (maybe partially)   200 + partial_success       OK + partial_success
malformed body               400 (permanent)             INVALID_ARGUMENT (permanent)
bad or missing token         401 (permanent)             UNAUTHENTICATED (permanent)
body over the size limit     413 (permanent)             RESOURCE_EXHAUSTED, no RetryInfo
too many requests in flight  429 + Retry-After           RESOURCE_EXHAUSTED + RetryInfo
store behind / disk error    503 + Retry-After           UNAVAILABLE + RetryInfo
===========================  ==========================  =============================
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from . import labels, otlp, queryapi, wal
from .store import TABLE_OF_SIGNAL
from .tailindex import TailIndex

log = logging.getLogger("stagetrace.collector.receiver")

GRPC_SERVICES = {
    otlp.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    otlp.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
    otlp.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
HTTP_PATHS = {"/v1/traces": otlp.TRACES, "/v1/logs": otlp.LOGS, "/v1/metrics": otlp.METRICS}
_REJECTED_FIELD = {otlp.TRACES: "rejected_spans", otlp.LOGS: "rejected_log_records",
                   otlp.METRICS: "rejected_data_points"}


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The server certificate (PEM, chain allowed) and its private key, as the OTel
    Collector's ``tls: {cert_file, key_file}`` settings name them."""

    cert_file: str
    key_file: str

    def load(self) -> tuple[bytes, bytes]:
        """(certificate chain, key) bytes; an unreadable file is a clear OSError."""
        out = []
        for what, path in (("certificate", self.cert_file), ("key", self.key_file)):
            try:
                with open(path, "rb") as fh:
                    out.append(fh.read())
            except OSError as exc:
                raise OSError(f"cannot read the TLS {what} file {path}: {exc.strerror or exc}") from None
        return out[0], out[1]

    def server_context(self) -> Any:
        """An ``ssl.SSLContext`` for the HTTP listener (TLS 1.2+)."""
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load the TLS certificate {self.cert_file} with key {self.key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


@dataclass(slots=True)
class Limits:
    max_request_bytes: int = 16 << 20  # per request, after decompression
    max_inflight: int = 16  # concurrent export requests per protocol
    max_backlog_bytes: int = 256 << 20  # WAL not yet cut into blocks
    # Ingest must not run ahead of its own acknowledgements: refuse while the oldest
    # closed WAL segment has waited longer than this to be cut into a block (and the
    # backlog is over lag_floor_bytes, so a maintainer restart or a burst is absorbed).
    # The byte limit alone let a saturated collector sit at 256 MiB, 13-18 s of cutting
    # behind what it had acknowledged (docs/benchmarks.md, 20M-span ingest). 0: off.
    max_lag_s: float = 2.0
    lag_floor_bytes: int = 16 << 20
    retry_after_s: int = 1


class ExportError(Exception):
    """A refused request; ``kind`` picks the HTTP and gRPC status."""

    def __init__(self, kind: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # malformed | unauthenticated | too_large | overloaded | unavailable
        self.retry_after_s = retry_after_s


_HTTP_STATUS = {"malformed": 400, "unauthenticated": 401, "too_large": 413, "overloaded": 429, "unavailable": 503,
                "unsupported": 415}
_GRPC_STATUS = {"malformed": grpc.StatusCode.INVALID_ARGUMENT, "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
                "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "unavailable": grpc.StatusCode.UNAVAILABLE, "unsupported": grpc.StatusCode.INVALID_ARGUMENT}
_RPC_CODE = {"malformed": code_pb2.INVALID_ARGUMENT, "unauthenticated": code_pb2.UNAUTHENTICATED,
             "too_large": code_pb2.RESOURCE_EXHAUSTED, "overloaded": code_pb2.RESOURCE_EXHAUSTED,
             "unavailable": code_pb2.UNAVAILABLE, "unsupported": code_pb2.INVALID_ARGUMENT}


class Ingestor:
    """Decode, validate and durably append one export request; protocol-neutral."""

    def __init__(self, writers: dict[str, wal.WalWriter], limits: Limits, token: str | None,
                 backlog_bytes: Callable[[], int], lag_s: Callable[[], float] = lambda: 0.0,
                 tail_index: TailIndex | None = None) -> None:
        self.writers = writers  # by store table
        self.tail_index = tail_index  # when this process serves lookups: the ids of what it appends
        self.limits = limits
        self.token = token
        self._backlog_bytes = backlog_bytes
        self._lag_s = lag_s
        self.stats = {"requests": 0, "refused": 0, "accepted": 0, "rejected": 0}

    def check_token(self, authorization: str | None) -> None:
        if self.token is None:
            return
        expected = f"Bearer {self.token}"
        if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise ExportError("unauthenticated", "missing or invalid bearer token")

    def check_backlog(self) -> None:
        backlog, lim = self._backlog_bytes(), self.limits
        if backlog > lim.max_backlog_bytes:
            raise ExportError("unavailable", "the store is behind (write-ahead log backlog over its limit); retry later",
                              lim.retry_after_s)
        if lim.max_lag_s and backlog > lim.lag_floor_bytes and (lag := self._lag_s()) > lim.max_lag_s:
            raise ExportError("unavailable", f"the store is behind (acknowledged data waiting {lag:.1f} s to be "
                              f"stored in blocks, limit {lim.max_lag_s:g} s); retry later", lim.retry_after_s)

    def export(self, signal: str, body: bytes, *, json_body: bool) -> Any:
        """Return the Export*ServiceResponse; raise :class:`ExportError` to refuse."""
        self.stats["requests"] += 1
        try:
            req = otlp.decode(signal, body, json_body=json_body)
        except otlp.MalformedPayload as exc:
            raise ExportError("malformed", str(exc)) from None
        v = otlp.validate(signal, req)
        if v.accepted:
            payload = body if (not json_body and not v.rejected) else req.SerializeToString()
            table = TABLE_OF_SIGNAL[signal]
            try:
                seq, start, end = self.writers[table].append(payload)
            except OSError as exc:  # disk full, ...: nothing was acknowledged, the client retries
                log.error("write-ahead log append failed: %s", exc)
                raise ExportError("unavailable", f"cannot write to the store: {exc.strerror or exc}",
                                  self.limits.retry_after_s * 5) from None
            if self.tail_index is not None and v.trace_ids:
                self.tail_index.add(table, seq, start, end, v.trace_ids)
        self.stats["accepted"] += v.accepted
        self.stats["rejected"] += v.rejected
        resp = otlp.RESPONSE_TYPES[signal]()
        if v.rejected or v.message:
            setattr(resp.partial_success, _REJECTED_FIELD[signal], v.rejected)
            resp.partial_success.error_message = v.message
        return resp


def rpc_status(kind: str, message: str, retry_after_s: int | None) -> status_pb2.Status:
    st = status_pb2.Status(code=_RPC_CODE[kind], message=message)
    if retry_after_s is not None:
        st.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s)))
    return st


# --- OTLP/gRPC ------------------------------------------------------------------

class _Status(grpc.Status):  # grpc.Status is an abstract attribute holder
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _abort(context: grpc.ServicerContext, exc: ExportError) -> None:
    st = rpc_status(exc.kind, str(exc), exc.retry_after_s)
    # grpc-status-details-bin carries google.rpc.Status with RetryInfo (what SDK exporters read)
    context.abort_with_status(_Status(_GRPC_STATUS[exc.kind], str(exc),
                                      (("grpc-status-details-bin", st.SerializeToString()),)))


def _grpc_handler(ingestor: Ingestor, signal: str, slots: threading.BoundedSemaphore) -> grpc.RpcMethodHandler:
    def export(body: bytes, context: grpc.ServicerContext) -> bytes:
        if not slots.acquire(blocking=False):
            ingestor.stats["refused"] += 1
            _abort(context, ExportError("overloaded", "too many concurrent export requests; retry later",
                                        ingestor.limits.retry_after_s))
        try:
            auth = None
            for key, value in context.invocation_metadata():
                if key == "authorization":
                    auth = value
            ingestor.check_token(auth)
            ingestor.check_backlog()
            return ingestor.export(signal, body, json_body=False).SerializeToString()
        except ExportError as exc:
            ingestor.stats["refused"] += 1
            _abort(context, exc)
        except Exception:  # a bug must not look like success
            log.exception("unexpected error in gRPC %s export", signal)
            _abort(context, ExportError("unavailable", "internal error", ingestor.limits.retry_after_s))
        finally:
            slots.release()
        raise AssertionError("unreachable")

    # raw bytes in and out: we decode ourselves, so a malformed message is
    # INVALID_ARGUMENT (grpc's own deserializer failure would be INTERNAL).
    return grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)


def start_grpc(ingestor: Ingestor, host: str, port: int, tls: TLSFiles | None = None) -> tuple[grpc.Server, int]:
    limits = ingestor.limits
    slots = threading.BoundedSemaphore(limits.max_inflight)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.max_inflight + 4, thread_name_prefix="otlp-grpc"),
        options=[("grpc.max_receive_message_length", limits.max_request_bytes),
                 # a busy port must fail, not be shared (SO_REUSEPORT off); grpc core sets
                 # SO_REUSEADDR itself, so a restart after kill -9 binds over TIME_WAIT
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=limits.max_inflight * 2,  # queued messages are memory too
    )
    handlers = []
    for signal, service in GRPC_SERVICES.items():
        handlers.append(grpc.method_handlers_generic_handler(service, {"Export": _grpc_handler(ingestor, signal, slots)}))
    server.add_generic_rpc_handlers(tuple(handlers))
    creds = None
    if tls is not None:
        cert, key = tls.load()
        TLSFiles.server_context(tls)  # a mismatched or malformed pair: one clear line here, not grpc's log
        creds = grpc.ssl_server_credentials([(key, cert)])
    try:
        bound = server.add_secure_port(_join(host, port), creds) if creds else server.add_insecure_port(_join(host, port))
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for OTLP/gRPC on {_join(host, port)}: address in use or not available")
    server.start()
    return server, bound


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- OTLP/HTTP ------------------------------------------------------------------

class _OTLPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: SDK exporters reuse one connection
    server_version = "stagetrace-collector"
    ingestor: Ingestor
    slots: threading.BoundedSemaphore
    query: Any = None  # queryapi.QueryService, when this collector serves queries

    def log_message(self, fmt: str, *args: Any) -> None:  # no per-request stderr noise
        log.debug("http %s", fmt % args)

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None,
               close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, exc: ExportError, json_body: bool, close: bool = False) -> None:
        st = rpc_status(exc.kind, str(exc), exc.retry_after_s)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        if json_body:
            body, ctype = otlp.encode_json(st), "application/json"
        else:
            body, ctype = st.SerializeToString(), "application/x-protobuf"
        self._reply(_HTTP_STATUS[exc.kind], body, ctype, headers, close=close)

    def do_GET(self) -> None:  # noqa: N802
        if self.path in ("/", "/healthz"):
            self._reply(200, b"ok\n", "text/plain")
        else:
            self._reply(404 if self.path not in HTTP_PATHS else 405, b"", "text/plain", close=True)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        signal = HTTP_PATHS.get(path)
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        json_body = ctype == "application/json"
        length_text = self.headers.get("Content-Length")
        if signal is None and self.query is not None and path.startswith(queryapi.PREFIX):
            self._serve_query(path[len(queryapi.PREFIX):], length_text)
            return
        if path == labels.PATH:
            self._serve_labels(length_text)
            return
        if signal is None:
            self._reply(404, f"unknown path {path}; use /v1/traces, /v1/logs or /v1/metrics\n".encode(),
                        "text/plain", close=True)
            return
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._reply(411, b"Content-Length required\n", "text/plain", close=True)
            return
        ing = self.ingestor
        if length > ing.limits.max_request_bytes:
            # refuse without reading the body; close since the rest of it is still on the wire
            self._error(ExportError("too_large", f"request body of {length} bytes is over the limit of "
                                                 f"{ing.limits.max_request_bytes}"), json_body, close=True)
            return
        if not self.slots.acquire(blocking=False):
            # refuse without buffering the body (memory stays bounded), and close
            ing.stats["refused"] += 1
            self._error(ExportError("overloaded", "too many concurrent export requests; retry later",
                                    ing.limits.retry_after_s), json_body, close=True)
            return
        # the slot covers reading + decoding + the WAL append (what holds memory), not
        # the reply: a client that got its answer can send again at once
        error: ExportError | None = None
        resp = None
        try:
            body = self.rfile.read(length)
            ing.check_token(self.headers.get("Authorization"))
            if ctype not in ("application/x-protobuf", "application/json", "application/protobuf"):
                raise ExportError("unsupported", f"unsupported Content-Type {ctype!r}: use "
                                                 "application/x-protobuf or application/json")
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding == "gzip":
                body = _gunzip(body, ing.limits.max_request_bytes)
            elif encoding not in ("identity", ""):
                raise ExportError("unsupported", f"unsupported Content-Encoding {encoding!r}: use gzip")
            ing.check_backlog()
            resp = ing.export(signal, body, json_body=json_body)
        except ExportError as exc:
            ing.stats["refused"] += 1
            error = exc
        except Exception:  # a bug must not kill the server nor look like success
            log.exception("unexpected error while handling %s", path)
            error = ExportError("unavailable", "internal error", ing.limits.retry_after_s)
        finally:
            self.slots.release()
        if error is not None:
            self._error(error, json_body)
        elif json_body:
            self._reply(200, otlp.encode_json(resp), "application/json")
        else:
            self._reply(200, resp.SerializeToString(), "application/x-protobuf")


    def _serve_labels(self, length_text: str | None) -> None:
        """JSON lines of labels -> ``ml.label`` log records -> the logs WAL, like an export."""
        def answer(status: int, doc: dict, headers: dict[str, str] | None = None, close: bool = False) -> None:
            self._reply(status, (json.dumps(doc) + "\n").encode(), "application/json", headers, close=close)

        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            answer(411, {"error": "Content-Length required"}, close=True)
            return
        ing = self.ingestor
        limit = min(labels.MAX_LABEL_BYTES, ing.limits.max_request_bytes)
        if length > limit:
            answer(413, {"error": f"body of {length} bytes is over the limit of {limit}; send fewer labels per request"},
                   close=True)
            return
        if not self.slots.acquire(blocking=False):
            ing.stats["refused"] += 1
            answer(429, {"error": "too many concurrent requests; retry later"},
                   {"Retry-After": str(ing.limits.retry_after_s)}, close=True)
            return
        try:
            body = self.rfile.read(length)
            ing.check_token(self.headers.get("Authorization"))
            payload, accepted, rejected, errors = labels.parse_lines(body)
            if payload is None:
                answer(400, {"accepted": 0, "rejected": rejected, "errors": errors})
                return
            ing.check_backlog()
            ing.export(otlp.LOGS, payload, json_body=False)
        except ExportError as exc:
            ing.stats["refused"] += 1
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
            answer(_HTTP_STATUS[exc.kind], {"error": str(exc)}, headers)
            return
        except Exception:
            log.exception("unexpected error while storing labels")
            answer(503, {"error": "internal error"}, {"Retry-After": str(ing.limits.retry_after_s)})
            return
        finally:
            self.slots.release()
        answer(200, {"accepted": accepted, "rejected": rejected, "errors": errors})

    def _serve_query(self, method: str, length_text: str | None) -> None:
        try:
            length = int(length_text or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= queryapi.MAX_QUERY_BYTES:
            self._reply(413, b'{"error": "query body too large"}', "application/json", close=True)
            return
        body = self.rfile.read(length)
        try:
            self.ingestor.check_token(self.headers.get("Authorization"))
        except ExportError as exc:
            self._reply(401, json.dumps({"error": str(exc)}).encode(), "application/json")
            return
        status, answer = self.query.call(method, body)
        self._reply(status, answer, "application/json")


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ExportError("malformed", f"invalid gzip body: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ExportError("too_large", f"decompressed body is over the limit of {limit} bytes")
    if not d.eof:
        raise ExportError("malformed", "invalid gzip body: truncated")
    return out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR, as every production server sets it: on Linux it only lets us bind
    # over the TIME_WAIT connections a crashed (kill -9) collector left, so a restart
    # gets its port at once; a port a live process listens on still fails (sharing a
    # listening port is SO_REUSEPORT, which stays off).
    allow_reuse_address = True
    allow_reuse_port = False
    request_queue_size = 64
    max_connections = 256  # one thread per open connection: cap them, idle ones included

    tls_context: Any = None  # ssl.SSLContext when serving HTTPS
    tls_handshake_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn_slots = threading.BoundedSemaphore(self.max_connections)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls_context is not None:
            # the handshake runs on the connection's own thread (never in the accept
            # loop, where one slow client would stall every other)
            request.settimeout(self.tls_handshake_timeout_s)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except OSError as exc:  # ssl.SSLError is an OSError: a plain-HTTP client, a bad cert, a probe
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            request.settimeout(None)
            try:
                super().finish_request(request, client_address)
            finally:  # the plain socket the server will close was detached by wrap_socket
                try:
                    request.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                request.close()
            return
        super().finish_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._conn_slots.acquire(blocking=False):
            try:  # over the cap: a retryable answer without starting a thread
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._conn_slots.release()


def start_http(ingestor: Ingestor, host: str, port: int, query: Any = None,
               tls: TLSFiles | None = None) -> tuple[ThreadingHTTPServer, int, threading.Thread]:
    handler = type("OTLPHandler", (_OTLPHandler,), {
        "ingestor": ingestor, "slots": threading.BoundedSemaphore(ingestor.limits.max_inflight), "query": query})
    attrs: dict[str, Any] = {}
    if tls is not None:
        attrs["tls_context"] = tls.server_context()
    if ":" in host:
        attrs["address_family"] = socket.AF_INET6
    cls = type("_HTTPServerTLS" if tls else "_HTTPServer", (_HTTPServer,), attrs) if attrs else _HTTPServer
    try:
        server = cls((host, port), handler)
    except OSError as exc:
        raise OSError(f"cannot listen for OTLP/HTTP on {_join(host, port)}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="otlp-http", daemon=True)
    thread.start()
    return server, server.server_address[1], thread
