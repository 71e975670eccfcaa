"""Acknowledged data survives `kill -9` of the collector: send, get the ack, SIGKILL,
read (the WAL is readable straight away), restart, and read everything again."""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry._logs import LogRecord as ApiLogRecord
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stagetrace.backend import LogQuery, TraceQuery
from stagetrace.collector import store
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend


def _spans(n_traces: int, tag: str):
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "durable"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tr = tp.get_tracer("d")
    for i in range(n_traces):
        with tr.start_as_current_span(f"{tag}-root-{i}", attributes={"i": i}):
            with tr.start_as_current_span(f"{tag}-child-{i}"):
                pass
    tp.shutdown()
    return mem.get_finished_spans()


def _acked_ids(c, rounds: int = 6):
    """Send in several requests over both protocols, keeping only acknowledged span ids."""
    acked: set[str] = set()
    grpc_exp = GrpcSpanExporter(endpoint=c.grpc_endpoint, insecure=True)
    http_exp = HttpSpanExporter(endpoint=c.http_endpoint + "/v1/traces")
    for r in range(rounds):
        batch = _spans(25, f"r{r}")
        exp = grpc_exp if r % 2 == 0 else http_exp
        assert exp.export(batch) == SpanExportResult.SUCCESS
        acked.update(format(s.context.span_id, "016x") for s in batch)
        time.sleep(0.2)  # spread over WAL segments and block cuts (not a timing assertion)
    grpc_exp.shutdown()
    http_exp.shutdown()
    return acked


def _stored_ids(data_dir) -> set[str]:
    with EmbeddedBackend(data_dir) as b:
        spans = b.find_spans(TraceQuery(service="durable", limit=None))
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids)), "a span was stored twice"
    return set(ids)


def test_acknowledged_data_survives_kill_9(tmp_path):
    c = start_collector(tmp_path, extra_args=["--wal-segment-age", "300ms"])
    try:
        acked = _acked_ids(c)
        mem = InMemoryLogRecordExporter()
        lp = LoggerProvider(resource=Resource.create({"service.name": "durable"}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
        lp.get_logger("d").emit(ApiLogRecord(timestamp=time.time_ns(), body="last words", severity_text="INFO"))
        lp.shutdown()
        assert OTLPLogExporter(endpoint=c.grpc_endpoint, insecure=True).export(mem.get_finished_logs()) \
            == LogRecordExportResult.SUCCESS
    finally:
        c.kill9()
    assert c.proc.returncode == -9

    # readable straight from the WAL + blocks, without any collector running
    assert _stored_ids(tmp_path) == acked
    # a torn record at the WAL's end (the writer died mid-write, never acknowledged) is ignored
    segs = store.wal.list_segments(store.wal_dir(tmp_path, store.SPANS))
    if segs:
        with open(segs[-1][1], "ab") as fh:
            fh.write(b"\x40\x00\x00\x00\x01\x02")
    assert _stored_ids(tmp_path) == acked

    with start_collector(tmp_path, extra_args=["--wal-segment-age", "300ms"]) as c2:
        assert _stored_ids(tmp_path) == acked
        more = _acked_ids(c2, rounds=2)
        assert _stored_ids(tmp_path) == acked | more
        # the restarted collector cuts the old WAL into blocks; then it is all in blocks
        deadline = time.monotonic() + 30
        while store.snapshot(tmp_path, store.SPANS).tail[:-1] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(store.snapshot(tmp_path, store.SPANS).tail) <= 1
        assert _stored_ids(tmp_path) == acked | more
    # graceful stop cuts what is left
    assert store.snapshot(tmp_path, store.SPANS).tail == []
    assert _stored_ids(tmp_path) == acked | more
    with EmbeddedBackend(tmp_path) as b:
        assert [r.body for r in b.find_logs(LogQuery(service="durable"))] == ["last words"]
