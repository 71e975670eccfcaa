"""Trace-by-id over the write-ahead log reads only the records that hold the id
(collector/query.py _TailIds), instead of decoding the whole log: under
ingest backpressure the log holds up to 256 MiB, and decoding it all made served
lookups take seconds and the collector hold the decoded log (docs/benchmarks.md,
20M-span ingest). The answers must be those of the decode-everything path."""

from __future__ import annotations

from stagetrace.collector import store
from stagetrace.collector.query import _TAIL_SEARCH_MAX_IDS, EmbeddedBackend

from test_collector_store import NOW, request, tid, write_segments


def test_lookup_by_id_decodes_only_matching_records_and_agrees(tmp_path):
    # trace 1 is spread over every segment (late spans); traces 2.. one request each
    groups = [[request(1, 1, t0=NOW + k), *[request(10 * k + j + 2, 3) for j in range(10)]] for k in range(5)]
    w = write_segments(tmp_path, groups)
    w.close()
    with EmbeddedBackend(tmp_path) as b:
        one = b.get_trace(tid(1))
        other = b.get_trace(tid(23))
        missing = b.get_trace("f" * 32)
        assert b._tails[store.SPANS].segments == {}  # nothing of the log decoded into columns for these
        assert b._tail_ids[store.SPANS].segments  # only its trace ids read
        assert len(one.spans) == 5 and len(other.spans) == 3 and missing is None
        # the same ids among more than the byte search takes: the whole log decoded, same answers
        many = [tid(1), tid(23)] + [tid(10 * k + 2) for k in range(_TAIL_SEARCH_MAX_IDS)]
        full = b.get_traces(many)
        assert b._tails[store.SPANS].segments  # this path did decode the log
    for got, want in ((one, full[tid(1)]), (other, full[tid(23)])):
        assert [(s.span_id, s.start_ns, s.name, s.attributes) for s in got.spans] == \
            [(s.span_id, s.start_ns, s.name, s.attributes) for s in want.spans]


def test_the_index_reads_ids_from_bytes_and_parses_only_matching_records(tmp_path, monkeypatch):
    """Indexing the log must not parse each record (that was most of a lookup's time
    during ingest); only the records holding the id are decoded. A record whose other
    bytes look like the id (here: an attribute value of tag + the id's 16 bytes) may be
    decoded needlessly, but the answer holds only the spans of that id."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2

    from stagetrace.collector import otlp

    decoy = trace_service_pb2.ExportTraceServiceRequest.FromString(request(500, 2))
    decoy.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="x", value=common_pb2.AnyValue(bytes_value=b"\x0a\x10" + bytes.fromhex(tid(3))))
    groups = [[request(2 + 5 * k + j, 2) for j in range(5)] for k in range(6)] + [[decoy.SerializeToString()]]
    write_segments(tmp_path, groups).close()
    parsed = []
    real = otlp.REQUEST_TYPES[otlp.TRACES]

    class Counting:
        @staticmethod
        def FromString(data: bytes):
            parsed.append(len(data))
            return real.FromString(data)

    monkeypatch.setitem(otlp.REQUEST_TYPES, otlp.TRACES, Counting)
    with EmbeddedBackend(tmp_path) as b:
        got = b.get_trace(tid(3))
        assert len(parsed) <= 2  # the id's record and the look-alike, of 31 records
        assert {s.trace_id for s in got.spans} == {tid(3)} and len(got.spans) == 2
        parsed.clear()
        assert b.get_trace("e" * 32) is None and parsed == []  # in no record: nothing decoded
    monkeypatch.setitem(otlp.REQUEST_TYPES, otlp.TRACES, real)
    with EmbeddedBackend(tmp_path) as b:
        full = b.get_traces([tid(3), tid(500)] + [tid(10 + k) for k in range(_TAIL_SEARCH_MAX_IDS)])
    assert [s.span_id for s in got.spans] == [s.span_id for s in full[tid(3)].spans]


def test_logs_in_the_log_are_found_by_their_trace_id(tmp_path):
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    def log_request(trace_no: int) -> bytes:
        req = logs_service_pb2.ExportLogsServiceRequest()
        sl = req.resource_logs.add().scope_logs.add()
        for i in range(3):
            sl.log_records.add(time_unix_nano=NOW + i, trace_id=bytes.fromhex(tid(trace_no)),
                               span_id=(trace_no * 1000 + 1).to_bytes(8, "big")).body.string_value = f"line {i}"
        return req.SerializeToString()

    write_segments(tmp_path, [[request(7, 2)], [request(8, 2)]]).close()
    w = __import__("stagetrace.collector.wal", fromlist=["WalWriter"]).WalWriter(
        store.wal_dir(tmp_path, store.LOGS), 1, segment_bytes=1 << 30)
    for n in (7, 8, 9):
        w.append(log_request(n))
    w.close()
    with EmbeddedBackend(tmp_path) as b:
        got = b.get_trace(tid(8))
        assert len(got.spans) == 2 and [lg.body for lg in got.logs] == ["line 0", "line 1", "line 2"]
        assert b._tails[store.LOGS].segments == {}  # found through the id index, not by decoding the log
