"""A local HTTP server that answers like Tempo and Loki, from RECORDINGS.

Tempo and Loki cannot run on these machines, so the GrafanaBackend tests serve the
bodies recorded from real servers in tests/data/samples (see its README.md): the
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

# Kept in the repository (tests/data/samples, provenance in tests/data/README.md).
SAMPLES = Path(__file__).resolve().parent / "data" / "samples"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def samples_dir() -> Path:
    if not (SAMPLES / "README.md").is_file():
        pytest.fail(f"recorded Tempo/Loki samples not found at {SAMPLES}: they are part of the "
                    "repository (tests/data/samples); is the checkout complete?")
    return SAMPLES


def recording(rel: str) -> bytes:
    return (samples_dir() / rel).read_bytes()


class FakeGrafanaStack(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler] | None = None) -> None:
        # Read every recording here, in the test's thread: a missing file then fails the
        # test that started the server, not a request thread nobody waits on.
        root = samples_dir()
        self.recordings = {p.relative_to(root).as_posix(): p.read_bytes()
                           for p in sorted(root.glob("*/*")) if p.is_file()}
        super().__init__(("127.0.0.1", 0), handler or _Handler)
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
                    self.server.recordings["tempo/tempo_trace_v2.json"]
                return self._send(200, body)
            return self._send(404, self.server.recordings["tempo/tempo_trace_not_found.txt"])
        if p.startswith("/api/traces/"):
            tid = p.rsplit("/", 1)[1]
            if tid == TRACE_ID:
                return self._send(200, self.server.recordings["tempo/tempo_trace_v1.json"])
            if len(tid) != 32:
                return self._send(400, self.server.recordings["tempo/tempo_trace_bad_id.txt"], "text/plain; charset=utf-8")
            return self._send(404, self.server.recordings["tempo/tempo_trace_not_found.txt"])
        if p == "/api/search":
            body = json.dumps(self.server.search_doc).encode() if self.server.search_doc else \
                self.server.recordings["tempo/tempo_search_traceql.json"]
            return self._send(200, body)
        if p == "/loki/api/v1/query_range":
            if q.get("query", "").count("{") != q.get("query", "").count("}"):
                return self._send(400, self.server.recordings["loki/loki_bad_query.txt"], "text/plain; charset=utf-8")
            if self.headers.get("X-Loki-Response-Encoding-Flags") == "categorize-labels":
                return self._send(200, self.server.recordings["loki/loki_query_range_by_trace_categorized.json"])
            return self._send(200, self.server.recordings["loki/loki_query_range_by_trace.json"])
        if p == "/loki/api/v1/labels":
            return self._send(200, self.server.recordings["loki/loki_labels.json"])
        return self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")


# --- Serving a larger data set in the recorded shapes ------------------------------------
#
# The recordings hold one trace. To compare whole investigations across backends, the
# tests also serve telemetry taken from the embedded store, encoded exactly the way the
# recorded Tempo and Loki answers are (base64 ids, enum names, string int64s, Loki's
# flattened names, index labels vs structured metadata). The encoders are checked
# against the recordings (test_grafana_backend.py::test_encoders_reproduce_the_recordings),
# so what is served for more data has the shapes real servers produce. Only the query
# evaluation is ours: it implements the TraceQL/LogQL forms the backend sends, with
# Tempo's and Loki's documented semantics.

import base64 as _b64
import re as _re

# Loki's default index labels for OTLP resource attributes (Loki docs, "Ingesting logs
# to Loki using OpenTelemetry Collector"); the recording shows the first few.
LOKI_INDEX_LABELS = ("service.name", "service.namespace", "service.instance.id", "deployment.environment",
                     "deployment.environment.name", "cloud.availability_zone", "cloud.region",
                     "container.name", "k8s.cluster.name", "k8s.container.name", "k8s.cronjob.name",
                     "k8s.daemonset.name", "k8s.deployment.name", "k8s.job.name", "k8s.namespace.name",
                     "k8s.pod.name", "k8s.replicaset.name", "k8s.statefulset.name")
_KINDS = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
          "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")


def _b64id(hex_id: str) -> str:
    return _b64.b64encode(bytes.fromhex(hex_id)).decode()


def _otlp_value(v) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_otlp_value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": _otlp_value(x)} for k, x in v.items()]}}
    return {"stringValue": str(v)}


def _otlp_attrs(attrs: dict) -> list:
    return [{"key": k, "value": _otlp_value(v)} for k, v in attrs.items()]


def tempo_trace_doc(spans) -> dict:
    """A Tempo v2 trace-by-id answer for model spans (grouped by resource, then scope)."""
    groups: dict = {}
    for s in spans:
        rkey = json.dumps(s.resource, sort_keys=True)
        g = groups.setdefault(rkey, {"resource": {"attributes": _otlp_attrs(s.resource)}, "scopes": {}})
        scope = g["scopes"].setdefault((s.scope_name, s.scope_version), [])
        sp = {"traceId": _b64id(s.trace_id), "spanId": _b64id(s.span_id)}
        if s.parent_span_id:
            sp["parentSpanId"] = _b64id(s.parent_span_id)
        sp.update({"name": s.name, "kind": _KINDS[("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER",
                                                   "CONSUMER").index(s.kind)],
                   "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
                   "attributes": _otlp_attrs(s.attributes)})
        if s.events:
            sp["events"] = [{"timeUnixNano": str(e.time_ns), "name": e.name, "attributes": _otlp_attrs(e.attributes)}
                            for e in s.events]
        if s.links:
            sp["links"] = [{"traceId": _b64id(l.trace_id), "spanId": _b64id(l.span_id),
                            "attributes": _otlp_attrs(l.attributes)} for l in s.links]
        status = {}
        if s.status_message:
            status["message"] = s.status_message
        if s.status_code != "UNSET":
            status["code"] = f"STATUS_CODE_{s.status_code}"
        sp["status"] = status
        scope.append(sp)
    rs = []
    for g in groups.values():
        scopes = []
        for (name, version), sps in g["scopes"].items():
            sc = {"name": name}
            if version:
                sc["version"] = version
            scopes.append({"scope": sc, "spans": sps})
        rs.append({"resource": g["resource"], "scopeSpans": scopes})
    return {"trace": {"resourceSpans": rs}, "metrics": {}}


def _flat(name: str) -> str:
    return _re.sub(r"[^A-Za-z0-9_]", "_", name)


def _loki_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


def loki_entry(r) -> tuple[dict, str, str, dict]:
    """(index labels, ts, line, structured metadata) of one model LogRecord, as Loki's
    OTLP ingestion stores it."""
    labels = {_flat(k): _loki_str(v) for k, v in r.resource.items() if k in LOKI_INDEX_LABELS}
    meta = {_flat(k): _loki_str(v) for k, v in r.resource.items() if k not in LOKI_INDEX_LABELS}
    meta.update({_flat(k): _loki_str(v) for k, v in r.attributes.items()})
    level = {"WARNING": "warn"}.get(r.severity_text.upper(), r.severity_text.lower())
    meta.update({"detected_level": level or "unknown", "observed_timestamp": str(r.observed_time_ns),
                 "scope_name": r.scope_name, "severity_number": str(r.severity_number),
                 "severity_text": r.severity_text})
    if r.span_id:
        meta["span_id"] = r.span_id
    if r.trace_id:
        meta["trace_id"] = r.trace_id
    return labels, str(r.time_ns), r.body if isinstance(r.body, str) else json.dumps(r.body), meta


def loki_streams_doc(entries, categorized: bool) -> dict:
    """A Loki query_range streams answer for (labels, ts, line, metadata) entries."""
    streams: dict = {}
    for labels, ts, line, meta in entries:
        if categorized:
            key = json.dumps(labels, sort_keys=True)
            streams.setdefault(key, {"stream": dict(sorted(labels.items())), "values": []})["values"].append(
                [ts, line, {"structuredMetadata": dict(sorted(meta.items()))}])
        else:
            merged = dict(sorted({**labels, **meta}.items()))
            key = json.dumps(merged, sort_keys=True)
            streams.setdefault(key, {"stream": merged, "values": []})["values"].append([ts, line])
    data = {"resultType": "streams", "result": list(streams.values()), "stats": {}}
    if categorized:
        data = {"resultType": "streams", "encodingFlags": ["categorize-labels"], "result": data["result"],
                "stats": {}}
    return {"status": "success", "data": data}


_COND = _re.compile(r'^(resource\.service\.name|name|status|duration|nestedSetParent|\.(?:"(?:[^"\\]|\\.)*"|[\w.\-]+))'
                    r'\s*(=|>=|<=)\s*(.+)$')


def _traceql_conditions(q: str) -> list[tuple[str, str, object]]:
    body = q.strip()
    assert body.startswith("{") and body.endswith("}"), q
    body = body[1:-1].strip()
    out = []
    for part in ([] if not body else body.split(" && ")):
        m = _COND.match(part.strip())
        assert m, f"unsupported TraceQL condition {part!r}"
        field, op, raw = m.groups()
        if raw.endswith("ns") and field == "duration":
            val: object = int(raw[:-2])
        elif raw.startswith('"'):
            val = json.loads(raw)
        elif raw in ("true", "false"):
            val = raw == "true"
        else:
            try:
                val = int(raw)
            except ValueError:
                try:
                    val = float(raw)
                except ValueError:
                    val = raw  # status enum
        if field.startswith('."'):
            field = "." + json.loads(field[1:])
        out.append((field, op, val))
    return out


def _span_satisfies(s, conds) -> bool:
    for field, op, val in conds:
        if field == "resource.service.name":
            ok = s.resource.get("service.name") == val
        elif field == "name":
            ok = s.name == val
        elif field == "status":
            ok = s.status_code.lower() == val
        elif field == "duration":
            ok = s.duration_ns >= val if op == ">=" else s.duration_ns <= val
        elif field == "nestedSetParent":
            ok = not s.parent_span_id
        else:  # unscoped: span attribute, else resource attribute (TraceQL semantics)
            key = field[1:]
            have = s.attributes.get(key, s.resource.get(key))
            ok = have is not None and (have == val or (not isinstance(have, bool) and str(have) == str(val)))
        if not ok:
            return False
    return True


class DatasetStack(FakeGrafanaStack):
    """Answers like Tempo and Loki for a data set (model spans and logs), in the
    recorded shapes, evaluating the TraceQL/LogQL forms GrafanaBackend sends."""

    def __init__(self, spans, logs) -> None:
        self.traces: dict[str, list] = {}
        for s in spans:
            self.traces.setdefault(s.trace_id, []).append(s)
        self.entries = sorted((loki_entry(r) for r in logs), key=lambda e: int(e[1]))
        super().__init__(_DatasetHandler)


class _DatasetHandler(_Handler):
    server: DatasetStack

    def do_GET(self) -> None:  # noqa: N802
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with self.server.lock:
            self.server.requests.append({"path": u.path, "query": q, "headers": dict(self.headers)})
        if u.path.startswith("/api/v2/traces/"):
            spans = self.server.traces.get(u.path.rsplit("/", 1)[1])
            if not spans:
                return self._send(404, b"")
            return self._send(200, json.dumps(tempo_trace_doc(spans)).encode())
        if u.path == "/api/search":
            return self._send(200, json.dumps(self._search(q)).encode())
        if u.path == "/loki/api/v1/query_range":
            categorized = self.headers.get("X-Loki-Response-Encoding-Flags") == "categorize-labels"
            return self._send(200, json.dumps(loki_streams_doc(self._logs(q), categorized)).encode())
        return self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _search(self, q: dict) -> dict:
        conds = _traceql_conditions(q["q"])
        lo = int(q.get("start", 0)) * 10**9
        hi = int(q.get("end", 2**62 // 10**9)) * 10**9
        hits = []
        for tid, spans in self.server.traces.items():
            t0 = min(s.start_ns for s in spans)
            t1 = max(s.end_ns for s in spans)
            if t1 < lo or t0 > hi:  # Tempo: traces overlapping [start, end]
                continue
            matched = [s for s in spans if _span_satisfies(s, conds)]
            if not matched:
                continue
            roots = [s for s in spans if not s.parent_span_id]
            root = min(roots or spans, key=lambda s: s.start_ns)
            stats: dict = {}
            for s in spans:
                st = stats.setdefault(s.resource.get("service.name"), {"spanCount": 0})
                st["spanCount"] += 1
                if s.status_code == "ERROR":
                    st["errorCount"] = st.get("errorCount", 0) + 1
            ss = {"spans": [{"spanID": s.span_id, "startTimeUnixNano": str(s.start_ns),
                             "durationNanos": str(s.duration_ns), "attributes": []}
                            for s in matched[:int(q.get("spss", 3))]], "matched": len(matched)}
            hit = {"traceID": tid.lstrip("0"), "rootServiceName": root.resource.get("service.name"),
                   "rootTraceName": root.name}
            if not roots:  # Tempo's words for a trace without its root span (search.RootSpanNotYetReceivedText)
                hit = {"traceID": tid.lstrip("0"), "rootServiceName": "<root span not yet received>"}
            hits.append({**hit, "startTimeUnixNano": str(t0),
                         "durationMs": (t1 - t0) // 10**6, "spanSet": ss, "spanSets": [ss], "serviceStats": stats})
        hits.sort(key=lambda h: -int(h["startTimeUnixNano"]))
        hits = hits[:int(q.get("limit", 20))]
        return {"traces": hits, "metrics": {"inspectedBytes": "0", "completedJobs": 1, "totalJobs": 1}}

    def _logs(self, q: dict) -> list:
        query = q["query"]
        m = _re.match(r'^\{service_name(=~|=)"((?:[^"\\]|\\.)*)"\}(.*)$', query)
        assert m, f"unsupported LogQL {query!r}"
        op, svc, rest = m.group(1), json.loads(f'"{m.group(2)}"'), m.group(3)
        filters = _re.findall(r'\| (\w+)(=~|=)("(?:[^"\\]|\\.)*")', rest)
        assert "".join(f" | {k}{o}{v}" for k, o, v in filters) == rest, f"unsupported LogQL {query!r}"
        start, end = int(q["start"]), int(q["end"])
        out = []
        for labels, ts, line, meta in self.server.entries:
            if not (start <= int(ts) <= end):
                continue
            name = labels.get("service_name", "")
            if not (_re.fullmatch(svc, name) if op == "=~" else name == svc):
                continue
            fields = {**labels, **meta}
            ok = True
            for key, o, raw in filters:
                want = json.loads(raw)
                have = fields.get(key)
                ok = have is not None and (_re.fullmatch(want, have) is not None if o == "=~" else have == want)
                if not ok:
                    break
            if ok:
                out.append((labels, ts, line, meta))
                if len(out) >= int(q.get("limit", 100)):
                    break
        return out
