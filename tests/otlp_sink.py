"""A small in-test OTLP receiver (gRPC and HTTP/protobuf) that keeps what it gets.

Built on the official opentelemetry-proto messages and service stubs and grpcio,
so the apps under test talk real OTLP to it. It is deliberately not the
stagetrace collector: the instrumentation tests must not depend on it.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_BODY = 16 * 1024 * 1024


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attrs(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # 1 internal, 2 server, 3 client
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]
    via: str  # "grpc" | "http"


@dataclass
class Log:
    trace_id: str
    span_id: str
    body: Any
    severity: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class MetricPoint:
    name: str
    unit: str
    attributes: dict[str, Any]
    count: int
    resource: dict[str, Any]


@dataclass
class Store:
    spans: list[Span] = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, req: trace_service_pb2.ExportTraceServiceRequest, via: str) -> None:
        out = []
        for rs in req.resource_spans:
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                                    attrs(s.attributes), s.status.code, res, via))
        with self.lock:
            self.spans += out

    def add_logs(self, req: logs_service_pb2.ExportLogsServiceRequest) -> None:
        out = []
        for rl in req.resource_logs:
            res = attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    out.append(Log(r.trace_id.hex(), r.span_id.hex(), any_value(r.body), r.severity_text,
                                   attrs(r.attributes), res))
        with self.lock:
            self.logs += out

    def add_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        out = []
        for rm in req.resource_metrics:
            res = attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.WhichOneof("data") == "histogram":
                        for p in m.histogram.data_points:
                            out.append(MetricPoint(m.name, m.unit, attrs(p.attributes), p.count, res))
        with self.lock:
            self.metrics += out


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Export(self, request, context):  # noqa: N802 - gRPC name
        self.store.add_traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Export(self, request, context):  # noqa: N802
        self.store.add_logs(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Export(self, request, context):  # noqa: N802
        self.store.add_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _http_handler(store: Store):
    routes = {
        "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, lambda r: store.add_traces(r, "http"),
                       trace_service_pb2.ExportTraceServiceResponse),
        "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, store.add_logs, logs_service_pb2.ExportLogsServiceResponse),
        "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, store.add_metrics,
                        metrics_service_pb2.ExportMetricsServiceResponse),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):  # noqa: N802
            route = routes.get(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if route is None or length > MAX_BODY:
                self.send_response(404 if route is None else 413)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(length)
            enc = (self.headers.get("Content-Encoding") or "").lower()
            if enc == "gzip":
                body = gzip.decompress(body)
            elif enc == "deflate":
                body = zlib.decompress(body)
            req_cls, add, resp_cls = route
            add(req_cls.FromString(body))
            payload = resp_cls().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class OtlpSink:
    """Start with ``with OtlpSink() as sink``; ``sink.http_endpoint`` / ``sink.grpc_endpoint``."""

    def __init__(self) -> None:
        self.store = Store()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self.store), self._grpc)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self.store), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.store), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self.store))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "OtlpSink":
        self._grpc.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None)

    def wait_for(self, predicate: Callable[[Store], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.store.lock:
                if predicate(self.store):
                    return True
            time.sleep(0.1)
        with self.store.lock:
            return predicate(self.store)
