"""One-query samples of the embedded store, for the search page and the service map.

Why this exists: the :class:`~stagetrace.backend.Backend` interface answers
"matching spans, oldest first, up to a limit". A plot needs a sample *spread over
the window* plus its slow tail, and every query costs one scan of the window's
index columns (~0.1 s at 1M spans on a quiet core, ~0.3 s on a loaded one), so the
portable method (:mod:`.api`: a query per time slice) cannot answer in under a
second at that size. Here the whole sample is one DuckDB statement over the same
blocks + WAL tail the backend reads, using the embedded backend's own SQL runner,
WHERE builder and span decoder, so filters mean exactly what ``find_spans``
makes them mean.

This leans on three private methods of ``stagetrace.collector.query.EmbeddedBackend``
(``_span_where``, ``_sql``, ``_spans``); :func:`embedded_store` returns ``None``
when they are missing, and callers fall back to the portable method. The UI tests
assert the fast path is taken, so a change there shows up as a test failure, not
as a silently slow page. (The lasting fix is a sampling option in the Backend
interface, owned by the collector.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stagetrace.backend import Backend, TraceQuery
from stagetrace.model import Span

SPANS = "spans"
SERVER, CONSUMER = 2, 5  # OTLP SpanKind codes, as the store's kind column holds them
STATUS_ERROR = 2  # OTLP StatusCode
_REQUIRED = ("_span_where", "_sql", "_spans")
HASH_MOD = 1_000_000


def embedded_store(backend: Backend) -> Any | None:
    """The EmbeddedBackend under ``backend`` (itself, or a ServedBackend's local reader), else None."""
    try:
        from stagetrace.collector.query import EmbeddedBackend
    except ImportError:  # pragma: no cover - the collector is part of the package
        return None
    store: Any = backend
    if not isinstance(store, EmbeddedBackend):
        local = getattr(backend, "_store", None)
        store = local() if callable(local) else None
    if isinstance(store, EmbeddedBackend) and all(hasattr(store, m) for m in _REQUIRED):
        return store
    return None


def spread_sample(store: Any, query: TraceQuery, *, entry: str, buckets: int, per_bucket: int,
                  slowest_per_bucket: int) -> tuple[list[dict[str, Any]], int | None, tuple[int, int] | None]:
    """Plot points for the spans matching ``query`` in its window: in each of
    ``buckets`` equal time buckets, ``per_bucket`` chosen at random (by span id hash:
    stable across reloads) plus the ``slowest_per_bucket`` slowest. Returns (points
    oldest first, number of matching spans in the window or None when unknown, the
    first and last start time of the matching spans in ns, or None when none match;
    with attribute conditions, of the rows that pass the byte prefilter: never narrower).

    ``entry``: ``root`` (trace roots), ``entry`` (roots and SERVER/CONSUMER spans: a
    service's requests, whether a client or another service called it) or ``span``
    (any matching span).

    Without attribute conditions only the index columns are read: one fast scan, no
    decoding. Attribute values live in each span's stored protobuf, so with them the
    SQL keeps the rows whose stored bytes contain the key (and a string value's text:
    a necessary condition, see :func:`_prefilter`), samples those, and the decoded
    spans are then checked exactly; the matching total is then unknown."""
    q = TraceQuery(service=query.service, span_name=query.span_name, status=query.status,
                   min_duration_ns=query.min_duration_ns, max_duration_ns=query.max_duration_ns,
                   attributes=dict(query.attributes), start_ns=query.start_ns, end_ns=query.end_ns,
                   root_only=entry == "root", limit=None)
    where, params, attrs = store._span_where(q)
    params = list(params)
    if entry == "entry":
        where = where + [f"(octet_length(parent_span_id) = 0 OR kind IN ({SERVER}, {CONSUMER}))"]
    for k, v in attrs.items():
        for text in _prefilter(k, v):
            where = where + ["(contains(CAST(rest AS VARCHAR), ?) OR contains(CAST(resource AS VARCHAR), ?))"]
            params += [text, text]
    start, end = int(query.start_ns), int(query.end_ns)
    width = max(1, (end - start) // max(1, buckets))
    bucket = f"((start_ns - {start}) // {width})"
    qualify = (f"QUALIFY row_number() OVER (PARTITION BY {bucket} ORDER BY hash(span_id)) <= {int(per_bucket)} "
               f"OR row_number() OVER (PARTITION BY {bucket} ORDER BY duration_ns DESC) <= {int(slowest_per_bucket)}")
    points: list[dict[str, Any]] = []
    total: int | None = 0
    # the window aggregates see every row the WHERE keeps (QUALIFY samples after them)
    span_of_rows = "min(start_ns) OVER () AS first_start, max(start_ns) OVER () AS last_start"
    extent: tuple[int, int] | None = None
    if attrs:
        from stagetrace.backend import attributes_match
        total = None
        # the extent of the rows that pass the byte prefilter: a superset of the matches
        for batch in store._sql(SPANS, "*, " + span_of_rows, where, params, qualify, entries=entry != "span"):
            if batch.num_rows:
                first, last = batch.column("first_start")[0].as_py(), batch.column("last_start")[0].as_py()
                extent = (int(first), int(last))
            for sp in store._spans(batch):
                if attributes_match(attrs, sp.attributes, sp.resource):
                    points.append({"trace_id": sp.trace_id, "span_id": sp.span_id, "service": sp.service_name,
                                   "name": sp.name, "start_ms": sp.start_ns / 1e6,
                                   "duration_ms": sp.duration_ns / 1e6, "error": sp.is_error})
        points.sort(key=lambda p: (p["start_ms"], p["span_id"]))
        return points, total, extent if points else None
    cols = ("trace_id, span_id, name, service, start_ns, duration_ns, status_code, count(*) OVER () AS matched_total, "
            + span_of_rows)
    for batch in store._sql(SPANS, cols, where, params, qualify, entries=entry != "span"):
        if not batch.num_rows:
            continue
        d = batch.to_pydict()
        total = int(d["matched_total"][0])
        extent = (int(d["first_start"][0]), int(d["last_start"][0]))
        for tid, sid, name, svc, st, dur, code in zip(d["trace_id"], d["span_id"], d["name"], d["service"],
                                                        d["start_ns"], d["duration_ns"], d["status_code"]):
            points.append({"trace_id": tid.hex(), "span_id": sid.hex(), "service": svc, "name": name,
                           "start_ms": st / 1e6, "duration_ms": dur / 1e6, "error": code == STATUS_ERROR})
    points.sort(key=lambda p: (p["start_ms"], p["span_id"]))
    return points, total, extent


def _prefilter(key: str, value: Any) -> list[str]:
    """Texts that must occur in a span's stored bytes (its attributes or its resource's,
    as protobuf, read by DuckDB as text: printable ASCII stays as is) for it to match
    ``key=value``. The key always, when it is printable ASCII. The value only when it is
    printable ASCII and can only equal a *string* attribute: attribute equality is by
    text (backend.value_equals), so "500" or "true" may match an int or a bool, which
    protobuf does not store as text."""
    out = [key] if _plain(key) else []
    text = str(value)
    if _plain(text) and text.lower() not in ("true", "false"):
        try:
            float(text)
        except ValueError:
            out.append(text)
    return out


def _plain(text: str) -> bool:
    return bool(text) and all(" " <= c <= "~" for c in text) and "\\" not in text


def trace_sample(store: Any, start_ns: int, end_ns: int, max_traces: int) -> tuple[list[MapSpan], float]:
    """Every span of about ``max_traces`` whole traces started in the window, chosen by
    trace id hash (a trace's spans come together, so parent/child pairs are kept), read
    from the index columns only. Returns (spans, the fraction of traces sampled)."""
    where = ["start_ns >= ?", "start_ns < ?"]
    params: list[Any] = [int(start_ns), int(end_ns)]
    n = 0
    for batch in store._sql(SPANS, "count(*) AS n", where + ["octet_length(parent_span_id) = 0"], params,
                            entries=True):
        n = int(batch.column("n")[0].as_py()) if batch.num_rows else 0
    if n == 0:
        return [], 1.0
    keep = min(HASH_MOD, max(1, HASH_MOD * max_traces // n))
    cond = where + [f"hash(trace_id) % {HASH_MOD} < {keep}"] if keep < HASH_MOD else where
    out: list[MapSpan] = []
    for batch in store._sql(SPANS, "trace_id, span_id, parent_span_id, service, duration_ns, status_code", cond, params):
        d = batch.to_pydict()
        out.extend(MapSpan(t, s, p, svc, dur, code == STATUS_ERROR) for t, s, p, svc, dur, code in zip(
            d["trace_id"], d["span_id"], d["parent_span_id"], d["service"], d["duration_ns"], d["status_code"]))
    return out, keep / HASH_MOD


class MapSpan(NamedTuple):
    """What the service map needs of a span (ids in any consistent form)."""

    trace_id: Any
    span_id: Any
    parent_span_id: Any  # empty for a root
    service: str
    duration_ns: int
    is_error: bool

    @classmethod
    def of(cls, s: Span) -> "MapSpan":
        return cls(s.trace_id, s.span_id, s.parent_span_id, s.service_name, s.duration_ns, s.is_error)
