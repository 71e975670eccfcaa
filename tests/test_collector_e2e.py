"""End to end: the real OTel SDK exporters (OTLP/gRPC and OTLP/HTTP) and real OTLP/JSON
bodies into a `stagetrace collector` subprocess, read back field for field through
EmbeddedBackend (in this process, no sleeping: acknowledged = readable) and the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from opentelemetry._logs import LogRecord as ApiLogRecord
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from stagetrace.backend import LogQuery, MetricQuery, TraceQuery
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend

SAMPLES = Path(__file__).resolve().parent / "data" / "samples" / "input"
SAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
KIND = {SpanKind.INTERNAL: "INTERNAL", SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT",
        SpanKind.PRODUCER: "PRODUCER", SpanKind.CONSUMER: "CONSUMER"}


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    # The recorded samples keep their 2026-11 timestamps: retention off, or the maintainer may
    # drop them (older than the default 7 days) between a post and the read that checks it.
    with start_collector(tmp_path_factory.mktemp("e2e-store"), extra_args=["--retention", "off"]) as c:
        yield c
        assert c.poll() is None, c.stderr_text()


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def _attrs(a) -> dict:
    return {k: _norm(v) for k, v in dict(a or {}).items()}


def make_spans(service: str):
    """A small trace with every span feature: kinds, typed attributes, an exception
    event, a link, error status; returns the SDK's own ReadableSpans."""
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "9.9",
                                                  "deployment.environment.name": "test"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("e2e.scope", "1.2.3")
    with tracer.start_as_current_span("other") as other:
        pass
    with tracer.start_as_current_span("POST /predict", kind=SpanKind.SERVER, attributes={
            "http.route": "/predict", "http.response.status_code": 500, "ml.batch.size": 32, "ratio": 0.25,
            "cached": False, "tags": ["a", "b"], "shape": [1, 28, 28], "weights": [0.5, 1.5], "flags": [True, False]}):
        with tracer.start_as_current_span("feature_fetch", kind=SpanKind.CLIENT,
                                          links=[Link(other.get_span_context(), {"link.reason": "batch"})]):
            pass
        with tracer.start_as_current_span("inference", attributes={"ml.stage": "inference"}) as inf:
            try:
                raise ValueError("feature 'merchant_risk' is missing")
            except ValueError as exc:
                inf.record_exception(exc)
                inf.set_status(Status(StatusCode.ERROR, "ValueError: feature missing"))
            inf.add_event("retry", {"attempt": 2})
    tp.shutdown()
    return mem.get_finished_spans()


def make_logs(service: str, trace_id: int, span_id: int):
    mem = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=Resource.create({"service.name": service}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    lg = lp.get_logger("e2e.logger", "0.1")
    lg.emit(ApiLogRecord(timestamp=1_795_556_814_221_592_550, observed_timestamp=1_795_556_814_221_600_000,
                         trace_id=trace_id, span_id=span_id, severity_text="ERROR",
                         severity_number=SeverityNumber.ERROR, body="inference failed: feature missing",
                         attributes={"code.function.name": "predict", "retry": 2}))
    lg.emit(ApiLogRecord(timestamp=1_795_556_814_221_700_000, severity_text="INFO",
                         severity_number=SeverityNumber.INFO, body={"event": "structured", "n": [1, 2]},
                         attributes={"k": "v"}))
    lp.shutdown()
    return mem.get_finished_logs()


def make_metrics(service: str):
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader],
                       views=[View(instrument_name="exp.latency", aggregation=ExponentialBucketHistogramAggregation())])
    meter = mp.get_meter("e2e.meter")
    meter.create_counter("requests", unit="1").add(5, {"route": "/predict"})
    meter.create_up_down_counter("queue.depth").add(-3, {"q": "a"})
    h = meter.create_histogram("ml.stage.duration", unit="s")
    for v in (0.004, 0.02, 0.3, 2.5):
        h.record(v, {"ml.stage": "inference"})
    g = meter.create_gauge("gpu.util")
    g.set(0.75, {"gpu": "0"})
    e = meter.create_histogram("exp.latency", unit="ms")
    for v in (1.0, 2.0, 4.0, 100.0):
        e.record(v)
    data = reader.get_metrics_data()
    mp.shutdown()
    return data


def assert_spans_equal(sdk_spans, stored: list):
    by_id = {s.span_id: s for s in stored}
    assert len(by_id) == len(sdk_spans)
    for s in sdk_spans:
        ctx = s.get_span_context()
        got = by_id[format(ctx.span_id, "016x")]
        assert got.trace_id == format(ctx.trace_id, "032x")
        assert got.parent_span_id == (format(s.parent.span_id, "016x") if s.parent else "")
        assert got.name == s.name
        assert got.kind == KIND[s.kind]
        assert (got.start_ns, got.end_ns) == (s.start_time, s.end_time)
        assert got.status_code == s.status.status_code.name
        assert got.status_message == (s.status.description or "")
        assert got.attributes == _attrs(s.attributes)
        assert [(e.name, e.time_ns, e.attributes) for e in got.events] == \
            [(e.name, e.timestamp, _attrs(e.attributes)) for e in s.events]
        assert [(l.trace_id, l.span_id, l.attributes) for l in got.links] == \
            [(format(l.context.trace_id, "032x"), format(l.context.span_id, "016x"), _attrs(l.attributes))
             for l in s.links]
        assert got.resource == _attrs(s.resource.attributes)
        assert (got.scope_name, got.scope_version) == (s.instrumentation_scope.name, s.instrumentation_scope.version)


def assert_logs_equal(sdk_logs, stored: list):
    assert len(stored) == len(sdk_logs)
    got_by_body = {json.dumps(r.body, sort_keys=True): r for r in stored}
    for rec in sdk_logs:
        lr = rec.log_record
        got = got_by_body[json.dumps(_norm(lr.body), sort_keys=True)]
        assert got.time_ns == lr.timestamp
        assert got.observed_time_ns == lr.observed_timestamp
        assert got.severity_number == lr.severity_number.value
        assert got.severity_text == lr.severity_text
        assert got.attributes == _attrs(lr.attributes)
        assert got.trace_id == (format(lr.trace_id, "032x") if lr.trace_id else "")
        assert got.span_id == (format(lr.span_id, "016x") if lr.span_id else "")
        assert got.resource == _attrs(rec.resource.attributes)
        assert got.scope_name == rec.instrumentation_scope.name


def assert_metrics_equal(data, series: list):
    by_key = {(s.name, json.dumps(s.attributes, sort_keys=True)): s for s in series}
    n = 0
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    n += 1
                    s = by_key[(m.name, json.dumps(_attrs(p.attributes), sort_keys=True))]
                    assert s.unit == m.unit
                    assert s.resource == _attrs(rm.resource.attributes)
                    (pt,) = s.points
                    assert pt.time_ns == p.time_unix_nano
                    kind = type(m.data).__name__
                    if kind in ("Sum", "Gauge"):
                        assert pt.kind == kind.lower() and pt.value == p.value
                        if kind == "Sum":
                            assert pt.is_monotonic == m.data.is_monotonic
                            assert pt.temporality == m.data.aggregation_temporality.name
                            assert pt.start_time_ns == p.start_time_unix_nano
                    elif kind == "Histogram":
                        assert pt.kind == "histogram"
                        assert (pt.count, pt.sum) == (p.count, p.sum)
                        assert pt.bucket_counts == list(p.bucket_counts)
                        assert pt.explicit_bounds == list(p.explicit_bounds)
                        assert pt.value == pytest.approx(p.sum / p.count)
                    else:
                        assert kind == "ExponentialHistogram" and pt.kind == "exponential_histogram"
                        assert (pt.count, pt.sum) == (p.count, p.sum)
                        # converted to explicit bounds: same total, ascending bounds
                        assert sum(pt.bucket_counts) == p.count
                        assert pt.explicit_bounds == sorted(pt.explicit_bounds)
    assert len(by_key) == n


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_exporters_traces_logs_metrics_round_trip(collector, protocol):
    service = f"e2e-{protocol}"
    spans = make_spans(service)
    trace_id = spans[-1].context.trace_id
    tid = format(trace_id, "032x")
    failing = next(s for s in spans if s.name == "inference")
    logs = make_logs(service, trace_id, failing.context.span_id)
    metrics = make_metrics(service)
    if protocol == "grpc":
        exporters = (GrpcSpanExporter(endpoint=collector.grpc_endpoint, insecure=True),
                     GrpcLogExporter(endpoint=collector.grpc_endpoint, insecure=True),
                     GrpcMetricExporter(endpoint=collector.grpc_endpoint, insecure=True))
    else:
        exporters = (HttpSpanExporter(endpoint=collector.http_endpoint + "/v1/traces"),
                     HttpLogExporter(endpoint=collector.http_endpoint + "/v1/logs"),
                     HttpMetricExporter(endpoint=collector.http_endpoint + "/v1/metrics"))
    assert exporters[0].export(spans) == SpanExportResult.SUCCESS
    assert exporters[1].export(logs) == LogRecordExportResult.SUCCESS
    assert exporters[2].export(metrics) == MetricExportResult.SUCCESS
    for e in exporters:
        e.shutdown()

    with EmbeddedBackend(collector.data_dir) as backend:  # a fresh reader, straight after the ack
        trace = backend.get_trace(tid)
        assert trace is not None
        assert_spans_equal([s for s in spans if s.context.trace_id == trace_id], trace.spans)
        assert [r.body for r in trace.logs] == ["inference failed: feature missing"]
        exc = next(e for e in next(s for s in trace.spans if s.name == "inference").events if e.name == "exception")
        assert exc.attributes["exception.type"] == "ValueError"
        assert "merchant_risk" in exc.attributes["exception.message"]
        assert "Traceback" in exc.attributes["exception.stacktrace"]

        # every span of the service, including the unrelated "other" trace
        assert_spans_equal(spans, backend.find_spans(TraceQuery(service=service, limit=None)))
        assert_logs_equal(logs, backend.find_logs(LogQuery(service=service)))
        assert_metrics_equal(metrics, backend.metric_series(MetricQuery(service=service)))
        assert set(backend.metric_names(service=service)) == {"requests", "queue.depth", "ml.stage.duration",
                                                              "gpu.util", "exp.latency"}

        hits = backend.search_traces(TraceQuery(service=service, status="error"))
        assert [h.trace_id for h in hits] == [tid]
        (hit,) = hits
        assert (hit.root_name, hit.root_service, hit.span_count, hit.error) == ("POST /predict", service, 3, True)
        assert hit.root_attributes["http.response.status_code"] == 500
        root = next(s for s in spans if s.name == "POST /predict")
        assert (hit.start_ns, hit.duration_ns) == (root.start_time, root.end_time - root.start_time)
        assert backend.search_traces(TraceQuery(service=service, attributes={"ml.stage": "inference"}))[0].trace_id == tid
        assert backend.search_traces(TraceQuery(service=service, attributes={"ml.stage": "preprocess"})) == []
        assert [s.name for s in backend.find_spans(TraceQuery(service=service, root_only=True, limit=None))] == \
            ["other", "POST /predict"]
        assert backend.find_logs(LogQuery(trace_ids=[tid]))[0].span_id == format(failing.context.span_id, "016x")
        assert [r.severity_text for r in backend.find_logs(LogQuery(service=service, min_severity=17))] == ["ERROR"]

    # ... and through the CLI, in another process
    out = subprocess.run([sys.executable, "-m", "stagetrace.cli", "trace", tid, "--format", "json",
                          "--data-dir", str(collector.data_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    cli_spans = {d["span_id"]: d for d in _dicts_with(doc, "span_id") if "name" in d and "parent_span_id" in d}
    assert {sid: d["name"] for sid, d in cli_spans.items()} == {s.span_id: s.name for s in trace.spans}
    for s in trace.spans:
        if "attributes" in cli_spans[s.span_id]:
            assert cli_spans[s.span_id]["attributes"] == s.attributes
    assert "inference failed: feature missing" in out.stdout


def _dicts_with(node, key):
    if isinstance(node, dict):
        if key in node:
            yield node
        for v in node.values():
            yield from _dicts_with(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts_with(v, key)


def _post(url: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _sample_value(v: dict):
    (kind, val), = v.items()
    if kind == "intValue":
        return int(val)
    if kind == "arrayValue":
        return [_sample_value(x) for x in val.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: _sample_value(kv["value"]) for kv in val.get("values", [])}
    return val


@pytest.mark.parametrize("gzipped", [False, True])
def test_otlp_json_sample_payloads(collector, gzipped, tmp_path):
    """The recorded real OTLP/JSON inputs (hex ids, enum ints, string int64s)."""
    raw_t = (SAMPLES / "input_traces.otlp.json").read_bytes()
    raw_l = (SAMPLES / "input_logs.otlp.json").read_bytes()
    headers = {"Content-Type": "application/json"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    for path, raw in (("/v1/traces", raw_t), ("/v1/logs", raw_l)):
        status, body, hdrs = _post(collector.http_endpoint + path, gzip.compress(raw) if gzipped else raw, headers)
        assert status == 200, body
        assert hdrs["Content-Type"] == "application/json"
        json.loads(body)  # a JSON ExportServiceResponse

    doc = json.loads(raw_t)
    want = {}
    for rs in doc["resourceSpans"]:
        res = {kv["key"]: _sample_value(kv["value"]) for kv in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                want[sp["spanId"]] = (sp, res, ss["scope"])
    with EmbeddedBackend(collector.data_dir) as backend:
        trace = backend.get_trace(SAMPLE_TRACE_ID)
        got = {s.span_id: s for s in trace.spans}
        assert set(got) == set(want)  # sent twice (plain + gzip): the store keeps what it is sent
        for sid, (sp, res, scope) in want.items():
            s = got[sid]
            assert s.trace_id == sp["traceId"]
            assert s.parent_span_id == sp.get("parentSpanId", "")
            assert s.name == sp["name"]
            assert s.kind == ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"][sp["kind"]]
            assert (s.start_ns, s.end_ns) == (int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"]))
            assert s.attributes == {kv["key"]: _sample_value(kv["value"]) for kv in sp.get("attributes", [])}
            assert s.status_code == ["UNSET", "OK", "ERROR"][sp.get("status", {}).get("code", 0)]
            assert s.status_message == sp.get("status", {}).get("message", "")
            assert [(e.name, e.time_ns) for e in s.events] == \
                [(e["name"], int(e["timeUnixNano"])) for e in sp.get("events", [])]
            assert s.resource == res
            assert s.scope_name == scope["name"]
        log_doc = json.loads(raw_l)
        sent_logs = [lr for rl in log_doc["resourceLogs"] for sl in rl["scopeLogs"] for lr in sl["logRecords"]]
        got_logs = backend.find_logs(LogQuery(trace_ids=[SAMPLE_TRACE_ID]))
        assert {(r.span_id, r.body, r.time_ns) for r in got_logs} == \
            {(lr["spanId"], _sample_value(lr["body"]), int(lr["timeUnixNano"])) for lr in sent_logs}
        assert all(r.trace_id == SAMPLE_TRACE_ID for r in got_logs)
