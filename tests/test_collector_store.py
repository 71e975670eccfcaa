"""The store layer in process: WAL framing, cut -> blocks, compaction, retention,
readers racing the writer, and the query semantics on stored data."""

from __future__ import annotations

import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from stagetrace.backend import TraceQuery
from stagetrace.collector import store, wal
from stagetrace.collector.maintainer import Maintainer
from stagetrace.collector.query import EmbeddedBackend, exponential_to_explicit

NOW = time.time_ns()


def request(trace_no: int, n_spans: int, *, service: str = "svc", t0: int = NOW, dur: int = 1_000_000,
            status: int = 0) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add(resource=resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))]))
    ss = rs.scope_spans.add()
    tid = trace_no.to_bytes(16, "big")
    for i in range(n_spans):
        sp = ss.spans.add(trace_id=tid, span_id=(trace_no * 1000 + i + 1).to_bytes(8, "big"),
                          parent_span_id=b"" if i == 0 else (trace_no * 1000 + 1).to_bytes(8, "big"),
                          name=f"op{i}", kind=2 if i == 0 else 1, start_time_unix_nano=t0 + i,
                          end_time_unix_nano=t0 + i + dur)
        sp.status.code = status
        sp.attributes.add(key="i", value=common_pb2.AnyValue(int_value=i))
    return req.SerializeToString()


def tid(n: int) -> str:
    return n.to_bytes(16, "big").hex()


def test_wal_ignores_torn_and_corrupt_tails(tmp_path):
    w = wal.WalWriter(tmp_path, 1)
    for i in range(3):
        w.append(f"record-{i}".encode())
    w.close()
    seg = tmp_path / wal.segment_name(1)
    assert [p for _, p in wal.read_records(seg)] == [b"record-0", b"record-1", b"record-2"]
    with open(seg, "ab") as fh:
        fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00part")  # header promising 16 bytes, 4 written
    assert len(list(wal.read_records(seg))) == 3
    data = bytearray(seg.read_bytes())
    data[8 + 3] ^= 0xFF  # flip a payload byte of record 0: its CRC fails, reading stops there
    seg.write_bytes(bytes(data))
    assert list(wal.read_records(seg)) == []


def write_segments(data_dir, payload_groups: list[list[bytes]]) -> wal.WalWriter:
    w = wal.WalWriter(store.wal_dir(data_dir, store.SPANS), 1, segment_bytes=1 << 40)
    for group in payload_groups:
        for p in group:
            w.append(p)
        w.rotate()
    return w


def test_cut_compaction_and_reads_across_blocks_and_wal(tmp_path):
    bs = store.BlockStore(tmp_path)
    # trace 1 is spread over every segment (late spans), traces 2.. one per segment
    groups = [[request(1, 1, t0=NOW + k)[:], request(k + 2, 3)] for k in range(9)]
    w = write_segments(tmp_path, groups)
    with EmbeddedBackend(tmp_path) as b:  # everything still in the WAL
        assert b.stats()["spans"] == 9 * 4
        assert len(b.get_trace(tid(1)).spans) == 9
    for _ in range(9):
        bs.cut(store.SPANS, w.active_seq)
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 1  # one cut took all closed segments
    # more segments and cuts, one at a time, then compaction merges small blocks
    for k in range(9, 17):
        w.append(request(1, 1, t0=NOW + k))
        w.append(request(k + 2, 3))
        w.rotate()
        bs.cut(store.SPANS, w.active_seq)
    w.append(request(1, 1, t0=NOW + 99))  # left in the active WAL segment
    before = len(store.list_blocks(tmp_path, store.SPANS))
    assert before == 9
    while bs.compact(store.SPANS):
        pass
    after = store.list_blocks(tmp_path, store.SPANS)
    assert len(after) < before
    assert not [p for p in store.block_dir(tmp_path, store.SPANS).iterdir() if p.suffix == ".tmp"]
    with EmbeddedBackend(tmp_path) as b:
        t1 = b.get_trace(tid(1))
        assert len(t1.spans) == 18 and len({s.span_id for s in t1.spans}) == 1  # same span re-sent 18 times
        assert t1.spans[-1].start_ns == NOW + 99  # from the WAL tail
        assert b.stats()["spans"] == 17 * 4 + 1
        got = b.get_traces([tid(n) for n in range(2, 19)] + [tid(999)])
        assert sorted(got) == sorted(tid(n) for n in range(2, 19))
        assert all(len(t.spans) == 3 and t.spans[0].parent_span_id == "" for t in got.values())
    w.close()


def test_readers_never_miss_or_double_count_while_the_writer_cuts_and_compacts(tmp_path):
    m = Maintainer(tmp_path, store.StoreConfig(), interval_s=0.01)
    w = wal.WalWriter(store.wal_dir(tmp_path, store.SPANS), m.store.next_seq(store.SPANS), segment_bytes=1500)
    acked = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(400):
                w.append(request(n + 1, 2))
                acked[0] += 2
            w.rotate()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            with EmbeddedBackend(tmp_path) as b:
                last = 0
                while not stop.is_set():
                    floor = acked[0]
                    n = b.stats()["spans"]
                    assert floor <= n <= 800, (floor, n)  # nothing acknowledged missing, nothing twice
                    assert n >= last
                    last = n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    mt = threading.Thread(target=m.run, daemon=True)
    mt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    deadline = time.monotonic() + 60
    while len(store.snapshot(tmp_path, store.SPANS).tail) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    m.stop_event.set()
    mt.join(60)
    assert not errors, errors
    assert len(store.list_blocks(tmp_path, store.SPANS)) >= 1
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 800
        assert len(b.get_traces([tid(n) for n in range(1, 401)])) == 400
    w.close()


def test_retention_by_age_and_by_size(tmp_path):
    day = 86_400 * 10**9
    bs = store.BlockStore(tmp_path, store.StoreConfig(retention_ns=7 * day, retention_bytes=0))
    w = write_segments(tmp_path, [[request(1, 5, t0=NOW - 10 * day)], [request(2, 5, t0=NOW - 3 * day)],
                                  [request(3, 5, t0=NOW - day)]])
    for seq in range(1, 4):
        bs.cut(store.SPANS, seq + 1)
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 3
    assert bs.enforce_retention() == 1
    with EmbeddedBackend(tmp_path) as b:
        assert b.get_trace(tid(1)) is None and b.get_trace(tid(2)) is not None
    sizes = sum(store.block_info(r)[3] for r in store.list_blocks(tmp_path, store.SPANS))
    bs.config.retention_bytes = sizes - 1  # one block too many: the oldest goes
    assert bs.enforce_retention() == 1
    with EmbeddedBackend(tmp_path) as b:
        assert b.get_trace(tid(2)) is None and b.get_trace(tid(3)) is not None
    w.close()


def test_search_semantics(tmp_path):
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, [[request(1, 3, dur=5_000_000, service="a"),
                                   request(2, 2, dur=50_000_000, service="a", status=2),
                                   request(3, 2, dur=500_000_000, service="b", t0=NOW + 10**9)]])
    bs.cut(store.SPANS, w.active_seq)
    w.append(request(4, 1, dur=50_000_000, service="b", t0=NOW + 2 * 10**9))  # WAL only
    with EmbeddedBackend(tmp_path) as b:
        def ids(hits):
            return [h.trace_id for h in hits]
        assert ids(b.search_traces(TraceQuery(min_duration_ns=40_000_000))) == [tid(4), tid(3), tid(2)]
        assert ids(b.search_traces(TraceQuery(min_duration_ns=40_000_000, max_duration_ns=60_000_000))) == [tid(4), tid(2)]
        assert ids(b.search_traces(TraceQuery(status="error"))) == [tid(2)]
        assert ids(b.search_traces(TraceQuery(service="b", limit=1))) == [tid(4)]
        assert ids(b.search_traces(TraceQuery(start_ns=NOW + 10**9, end_ns=NOW + 2 * 10**9))) == [tid(3)]
        assert set(ids(b.search_traces(TraceQuery(attributes={"service.name": "a", "i": 1})))) == {tid(2), tid(1)}
        assert ids(b.search_traces(TraceQuery(attributes={"i": 2}))) == [tid(1)]
        assert ids(b.search_traces(TraceQuery(span_name="op2"))) == [tid(1)]
        roots = b.find_spans(TraceQuery(root_only=True, limit=None))
        assert [s.trace_id for s in roots] == [tid(1), tid(2), tid(3), tid(4)]
        assert len(b.find_spans(TraceQuery(limit=3))) == 3
        s = b.search_traces(TraceQuery(service="a", status="error"))[0]
        assert (s.root_name, s.span_count, s.error, s.root_service) == ("op0", 2, True, "a")
        assert b.get_trace(tid(77)) is None
        from stagetrace.errors import UserError
        with pytest.raises(UserError):
            b.get_trace("not-a-trace-id")
    w.close()


def test_exponential_histogram_conversion():
    p = metrics_pb2.ExponentialHistogramDataPoint(scale=0, zero_count=1, zero_threshold=0.0, count=6, sum=9.0)
    p.positive.offset = 0
    p.positive.bucket_counts.extend([2, 3])  # (1, 2], (2, 4]
    bounds, counts = exponential_to_explicit(p)
    assert bounds == [0.0, 2.0, 4.0]
    assert counts == [1, 2, 3, 0]
    p.negative.offset = 1
    p.negative.bucket_counts.extend([4])  # [-4, -2)
    bounds, counts = exponential_to_explicit(p)
    assert bounds == [-2.0, 0.0, 2.0, 4.0] and counts == [4, 1, 2, 3, 0]


def test_parallel_cut_writes_adjacent_blocks(tmp_path):
    """A large backlog is split into contiguous halves built at once (a thread pool stands in
    for the maintainer's process pool: same submit/result interface)."""
    from concurrent.futures import ThreadPoolExecutor
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, [[request(n, 3)] for n in range(1, 7)])
    with ThreadPoolExecutor(2) as pool:
        bs.cut(store.SPANS, w.active_seq, pool=pool, parallel_bytes=1)
    blocks = store.list_blocks(tmp_path, store.SPANS)
    assert [(b.lo, b.hi) for b in blocks] == [(1, 3), (4, 6)]
    assert store.snapshot(tmp_path, store.SPANS).tail == [(w.active_seq, store.wal_dir(tmp_path, store.SPANS) / wal.segment_name(w.active_seq))]
    with EmbeddedBackend(tmp_path) as b:
        assert b.stats()["spans"] == 18 and len(b.get_traces([tid(n) for n in range(1, 7)])) == 6
    w.close()


def metric_request(name: str, series: int, t: int, instance: str = "i-0") -> bytes:
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add(resource=resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="svc")),
        common_pb2.KeyValue(key="service.instance.id", value=common_pb2.AnyValue(string_value=instance))]))
    m = rm.scope_metrics.add().metrics.add(name=name, unit="1")
    for k in range(series):
        p = m.gauge.data_points.add(time_unix_nano=t, as_double=float(k))
        p.attributes.add(key="k", value=common_pb2.AnyValue(int_value=k))
    return req.SerializeToString()


def test_metric_blocks_are_cut_and_compacted(tmp_path):
    # Regression: blocks build name/series as dictionary columns, and Arrow cannot
    # sort by several keys when one is a dictionary; the cut failed forever and the
    # metrics write-ahead log was never turned into blocks.
    bs = store.BlockStore(tmp_path)
    w = wal.WalWriter(store.wal_dir(tmp_path, store.METRICS), 1, segment_bytes=1 << 40)
    for k in range(9):
        w.append(metric_request("b.metric", 3, NOW + k))
        w.append(metric_request("a.metric", 2, NOW + k))
        w.rotate()
        bs.cut(store.METRICS, w.active_seq)
    assert len(store.list_blocks(tmp_path, store.METRICS)) == 9
    assert not list(store.wal_dir(tmp_path, store.METRICS).glob("*.wal"))[:-1]  # cut segments are gone
    while bs.compact(store.METRICS):
        pass
    assert len(store.list_blocks(tmp_path, store.METRICS)) < 9
    with EmbeddedBackend(tmp_path) as b:
        from stagetrace.backend import MetricQuery
        series = b.metric_series(MetricQuery())
        assert sorted((s.name, s.attributes["k"]) for s in series) == \
            sorted([("a.metric", k) for k in range(2)] + [("b.metric", k) for k in range(3)])
        assert all([p.time_ns for p in s.points] == [NOW + k for k in range(9)] for s in series)
    w.close()


def test_compacted_row_groups_hold_only_their_own_dictionary(tmp_path):
    # Regression: compaction merges blocks as Arrow dictionaries, and given one the
    # Parquet writer stores the whole dictionary in every row group: each 1024-span
    # group of a merged block carried every span body of the block (~2 MB), so a
    # trace-by-id read decoded all of them.
    import pyarrow.parquet as pq
    bs = store.BlockStore(tmp_path)
    w = wal.WalWriter(store.wal_dir(tmp_path, store.SPANS), 1, segment_bytes=1 << 40)
    for k in range(4):
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        for n in range(3000):  # distinct bodies: a unique attribute value per span
            sp = ss.spans.add(trace_id=(k * 10_000 + n // 5 + 1).to_bytes(16, "big"),
                              span_id=(k * 10_000 + n + 1).to_bytes(8, "big"), name="op",
                              start_time_unix_nano=NOW + n, end_time_unix_nano=NOW + n + 1000)
            sp.attributes.add(key="request.id", value=common_pb2.AnyValue(string_value=f"req-{k}-{n:08d}-" + "x" * 40))
        w.append(req.SerializeToString())
        w.rotate()
        bs.cut(store.SPANS, w.active_seq)
    w.close()

    def largest_group(path):
        md = pq.ParquetFile(path).metadata
        return max(md.row_group(i).total_byte_size for i in range(md.num_row_groups))

    before = max(largest_group(b.path) for b in store.list_blocks(tmp_path, store.SPANS))
    while bs.compact(store.SPANS):
        pass
    (merged,) = store.list_blocks(tmp_path, store.SPANS)
    assert merged.lo == 1 and merged.hi == 4
    assert largest_group(merged.path) < 1.5 * before, (largest_group(merged.path), before)
    with EmbeddedBackend(tmp_path) as b:
        assert len(b.get_trace(tid(10_000 * 2 + 7)).spans) == 5


def test_each_instance_of_a_service_is_its_own_metric_series(tmp_path):
    # Two instances' gauges must not merge into one series (whose resource would then
    # be whichever instance's row came first: it differed between WAL and block reads).
    w = wal.WalWriter(store.wal_dir(tmp_path, store.METRICS), 1, segment_bytes=1 << 40)
    for k in range(3):
        w.append(metric_request("cpu", 1, NOW + k, instance="i-0"))
        w.append(metric_request("cpu", 1, NOW + k, instance="i-1"))
    w.rotate()
    from stagetrace.backend import MetricQuery
    with EmbeddedBackend(tmp_path) as b:
        from_wal = b.metric_series(MetricQuery(name="cpu"))
    store.BlockStore(tmp_path).cut(store.METRICS, w.active_seq)
    with EmbeddedBackend(tmp_path) as b:
        from_block = b.metric_series(MetricQuery(name="cpu"))
    w.close()
    for got in (from_wal, from_block):
        assert sorted(s.resource["service.instance.id"] for s in got) == ["i-0", "i-1"]
        assert all(len(s.points) == 3 and all(p.resource == s.resource for p in s.points) for s in got)
    assert from_wal == from_block
