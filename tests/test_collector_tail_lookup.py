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


def _ingest(data_dir, requests, first_seq=1):
    """A real Ingestor and WAL writer with the receivers' trace-id index, as the collector
    builds them when it serves lookups; ``requests``: lists of OTLP trace requests, one
    segment each."""
    from stagetrace.collector import wal
    from stagetrace.collector.receiver import Ingestor, Limits
    from stagetrace.collector.tailindex import TailIndex

    writers = {t: wal.WalWriter(store.wal_dir(data_dir, t), first_seq, segment_bytes=1 << 40) for t in store.TABLES}
    index = TailIndex({t: first_seq for t in (store.SPANS, store.LOGS)},
                      {t: store.wal_dir(data_dir, t) for t in (store.SPANS, store.LOGS)})
    ing = Ingestor(writers, Limits(), None, lambda: 0, tail_index=index)
    for group in requests:
        for body in group:
            ing.export("traces", body, json_body=False)
        writers[store.SPANS].rotate()
    return writers, index


def test_served_lookups_find_log_records_from_the_receivers_index_without_reading_the_log(tmp_path, monkeypatch):
    """In the collector's process the receivers index the trace ids of what they append
    (collector/tailindex.py): a lookup then reads no log bytes to find its records (no
    scan of the segments), only the records themselves, and answers what a reader without
    the index answers (a scan of the log)."""
    from stagetrace.collector import wal

    groups = [[request(1, 1, t0=NOW + k), *[request(10 * k + j + 2, 3) for j in range(10)]] for k in range(4)]
    writers, index = _ingest(tmp_path, groups)
    scanned = []
    real_scan = wal.scan_records
    monkeypatch.setattr(wal, "scan_records", lambda path, start=0: scanned.append(path) or real_scan(path, start))
    with EmbeddedBackend(tmp_path, tail_index=index) as b:
        got = {t: b.get_trace(t) for t in (tid(1), tid(23), tid(35), "f" * 32)}
        assert scanned == []  # found through the index, not by reading the log
        assert b._tails[store.SPANS].segments == {}  # and nothing decoded into columns
    with EmbeddedBackend(tmp_path) as b:  # the scan, for comparison
        want = {t: b.get_trace(t) for t in got}
        assert scanned  # this one did read the log
    assert got["f" * 32] is None and want["f" * 32] is None
    for t in (tid(1), tid(23), tid(35)):
        assert [(s.span_id, s.start_ns, s.name, s.attributes) for s in got[t].spans] == \
            [(s.span_id, s.start_ns, s.name, s.attributes) for s in want[t].spans]
    assert len(got[tid(1)].spans) == 4  # one span in each segment
    for w in writers.values():
        w.close()


def test_the_index_leaves_older_and_damaged_segments_to_the_scan(tmp_path):
    """Segments this process did not write (a previous run's, below the writer's first
    sequence number) and a segment whose indexed record no longer matches its checksum
    are scanned as before: the answer is the scan's, never a record the log does not hold."""
    old = write_segments(tmp_path, [[request(1, 2, t0=NOW), request(2, 2)]])  # segment 1: a previous run
    old.close()
    writers, index = _ingest(tmp_path, [[request(1, 1, t0=NOW + 5), request(3, 2)], [request(4, 2)]], first_seq=10)
    with EmbeddedBackend(tmp_path, tail_index=index) as b:
        assert len(b.get_trace(tid(1)).spans) == 3  # 2 from the old segment (scanned), 1 from the index
        assert len(b.get_trace(tid(2)).spans) == 2
    seg = store.wal_dir(tmp_path, store.SPANS) / "0000000000000011.wal"
    data = bytearray(seg.read_bytes())
    at = bytes(data).rindex(b"op1")
    data[at + 1] = ord("q")  # a span name in trace 4's record: still a valid request, but not what was written
    seg.write_bytes(bytes(data))
    with EmbeddedBackend(tmp_path, tail_index=index) as b:
        assert b.get_trace(tid(4)) is None  # the scan stops at the damaged record, as without the index
        assert len(b.get_trace(tid(3)).spans) == 2
    for w in writers.values():
        w.close()
    index.add(store.SPANS, 12, 8, 20, [bytes(16)])  # a new segment: deleted ones are forgotten
    seg.unlink()
    index.add(store.SPANS, 13, 8, 20, [bytes(16)])
    assert 11 not in index._segments[store.SPANS] and 10 in index._segments[store.SPANS]
