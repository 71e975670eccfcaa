"""GrafanaBackend over Tempo and Loki.

Tempo and Loki cannot run on these machines. Their answers here are RECORDINGS
from real servers (tests/data/samples, see its README), served by a local HTTP
server (tests/grafana_fakes.py). The cross-backend tests feed the same recorded
input (samples/input/*.otlp.json, the telemetry those servers were sent) to a real
`stagetrace collector` subprocess over OTLP/HTTP JSON and check that both backends
give the same trace, the same logs and the same forensics results.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest

from stagetrace.backend import LogQuery, MetricQuery, TraceQuery, open_backend
from stagetrace.errors import BackendError, UserError
from stagetrace.forensics.grafana import GrafanaBackend, parse_loki_streams, parse_tempo_trace, traceql

from grafana_fakes import TRACE_ID, FakeGrafanaStack, recording, samples_dir
from prometheus_server import start_prometheus

T0 = 1795556814218592550  # the recorded trace's start (about 2026-11-24 21:46 UTC)
T1 = 1795556814630592550


@pytest.fixture()
def stack():
    s = FakeGrafanaStack()
    yield s
    s.close()


@pytest.fixture()
def backend(stack):
    with GrafanaBackend(tempo_url=stack.url, loki_url=stack.url, tenant="team-ml",
                        headers={"Authorization": "Bearer t0ken"}, timeout_s=5) as b:
        yield b


def _input(kind: str) -> dict:
    return json.loads((samples_dir() / "input" / f"input_{kind}.otlp.json").read_text())


def _value(v: dict):
    (k, x), = v.items()
    if k == "intValue":
        return int(x)
    if k == "arrayValue":
        return [_value(i) for i in x.get("values", [])]
    return x


def _sent_spans() -> dict[str, tuple[dict, dict, dict]]:
    out = {}
    for rs in _input("traces")["resourceSpans"]:
        res = {a["key"]: _value(a["value"]) for a in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                out[sp["spanId"]] = (sp, res, ss["scope"])
    return out


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- Tempo: parsing the recorded shapes -------------------------------------------------

def test_trace_by_id_equals_what_was_sent(backend, stack):
    trace = backend.get_trace(TRACE_ID, start_ns=T0, end_ns=T1)
    sent = _sent_spans()
    assert {s.span_id for s in trace.spans} == set(sent)  # base64 ids decoded to hex
    kinds = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]
    for s in trace.spans:
        sp, res, scope = sent[s.span_id]
        assert s.trace_id == TRACE_ID and s.parent_span_id == sp.get("parentSpanId", "")
        assert s.kind == kinds[sp["kind"]]  # enum names
        assert (s.start_ns, s.end_ns) == (int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"]))
        assert s.attributes == {a["key"]: _value(a["value"]) for a in sp.get("attributes", [])}  # "500" -> 500
        assert (s.status_code, s.status_message) == \
            (["UNSET", "OK", "ERROR"][sp.get("status", {}).get("code", 0)], sp.get("status", {}).get("message", ""))
        assert [(e.name, e.time_ns, e.attributes) for e in s.events] == \
            [(e["name"], int(e["timeUnixNano"]), {a["key"]: _value(a["value"]) for a in e["attributes"]})
             for e in sp.get("events", [])]
        assert s.resource == res and (s.scope_name, s.scope_version) == (scope["name"], scope.get("version", ""))
    assert [s.start_ns for s in trace.spans] == sorted(s.start_ns for s in trace.spans)
    req = stack.last("/api/v2/traces/")
    assert req["path"] == f"/api/v2/traces/{TRACE_ID}"
    # Unix seconds covering the window; tenant and auth header on every call.
    assert int(req["query"]["start"]) <= T0 // 10**9 and int(req["query"]["end"]) >= T1 / 1e9
    assert req["headers"]["X-Scope-OrgID"] == "team-ml" and req["headers"]["Authorization"] == "Bearer t0ken"


def test_v1_and_v2_parse_to_the_same_spans():
    v1 = parse_tempo_trace(json.loads(recording("tempo/tempo_trace_v1.json")))
    v2 = parse_tempo_trace(json.loads(recording("tempo/tempo_trace_v2.json")))
    assert v1 == v2 and len(v1) == 6


def test_falls_back_to_v1_api(backend, stack):
    stack.v2 = False  # a Tempo before 2.6 has no /api/v2 route
    trace = backend.get_trace(TRACE_ID)
    assert len(trace.spans) == 6
    assert stack.last("/api/traces/")["path"] == f"/api/traces/{TRACE_ID}"
    assert "start" not in stack.last("/api/traces/")["query"]  # no window known: none sent
    n = len(stack.requests)
    backend.get_trace(TRACE_ID)
    assert not any(r["path"].startswith("/api/") for r in stack.requests[n:])  # the document is cached
    backend._cache.clear()
    n = len(stack.requests)
    backend.get_trace(TRACE_ID)
    tempo = [r["path"] for r in stack.requests[n:] if r["path"].startswith("/api/")]
    assert tempo == [f"/api/traces/{TRACE_ID}"]  # v1 remembered: no v2 attempt


def test_unknown_trace_is_none_and_bad_id_is_a_user_error(backend, stack):
    assert backend.get_trace("0" * 31 + "1") is None  # 404 with an empty body
    n = len(stack.requests)
    with pytest.raises(UserError, match="invalid trace id"):
        backend.get_trace("nothex")
    assert len(stack.requests) == n  # refused before any request


def test_search_summary_and_traceql(backend, stack):
    hits = backend.search_traces(TraceQuery(service="fraud-api", status="error",
                                            attributes={"ml.stage": "inference"}, start_ns=T0 - 10**9,
                                            end_ns=T1 + 10**9, limit=20))
    assert len(hits) == 1
    h = hits[0]
    assert (h.trace_id, h.root_service, h.root_name) == (TRACE_ID, "fraud-api", "POST /predict")
    assert (h.start_ns, h.duration_ns, h.span_count, h.error) == (T0, 412_000_000, 6, True)
    q = stack.last("/api/search")["query"]
    assert q["q"] == '{ resource.service.name = "fraud-api" && status = error && .ml.stage = "inference" }'
    assert (int(q["start"]), int(q["end"]), q["limit"]) == (T0 // 10**9 - 1, -(-(T1 + 10**9) // 10**9), "20")


def test_search_pads_trace_ids_with_dropped_leading_zeros(backend, stack):
    # The recorded search answer, with a trace id that starts with zeros, printed the way
    # Tempo prints it (leading zeros dropped).
    doc = json.loads(recording("tempo/tempo_search_traceql.json"))
    doc["traces"][0]["traceID"] = "bf92f3577b34da6a3ce929d0e0e4736"
    stack.search_doc = doc
    assert backend.search_traces(TraceQuery())[0].trace_id == "0bf92f3577b34da6a3ce929d0e0e4736"


def test_traceql_quoting_and_types():
    q = traceql(TraceQuery(span_name='say "hi"', min_duration_ns=5, root_only=True,
                           attributes={"ml.batch.size": 32, "ok": True, "odd key": "x\\y"}))
    assert q == ('{ name = "say \\"hi\\"" && duration >= 5ns && nestedSetParent = -1 && .ml.batch.size = 32'
                 ' && .ok = true && ."odd key" = "x\\\\y" }')
    with pytest.raises(UserError):
        traceql(TraceQuery(status="broken"))


def test_find_spans_fetches_full_spans_and_checks_conditions(backend, stack):
    spans = backend.find_spans(TraceQuery(status="error", start_ns=T0, end_ns=T1 + 1, limit=None))
    assert [s.name for s in spans] == ["POST /predict", "LogisticRegression.predict_proba"]
    assert spans[1].attributes["ml.model.version"] == "v2"  # full attributes, not just the queried ones
    roots = backend.find_spans(TraceQuery(root_only=True, limit=None))
    assert [s.span_id for s in roots] == ["00f067aa0ba902b7"]
    assert "nestedSetParent = -1" in stack.last("/api/search")["query"]["q"]
    # The recorded search answer holds this trace whatever was asked; the exact check
    # on the fetched spans is what keeps a non-matching span out.
    assert backend.find_spans(TraceQuery(service="feature-svc", status="error")) == []


# --- Loki ----------------------------------------------------------------------------

def test_trace_logs_query_is_bounded_and_categorized(backend, stack):
    trace = backend.get_trace(TRACE_ID, start_ns=T0, end_ns=T1)
    req = stack.last("/loki/api/v1/query_range")
    q = req["query"]
    assert q["query"] == '{service_name=~".+"} | trace_id="4bf92f3577b34da6a3ce929d0e0e4736"'
    assert int(q["start"]) <= T0 and T1 <= int(q["end"]) <= T1 + 120 * 10**9  # bounded by the trace window
    assert q["direction"] == "forward"
    assert req["headers"]["X-Loki-Response-Encoding-Flags"] == "categorize-labels"
    assert req["headers"]["X-Scope-OrgID"] == "team-ml"
    sent = [(lr, rl["resource"], sl["scope"]) for rl in _input("logs")["resourceLogs"]
            for sl in rl["scopeLogs"] for lr in sl["logRecords"]]
    sent.sort(key=lambda x: int(x[0]["timeUnixNano"]))
    assert len(trace.logs) == len(sent) == 4
    for got, (lr, res, scope) in zip(trace.logs, sent):
        assert got.time_ns == int(lr["timeUnixNano"]) and got.observed_time_ns == int(lr["observedTimeUnixNano"])
        assert (got.severity_number, got.severity_text) == (lr["severityNumber"], lr["severityText"])
        assert got.body == lr["body"]["stringValue"]
        assert (got.trace_id, got.span_id) == (lr["traceId"], lr["spanId"])
        assert got.attributes == {a["key"]: _value(a["value"]) for a in lr["attributes"]}  # dots restored
        assert got.resource == {a["key"]: _value(a["value"]) for a in res["attributes"]}
        assert got.scope_name == scope["name"]


def test_plain_and_categorized_encodings_parse_the_same():
    plain = parse_loki_streams(json.loads(recording("loki/loki_query_range_by_trace.json")))
    cat = parse_loki_streams(json.loads(recording("loki/loki_query_range_by_trace_categorized.json")))
    assert plain == cat and len(plain) == 4


def test_find_logs_by_service_and_severity(backend, stack):
    recs = backend.find_logs(LogQuery(service="fraud-api", min_severity=13, start_ns=T0, end_ns=T1))
    assert [r.severity_text for r in recs] == ["WARN", "ERROR"]
    q = stack.last("/loki/api/v1/query_range")["query"]
    assert q["query"] == '{service_name="fraud-api"}' and (int(q["start"]), int(q["end"])) == (T0, T1 - 1)
    # No window and a trace id: the window comes from Tempo, Loki is still bounded.
    recs = backend.find_logs(LogQuery(trace_ids=[TRACE_ID], attributes={"exception.type": "ValueError"}))
    assert [r.span_id for r in recs] == ["e457b5a2e4d86bd1"]
    assert int(stack.last("/loki/api/v1/query_range")["query"]["start"]) <= T0


# --- failures: one clear line, never a traceback ----------------------------------------

def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 300, msg
    return msg


def test_backend_down():
    b = GrafanaBackend(tempo_url=f"http://127.0.0.1:{_closed_port()}", timeout_s=2)
    with pytest.raises(BackendError) as e:
        b.get_trace(TRACE_ID)
    assert "Tempo at http://127.0.0.1:" in _one_line(e) and "unreachable" in str(e.value)
    assert e.value.exit_code == 3


def test_timeout(stack):
    stack.delay_s = 1.5
    b = GrafanaBackend(tempo_url=stack.url, timeout_s=0.3)
    with pytest.raises(BackendError) as e:
        b.search_traces(TraceQuery())
    assert "did not answer within 0.3 s" in _one_line(e)


@pytest.mark.parametrize("status", [500, 503, 401])
def test_http_errors(stack, backend, status):
    stack.fail["/api/v2/traces"] = (status, b"upstream says no\nsecond line")
    with pytest.raises(BackendError) as e:
        backend.get_trace(TRACE_ID)
    assert _one_line(e) == f"Tempo answered HTTP {status} for /api/v2/traces/{TRACE_ID}: upstream says no"


def test_loki_bad_query_400(backend):
    with pytest.raises(BackendError) as e:
        backend.find_logs(LogQuery(service="fraud-api} |", start_ns=T0, end_ns=T1))
    assert "Loki answered HTTP 400" in _one_line(e) and "parse error" in str(e.value)


def test_not_json_and_partial_answers(stack, backend):
    stack.raw["/api/search"] = b"<html>proxy error</html>"
    with pytest.raises(BackendError) as e:
        backend.search_traces(TraceQuery())
    assert "not JSON" in _one_line(e)
    del stack.raw["/api/search"]
    doc = json.loads(recording("tempo/tempo_search_traceql.json"))
    doc["metrics"].update(completedJobs=1, totalJobs=2)
    stack.search_doc = doc
    with pytest.raises(BackendError) as e:
        backend.search_traces(TraceQuery(limit=20))
    assert "partial (1 of 2 jobs" in _one_line(e)
    tdoc = json.loads(recording("tempo/tempo_trace_v2.json"))
    tdoc.update(status="PARTIAL", message="1 block could not be read")
    stack.trace_doc = tdoc
    with pytest.raises(BackendError) as e:
        backend.get_trace(TRACE_ID)
    assert "partial trace" in _one_line(e)
    stack.raw["/loki/api/v1/query_range"] = json.dumps({"status": "error", "error": "too many outstanding requests"}).encode()
    with pytest.raises(BackendError, match="too many outstanding requests"):
        backend.find_logs(LogQuery(start_ns=T0, end_ns=T1))


def test_selection_and_bad_urls(stack, monkeypatch):
    with pytest.raises(UserError, match="at least one of --tempo"):
        GrafanaBackend()
    with pytest.raises(UserError, match="invalid Tempo URL"):
        GrafanaBackend(tempo_url="tempo:3200")
    with pytest.raises(UserError, match="--tempo"):
        GrafanaBackend(loki_url=stack.url).get_trace(TRACE_ID)
    b = open_backend(kind="grafana", tempo_url=stack.url, loki_url=stack.url, tenant="acme",
                     headers=["Authorization=Basic eA=="])
    assert isinstance(b, GrafanaBackend)
    b.get_trace(TRACE_ID)
    h = stack.last("/api/v2/traces/")["headers"]
    assert (h["X-Scope-OrgID"], h["Authorization"]) == ("acme", "Basic eA==")


def test_cli_backend_down_is_one_line(tmp_path):
    port = _closed_port()
    out = subprocess.run([sys.executable, "-m", "stagetrace.cli", "trace", TRACE_ID, "--backend", "grafana",
                          "--tempo", f"http://127.0.0.1:{port}", "--loki", f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], out.stderr


# --- the same data on both backends --------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The recorded input posted as OTLP/HTTP JSON to a real `stagetrace collector`."""
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    # The recordings keep their 2026-11 timestamps: retention off, or the maintainer may drop
    # them (older than the default 7 days) between the post and the read.
    with start_collector(tmp_path_factory.mktemp("store"), extra_args=["--retention", "off"]) as c:
        for path, kind in (("/v1/traces", "traces"), ("/v1/logs", "logs")):
            body = (samples_dir() / "input" / f"input_{kind}.otlp.json").read_bytes()
            req = urllib.request.Request(c.http_endpoint + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        with EmbeddedBackend(c.data_dir) as b:
            yield b


@pytest.fixture(scope="module")
def remote_urls():
    """Recorded Tempo + Loki answers, and a real (empty: the input has no metrics) Prometheus."""
    s = FakeGrafanaStack()
    prom = start_prometheus([])
    try:
        yield {"tempo": s.url, "loki": s.url, "prometheus": prom.url}
    finally:
        prom.stop()
        s.close()


@pytest.fixture(scope="module")
def remote(remote_urls):
    with GrafanaBackend(tempo_url=remote_urls["tempo"], loki_url=remote_urls["loki"],
                        prometheus_url=remote_urls["prometheus"], timeout_s=5) as b:
        yield b


def test_same_trace_and_logs_as_embedded(embedded, remote):
    want = embedded.get_trace(TRACE_ID)
    got = remote.get_trace(TRACE_ID)
    assert [asdict(s) for s in got.spans] == [asdict(s) for s in want.spans]
    assert [asdict(r) for r in got.logs] == [asdict(r) for r in want.logs]
    assert (got.start_ns, got.end_ns) == (want.start_ns, want.end_ns)
    q = TraceQuery(status="error", start_ns=T0, end_ns=T1, limit=None)
    assert remote.find_spans(q) == embedded.find_spans(q)
    lq = LogQuery(start_ns=T0, end_ns=T1 + 1, min_severity=13, limit=None)
    assert remote.find_logs(lq) == embedded.find_logs(lq)


def _report(r) -> dict:
    d = json.loads(__import__("stagetrace.forensics", fromlist=["render"]).render(r, "json"))
    d.pop("generated_at_ns", None)
    return d


def test_same_forensics_results_on_both_backends(embedded, remote):
    from stagetrace import forensics

    for b in (embedded, remote):
        b.get_trace(TRACE_ID)
    assert _report(forensics.trace_report(remote, TRACE_ID)) == _report(forensics.trace_report(embedded, TRACE_ID))
    win = dict(start_ns=T0 - 10**9, end_ns=T1 + 10**9)
    slow_r = _report(forensics.investigate_slow(remote, **win))
    slow_e = _report(forensics.investigate_slow(embedded, **win))
    assert slow_r == slow_e
    err_r = _report(forensics.investigate_errors(remote, **win))
    err_e = _report(forensics.investigate_errors(embedded, **win))
    assert err_r == err_e
    assert err_e["findings"], "the recorded trace has a failing inference span: errors must find it"


def test_cli_selects_grafana_by_env_and_config_file(embedded, remote_urls, tmp_path):
    """`stagetrace trace` prints the same JSON report from the embedded store and from
    Tempo+Loki+Prometheus selected by STAGETRACE_* variables or a --backend-config file."""
    import os

    def run(args, env_extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETRACE_")}
        env.update(env_extra)
        out = subprocess.run([sys.executable, "-m", "stagetrace.cli", "trace", TRACE_ID, "--format", "json", *args],
                             capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        doc.pop("generated_at_ns")
        return doc

    want = run(["--data-dir", str(embedded.data_dir)], {})
    by_env = run([], {"STAGETRACE_BACKEND": "grafana", "STAGETRACE_TEMPO_URL": remote_urls["tempo"],
                      "STAGETRACE_LOKI_URL": remote_urls["loki"],
                      "STAGETRACE_PROMETHEUS_URL": remote_urls["prometheus"]})
    assert by_env == want
    cfg = tmp_path / "backend.toml"
    cfg.write_text('[backend]\nkind = "grafana"\n' + "".join(f'{k} = "{v}"\n' for k, v in remote_urls.items()))
    assert run(["--backend-config", str(cfg)], {}) == want


def test_log_filter_on_a_name_loki_flattened(backend, stack):
    # "scope.shard" is no known name: Loki stores it as scope_shard and it stays so.
    doc = json.loads(recording("loki/loki_query_range_by_trace_categorized.json"))
    doc["data"]["result"][0]["values"][0][2]["structuredMetadata"]["scope_shard"] = "7"
    stack.raw["/loki/api/v1/query_range"] = json.dumps(doc).encode()
    recs = backend.find_logs(LogQuery(start_ns=T0, end_ns=T1, attributes={"scope.shard": "7"}))
    assert [r.attributes["scope_shard"] for r in recs] == ["7"]
    q = stack.last("/loki/api/v1/query_range")["query"]["query"]
    assert q == '{service_name=~".+"} | scope_shard="7"'


def test_slow_body_hits_the_overall_deadline(stack):
    class Drip:
        def iter_content(self, chunk_size):
            while True:
                time.sleep(0.05)
                yield b"x"
    from stagetrace.forensics.grafana import _Http
    import requests
    h = _Http("Tempo", stack.url, requests.Session(), {}, timeout_s=0.1)
    with pytest.raises(BackendError, match="did not finish its answer within 0.3 s"):
        h._read(Drip(), "/api/search")


# --- whole investigations on a generated data set --------------------------------------

def _canon_tempo(doc: dict) -> list:
    rs = doc["trace"]["resourceSpans"]
    out = []
    for r in sorted(rs, key=lambda r: json.dumps(r["resource"], sort_keys=True)):
        scopes = [{"scope": s["scope"], "spans": sorted(s["spans"], key=lambda x: x["spanId"])} for s in r["scopeSpans"]]
        out.append({"resource": r["resource"], "scopeSpans": scopes})
    return out


def _canon_loki(doc: dict) -> dict:
    data = dict(doc["data"])
    data.pop("stats", None)
    data["result"] = sorted(({"stream": s["stream"], "values": sorted(s["values"], key=lambda v: v[0])}
                             for s in data["result"]), key=lambda s: json.dumps(s, sort_keys=True))
    return {"status": doc["status"], "data": data}


def test_encoders_reproduce_the_recordings(embedded):
    """The data-set server's encoders turn what the embedded store holds for the recorded
    input into exactly the recorded Tempo and Loki answers."""
    from grafana_fakes import loki_entry, loki_streams_doc, tempo_trace_doc

    tr = embedded.get_trace(TRACE_ID)
    assert _canon_tempo(tempo_trace_doc(tr.spans)) == _canon_tempo(json.loads(recording("tempo/tempo_trace_v2.json")))
    entries = [loki_entry(r) for r in tr.logs]
    for categorized, name in ((True, "loki_query_range_by_trace_categorized.json"),
                              (False, "loki_query_range_by_trace.json")):
        assert _canon_loki(loki_streams_doc(entries, categorized)) == \
            _canon_loki(json.loads(recording(f"loki/{name}"))), name


class _NoMetrics:
    """OTLP span and log exporters of the generator, no metrics: the remote side's
    Prometheus is empty, so metric evidence is compared as 'none' on both sides
    (metrics over the real Prometheus are tested in test_prometheus_backend.py)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def span(self):
        return self.inner.span()

    def log(self):
        return self.inner.log()

    def metric(self):
        class _Drop:
            def export(self, *a, **k):
                from opentelemetry.sdk.metrics.export import MetricExportResult
                return MetricExportResult.SUCCESS

            def shutdown(self, *a, **k):
                pass

            def force_flush(self, *a, **k):
                return True
        return _Drop()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, remote_urls):
    """A generated slow-shard incident (tests/telemetry_gen.py) in the embedded store,
    and the same spans and logs behind the Tempo/Loki data-set server."""
    import telemetry_gen as gen
    from grafana_fakes import DatasetStack
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    with start_collector(tmp_path_factory.mktemp("scenario")) as c:
        res = gen.generate("slow_shard", _NoMetrics(gen.OtlpExporters(http_endpoint=c.http_endpoint)),
                           minutes=8, per_minute=40)
        with EmbeddedBackend(c.data_dir) as emb:
            spans = emb.find_spans(TraceQuery(limit=None))
            logs = emb.find_logs(LogQuery(limit=None))
            assert len({s.trace_id for s in spans}) == res.requests and logs
            stack = DatasetStack(spans, logs)
            try:
                with GrafanaBackend(tempo_url=stack.url, loki_url=stack.url,
                                    prometheus_url=remote_urls["prometheus"]) as remote:
                    yield {"embedded": emb, "remote": remote, "result": res, "stack": stack}
            finally:
                stack.close()


def test_same_investigations_on_a_generated_incident(scenario):
    from stagetrace import forensics

    emb, remote, res = scenario["embedded"], scenario["remote"], scenario["result"]
    win = dict(start_ns=res.start_ns, end_ns=res.end_ns)
    slow_e = _report(forensics.investigate_slow(emb, **win))
    assert _report(forensics.investigate_slow(remote, **win)) == slow_e
    top = [f for f in slow_e["findings"] if f["significant"]]
    assert any(f.get("attribute") == "feature.store.shard" and str(f.get("value")) == "7" for f in top), \
        "the injected cause must be found (else the comparison proves little)"
    errs_e = _report(forensics.investigate_errors(emb, **win))
    assert _report(forensics.investigate_errors(remote, **win)) == errs_e
    slowest = max(emb.find_spans(TraceQuery(root_only=True, start_ns=res.onset_ns, end_ns=res.end_ns, limit=None)),
                  key=lambda s: s.duration_ns)
    assert _report(forensics.trace_report(remote, slowest.trace_id)) == \
        _report(forensics.trace_report(emb, slowest.trace_id))
    # Loki was always asked with a bounded window, Tempo searched with TraceQL.
    stack = scenario["stack"]
    assert all(int(r["query"]["end"]) - int(r["query"]["start"]) <= res.end_ns - res.start_ns + 10**12
               for r in stack.requests if r["path"] == "/loki/api/v1/query_range")
    assert any("nestedSetParent = -1" in r["query"]["q"] for r in stack.requests if r["path"] == "/api/search")


@pytest.mark.parametrize("names,series,says", [
    ({"status": "success", "data": ["process_cpu_utilization"]},
     {"status": "success", "data": {"resultType": "matrix", "result": [{"values": [[1, "2"]]}]}},
     "Prometheus answered /api/v1/query_range with a series whose labels are not an object of strings"),
    ({"status": "success", "data": {"process_cpu_utilization": 1}}, None,
     "Prometheus answered /api/v1/label/__name__/values with an object where a list of metric names was expected"),
])
def test_investigate_slow_says_in_words_why_prometheus_metrics_were_skipped(scenario, capsys, names, series, says):
    """`investigate slow` through the CLI with Tempo and Loki as the data-set fakes and a
    'Prometheus' (a local HTTP server: a misbehaving proxy cannot be made of a real one)
    answering in another shape: the note said "KeyError: 'metric'" or nothing useful.
    It now names what was wrong with the answer, and the findings stand."""
    import datetime as dt

    from stagetrace.cli import main
    bad = FakeGrafanaStack()
    bad.raw["/api/v1/label"] = json.dumps(names).encode()
    if series is not None:
        bad.raw["/api/v1/query_range"] = json.dumps(series).encode()
    res, stack = scenario["result"], scenario["stack"]
    iso = [dt.datetime.fromtimestamp(t / 1e9, tz=dt.timezone.utc).isoformat() for t in (res.start_ns, res.end_ns)]
    try:
        try:
            main(["investigate", "slow", "--from", iso[0], "--until", iso[1], "--format", "json", "--backend",
                  "grafana", "--tempo", stack.url, "--loki", stack.url, "--prometheus", bad.url])
        except SystemExit as ended:
            assert ended.code in (0, None), capsys.readouterr().err
    finally:
        bad.close()
    doc = json.loads(capsys.readouterr().out)
    skipped = [n for n in doc["notes"] if "skipped" in n and "Prometheus" in n]
    assert skipped and all(says in n for n in skipped), doc["notes"]
    assert not [n for n in skipped if "Error:" in n or "'metric'" in n], skipped
    assert any(f.get("attribute") == "feature.store.shard" for f in doc["findings"] if f["significant"]), \
        [f["summary"] for f in doc["findings"]]


def test_rootless_traces_beside_requests_are_counted_from_tempo_search(scenario, capsys):
    """Ten traces of the generated incident lose their root span (Tempo and Loki as the
    data-set fakes; the search names such a trace's root service "<root span not yet
    received>", as Tempo does): `investigate slow` and `errors` over Tempo say 10 were
    skipped beside the requests; the same data with every root says nothing."""
    import datetime as dt

    from grafana_fakes import DatasetStack
    from stagetrace.cli import main
    emb, res = scenario["embedded"], scenario["result"]
    spans = emb.find_spans(TraceQuery(limit=None, start_ns=res.start_ns, end_ns=res.end_ns))
    logs = emb.find_logs(LogQuery(limit=None, start_ns=res.start_ns, end_ns=res.end_ns))
    lost = sorted({s.trace_id for s in spans if not s.parent_span_id})[5:15]
    iso = [dt.datetime.fromtimestamp(t / 1e9, tz=dt.timezone.utc).isoformat() for t in (res.start_ns, res.end_ns)]
    for dropped, want in ((set(lost), 10), (set(), 0)):
        stack = DatasetStack([s for s in spans if not (s.trace_id in dropped and not s.parent_span_id)], logs)
        try:
            for cmd in ("slow", "errors"):
                try:
                    main(["investigate", cmd, "--from", iso[0], "--until", iso[1], "--format", "json", "--backend",
                          "grafana", "--tempo", stack.url, "--loki", stack.url])
                except SystemExit as ended:
                    assert ended.code in (0, None), capsys.readouterr().err
                doc = json.loads(capsys.readouterr().out)
                said = [n for n in doc["notes"] if "skipped beside" in n]
                if want:
                    assert len(said) == 1 and said[0].startswith(f"{want} trace(s)"), (cmd, doc["notes"])
                    assert said[0].split("see `stagetrace trace ")[1][:32] in lost
                else:
                    assert not said, (cmd, said)
        finally:
            stack.close()


def test_a_trace_id_only_loki_has_shows_its_logs(capsys):
    """Tempo has no span of the trace (404), Loki has its two log lines (Tempo and Loki as
    the data-set fakes, answering in the recorded shapes): `trace ID --backend grafana`
    said "not found"; it now shows the lines and says no span was found. Loki is asked
    over its default last hour, as no trace window is known."""
    from grafana_fakes import DatasetStack
    from stagetrace.cli import main
    from stagetrace.model import LogRecord
    tid = "5" * 32
    now = time.time_ns()
    logs = [LogRecord(now - 120 * 10**9 + i, now - 120 * 10**9 + i, 17, "ERROR", f"payment {i} failed", trace_id=tid,
                      span_id="7" * 16, resource={"service.name": "checkout"}) for i in range(2)]
    logs.append(LogRecord(now - 60 * 10**9, now - 60 * 10**9, 17, "ERROR", "another trace", trace_id="6" * 32,
                          resource={"service.name": "checkout"}))
    stack = DatasetStack([], logs)
    try:
        argv = ["trace", tid, "--backend", "grafana", "--tempo", stack.url, "--loki", stack.url, "--format", "json"]
        try:
            main(argv)
        except SystemExit as ended:
            assert ended.code in (0, None), capsys.readouterr().err
        doc = json.loads(capsys.readouterr().out)
        assert doc["verdict"][0].startswith(f"No spans were found for trace {tid}"), doc["verdict"]
        assert [(lg["service"], lg["body"]) for lg in doc["data"]["unattached_logs"]] == \
            [("checkout", "payment 0 failed"), ("checkout", "payment 1 failed")]
        try:
            main(["trace", "4" * 32, "--backend", "grafana", "--tempo", stack.url, "--loki", stack.url])
            code = 0
        except SystemExit as ended:
            code = ended.code
        assert code == 2 and "not found" in capsys.readouterr().err
    finally:
        stack.close()


def test_missing_loki_or_prometheus_means_no_evidence_and_one_warning(stack, caplog):
    b = GrafanaBackend(tempo_url=stack.url)
    with caplog.at_level("WARNING", logger="stagetrace.forensics.grafana"):
        assert b.find_logs(LogQuery(start_ns=T0, end_ns=T1)) == []
        assert b.find_logs(LogQuery(start_ns=T0, end_ns=T1)) == []
        assert b.metric_names() == [] and b.metric_series(MetricQuery(name="x")) == []
        assert b.get_trace(TRACE_ID).logs == []
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["stagetrace: no Loki URL (--loki or $STAGETRACE_LOKI_URL): log evidence skipped",
                    "stagetrace: no Prometheus URL (--prometheus or $STAGETRACE_PROMETHEUS_URL): metric evidence skipped"]
    assert not any(r["path"].startswith("/loki") for r in stack.requests)


def test_loki_paging_keeps_every_line_once(monkeypatch):
    """Pages of 4 lines over lines that share timestamps (3 at most), exact duplicates
    included; a page that cannot get past one timestamp is an error, not a silent cut."""
    import copy as _copy

    from grafana_fakes import DatasetStack
    import stagetrace.forensics.grafana as grafana

    logs = parse_loki_streams(json.loads(recording("loki/loki_query_range_by_trace_categorized.json")))
    twin = _copy.deepcopy(logs[1])  # an exact duplicate line (a log call in a loop)
    other = _copy.deepcopy(logs[1])
    other.body = "another line, same nanosecond"
    late = _copy.deepcopy(logs[3])
    late.body = "last line twin"
    data = sorted([*logs, twin, other, late, _copy.deepcopy(late)], key=lambda r: r.time_ns)
    spans = parse_tempo_trace(json.loads(recording("tempo/tempo_trace_v2.json")))
    stack = DatasetStack(spans, data)
    monkeypatch.setattr(grafana, "LOKI_PAGE", 4)
    try:
        b = GrafanaBackend(tempo_url=stack.url, loki_url=stack.url)
        got = b.find_logs(LogQuery(start_ns=T0, end_ns=T1, limit=None))
        key = lambda r: (r.time_ns, str(r.body))
        assert sorted(map(key, got)) == sorted(map(key, data)) and len(got) == 8
        assert len([r for r in stack.requests if r["path"] == "/loki/api/v1/query_range"]) >= 4
        assert b.get_trace(TRACE_ID).logs == b.find_logs(LogQuery(trace_ids=[TRACE_ID], limit=None))
        monkeypatch.setattr(grafana, "LOKI_PAGE", 2)
        with pytest.raises(BackendError, match="more than 2 lines at one timestamp"):
            b.find_logs(LogQuery(start_ns=T0, end_ns=T1, limit=None))
    finally:
        stack.close()


def test_credentials_in_urls_are_not_printed():
    b = GrafanaBackend(tempo_url=f"http://admin:s3cret@127.0.0.1:{_closed_port()}", timeout_s=2)
    with pytest.raises(BackendError) as e:
        b.get_trace(TRACE_ID)
    assert "s3cret" not in str(e.value) and "http://***@127.0.0.1:" in str(e.value)
    with pytest.raises(UserError) as e:
        GrafanaBackend(loki_url="ftp://u:s3cret@loki")
    assert "s3cret" not in str(e.value)


# --- delayed labels in the compose stack: OTLP logs -> Collector -> Loki ---------------------

@pytest.mark.slow
def test_quality_from_labels_sent_as_otlp_logs_is_the_same_over_loki(tmp_path, monkeypatch):
    """The compose stack has no labels endpoint: its load generator sends each label as an
    ``ml.label`` OTLP log record (LabelFeed(otlp=True)) to the OpenTelemetry Collector,
    whose logs pipeline exports them to Loki's OTLP endpoint. Here the labels go, as that
    OTLP/HTTP request, to a real `stagetrace collector`'s /v1/logs, and the predictions
    (benchmarks/quality.py's labelled stream: a real scikit-learn model through the real
    capture code) are exported by the real SDK's OTLP span exporter. Tempo and Loki cannot
    run here: the same spans and records are then served by the data-set fake in the
    recorded Tempo/Loki shapes (Loki's OTLP ingestion: log attributes as structured
    metadata, dots flattened, every value a string; grafana_fakes.loki_entry, checked
    against the recordings by test_encoders_reproduce_the_recordings), and
    `investigate quality` must say the same over both."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import numpy as np
    import quality as bench
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from grafana_fakes import DatasetStack
    from stagetrace import semconv
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.demo.loadgen import LabelFeed
    from stagetrace.forensics.quality import investigate_quality

    # a stream that ended 15 minutes ago: every label (1-10 minutes late) has come in
    end = (time.time_ns() - 900 * 10**9) // 10**9 * 10**9
    t0 = end - bench.BUCKETS * bench.BUCKET
    monkeypatch.setattr(bench, "T0", t0)
    model = bench.fit_model(4)
    spans, labels = bench.stream(model, np.random.default_rng(8), "unit", 12)
    with start_collector(tmp_path / "data") as c:
        providers, ids = {}, {}
        for s in spans:
            key = tuple(sorted(s.resource.items()))
            if key not in providers:
                providers[key] = TracerProvider(resource=Resource.create(dict(s.resource)))
                providers[key].add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
                    endpoint=c.http_endpoint + "/v1/traces")))
            sp = providers[key].get_tracer("bench").start_span(s.name, start_time=s.start_ns, attributes=s.attributes)
            sp.end(end_time=s.end_ns)
            ctx = sp.get_span_context()
            ids[(s.trace_id, s.span_id)] = (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
        for p in providers.values():
            p.shutdown()
        feed = LabelFeed(c.http_endpoint, delay_s=0.0, period_s=0.05, otlp=True)
        assert feed.url.endswith("/v1/logs")
        lines = []
        for r in labels:
            tid, sid = ids[(r.trace_id, r.span_id)]
            lines.append({"prediction_id": f"{tid}-{sid}", "label": r.attributes[semconv.ML_LABEL_VALUE],
                          "time": r.time_ns})
        feed.add(lines + [{"prediction_id": "x"}], time.time())  # the last one is no label
        counts = feed.close(timeout_s=30)
        assert counts["accepted"] == len(labels) and counts["rejected"] == 1 and not counts["failed_posts"], counts
        window = dict(model="fraud", version=None, start_ns=t0, end_ns=end, interval_ns=bench.BUCKET)
        with EmbeddedBackend(c.data_dir) as emb:
            deadline = time.monotonic() + 60
            while len(emb.find_spans(TraceQuery(start_ns=t0, end_ns=end, limit=None))) < len(spans):
                assert time.monotonic() < deadline, "the collector did not store every span"
                time.sleep(0.5)
            stored_logs = emb.find_logs(LogQuery(limit=None))
            assert len(stored_logs) == len(labels)
            rec = stored_logs[0]
            assert rec.attributes[semconv.EVENT_NAME] == semconv.ML_LABEL_EVENT and rec.trace_id
            want = investigate_quality(emb, **window)
            stack = DatasetStack(emb.find_spans(TraceQuery(limit=None)), stored_logs)
            try:
                with GrafanaBackend(tempo_url=stack.url, loki_url=stack.url, timeout_s=30) as remote:
                    got = investigate_quality(remote, **window)
            finally:
                stack.close()
    # the comparison proves something: the labels joined and the drop was found
    assert want.data["join"]["joined"] == len(labels), want.data["join"]
    top = want.findings[0]
    assert (top.kind, top.attribute, top.value) == ("quality", "client.version", "2.0"), want.verdict
    # the labels were read from Loki's query_range (structured metadata filter), bounded
    assert any(r["path"] == "/loki/api/v1/query_range" and 'event_name="ml.label"' in r["query"]["query"]
               for r in stack.requests)
    assert _report(got) == _report(want)
