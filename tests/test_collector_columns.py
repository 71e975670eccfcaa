"""The error-span sidecar of span blocks and the columnar request path (issue 19 part 2):
both must give exactly what a plain scan of every span gives, over blocks and the WAL
tail; a missing or damaged sidecar must only cost speed; and the forensics helpers
built on columns must give what their span-by-span forms give."""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from stagetrace.backend import TraceQuery, find_span_columns, span_columns
from stagetrace.collector import store
from stagetrace.collector.query import EmbeddedBackend
from stagetrace.forensics import slow, timeline, window
from stagetrace.model import Span

from test_collector_entries import NOW, SEC, mixed_store  # noqa: F401  (fixture)


def _hide_sidecars(data_dir) -> None:
    for ref in store.list_blocks(data_dir, store.SPANS):
        ref.entries_path.unlink(missing_ok=True)
        ref.errors_path.unlink(missing_ok=True)


def _rows(cols) -> list[Span]:
    return [cols.span(i) for i in range(len(cols))]


def test_error_sidecar_holds_exactly_the_error_spans_sorted_by_start(mixed_store):  # noqa: F811
    data_dir, bs, _ = mixed_store
    bs.compact(store.SPANS)  # whatever compaction makes keeps its sidecar
    refs = store.list_blocks(data_dir, store.SPANS)
    assert refs
    for ref in refs:
        block = pq.read_table(ref.path)
        side = pq.read_table(ref.errors_path)
        want = sorted((r["trace_id"], r["span_id"]) for r in block.to_pylist() if r["status_code"] == 2)
        assert want and sorted(zip(side.column("trace_id").to_pylist(), side.column("span_id").to_pylist())) == want
        starts = side.column("start_ns").to_pylist()
        assert starts == sorted(starts)


@pytest.mark.parametrize("q", [
    dict(root_only=True),
    dict(root_only=True, service="api"),
    dict(root_only=True, attributes={"http.route": "POST /predict"}),
    dict(root_only=True, status="error"),
    dict(status="error"),
    dict(status="error", service="features"),
    dict(root_only=True, limit=17),
    dict(service="features"),
    dict(attributes={"user.id": 3}, limit=5),
])
def test_columns_and_error_sidecar_reads_equal_a_full_scan(mixed_store, q):  # noqa: F811
    data_dir, _, _ = mixed_store
    q = {"limit": None, "start_ns": NOW + 60 * SEC, "end_ns": NOW + 500 * SEC, **q}
    with EmbeddedBackend(data_dir) as b:
        cols = b.find_span_columns(TraceQuery(**q))
        spans = b.find_spans(TraceQuery(**q))
        shared = b.find_spans(TraceQuery(**q, read_only=True))
    _hide_sidecars(data_dir)
    with EmbeddedBackend(data_dir) as b:
        reference = b.find_spans(TraceQuery(**q))
        cols_plain = b.find_span_columns(TraceQuery(**q))
    assert reference and len(reference) > (0 if q["limit"] is None else q["limit"] - 1)
    assert _rows(cols) == spans == shared == reference == _rows(cols_plain)
    assert list(cols.trace_ids) == [s.trace_id for s in reference]
    if q.get("root_only") and "status" not in q and q["limit"] is None:
        assert len(cols.protos) < len(reference) / 2  # rows share their bodies
    if q.get("status") == "error":
        assert all(s.is_error for s in reference)


def test_a_damaged_or_missing_error_sidecar_only_costs_speed(mixed_store):  # noqa: F811
    data_dir, _, _ = mixed_store
    q = TraceQuery(status="error", limit=None)
    with EmbeddedBackend(data_dir) as b:
        before = b.find_spans(q)
    refs = store.list_blocks(data_dir, store.SPANS)
    raw = bytearray(refs[0].errors_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    refs[0].errors_path.write_bytes(bytes(raw))
    refs[-1].errors_path.unlink()
    with EmbeddedBackend(data_dir) as b:
        assert b.find_spans(q) == before
        assert _rows(b.find_span_columns(q)) == before


class _SpansOnly:
    """A backend without the columnar path (as the Tempo backend): the default applies."""

    name = "spans-only"

    def __init__(self, inner: EmbeddedBackend) -> None:
        self.inner = inner

    def find_spans(self, query: TraceQuery) -> list[Span]:
        return self.inner.find_spans(query)


@pytest.mark.parametrize("service", [None, "features"])
def test_entry_requests_are_entry_spans_as_columns(mixed_store, service):  # noqa: F811
    data_dir, _, _ = mixed_store
    kw = dict(service=service, route=None, start_ns=NOW + 30 * SEC, end_ns=NOW + 550 * SEC)
    with EmbeddedBackend(data_dir) as b:
        spans = window.entry_spans(b, **kw)
        req = window.entry_requests(b, **kw)
        default = window.entry_requests(_SpansOnly(b), **kw)
        ops_cols = window.request_ops(b, req)
        ops_spans = window.entry_ops(b, spans)
    assert spans and _rows(req) == spans == _rows(default)
    assert [ops_cols.names[c] for c in ops_cols.codes] == [ops_spans[s.trace_id] for s in spans]
    assert window.request_weights(req) is None and window.sampling_weights(spans) == {}


def _span(tid: str, start: int, **kw) -> Span:
    return Span(tid, f"{start:016x}", "", kw.pop("name", "GET /"), "SERVER", start, start + 10, **kw)


def test_first_per_trace_keeps_what_entry_spans_keeps():
    shared = {"http.route": "/a"}
    spans = [_span("b" * 32, 50, attributes=shared), _span("a" * 32, 40, attributes=shared),
             _span("b" * 32, 30, attributes=shared), _span("c" * 32, 40), _span("a" * 32, 40, name="dup")]
    seen: dict[str, Span] = {}  # entry_spans' rule, spelled out
    for s in spans:
        if s.trace_id not in seen or s.start_ns < seen[s.trace_id].start_ns:
            seen[s.trace_id] = s
    want = sorted(seen.values(), key=lambda s: s.start_ns)
    assert _rows(window.first_per_trace(span_columns(spans))) == want
    assert [s.trace_id for s in want] == ["b" * 32, "a" * 32, "c" * 32]


def test_weights_and_versions_per_prototype_equal_per_span():
    rnd = random.Random(3)
    bodies = [{"sampling.adjusted_count": w, "ml.model.version": v} for w in (1, 4.0, "x") for v in ("v1", "v2", 2)]
    res = [{"service.name": "a", "service.version": "1"}, {"service.name": "b"}]
    spans = [_span(f"{i:032x}", rnd.randrange(10**6), attributes=rnd.choice(bodies), resource=rnd.choice(res))
             for i in range(400)]
    cols = span_columns(spans)
    wmap = window.sampling_weights(spans)
    assert window.request_weights(cols).tolist() == [wmap[s.trace_id] for s in spans]
    rows = np.arange(100, 300)
    keys = slow.VERSION_KEYS + ("service.version",)
    assert (timeline.versions_first_seen_groups(timeline.request_groups(cols, rows), keys)
            == timeline.versions_first_seen(spans[100:300], keys))


@pytest.mark.parametrize("threshold", ["p95", "p50", 5_000])
def test_op_thresholds_on_codes_equal_on_strings(threshold):
    rnd = np.random.default_rng(5)
    names = ["svc: GET /b", "svc: GET /a", "other: POST /x", "rare"]
    codes = rnd.choice(4, size=3000, p=[0.5, 0.3, 0.195, 0.005]).astype(np.int32)
    dur = rnd.lognormal(15, 1, size=3000).astype(np.int64)
    mask = rnd.random(3000) < 0.7
    strings = np.array([names[c] for c in codes], dtype=object)
    a = slow.op_thresholds(threshold, window.Operations(codes, names), dur, mask=mask)
    b = slow.op_thresholds(threshold, strings, dur, mask=mask)
    assert a[0].tolist() == b[0].tolist() and a[1] == b[1]
    assert list(a[2].items()) == list(b[2].items())


def test_sample_picks_the_rows_random_sample_picks():
    rows = np.arange(1000, 1800, 3)
    ids = [f"t{r}" for r in rows]
    for k in (5, 200, len(rows) + 1):
        want = ids if len(ids) <= k else random.Random("selection").sample(ids, k)
        assert [f"t{r}" for r in slow._sample(rows, k, "selection")] == want


def test_default_columns_of_a_backend_without_them(mixed_store):  # noqa: F811
    data_dir, _, _ = mixed_store
    q = TraceQuery(root_only=True, limit=None)
    with EmbeddedBackend(data_dir) as b:
        assert _rows(find_span_columns(_SpansOnly(b), q)) == b.find_spans(q)


def _log_request(rnd: random.Random, n: int) -> bytes:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2

    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add(resource=resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=f"svc{n % 3}"))]))
    sl = rl.scope_logs.add()
    for i in range(40):
        sev = rnd.choice([0, 9, 13, 17, 17, 21])
        sl.log_records.add(time_unix_nano=NOW + rnd.randrange(600 * SEC), severity_number=sev,
                           trace_id=rnd.getrandbits(128).to_bytes(16, "big"), span_id=rnd.getrandbits(64).to_bytes(8, "big"),
                           body=common_pb2.AnyValue(string_value=f"line {n}-{i} sev {sev}"))
    return req.SerializeToString()


@pytest.mark.parametrize("min_severity", [17, 21, 13, None])
def test_log_error_sidecar_reads_equal_a_full_scan(tmp_path, min_severity):
    from stagetrace.backend import LogQuery

    rnd = random.Random(11)
    for seq in range(3):
        t = store.build_table(store.LOGS, [_log_request(rnd, seq * 10 + k) for k in range(10)])
        store.write_block(tmp_path, store.LOGS, seq, seq, t)
    for ref in store.list_blocks(tmp_path, store.LOGS):
        side = pq.read_table(ref.errors_path)
        block = pq.read_table(ref.path)
        assert sorted(side.column("span_id").to_pylist()) == sorted(
            r["span_id"] for r in block.to_pylist() if r["severity_number"] >= 17)
    q = LogQuery(min_severity=min_severity, start_ns=NOW + 60 * SEC, end_ns=NOW + 500 * SEC, limit=None)
    with EmbeddedBackend(tmp_path) as b:
        fast = b.find_logs(q)
        svc = b.find_logs(LogQuery(min_severity=min_severity, service="svc1", start_ns=q.start_ns, end_ns=q.end_ns,
                                   limit=None))
    for ref in store.list_blocks(tmp_path, store.LOGS):
        ref.errors_path.unlink()
    with EmbeddedBackend(tmp_path) as b:
        plain = b.find_logs(q)
        svc_plain = b.find_logs(LogQuery(min_severity=min_severity, service="svc1", start_ns=q.start_ns,
                                         end_ns=q.end_ns, limit=None))
    assert fast == plain and svc == svc_plain and svc
    assert len(plain) > 50 and all(r.severity_number >= (min_severity or 0) for r in plain)


def _tied_logs(tids: list[int]) -> bytes:
    """One request: a log record per trace id, all at the same nanosecond."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2

    req = logs_service_pb2.ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for t in tids:
        sl.log_records.add(time_unix_nano=NOW, observed_time_unix_nano=NOW, severity_number=17,
                           trace_id=t.to_bytes(16, "big"), span_id=(t + 1).to_bytes(8, "big"),
                           body=common_pb2.AnyValue(string_value=f"same instant {t}"))
    return req.SerializeToString()


@pytest.mark.parametrize("min_severity", [17, None])  # the error sidecars, and the blocks
def test_find_logs_orders_records_of_one_instant_totally(tmp_path, min_severity):
    """Records at one nanosecond come back in one order whatever the blocks they sit in
    (here the later block holds the smaller trace ids): by trace id, then span id."""
    from stagetrace.backend import LogQuery

    store.write_block(tmp_path, store.LOGS, 0, 0, store.build_table(store.LOGS, [_tied_logs([900, 700, 800])]))
    store.write_block(tmp_path, store.LOGS, 1, 1, store.build_table(store.LOGS, [_tied_logs([300, 100, 200])]))
    want = [f"{t:032x}" for t in (100, 200, 300, 700, 800, 900)]
    with EmbeddedBackend(tmp_path) as b:
        got = b.find_logs(LogQuery(min_severity=min_severity, limit=None))
        by_id = b.find_logs(LogQuery(trace_ids=list(reversed(want)), limit=None))
    assert [r.trace_id for r in got] == want
    assert [r.trace_id for r in by_id] == want


def test_indexed_first_per_trace_index_is_the_row_index():
    shared = {"http.route": "/a"}
    unique = [_span(f"{i:032x}", 10 * i, attributes=shared) for i in range(5)]
    dups = [_span("b" * 32, 50), _span("a" * 32, 40), _span("b" * 32, 30), _span("c" * 32, 40)]
    for spans in (unique, dups):
        cols, index = window.indexed_first_per_trace(span_columns(spans))
        assert _rows(cols) == _rows(window.first_per_trace(span_columns(spans)))
        assert index == {t: i for i, t in enumerate(cols.trace_ids)} and len(index) == len(cols)


def test_factorize_groups_rows_as_unique_over_rows_does():
    from stagetrace.collector.query import _factorize

    rnd = np.random.default_rng(5)
    protos = [rnd.integers(0, 2**63, 60, dtype=np.int64).view(np.uint64), rnd.integers(0, 4, 60).astype(np.uint64),
              rnd.integers(-3, 3, 60).astype(np.int32), rnd.integers(0, 6, 60).astype(np.int8)]
    pick = rnd.integers(0, 60, 5000)
    cols = [p[pick] for p in protos]
    inv, values = _factorize(cols)
    rows = np.stack([c.astype(object) for c in cols], axis=1)
    want = sorted({tuple(int(x) for x in r) for r in rows.tolist()})
    assert values == want  # groups in ascending order of their value tuples
    assert [values[g] for g in inv.tolist()] == [tuple(int(x) for x in r) for r in rows.tolist()]
