"""The query layer, served by the running collector (Tempo's querier, for one machine).

Why: a new ``stagetrace trace`` process that reads the store itself spends most
of its time importing pyarrow and DuckDB and opening the blocks (~0.75 s cold on
a 1M-span store). The collector has all of that loaded and warm, so a lookup it
serves costs the CLI an HTTP round trip (docs/benchmarks.md).

Only bounded answers are served: one trace, the metric series of a window, the
metric names, store stats. Scans that can return millions of rows
(``find_spans``, ``find_logs``, ``search_traces``, ``get_traces``) stay in the
reading process (:mod:`.client` delegates them). The discovery file
``collector.json`` in the data dir tells readers where the collector listens;
readers check the pid and fall back to reading the store themselves.

Wire: ``POST /stagetrace/v1/query/<method>`` with ``{"args": [...], "kwargs": {...}}``
in :mod:`stagetrace.wire` form; ``200 {"result": ...}`` or ``4xx/5xx {"error": "..."}``.
The bearer token of the receivers applies here too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("stagetrace.collector.query")

PREFIX = "/stagetrace/v1/query/"
SERVED = frozenset({"get_trace", "metric_series", "metric_names", "stats", "find_logs"})
MAX_SERVED_LOG_TRACES = 100  # find_logs is served only as a bounded lookup: by trace id, with a limit
MAX_SERVED_LOGS = 10_000
DISCOVERY_FILE = "collector.json"
MAX_QUERY_BYTES = 1 << 20
MAX_ANSWER_BYTES = 64 << 20  # over this the reader is told to read the store itself


class QueryService:
    """One warm :class:`~.query.EmbeddedBackend` over the collector's data dir.

    Queries run one at a time: the backend's DuckDB connection is not shared
    across threads, and ingest keeps the other core.
    """

    def __init__(self, data_dir: Path, tail_index: Any = None) -> None:
        self.data_dir = data_dir
        self._tail_index = tail_index  # tailindex.TailIndex of this process's receivers, if any
        self._lock = threading.Lock()
        self._backend: Any = None

    def _open(self) -> Any:
        if self._backend is None:
            from .query import EmbeddedBackend
            self._backend = EmbeddedBackend(self.data_dir, tail_index=self._tail_index)
        return self._backend

    def warm(self) -> threading.Thread:
        """Open the store and touch every block in a background thread (returned), so
        the first lookup after start is as fast as the rest."""
        def run() -> None:
            from stagetrace import wire
            from stagetrace.backend import MetricQuery

            try:  # one of each served query: the first of each pays DuckDB's and the views' set-up
                from .store import SPANS, build_table

                # decoding log records into columns imports pandas (through pyarrow), 1-3 s
                # under load: the first lookup that found its trace in the log paid it
                build_table(SPANS, [])
                now = time.time_ns()
                self.call("get_trace", wire.dumps({"args": ["0" * 31 + "1"]}))
                self.call("metric_series", wire.dumps({"args": [MetricQuery(start_ns=now - 10**9, end_ns=now)]}))
                self.call("metric_names", b"{}")
            except Exception:
                log.debug("query warm-up failed", exc_info=True)
        t = threading.Thread(target=run, name="query-warmup", daemon=True)
        t.start()
        return t

    def call(self, method: str, body: bytes) -> tuple[int, bytes]:
        """Run one query; returns (HTTP status, JSON body)."""
        from stagetrace import wire
        from stagetrace.errors import UserError

        if method not in SERVED:
            return 404, _error(f"unknown query {method!r}; served: {', '.join(sorted(SERVED))}")
        try:
            req = wire.loads(body) if body else {}
            args, kwargs = req.get("args", []), req.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("args must be a list and kwargs an object")
        except (ValueError, TypeError, AttributeError) as exc:
            return 400, _error(f"bad query body: {exc}")
        if method == "find_logs" and not _bounded_log_lookup(args, kwargs):
            return 400, _error(f"find_logs is served by trace id only (at most {MAX_SERVED_LOG_TRACES} ids, "
                               f"limit at most {MAX_SERVED_LOGS}); read the store for scans")
        try:
            with self._lock:
                result = getattr(self._open(), method)(*args, **kwargs)
            answer = json.dumps({"result": wire.encode(result)}, separators=(",", ":")).encode()
        except UserError as exc:  # e.g. an invalid id: the reader shows the same line
            return 400, _error(str(exc), kind=type(exc).__name__)
        except TypeError as exc:
            return 400, _error(f"bad arguments for {method}: {exc}")
        except Exception as exc:
            log.exception("query %s failed", method)
            return 500, _error(f"{type(exc).__name__}: {exc}")
        if len(answer) > MAX_ANSWER_BYTES:
            return 413, _error(f"answer of {len(answer)} bytes is over {MAX_ANSWER_BYTES}; read the store directly")
        return 200, answer

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None


def _bounded_log_lookup(args: list, kwargs: dict) -> bool:
    """A served find_logs must be a lookup (a trace id only log records carry, for
    `stagetrace trace`), not a scan that would take the collector's core from ingest."""
    from stagetrace.backend import LogQuery
    q = args[0] if len(args) == 1 and not kwargs else None
    return (isinstance(q, LogQuery) and isinstance(q.trace_ids, list) and 0 < len(q.trace_ids) <= MAX_SERVED_LOG_TRACES
            and isinstance(q.limit, int) and 0 < q.limit <= MAX_SERVED_LOGS)


def _error(message: str, kind: str = "") -> bytes:
    return json.dumps({"error": message, "kind": kind}).encode()


def write_discovery(data_dir: Path, host: str, http_port: int, ca_file: str | None = None) -> Path:
    """Say where this collector serves queries; atomic, so a reader never sees half a file.

    With TLS the URL is ``https://`` and ``ca_file`` names the collector's own
    certificate: a reader on this machine trusts exactly that certificate (it
    can read the data dir anyway), with no CA set-up for a self-signed one."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    path = data_dir / DISCOVERY_FILE
    tmp = path.with_name(f".{DISCOVERY_FILE}.{os.getpid()}")
    info: dict[str, Any] = {"pid": os.getpid(), "url": f"{'https' if ca_file else 'http'}://{h}:{http_port}",
                            "query": PREFIX}
    if ca_file:
        info["ca_file"] = ca_file
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)
    return path


def remove_discovery(data_dir: Path) -> None:
    path = data_dir / DISCOVERY_FILE
    try:  # only our own: a newer collector on the same dir may have replaced it
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
