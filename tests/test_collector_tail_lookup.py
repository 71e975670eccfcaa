"""Trace-by-id over the write-ahead log reads only the records that hold the id
(collector/wal.py records_containing), instead of decoding the whole log: under
ingest backpressure the log holds up to 256 MiB, and decoding it all made served
lookups take seconds and the collector hold the decoded log (docs/benchmarks.md,
20M-span ingest). The answers must be those of the decode-everything path."""

from __future__ import annotations

from stagetrace.collector import store, wal
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
        assert b._tails[store.SPANS].segments == {}  # nothing of the log decoded for these
        assert len(one.spans) == 5 and len(other.spans) == 3 and missing is None
        # the same ids among more than the byte search takes: the whole log decoded, same answers
        many = [tid(1), tid(23)] + [tid(10 * k + 2) for k in range(_TAIL_SEARCH_MAX_IDS)]
        full = b.get_traces(many)
        assert b._tails[store.SPANS].segments  # this path did decode the log
    for got, want in ((one, full[tid(1)]), (other, full[tid(23)])):
        assert [(s.span_id, s.start_ns, s.name, s.attributes) for s in got.spans] == \
            [(s.span_id, s.start_ns, s.name, s.attributes) for s in want.spans]


def test_records_containing_skips_torn_and_damaged_records(tmp_path):
    w = wal.WalWriter(tmp_path, 1)
    for payload in (b"aaa-needle-1", b"bbb", b"ccc-needle-2", b"ddd-needle-3"):
        w.append(payload)
    w.close()
    seg = tmp_path / wal.segment_name(1)
    assert wal.records_containing(seg, [b"needle"]) == [b"aaa-needle-1", b"ccc-needle-2", b"ddd-needle-3"]
    assert wal.records_containing(seg, [b"-2", b"bb"]) == [b"bbb", b"ccc-needle-2"]
    data = bytearray(seg.read_bytes())
    data[data.index(b"ccc") + 1] ^= 0xFF  # a damaged record: its checksum no longer matches
    seg.write_bytes(bytes(data) + b"\x20\x00\x00\x00\x00\x00\x00\x00needle")  # and a torn tail
    assert wal.records_containing(seg, [b"needle"]) == [b"aaa-needle-1", b"ddd-needle-3"]
