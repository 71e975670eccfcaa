"""A corrupt block is found, set aside and reported; everything else keeps serving (issue 11).

The store is written by the store's own block writer from spans the real OTel SDK
encoded (the OTLP exporter's encoder), in two blocks an hour apart; then 64 bytes in
the middle of one block are overwritten, as the issue reproduces it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stagetrace.backend import TraceQuery
from stagetrace.collector import integrity, quarantine, store, wal
from stagetrace.collector.query import EmbeddedBackend, StoreDamaged

HOUR = 3600 * 10**9


def _payload(n: int, start_ns: int, tag: str) -> tuple[bytes, list[str]]:
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "integrity"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tr = tp.get_tracer("t")
    for i in range(n):
        t = start_ns + i * 10**6
        with tr.start_as_current_span("GET /predict", start_time=t, end_on_exit=False) as sp:
            sp.set_attribute("http.route", "/predict")
            sp.set_attribute("tag", tag)
            sp.end(end_time=t + (40 + i % 7) * 10**6)
    tp.shutdown()
    spans = mem.get_finished_spans()
    return encode_spans(spans).SerializeToString(), [format(s.context.trace_id, "032x") for s in spans]


def _flip_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        old = fh.read(64)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0x5A for b in old))


@pytest.fixture()
def two_blocks(tmp_path):
    now = time.time_ns()
    old_payload, old_ids = _payload(3000, now - 2 * HOUR, "old")
    new_payload, new_ids = _payload(3000, now - 10 * 60 * 10**9, "new")
    store.BlockStore(tmp_path)
    old = store.write_block(tmp_path, store.SPANS, 1, 1, store.build_table(store.SPANS, [old_payload], dictionaries=True))
    new = store.write_block(tmp_path, store.SPANS, 2, 2, store.build_table(store.SPANS, [new_payload], dictionaries=True))
    return tmp_path, old, new, old_ids, new_ids, now


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, STAGETRACE_DIRECT_READ="1")
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_clean_store_checks_ok_and_reports_nothing_missing(two_blocks):
    data, old, new, *_ , now = two_blocks
    assert old.check_path.exists() and new.check_path.exists()
    r = _cli("collector", "check", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("ok: checked 2 blocks")
    with EmbeddedBackend(data) as b:
        assert b.stats()["quarantined_blocks"] == 0
        assert quarantine.missing_data_note(b, now - 3 * HOUR, now) is None


def test_corrupt_block_is_quarantined_and_the_rest_keeps_serving(two_blocks):
    data, old, new, old_ids, new_ids, now = two_blocks
    _flip_middle(new.path)

    # two reader processes meet the bad block; it is logged once (by whichever moved it)
    slow = _cli("investigate", "slow", "--data-dir", str(data), "--since", "3h", "--format", "json")
    lookup = _cli("trace", old_ids[5], "--data-dir", str(data), "--format", "json")
    for r in (slow, lookup):
        assert "Traceback" not in r.stderr, r.stderr
    assert lookup.returncode == 0, lookup.stderr
    assert old_ids[5] in lookup.stdout
    assert slow.returncode == 0, slow.stderr
    logs = slow.stderr + lookup.stderr
    assert logs.count("quarantined corrupt spans block") == 1, logs
    assert str(new.path) in logs and "3,000 rows" in logs

    missing = _cli("trace", new_ids[5], "--data-dir", str(data))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    assert not new.path.exists() and old.path.exists()
    with EmbeddedBackend(data) as b:
        st = b.stats()
        assert st["spans"] == 3000 and st["quarantined_blocks"] == 1 and st["quarantined_rows"] == 3000
        assert len(b.find_spans(TraceQuery(service="integrity", limit=None))) == 3000
        [q] = b.quarantined(start_ns=now - HOUR, end_ns=now)
        assert (q.table, q.lo, q.hi, q.rows) == ("spans", 2, 2, 3000) and Path(q.moved_to).exists()
        assert b.quarantined(start_ns=now - 3 * HOUR, end_ns=now - HOUR) == []  # only the old block's window
        note = quarantine.missing_data_note(b, now - HOUR, now)
        assert note is not None and "3,000 rows" in note and "missing" in note
        assert quarantine.missing_data_note(b, now - 3 * HOUR, now - HOUR) is None

    # `collector check`: the same answer twice, non-zero while the store misses data
    first = _cli("collector", "check", "--data-dir", str(data))
    second = _cli("collector", "check", "--data-dir", str(data))
    assert first.returncode == second.returncode == 1
    assert first.stdout == second.stdout and "3,000 rows" in first.stdout

    # a new collector never reuses the quarantined block's sequence numbers
    assert store.BlockStore(data).next_seq(store.SPANS) == 3


def test_check_finds_a_corrupt_block_no_reader_has_opened(two_blocks):
    data, old, new, *_ = two_blocks
    _flip_middle(old.path)
    r = _cli("collector", "check", "--data-dir", str(data))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 newly quarantined" in r.stdout and str(old.path) in r.stdout
    assert not old.path.exists() and new.path.exists()
    again = _cli("collector", "check", "--data-dir", str(data))
    assert again.returncode == 1 and "0 newly quarantined, 1 quarantined in all" in again.stdout


def test_compaction_quarantines_a_corrupt_input_instead_of_merging_it(tmp_path):
    now = time.time_ns()
    refs = []
    for i in range(4):
        p, _ = _payload(200, now - HOUR + i * 10**9, f"c{i}")
        refs.append(store.write_block(tmp_path, store.SPANS, i + 1, i + 1,
                                      store.build_table(store.SPANS, [p], dictionaries=True)))
    _flip_middle(refs[2].path)
    bs = store.BlockStore(tmp_path)
    assert bs.compact(store.SPANS)  # did work: set the bad block aside
    assert [e.lo for e in quarantine.list_quarantined(tmp_path)] == [3]
    assert [b.path for b in store.list_blocks(tmp_path, store.SPANS)] == [refs[0].path, refs[1].path, refs[3].path]


def test_block_without_checksum_fails_in_one_line_and_check_decodes_it(two_blocks):
    """A block written before checksums existed is trusted on open; if it is damaged,
    a scan fails with one line (exit 2), and `collector check` decodes it and sets it aside."""
    data, old, new, *_ = two_blocks
    new.check_path.unlink()
    # every page, not 64 bytes: without a checksum only a decode can tell, and a few
    # flipped bytes inside one value can decode "fine" (which is why blocks now carry one)
    raw = bytearray(new.path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    for i in range(4, len(raw) - footer):
        raw[i] ^= 0x5A
    new.path.write_bytes(bytes(raw))
    with EmbeddedBackend(data) as b:
        with pytest.raises(StoreDamaged) as err:
            b.find_spans(TraceQuery(service="integrity", limit=None))
        assert "collector check" in str(err.value)
    r = _cli("collector", "check", "--data-dir", str(data))
    assert r.returncode == 1 and "no checksum" in r.stdout, r.stdout
    with EmbeddedBackend(data) as b:
        assert len(b.find_spans(TraceQuery(service="integrity", limit=None))) == 3000


def test_damaged_wal_segment_is_reported_and_kept_but_a_torn_tail_is_not(tmp_path):
    store.BlockStore(tmp_path)
    p1, _ = _payload(10, time.time_ns(), "w1")
    w = wal.WalWriter(store.wal_dir(tmp_path, store.SPANS), 1)
    for _ in range(3):
        w.append(p1)
    w.close()
    seg = store.wal_dir(tmp_path, store.SPANS) / wal.segment_name(1)
    with open(seg, "ab") as fh:  # a torn last record: the writer died mid-write
        fh.write(b"\x40\x00\x00\x00\x01\x02")
    assert integrity.scan_segment(seg).damaged is None
    assert _cli("collector", "check", "--data-dir", str(tmp_path)).returncode == 0

    raw = bytearray(seg.read_bytes())
    raw[20] ^= 0xFF  # inside the first record's payload: two good records follow it
    seg.write_bytes(bytes(raw))
    r = _cli("collector", "check", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "fails its checksum" in r.stdout, r.stdout
    assert seg.exists() and (quarantine.quarantine_dir(tmp_path, "wal") / "spans" / seg.name).exists()
    assert _cli("collector", "check", "--data-dir", str(tmp_path)).stdout == r.stdout
