"""The embedded store as readers open it: via the running collector when there is one.

:func:`open_embedded` is what ``--backend embedded`` (the default) builds. If a
collector is serving the data dir (its ``collector.json`` names a live pid),
the bounded lookups in :data:`.queryapi.SERVED` go to it over HTTP, warm; every
other call, and any lookup the collector cannot answer (stopped, restarting,
token refused, answer too large), reads the store in this process through
:class:`~.query.EmbeddedBackend`, opened on first use. Both read the same
blocks and write-ahead log, so the answers are the same; only the cost differs.

This module imports the standard library and :mod:`stagetrace.wire` only:
pyarrow and DuckDB load when a call actually needs the store.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stagetrace import semconv

from .queryapi import DISCOVERY_FILE, PREFIX, SERVED

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
        url = _discover(data_dir)
        if url is not None:
            return ServedBackend(data_dir, url, os.environ.get(semconv.ENV_COLLECTOR_TOKEN))
    from .query import EmbeddedBackend
    return EmbeddedBackend(data_dir)


def _discover(data_dir: Path) -> str | None:
    try:
        info = json.loads((data_dir / DISCOVERY_FILE).read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # left behind by a kill -9
        return None
    except PermissionError:  # alive, someone else's
        pass
    return url


class ServedBackend:
    """A :class:`stagetrace.backend.Backend`: served lookups over HTTP, the rest local."""

    name = "embedded"

    def __init__(self, data_dir: Path, url: str, token: str | None = None) -> None:
        self.data_dir = data_dir
        self.url = url
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 4318
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._local: Any = None
        self._served = True  # off after the first failure: one slow timeout at most

    # -- the served lookups ---------------------------------------------------
    def get_trace(self, trace_id: str, *, start_ns: int | None = None, end_ns: int | None = None) -> Any:
        return self._ask("get_trace", [trace_id], {"start_ns": start_ns, "end_ns": end_ns})

    def metric_series(self, query: Any) -> Any:
        return self._ask("metric_series", [query], {})

    def metric_names(self, **kwargs: Any) -> Any:
        return self._ask("metric_names", [], kwargs)

    def stats(self) -> Any:
        return self._ask("stats", [], {})

    # -- everything else reads the store here ---------------------------------
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._store(), attr)

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
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT_S)
                self._conn.connect()
                self._conn.sock.settimeout(QUERY_TIMEOUT_S)
            self._conn.request("POST", PREFIX + method, body, self._headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_conn()
            raise _Unavailable(str(exc)) from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise _Unavailable(f"HTTP {resp.status}, not a query answer") from None
        if resp.status == 200 and isinstance(answer, dict) and "result" in answer:
            return wire.decode(answer["result"])
        message, kind = (answer.get("error", ""), answer.get("kind")) if isinstance(answer, dict) else ("", "")
        if resp.status == 400 and kind in ("UserError", "NotFound"):
            raise UserError(message)
        if resp.status == 400 and kind == "BackendError":
            raise BackendError(message)
        raise _Unavailable(f"HTTP {resp.status}: {message}")

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop_conn()
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> "ServedBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
