"""OTLP specification behaviour of `stagetrace collector` (a real subprocess, real
sockets): partial success, permanent vs retryable errors with retry hints, size
limits, bearer tokens, safe binding, and that bad input never hurts other clients."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stagetrace.backend import LogQuery, TraceQuery
from stagetrace.collector.process import CollectorStartError, start_collector
from stagetrace.collector.query import EmbeddedBackend

TRACE_SVC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_SVC = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
_counter = iter(range(1, 1 << 30))


def span_request(service: str, n: int = 1, *, trace_id: bytes | None = None, span_id: bytes | None = None,
                 name: str = "op") -> tuple[trace_service_pb2.ExportTraceServiceRequest, list[str]]:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add(resource=resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))]))
    ss = rs.scope_spans.add()
    tids = []
    for _ in range(n):
        k = next(_counter)
        tid = trace_id if trace_id is not None else k.to_bytes(8, "big") * 2
        sid = span_id if span_id is not None else (k + (1 << 40)).to_bytes(8, "big")
        ss.spans.add(trace_id=tid, span_id=sid, name=name, kind=2, start_time_unix_nano=1_000_000_000 + k,
                     end_time_unix_nano=2_000_000_000 + k)
        tids.append(tid.hex())
    return req, tids


def post(url: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def grpc_call(endpoint: str, method: str, body: bytes, metadata=()) -> tuple[bytes | None, grpc.RpcError | None]:
    with grpc.insecure_channel(endpoint) as ch:
        fn = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return fn(body, metadata=metadata, timeout=20), None
        except grpc.RpcError as exc:
            return None, exc


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    for k, v in err.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            return status_pb2.Status.FromString(v)
    return None


def count_spans(data_dir, service: str) -> int:
    with EmbeddedBackend(data_dir) as b:
        return len(b.find_spans(TraceQuery(service=service, limit=None)))


@pytest.fixture(scope="module")
def col(tmp_path_factory):
    with start_collector(tmp_path_factory.mktemp("spec"),
                         extra_args=["--max-request-bytes", "64KiB", "--max-inflight", "1"]) as c:
        yield c
        assert c.poll() is None, "the collector died: " + c.stderr_text()


def test_malformed_bodies_are_permanent_errors_and_harm_no_one(col):
    good, tids = span_request("spec-good", 3)
    assert post(col.http_endpoint + "/v1/traces", good.SerializeToString(), PB)[0] == 200

    status, body, hdrs = post(col.http_endpoint + "/v1/traces", b"\x0a\xff\xff\xff\xff\x0f garbage", PB)
    assert status == 400
    st = status_pb2.Status.FromString(body)  # the body is a google.rpc.Status
    assert st.code == code_pb2.INVALID_ARGUMENT and "protobuf" in st.message
    assert "retry-after" not in hdrs

    status, body, _ = post(col.http_endpoint + "/v1/logs", b'{"resourceLogs": [ {"scopeLogs": ', JS)
    assert status == 400 and json.loads(body)["code"] == code_pb2.INVALID_ARGUMENT
    status, body, _ = post(col.http_endpoint + "/v1/traces", b'{"resourceSpans": "not a list"}', JS)
    assert status == 400
    status, body, _ = post(col.http_endpoint + "/v1/traces", b'{"resourceSpans": [{"scopeSpans": [{"spans": '
                                                              b'[{"traceId": "zz", "spanId": "00f067aa0ba902b7"}]}]}]}', JS)
    assert status == 400 and "hex" in json.loads(body)["message"]
    status, _, _ = post(col.http_endpoint + "/v1/traces", gzip.compress(b"x")[:-4],
                        {**PB, "Content-Encoding": "gzip"})
    assert status == 400

    _, err = grpc_call(col.grpc_endpoint, TRACE_SVC, b"\xff\xff\xff\xff")
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT

    # the server is still up, and the earlier client's data is intact
    more, tids2 = span_request("spec-good", 2)
    resp, err = grpc_call(col.grpc_endpoint, TRACE_SVC, more.SerializeToString())
    assert err is None
    assert not trace_service_pb2.ExportTraceServiceResponse.FromString(resp).HasField("partial_success")
    with EmbeddedBackend(col.data_dir) as b:
        assert set(b.get_traces(tids + tids2)) == set(tids + tids2)


def test_invalid_ids_are_rejected_per_record_with_partial_success(col):
    req, good = span_request("spec-partial", 2)
    bad_tid, _ = span_request("spec-partial", 1, trace_id=b"\x01" * 15)
    bad_sid, _ = span_request("spec-partial", 1, span_id=b"\x02" * 7)
    zero, _ = span_request("spec-partial", 1, trace_id=bytes(16))
    for extra in (bad_tid, bad_sid, zero):
        req.resource_spans[0].scope_spans[0].spans.extend(extra.resource_spans[0].scope_spans[0].spans)

    status, body, _ = post(col.http_endpoint + "/v1/traces", req.SerializeToString(), PB)
    assert status == 200
    ps = trace_service_pb2.ExportTraceServiceResponse.FromString(body).partial_success
    assert ps.rejected_spans == 3
    assert "trace_id" in ps.error_message and "length 15" in ps.error_message

    resp, err = grpc_call(col.grpc_endpoint, TRACE_SVC, req.SerializeToString())
    assert err is None
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(resp).partial_success.rejected_spans == 3

    # OTLP/JSON: ids are hex; a 30-hex-digit trace id is 15 bytes
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "spec-partial"}}]},
                              "scopeSpans": [{"spans": [
                                  {"traceId": "ab" * 15, "spanId": "0102030405060708", "name": "bad"},
                                  {"traceId": "cd" * 16, "spanId": "0102030405060709", "name": "good-json",
                                   "kind": 3, "startTimeUnixNano": "5", "endTimeUnixNano": "9"}]}]}]}
    status, body, hdrs = post(col.http_endpoint + "/v1/traces", json.dumps(doc).encode(), JS)
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"  # int64 is a string in proto3 JSON

    logs = logs_service_pb2.ExportLogsServiceRequest()
    sl = logs.resource_logs.add().scope_logs.add()
    sl.log_records.add(time_unix_nano=7, body=common_pb2.AnyValue(string_value="ok, no trace"))
    sl.log_records.add(time_unix_nano=8, trace_id=b"\x03" * 12, body=common_pb2.AnyValue(string_value="bad"))
    resp, err = grpc_call(col.grpc_endpoint, LOGS_SVC, logs.SerializeToString())
    assert err is None
    assert logs_service_pb2.ExportLogsServiceResponse.FromString(resp).partial_success.rejected_log_records == 1

    with EmbeddedBackend(col.data_dir) as b:
        names = sorted(s.name for s in b.find_spans(TraceQuery(service="spec-partial", limit=None)))
        assert names == ["good-json"] + ["op"] * 4  # 2 good spans, sent twice; nothing invalid stored
        assert b.get_trace("cd" * 16).spans[0].kind == "CLIENT"
        bodies = [r.body for r in b.find_logs(LogQuery(start_ns=0, end_ns=100))]
        assert bodies == ["ok, no trace"]


def test_oversize_requests_are_refused(col):
    big, _ = span_request("spec-big", 1, name="x" * 100_000)
    status, body, hdrs = post(col.http_endpoint + "/v1/traces", big.SerializeToString(), PB)
    assert status == 413 and "retry-after" not in hdrs
    # a small gzip body that inflates over the limit
    status, _, _ = post(col.http_endpoint + "/v1/traces", gzip.compress(big.SerializeToString()),
                        {**PB, "Content-Encoding": "gzip"})
    assert status == 413
    _, err = grpc_call(col.grpc_endpoint, TRACE_SVC, big.SerializeToString())
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich_status(err) is None or not rich_status(err).details  # no RetryInfo: do not retry
    ok, tids = span_request("spec-big", 1)
    assert post(col.http_endpoint + "/v1/traces", ok.SerializeToString(), PB)[0] == 200
    assert count_spans(col.data_dir, "spec-big") == 1


def test_http_edge_cases(col):
    assert post(col.http_endpoint + "/v1/nope", b"", PB)[0] == 404
    assert post(col.http_endpoint + "/v1/traces", b"{}", {"Content-Type": "text/plain"})[0] == 415
    status, body, _ = post(col.http_endpoint + "/v1/traces", b"{}", JS)  # empty request: success
    assert status == 200 and json.loads(body) == {}


def test_too_many_concurrent_requests_get_429_with_retry_after(col):
    """--max-inflight 1: a client stuck mid-body holds the only slot."""
    host, port = col.http_endpoint.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=10)
    try:
        slow.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: 100\r\n\r\n\x0a")
        time.sleep(0.3)  # let the server take the slot (no timing assertion: we poll below)
        deadline = time.monotonic() + 10
        while True:
            req, _ = span_request("spec-429", 1)
            status, body, hdrs = post(col.http_endpoint + "/v1/traces", req.SerializeToString(), PB)
            if status != 200 or time.monotonic() > deadline:
                break
        assert status == 429
        assert int(hdrs["retry-after"]) >= 1
        st = status_pb2.Status.FromString(body)
        assert st.code == code_pb2.RESOURCE_EXHAUSTED
    finally:
        slow.close()
    deadline = time.monotonic() + 10
    while post(col.http_endpoint + "/v1/traces", span_request("spec-429", 1)[0].SerializeToString(), PB)[0] != 200:
        assert time.monotonic() < deadline, "the slot was never released"
        time.sleep(0.1)


def test_bearer_token_on_both_protocols(tmp_path):
    with start_collector(tmp_path, token="s3cret") as c:
        req, tids = span_request("spec-token", 1)
        body = req.SerializeToString()
        assert post(c.http_endpoint + "/v1/traces", body, PB)[0] == 401
        assert post(c.http_endpoint + "/v1/traces", body, {**PB, "Authorization": "Bearer wrong"})[0] == 401
        assert post(c.http_endpoint + "/v1/traces", body, {**PB, "Authorization": "Basic s3cret"})[0] == 401
        _, err = grpc_call(c.grpc_endpoint, TRACE_SVC, body)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        _, err = grpc_call(c.grpc_endpoint, TRACE_SVC, body, metadata=(("authorization", "Bearer nope"),))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert count_spans(c.data_dir, "spec-token") == 0

        assert post(c.http_endpoint + "/v1/traces", body, {**PB, "Authorization": "Bearer s3cret"})[0] == 200
        _, err = grpc_call(c.grpc_endpoint, TRACE_SVC, span_request("spec-token", 1)[0].SerializeToString(),
                           metadata=(("authorization", "Bearer s3cret"),))
        assert err is None
        # the real SDK exporter with the documented OTEL header form
        mem = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(mem))
        with tp.get_tracer("t").start_as_current_span("sdk"):
            pass
        exp = HttpSpanExporter(endpoint=c.http_endpoint + "/v1/traces", headers={"Authorization": "Bearer s3cret"})
        assert exp.export(mem.get_finished_spans()) == SpanExportResult.SUCCESS
        assert count_spans(c.data_dir, "spec-token") == 2


def test_backlog_overload_is_retryable_with_hint_and_loses_nothing(tmp_path):
    """The store is 'behind' (WAL segments are never cut: --wal-segment-age 1h) and the
    backlog limit is tiny, so the collector must push back instead of growing."""
    with start_collector(tmp_path, extra_args=["--max-backlog-bytes", "1", "--wal-segment-age", "1h"]) as c:
        accepted = 0
        deadline = time.monotonic() + 15
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status, body, hdrs = post(c.http_endpoint + "/v1/traces", span_request("spec-busy", 5)[0].SerializeToString(), PB)
            accepted += 5 if status == 200 else 0
        assert status == 503, status
        assert int(hdrs["retry-after"]) >= 1
        st = status_pb2.Status.FromString(body)
        assert st.code == code_pb2.UNAVAILABLE
        _, err = grpc_call(c.grpc_endpoint, TRACE_SVC, span_request("spec-busy", 5)[0].SerializeToString())
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        rs = rich_status(err)
        info = error_details_pb2.RetryInfo()
        assert rs is not None and rs.details[0].Unpack(info) and info.retry_delay.seconds >= 1
        assert accepted >= 5
        assert count_spans(c.data_dir, "spec-busy") == accepted  # every acknowledged span, no more


def test_non_loopback_bind_must_be_explicit(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stagetrace.cli", "collector", "--host", "0.0.0.0",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "--allow-remote" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_and_locked_data_dir_fail_clearly(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    busy = s.getsockname()[1]
    try:
        for kw in ({"grpc_port": busy}, {"http_port": busy}):
            with pytest.raises(CollectorStartError, match="in use"):
                start_collector(tmp_path / "a", **kw)
    finally:
        s.close()
    with start_collector(tmp_path / "b"):
        with pytest.raises(CollectorStartError, match="another collector"):
            start_collector(tmp_path / "b")


def test_flags_have_env_equivalents(tmp_path):
    env = {"STAGETRACE_TOKEN": "from-env", "STAGETRACE_MAX_REQUEST_BYTES": "2KiB", "STAGETRACE_DATA_DIR": str(tmp_path)}
    with start_collector(tmp_path, env=env) as c:
        small, _ = span_request("spec-env", 1)
        big, _ = span_request("spec-env", 1, name="y" * 4000)
        auth = {**PB, "Authorization": "Bearer from-env"}
        assert post(c.http_endpoint + "/v1/traces", small.SerializeToString(), PB)[0] == 401
        assert post(c.http_endpoint + "/v1/traces", big.SerializeToString(), auth)[0] == 413
        assert post(c.http_endpoint + "/v1/traces", small.SerializeToString(), auth)[0] == 200
        assert count_spans(c.data_dir, "spec-env") == 1
