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
