"""Ingest must not run ahead of its own acknowledgements (issue 19): the receivers
refuse while acknowledged data has waited too long to reach blocks, the maintainer
keeps cutting while a compaction runs, and one cut reads a bounded amount of WAL.

Real parts: the collector process with its maintainer (stopped with SIGSTOP, as a
starved one would be), OTLP/HTTP protobuf requests; the in-process maintainer with
the store's own failpoint to hold a compaction open."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stagetrace.collector import store, wal
from stagetrace.collector.maintainer import Maintainer
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend
from stagetrace.collector.receiver import ExportError, Ingestor, Limits

from test_collector_lifecycle import _wait_for
from test_collector_store import request, write_segments

MiB = 1 << 20


def _check(backlog: int, lag: float) -> str | None:
    ing = Ingestor({}, Limits(max_lag_s=2.0, lag_floor_bytes=16 * MiB), None, lambda: backlog, lambda: lag)
    try:
        ing.check_backlog()
    except ExportError as exc:
        assert exc.kind == "unavailable" and exc.retry_after_s
        return str(exc)
    return None


def test_refused_while_acknowledged_data_waits_too_long():
    assert _check(20 * MiB, 1.0) is None
    assert "waiting 3.5 s" in (_check(20 * MiB, 3.5) or "")
    assert _check(10 * MiB, 30.0) is None  # under the floor: a restart or a burst is absorbed
    assert "backlog over its limit" in (_check(300 * MiB, 0.0) or "")  # the byte limit still holds


def _post(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_a_stalled_maintainer_makes_the_collector_refuse_then_recover(tmp_path):
    big = [request(n, 27_000) for n in range(1, 9)]  # ~2.2 MiB each: over the 16 MiB floor in 8 requests
    assert sum(map(len, big)) > 16 * MiB
    with start_collector(tmp_path, extra_args=["--max-lag", "0.5s", "--wal-segment-age", "0.2s"]) as c:
        assert _wait_for(lambda: (tmp_path / "maintainer.lock").exists() and
                         (tmp_path / "maintainer.lock").read_text().strip(), 30)
        maint = int((tmp_path / "maintainer.lock").read_text().split()[0])
        url = c.http_endpoint + "/v1/traces"
        os.kill(maint, signal.SIGSTOP)
        try:
            codes = [_post(url, body)[0] for body in big]
            assert codes.count(200) >= 7, codes
            refusal: list[str] = []

            def refused() -> bool:
                code, text = _post(url, request(99, 1))
                if code == 503:
                    refusal.append(text)
                return code == 503
            assert _wait_for(refused, 60), "never refused although nothing was cut"
            assert "waiting" in refusal[0] and "stored in blocks" in refusal[0], refusal[0]
        finally:
            os.kill(maint, signal.SIGCONT)
        assert _wait_for(lambda: _post(url, request(100, 1))[0] == 200, 120), "did not recover after the cut"


def test_cuts_go_on_while_a_compaction_runs(tmp_path, monkeypatch):
    # four tiny blocks -> one compaction, held open by the store's failpoint (4 s before the
    # merged block is renamed into place); a segment closed meanwhile must still be cut
    monkeypatch.setitem(store._FAILPOINTS, "compact", 8.0)
    w = write_segments(tmp_path, [[request(n, 2)] for n in range(1, 5)])
    bs = store.BlockStore(tmp_path)
    for seq in range(2, 6):
        bs.cut(store.SPANS, seq)
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 4
    m = Maintainer(tmp_path, store.StoreConfig(), interval_s=0.02)
    runner = threading.Thread(target=m.run, daemon=True)
    runner.start()
    marker = tmp_path / "failpoint.compact"
    try:
        assert _wait_for(marker.exists, 60), "the compaction never started"
        w.append(request(5, 2))
        w.rotate()  # segment 5 is closed: cut it now, not after the merge
        seen_during = _wait_for(lambda: any(b.lo <= 5 <= b.hi for b in store.list_blocks(tmp_path, store.SPANS))
                                or not marker.exists(), 60)
        cut_during_merge = marker.exists() and any(b.lo <= 5 <= b.hi for b in store.list_blocks(tmp_path, store.SPANS))
        assert seen_during and cut_during_merge, "the segment waited for the compaction"
    finally:
        m.stop_event.set()
        runner.join(60)
        w.close()
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 10


def test_one_cut_reads_at_most_max_cut_bytes(tmp_path):
    w = write_segments(tmp_path, [[request(n, 50)] for n in range(1, 7)])
    seg = wal.list_segments(store.wal_dir(tmp_path, store.SPANS))[0][1].stat().st_size
    bs = store.BlockStore(tmp_path, store.StoreConfig(max_cut_bytes=2 * seg))
    assert bs.cut_all(store.SPANS, w.active_seq) == 3  # six segments, two at a time
    assert [(b.lo, b.hi) for b in store.list_blocks(tmp_path, store.SPANS)] == [(1, 2), (3, 4), (5, 6)]
    w.close()
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 300


@pytest.mark.parametrize("rows", [70_000, 1])
def test_blocks_written_a_slice_at_a_time_keep_their_row_groups(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = store.build_table(store.SPANS, [request(n, 10) for n in range(1, rows // 10 + 2)], dictionaries=True)
    t = t.slice(0, rows)
    ref = store.write_block(tmp_path, store.SPANS, 1, 1, t)
    md = pq.read_metadata(ref.path)
    assert md.num_rows == rows
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == \
        [store.ROW_GROUP_ROWS[store.SPANS]] * (rows // 1024) + ([rows % 1024] if rows % 1024 else [])
    back = pq.read_table(ref.path)
    assert back.schema.equals(store.SPAN_SCHEMA) and back.num_rows == rows
    assert back.column("rest").type == pa.binary()  # plain in the file, not an Arrow dictionary
    assert pq.read_metadata(ref.entries_path).metadata[b"stagetrace.rows"] == str(rows).encode()
    assert Path(ref.errors_path).exists()


def test_blocks_either_side_of_a_tier_boundary_are_merged(tmp_path):
    # cuts of a busy WAL make blocks of varying size (here 15k and 17k spans: either side
    # of the first tier boundary, 16,384); they must still be compacted
    bs = store.BlockStore(tmp_path)
    for seq, n in enumerate((15, 17, 15, 17), start=1):
        t = store.build_table(store.SPANS, [request(seq * 100 + k, 1000) for k in range(n)], dictionaries=True)
        store.write_block(tmp_path, store.SPANS, seq, seq, t)
    assert bs.compact(store.SPANS)
    assert [(b.lo, b.hi) for b in store.list_blocks(tmp_path, store.SPANS)] == [(1, 4)]
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 64_000


def test_small_blocks_that_piled_up_are_merged_in_one_pass(tmp_path):
    # compaction behind a saturated cut: ten small blocks wait; one merge takes them all
    # (up to compact_max_fan_in), so each span is rewritten once, not once per tier
    bs = store.BlockStore(tmp_path)
    for seq in range(1, 11):
        t = store.build_table(store.SPANS, [request(seq * 100 + k, 10) for k in range(10)], dictionaries=True)
        store.write_block(tmp_path, store.SPANS, seq, seq, t)
    assert bs.compact(store.SPANS)
    assert [(b.lo, b.hi) for b in store.list_blocks(tmp_path, store.SPANS)] == [(1, 10)]
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 1000


def test_a_retried_read_does_not_verify_the_unchanged_blocks_again(tmp_path, monkeypatch):
    # a cut or merge removing a file under a read makes the reader retry; it must not
    # re-verify (checksum) every cached block, which made a lookup take 19 s at ~200 blocks
    from stagetrace.collector import query as cq

    w = write_segments(tmp_path, [[request(n, 3)] for n in range(1, 4)])
    bs = store.BlockStore(tmp_path)
    for seq in range(2, 5):
        bs.cut(store.SPANS, seq)
    w.close()
    with EmbeddedBackend(tmp_path) as b:
        assert len(b.get_trace((2).to_bytes(16, "big").hex()).spans) == 3  # every block opened and verified
        verified: list[str] = []
        real_verify, real_holds = store.BlockRef.verify, cq._Block.holds
        monkeypatch.setattr(store.BlockRef, "verify", lambda ref: verified.append(ref.path.name) or real_verify(ref))
        failed = []

        def holds(self, prefixes):
            if not failed:
                failed.append(1)
                raise FileNotFoundError("a block vanished under the read")
            return real_holds(self, prefixes)
        monkeypatch.setattr(cq._Block, "holds", holds)
        assert len(b.get_trace((3).to_bytes(16, "big").hex()).spans) == 3
        assert failed and verified == []
