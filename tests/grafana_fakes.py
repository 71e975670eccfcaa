"""A local HTTP server that answers like Tempo and Loki, from RECORDINGS.

Tempo and Loki cannot run on these machines, so the GrafanaBackend tests serve the
bodies recorded from real servers in ../shared/samples (see its README.md): the
status codes, headers and JSON are byte-for-byte what Tempo v3.1.0-dev and Loki
main-65e30f8 answered. Only the routing below is ours: it picks the recording that
matches the request and notes every request so tests can check what was asked.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def samples_dir() -> Path:
    if not (SAMPLES / "README.md").is_file():
        pytest.fail(f"recorded Tempo/Loki samples not found at {SAMPLES}: the repository expects "
                    "shared/samples beside it (../shared/samples from the repo root)")
    return SAMPLES


def recording(rel: str) -> bytes:
    return (samples_dir() / rel).read_bytes()


class FakeGrafanaStack(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.v2 = True  # False: answer /api/v2 with a plain 404 like Tempo < 2.6
        self.fail: dict[str, tuple[int, bytes]] = {}  # path prefix -> (status, body)
        self.delay_s = 0.0
        self.search_doc: dict | None = None  # a modified copy of the recorded search answer
        self.trace_doc: dict | None = None  # a modified copy of the recorded v2 trace answer
        self.raw: dict[str, bytes] = {}  # path prefix -> 200 body as is
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def last(self, prefix: str) -> dict:
        hits = [r for r in self.requests if r["path"].startswith(prefix)]
        assert hits, f"no request to {prefix}: {[r['path'] for r in self.requests]}"
        return hits[-1]


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafanaStack

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with self.server.lock:
            self.server.requests.append({"path": u.path, "query": q, "headers": dict(self.headers)})
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        for prefix, (status, body) in self.server.fail.items():
            if u.path.startswith(prefix):
                return self._send(status, body, "text/plain; charset=utf-8")
        for prefix, body in self.server.raw.items():
            if u.path.startswith(prefix):
                return self._send(200, body)
        p = u.path
        if p.startswith("/api/v2/traces/"):
            if not self.server.v2:
                return self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            if p.rsplit("/", 1)[1] == TRACE_ID:
                body = json.dumps(self.server.trace_doc).encode() if self.server.trace_doc else \
                    recording("tempo/tempo_trace_v2.json")
                return self._send(200, body)
            return self._send(404, recording("tempo/tempo_trace_not_found.txt"))
        if p.startswith("/api/traces/"):
            tid = p.rsplit("/", 1)[1]
            if tid == TRACE_ID:
                return self._send(200, recording("tempo/tempo_trace_v1.json"))
            if len(tid) != 32:
                return self._send(400, recording("tempo/tempo_trace_bad_id.txt"), "text/plain; charset=utf-8")
            return self._send(404, recording("tempo/tempo_trace_not_found.txt"))
        if p == "/api/search":
            body = json.dumps(self.server.search_doc).encode() if self.server.search_doc else \
                recording("tempo/tempo_search_traceql.json")
            return self._send(200, body)
        if p == "/loki/api/v1/query_range":
            if q.get("query", "").count("{") != q.get("query", "").count("}"):
                return self._send(400, recording("loki/loki_bad_query.txt"), "text/plain; charset=utf-8")
            if self.headers.get("X-Loki-Response-Encoding-Flags") == "categorize-labels":
                return self._send(200, recording("loki/loki_query_range_by_trace_categorized.json"))
            return self._send(200, recording("loki/loki_query_range_by_trace.json"))
        if p == "/loki/api/v1/labels":
            return self._send(200, recording("loki/loki_labels.json"))
        return self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
