"""The entry-span sidecar of span blocks and the read-only span path (issue 19):
both must give exactly what a plain scan of every span gives, over blocks and the
WAL tail, and a missing or damaged sidecar must only cost speed."""

from __future__ import annotations

import dataclasses
import random

import pyarrow.parquet as pq
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from stagetrace.backend import TraceQuery
from stagetrace.collector import store
from stagetrace.collector.query import EmbeddedBackend

from test_collector_store import NOW, write_segments

SEC = 1_000_000_000


def _kv(key, **value):
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def mixed_request(rnd: random.Random, n: int) -> bytes:
    """One request: an api root (SERVER, or an INTERNAL root for some), a CLIENT call
    into a feature service whose SERVER span is an entry too, a CONSUMER span, and
    attributes that repeat (route, version) or not (user id on some roots)."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    tid = rnd.getrandbits(128).to_bytes(16, "big")
    t0 = NOW + rnd.randrange(0, 600 * SEC)
    sid = iter(range(n * 10 + 1, n * 10 + 10))
    for service, spans in (("api", [(None, "POST /predict", 2 if n % 5 else 1), (0, "GET", 3)]),
                           ("features", [(1, "GET /features", 2), (2, "lookup", 1), (0, "consume", 5)])):
        rs = req.resource_spans.add(resource=resource_pb2.Resource(attributes=[
            _kv("service.name", string_value=service), _kv("service.version", string_value=f"v{n % 2}")]))
        ss = rs.scope_spans.add()
        ss.scope.name = "test"
        for parent, name, kind in spans:
            sp = ss.spans.add(trace_id=tid, span_id=next(sid).to_bytes(8, "big"),
                              parent_span_id=b"" if parent is None else (n * 10 + 1 + parent).to_bytes(8, "big"),
                              name=name, kind=kind, start_time_unix_nano=t0 + rnd.randrange(1000),
                              end_time_unix_nano=t0 + rnd.randrange(1000, 10**9))
            sp.attributes.append(_kv("http.route", string_value=name))
            if n % 3 == 0:
                sp.attributes.append(_kv("user.id", int_value=n))  # a body of its own
            if n % 7 == 0:
                sp.status.code = 2
                sp.status.message = "boom"
                ev = sp.events.add(name="exception", time_unix_nano=t0 + 5)
                ev.attributes.append(_kv("exception.type", string_value="KeyError"))
    return req.SerializeToString()


@pytest.fixture
def mixed_store(tmp_path):
    rnd = random.Random(7)
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, [[mixed_request(rnd, n) for n in range(k, k + 60)] for k in range(0, 240, 60)])
    bs.cut(store.SPANS, 3)  # segments 1-2 -> one block
    bs.cut(store.SPANS, 4)  # segment 3 -> another; segment 4 stays in the WAL
    for n in range(240, 300):  # and more acknowledged but not cut: the WAL tail
        w.append(mixed_request(rnd, n))
    yield tmp_path, bs, w
    w.close()


def _plain(data_dir, q: TraceQuery, *, hide_sidecars: bool = False):
    if hide_sidecars:
        for ref in store.list_blocks(data_dir, store.SPANS):
            ref.entries_path.unlink(missing_ok=True)
    with EmbeddedBackend(data_dir) as b:
        return b.find_spans(q)


def test_sidecar_holds_exactly_the_entry_spans_sorted_by_start(mixed_store):
    data_dir, _, _ = mixed_store
    refs = store.list_blocks(data_dir, store.SPANS)
    assert refs
    for ref in refs:
        block = pq.read_table(ref.path)
        side = pq.read_table(ref.entries_path)
        want = sorted((r["trace_id"], r["span_id"]) for r in block.to_pylist()
                      if not r["parent_span_id"] or r["kind"] in (2, 5))
        assert sorted(zip(side.column("trace_id").to_pylist(), side.column("span_id").to_pylist())) == want
        starts = side.column("start_ns").to_pylist()
        assert starts == sorted(starts)
        assert 0 < side.num_rows < block.num_rows


@pytest.mark.parametrize("q", [
    dict(root_only=True),
    dict(root_only=True, service="api"),
    dict(root_only=True, attributes={"http.route": "POST /predict"}),
    dict(root_only=True, status="error"),
    dict(root_only=True, limit=17),
    dict(service="features"),  # not an entry query: every span
    dict(attributes={"user.id": 3}),
])
def test_read_only_and_sidecar_reads_equal_a_full_scan(mixed_store, q):
    data_dir, _, _ = mixed_store
    window = dict(start_ns=NOW + 60 * SEC, end_ns=NOW + 500 * SEC)
    q = {"limit": None, **window, **q}
    with EmbeddedBackend(data_dir) as b:
        fast = b.find_spans(TraceQuery(**q, read_only=True))
        plain = b.find_spans(TraceQuery(**q))
        assert b.search_traces(TraceQuery(**q | {"limit": 50})) is not None
    reference = _plain(data_dir, TraceQuery(**q), hide_sidecars=True)
    assert fast == plain == reference
    assert len(reference) > (0 if q.get("limit") is None else q["limit"] - 1)
    if q.get("root_only"):
        assert all(not s.parent_span_id for s in reference)


def test_read_only_spans_share_their_decoded_dicts(mixed_store):
    data_dir, _, _ = mixed_store
    with EmbeddedBackend(data_dir) as b:
        spans = b.find_spans(TraceQuery(root_only=True, limit=None, read_only=True))
    by_body = {}
    for s in spans:
        if "user.id" not in s.attributes and not s.events:
            by_body.setdefault((s.name, s.kind, s.status_code, s.service_name), []).append(s)
    group = max(by_body.values(), key=len)
    assert len(group) > 5 and all(s.attributes is group[0].attributes for s in group)


def test_a_damaged_or_missing_sidecar_only_costs_speed(mixed_store):
    data_dir, _, _ = mixed_store
    q = TraceQuery(root_only=True, limit=None)
    before = _plain(data_dir, q)
    ref = store.list_blocks(data_dir, store.SPANS)[0]
    raw = bytearray(ref.entries_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ref.entries_path.write_bytes(bytes(raw))
    with EmbeddedBackend(data_dir) as b:
        assert b.find_spans(q) == before
        assert b.find_spans(TraceQuery(root_only=True, limit=None, read_only=True)) == before
    assert _plain(data_dir, q, hide_sidecars=True) == before


@pytest.mark.parametrize("sidecar", ["entries", "errors"])
def test_sidecars_follow_their_block(mixed_store, sidecar):
    data_dir, bs, w = mixed_store
    refs = store.list_blocks(data_dir, store.SPANS)
    path_of = (lambda r: r.entries_path) if sidecar == "entries" else (lambda r: r.errors_path)
    assert all(path_of(r).exists() for r in refs)
    store.delete_block(refs[0])
    assert not path_of(refs[0]).exists()
    # a sidecar left by a writer killed before its block was renamed into place
    orphan = store.block_dir(data_dir, store.SPANS) / f"0000000000000900-0000000000000900.{sidecar}.parquet"
    orphan.write_bytes(b"PAR1")
    store.BlockStore(data_dir)
    assert not orphan.exists()


def _trace_part(tid: int, spans: list[tuple[int, int | None, int]]) -> bytes:
    """Spans (span id, parent id or None for a root, start second after NOW) of trace ``tid``."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add(resource=resource_pb2.Resource(attributes=[_kv("service.name", string_value="api")]))
    ss = rs.scope_spans.add()
    for sid, parent, t in spans:
        ss.spans.add(trace_id=tid.to_bytes(16, "big"), span_id=sid.to_bytes(8, "big"),
                     parent_span_id=b"" if parent is None else parent.to_bytes(8, "big"), name="op", kind=2,
                     start_time_unix_nano=NOW + t * SEC, end_time_unix_nano=NOW + t * SEC + 1000)
    return req.SerializeToString()


@pytest.mark.parametrize("window", [(None, None), (0, 400), (-50, 1000), (0, 150), (100, 200), (125, 255),
                                    (255, 300), (500, 600)])
@pytest.mark.parametrize("ids", ["random", "shared prefix"])
def test_rootless_trace_ids_over_whole_blocks_equal_the_aggregate_over_spans(tmp_path, monkeypatch, window, ids):
    """The embedded store's rootless-trace ids take whole blocks' traces from their id
    sidecars and the rooted ones from the entry sidecars: the same ids as grouping every
    span of the window, with traces spread over blocks (rooted in another block, rootless
    in two), a root before the window, and the WAL tail; and when the ids' first 8 bytes
    are alike (64-bit ids padded with zeros) too, where the prefixes cannot stand for them."""
    from stagetrace.backend import rootless_trace_ids
    from stagetrace.collector import query

    # a handful of roots, not 10,000: from two on, prefixes stand for traces if no two share one
    monkeypatch.setattr(query, "_PREFIX_ROOTS", 2)
    took: list[int] = []
    monkeypatch.setattr(query, "_missing", lambda a, present: took.append(1) or a[query._missing_mask(a, present)])
    rnd = random.Random(5)
    A, B, C, D, E, F, G, H = (rnd.getrandbits(128) if ids == "random" else k + 1 for k in range(8))
    segments = [
        [_trace_part(A, [(1, None, 10), (2, 1, 20)]), _trace_part(B, [(2, 1, 30)]), _trace_part(C, [(2, 1, 40)]),
         _trace_part(E, [(1, None, -20), (2, 1, 50)])],
        [_trace_part(D, [(2, 1, 120), (3, 1, 130)]), _trace_part(B, [(3, 1, 160)])],
        [_trace_part(F, [(1, None, 250)]), _trace_part(C, [(1, None, 150)])],  # C's root: a block of roots only
        [_trace_part(G, [(2, 1, 260)]), _trace_part(H, [(2, 1, 280)]), _trace_part(A, [(3, 1, 290)])],
    ]
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, segments)
    for seq in (2, 3, 4):  # one block per segment; the fourth stays in the WAL
        bs.cut(store.SPANS, seq)
    w.close()
    assert len(store.list_blocks(tmp_path, store.SPANS)) == 3
    lo, hi = window
    q = TraceQuery(start_ns=None if lo is None else NOW + lo * SEC, end_ns=None if hi is None else NOW + hi * SEC,
                   limit=None)
    with EmbeddedBackend(tmp_path) as b:
        fast = b.rootless_trace_ids(q)
        plain = type("SpansOnly", (), {"find_spans": staticmethod(b.find_spans)})()
        assert fast == rootless_trace_ids(plain, q)
        assert b.rootless_trace_ids(dataclasses.replace(q, limit=2)) == fast[:2]
    if window == (None, None):
        assert fast == sorted(f"{t:032x}" for t in (B, D, G, H))
        assert bool(took) == (ids == "random"), "whole blocks by their prefixes only where those are distinct"
