"""The embedded store as readers open it: via the running collector when there is one.

:func:`open_embedded` is what ``--backend embedded`` (the default) builds. If a
collector is serving the data dir (its ``collector.json`` names a live pid),
the bounded lookups in :data:`.queryapi.SERVED` go to it over HTTP, warm; every
other call, and any lookup the collector cannot answer (stopped, restarting,
token refused, answer too large), reads the store in this process through
:class:`~.query.EmbeddedBackend`, opened on first use. Both read the same
blocks and write-ahead log, so the answers are the same; only the cost differs.

This module imports the standard library and :mod:`stagetrace.wire` only:
pyarrow and DuckDB load when a call actually needs the store. It speaks the
few lines of HTTP/1.1 it needs over a socket: ``http.client`` alone (it pulls in
the ``email`` package) would cost a short-lived CLI more than the lookup.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlsplit

from stagetrace import semconv

from .queryapi import DISCOVERY_FILE, MAX_ANSWER_BYTES, PREFIX, SERVED

if TYPE_CHECKING:  # pragma: no cover
    from stagetrace.backend import LogQuery, MetricQuery, TraceQuery
    from stagetrace.model import LogRecord, MetricSeries, Span, Trace, TraceSummary

log = logging.getLogger("stagetrace.collector.client")

ENV_DIRECT = "STAGETRACE_DIRECT_READ"  # 1: never ask the collector (read the store here)
CONNECT_TIMEOUT_S = 1.0
QUERY_TIMEOUT_S = 60.0


class _Unavailable(Exception):
    """The collector cannot answer this one; read the store here instead."""


def open_embedded(data_dir: str | Path) -> Any:
    """The Backend over ``data_dir``: served by its collector when one runs there."""
    data_dir = Path(data_dir).expanduser()
    if os.environ.get(ENV_DIRECT, "").strip().lower() not in ("1", "true", "yes", "on"):
        found = _discover(data_dir)
        if found is not None:
            return ServedBackend(data_dir, found[0], os.environ.get(semconv.ENV_COLLECTOR_TOKEN), ca_file=found[1])
    from .query import EmbeddedBackend
    return EmbeddedBackend(data_dir)


def _discover(data_dir: Path) -> tuple[str, str | None] | None:
    """(query URL, certificate file to trust for https) of the collector serving ``data_dir``."""
    try:
        info = json.loads((data_dir / DISCOVERY_FILE).read_text())
        pid, url = int(info["pid"]), str(info["url"])
        ca_file = str(info["ca_file"]) if info.get("ca_file") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # left behind by a kill -9
        return None
    except PermissionError:  # alive, someone else's
        pass
    return url, ca_file


class ServedBackend:
    """A :class:`stagetrace.backend.Backend`: the bounded lookups over HTTP, scans in this process."""

    name = "embedded"

    def __init__(self, data_dir: Path, url: str, token: str | None = None, *, ca_file: str | None = None) -> None:
        self.data_dir = data_dir
        self.url = url
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 4318
        self._tls = parts.scheme == "https"
        self._ca_file = ca_file
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local: Any = None
        self._served = True  # off after the first failure: one slow timeout at most

    # -- the served lookups ---------------------------------------------------
    def get_trace(self, trace_id: str, *, start_ns: int | None = None, end_ns: int | None = None) -> Trace | None:
        return self._ask("get_trace", [trace_id], {"start_ns": start_ns, "end_ns": end_ns})

    def metric_series(self, query: MetricQuery) -> list[MetricSeries]:
        return self._ask("metric_series", [query], {})

    def metric_names(self, *, start_ns: int | None = None, end_ns: int | None = None,
                     service: str | None = None) -> list[str]:
        return self._ask("metric_names", [], {"start_ns": start_ns, "end_ns": end_ns, "service": service})

    def stats(self) -> dict[str, int]:
        return self._ask("stats", [], {})

    def quarantined(self, *, start_ns: int | None = None, end_ns: int | None = None,
                    tables: Sequence[str] | None = None) -> list[Any]:
        """Blocks set aside as corrupt (a small local file: no need to ask the collector)."""
        from .quarantine import list_quarantined
        return list_quarantined(self.data_dir, start_ns=start_ns, end_ns=end_ns, tables=tables)

    # -- scans that can return millions of rows: read the store here -----------
    def get_traces(self, trace_ids: Sequence[str], *, start_ns: int | None = None, end_ns: int | None = None,
                   with_logs: bool = True) -> dict[str, Trace]:
        return self._store().get_traces(trace_ids, start_ns=start_ns, end_ns=end_ns, with_logs=with_logs)

    def search_traces(self, query: TraceQuery) -> list[TraceSummary]:
        return self._store().search_traces(query)

    def find_spans(self, query: TraceQuery) -> list[Span]:
        return self._store().find_spans(query)

    def find_span_columns(self, query: TraceQuery) -> Any:
        return self._store().find_span_columns(query)

    def rootless_trace_ids(self, query: TraceQuery) -> list[str]:
        return self._store().rootless_trace_ids(query)

    def find_logs(self, query: LogQuery) -> list[LogRecord]:
        """By trace id with a limit (what `stagetrace trace` asks for an id with no spans):
        served, so the lookup loads no store in this process; any other query is a scan."""
        from .queryapi import MAX_SERVED_LOG_TRACES, MAX_SERVED_LOGS
        if (query.trace_ids is not None and 0 < len(query.trace_ids) <= MAX_SERVED_LOG_TRACES
                and query.limit is not None and 0 < query.limit <= MAX_SERVED_LOGS):
            return self._ask("find_logs", [dataclasses.replace(query, trace_ids=list(query.trace_ids))], {})
        return self._store().find_logs(query)

    def _store(self) -> Any:
        if self._local is None:
            from .query import EmbeddedBackend
            self._local = EmbeddedBackend(self.data_dir)
        return self._local

    def _ask(self, method: str, args: list, kwargs: dict) -> Any:
        assert method in SERVED
        if self._served:
            try:
                return self._post(method, args, kwargs)
            except _Unavailable as exc:
                log.debug("collector at %s did not answer %s (%s); reading the store here", self.url, method, exc)
                self._served = False
        return getattr(self._store(), method)(*args, **kwargs)

    def _post(self, method: str, args: list, kwargs: dict) -> Any:
        from stagetrace import wire
        from stagetrace.errors import BackendError, UserError

        body = json.dumps({"args": wire.encode(args), "kwargs": wire.encode(kwargs)}).encode()
        status, data = self._http_post(PREFIX + method, body)
        try:
            answer = json.loads(data)
        except ValueError:
            raise _Unavailable(f"HTTP {status}, not a query answer") from None
        if status == 200 and isinstance(answer, dict) and "result" in answer:
            return wire.decode(answer["result"])
        message, kind = (answer.get("error", ""), answer.get("kind")) if isinstance(answer, dict) else ("", "")
        if status == 400 and kind in ("UserError", "NotFound"):
            raise UserError(message)
        if status == 400 and kind == "BackendError":
            raise BackendError(message)
        raise _Unavailable(f"HTTP {status}: {message}")

    def _http_post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """One request on its own connection (``Connection: close``): (status, body)."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self._host}:{self._port}", f"Content-Length: {len(body)}",
                "Connection: close", *(f"{k}: {v}" for k, v in self._headers.items()), "", ""]
        chunks: list[bytes] = []
        try:
            raw_sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
            # wrap_socket takes over the plain socket; closing `sock` closes both
            sock = self._tls_context().wrap_socket(raw_sock, server_hostname=self._host) if self._tls else raw_sock
            with sock:
                sock.settimeout(QUERY_TIMEOUT_S)
                sock.sendall("\r\n".join(head).encode("latin-1") + body)
                size = 0
                while chunk := sock.recv(1 << 16):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES + (1 << 16):
                        raise _Unavailable("answer too large")
        except OSError as exc:  # ssl.SSLError (a certificate we do not trust) included
            raise _Unavailable(str(exc)) from None
        raw = b"".join(chunks)
        header, sep, payload = raw.partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in header.split(b"\r\n")[1:]
                          if line.lower().startswith(b"content-length:"))
        except (IndexError, ValueError, StopIteration):
            raise _Unavailable("not an HTTP answer") from None
        if not sep or len(payload) != length:
            raise _Unavailable("truncated answer")
        return status, payload

    def _tls_context(self) -> Any:
        """Trust the system CAs and the certificate the collector named in its discovery
        file (pinned: that exact certificate is the trust anchor, so a self-signed one
        works and its host name need not match the loopback address we dial)."""
        import ssl

        ctx = ssl.create_default_context()
        if self._ca_file:
            ctx.load_verify_locations(self._ca_file)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.check_hostname = False
        return ctx

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> "ServedBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
