"""Readers racing compaction: a block listed by a reader can be deleted (merged into a
bigger one) before the reader opens it. Readers must re-list and retry, never fail."""

from __future__ import annotations

import threading
import time

from stagetrace.backend import TraceQuery
from stagetrace.collector import store
from stagetrace.collector.query import EmbeddedBackend

from test_collector_store import request, tid, write_segments


def _small_blocks(tmp_path, n_blocks: int, traces_per_block: int = 2) -> store.BlockStore:
    """``n_blocks`` one-segment blocks of ``traces_per_block`` 3-span traces
    (compaction merges them four at a time)."""
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, [])
    n = 0
    for _ in range(n_blocks):
        for _ in range(traces_per_block):
            n += 1
            w.append(request(n, 3))
        w.rotate()
        bs.cut(store.SPANS, w.active_seq)
    w.close()
    return bs


def _compact_after_first_listing(monkeypatch, bs: store.BlockStore) -> list[int]:
    """Make compaction run right after the reader's first listing (blocks opened, not yet
    scanned): exactly the window in which a real reader loses its files."""
    real_view = EmbeddedBackend._view
    calls = [0]

    def view_then_compact(self, table, **kw):
        v = real_view(self, table, **kw)
        calls[0] += 1
        if table == store.SPANS and calls[0] == 1:
            assert bs.compact(store.SPANS)  # deletes the four blocks just listed
        return v

    monkeypatch.setattr(EmbeddedBackend, "_view", view_then_compact)
    return calls


def test_scan_retries_when_compaction_deletes_a_listed_block(tmp_path, monkeypatch):
    """Deterministic: the DuckDB scan meets "No files found that match the pattern"
    (duckdb.IOException) and must retry with a fresh listing."""
    bs = _small_blocks(tmp_path, 4)
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 4
    calls = _compact_after_first_listing(monkeypatch, bs)
    with EmbeddedBackend(tmp_path) as b:
        spans = b.find_spans(TraceQuery(limit=None))
    assert calls[0] == 2  # the first attempt failed and was retried with a fresh listing
    assert len(spans) == 4 * 2 * 3
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 1


def test_trace_lookup_retries_when_a_listed_block_vanishes(tmp_path, monkeypatch):
    """Same race on the trace-by-id path (pyarrow over memory-mapped blocks + sidecars)."""
    bs = _small_blocks(tmp_path, 4)
    _compact_after_first_listing(monkeypatch, bs)
    with EmbeddedBackend(tmp_path) as b:
        got = b.get_traces([tid(n) for n in range(1, 9)], with_logs=False)
    assert sorted(got) == sorted(tid(n) for n in range(1, 9))
    assert all(len(t.spans) == 3 for t in got.values())


def test_reader_loop_while_compaction_runs(tmp_path):
    """A reader loops over every query path while another thread keeps re-creating small
    blocks and compacting them; every answer is complete and no call fails."""
    bs = _small_blocks(tmp_path, 16)
    total = 16 * 2 * 3
    stop = threading.Event()
    errors: list[BaseException] = []
    rounds = [0, 0]

    def compactor() -> None:
        try:
            while not stop.is_set():
                if bs.compact(store.SPANS):
                    rounds[0] += 1
                    continue
                # everything merged: split it again into 4 blocks so compaction keeps deleting files
                blocks = store.list_blocks(tmp_path, store.SPANS)
                if len(blocks) == 1:
                    import pyarrow.parquet as pq
                    b = blocks[0]
                    t = pq.read_table(b.path, schema=store.SCHEMAS[store.SPANS]).replace_schema_metadata(None)
                    step = (b.hi - b.lo + 1) // 4
                    rows = t.num_rows // 4
                    for k in range(4):
                        lo = b.lo + k * step
                        hi = b.hi if k == 3 else lo + step - 1
                        part = t.slice(k * rows, t.num_rows - 3 * rows if k == 3 else rows)
                        store.write_block(tmp_path, store.SPANS, lo, hi, part)
                    store.delete_block(b)  # the four new ones are live now
                    bs._info.clear()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
            stop.set()

    def reader() -> None:
        try:
            with EmbeddedBackend(tmp_path) as b:
                deadline = time.monotonic() + 6
                while time.monotonic() < deadline and not stop.is_set():
                    assert b.stats()["spans"] == total
                    assert len(b.find_spans(TraceQuery(limit=None))) == total
                    assert len(b.search_traces(TraceQuery(limit=None))) == 32
                    got = b.get_traces([tid(n) for n in range(1, 33)], with_logs=False)
                    assert len(got) == 32 and all(len(t.spans) == 3 for t in got.values())
                    rounds[1] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=compactor), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert rounds[0] >= 5 and rounds[1] >= 5, rounds  # both sides really raced
