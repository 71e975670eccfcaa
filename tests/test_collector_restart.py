"""A collector killed with ``kill -9`` restarts at once on the same ports (issue 11).

Killing a process closes its connected sockets from its side, which leaves them in
TIME_WAIT on the collector's ports; without SO_REUSEADDR a new listener could not
bind there for up to a minute. A port a *live* process listens on must still fail
with the one clear line it always gave."""

from __future__ import annotations

import socket

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stagetrace.collector.client import open_embedded
from stagetrace.collector.process import CollectorStartError, start_collector


def _spans():
    mem = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(mem))
    with tp.get_tracer("r").start_as_current_span("restart"):
        pass
    tp.shutdown()
    return mem.get_finished_spans()


def _time_wait_on(port: int) -> bool:
    """Is a TCP connection on local ``port`` in TIME_WAIT (state 06 in /proc/net/tcp)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                return True
    return False


def test_restart_on_the_same_ports_right_after_kill_9(tmp_path):
    c = start_collector(tmp_path / "data")
    grpc_port, http_port = c.grpc_port, c.http_port
    try:
        spans = _spans()
        # connections on both ports, open when the collector dies
        grpc_exp = GrpcSpanExporter(endpoint=c.grpc_endpoint, insecure=True)
        http_exp = HttpSpanExporter(endpoint=c.http_endpoint + "/v1/traces")
        assert grpc_exp.export(spans) == SpanExportResult.SUCCESS
        assert http_exp.export(spans) == SpanExportResult.SUCCESS
        # a lookup served by the collector (the reproduction in the issue)
        tid = format(spans[0].context.trace_id, "032x")
        with open_embedded(c.data_dir) as b:
            assert b.get_trace(tid) is not None
    finally:
        c.kill9()
    assert _time_wait_on(http_port) or _time_wait_on(grpc_port), "the test needs a TIME_WAIT to mean anything"
    c2 = start_collector(tmp_path / "data", grpc_port=grpc_port, http_port=http_port, timeout=30)
    try:
        assert (c2.grpc_port, c2.http_port) == (grpc_port, http_port)
        grpc_exp2 = GrpcSpanExporter(endpoint=c2.grpc_endpoint, insecure=True)
        assert grpc_exp2.export(_spans()) == SpanExportResult.SUCCESS
        grpc_exp2.shutdown()
    finally:
        grpc_exp.shutdown()
        http_exp.shutdown()
        c2.stop()


@pytest.mark.parametrize("which", ["http", "grpc"])
def test_a_port_held_by_a_live_process_still_fails(tmp_path, which):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # even a reuse-friendly holder
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        kwargs = {"http_port": port} if which == "http" else {"grpc_port": port}
        with pytest.raises(CollectorStartError) as err:
            start_collector(tmp_path / "data", **kwargs)
        proto = "OTLP/HTTP" if which == "http" else "OTLP/gRPC"
        assert f"cannot listen for {proto} on 127.0.0.1:{port}" in str(err.value)
        assert "Traceback" not in str(err.value)
    finally:
        holder.close()
