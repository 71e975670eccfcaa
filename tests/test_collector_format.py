"""Block format compatibility after the faster block builder: blocks are now built
from dictionary arrays (resource, scope, service, name, span body) and zstd level 1.
Rows must be identical to the plain build, and blocks written the old way (plain
Arrow columns) must still be read and merged with new ones, field for field."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from stagetrace.backend import TraceQuery
from stagetrace.collector import store
from stagetrace.collector.query import EmbeddedBackend

from test_collector_store import request, tid


def _payloads(first: int, n: int) -> list[bytes]:
    return [request(k, 3, service=f"svc{k % 3}", status=2 if k % 5 == 0 else 0) for k in range(first, first + n)]


def test_dictionary_build_has_the_same_rows_as_the_plain_build():
    payloads = _payloads(1, 40)
    plain = store.build_table(store.SPANS, payloads)
    dic = store.build_table(store.SPANS, payloads, dictionaries=True)
    assert any(pa.types.is_dictionary(f.type) for f in dic.schema)
    assert dic.cast(store.SPAN_SCHEMA).equals(plain)
    # and the sort key is the same whichever way the table was built
    assert store.sort_table(store.SPANS, dic).cast(store.SPAN_SCHEMA).equals(store.sort_table(store.SPANS, plain))


def _old_style_block(data_dir, lo: int, payloads: list[bytes]) -> None:
    """A block as the previous writer made it: plain columns, zstd level 3."""
    t = store.sort_table(store.SPANS, store.build_table(store.SPANS, payloads))
    ref = store.BlockRef(store.SPANS, lo, lo, store.block_dir(data_dir, store.SPANS) / f"{lo:016d}-{lo:016d}.parquet")
    ref.path.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"stagetrace.rows": str(t.num_rows).encode(),
            b"stagetrace.min_time_ns": str(min(t.column("start_ns").to_pylist())).encode(),
            b"stagetrace.max_time_ns": str(max(t.column("start_ns").to_pylist())).encode()}
    pq.write_table(t.replace_schema_metadata(meta), ref.path, compression="zstd", compression_level=3,
                   row_group_size=store.ROW_GROUP_ROWS[store.SPANS],
                   use_dictionary=list(store.DICT_COLUMNS) + ["status_code", "rest"],
                   write_statistics=["trace_id", "start_ns", "name", "service"])
    import numpy as np
    with open(ref.tids_path, "wb") as fh:
        np.save(fh, store.trace_prefixes(t.column("trace_id")))


def test_old_and_new_blocks_read_and_compact_together(tmp_path):
    _old_style_block(tmp_path, 1, _payloads(1, 30))
    _old_style_block(tmp_path, 2, _payloads(31, 30))
    for seq, first in ((3, 61), (4, 91)):  # new-style blocks through the real writer
        t, bad = store.build_table_safe(store.SPANS, _payloads(first, 30), dictionaries=True)
        assert not bad
        store.write_block(tmp_path, store.SPANS, seq, seq, t)
    with EmbeddedBackend(tmp_path) as b:
        before = {t_.trace_id: t_ for t_ in b.get_traces([tid(k) for k in range(1, 121)]).values()}
        errors_before = b.search_traces(TraceQuery(status="error", limit=None))
    assert len(before) == 120 and all(len(t_.spans) == 3 for t_ in before.values())
    assert store.BlockStore(tmp_path).compact(store.SPANS)  # four tier-0 blocks, old and new, merged
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 1
    with EmbeddedBackend(tmp_path) as b:
        after = b.get_traces([tid(k) for k in range(1, 121)])
        assert b.stats()["spans"] == 360
        assert [s.trace_id for s in b.search_traces(TraceQuery(status="error", limit=None))] == \
            [s.trace_id for s in errors_before]
    assert after == before  # field for field: ids, times, attributes, resource, scope
