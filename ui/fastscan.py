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

from typing import Any, Callable, NamedTuple

import pyarrow as pa

from stagetrace.backend import Backend, TraceQuery
from stagetrace.collector.store import SPAN_SCHEMA
from stagetrace.model import Span

SPANS = "spans"
SERVER, CONSUMER = 2, 5  # OTLP SpanKind codes, as the store's kind column holds them
STATUS_ERROR = 2  # OTLP StatusCode
_REQUIRED = ("_span_where", "_sql", "_sql_many", "_spans", "_view", "_retry", "con")
# Above this many candidate rows (rows of the window a full answer would read) the plot is
# drawn from a sample of whole row groups of the span blocks: a block is sorted by trace id,
# so each of its row groups is a random set of traces spread over the block's time range.
SCAN_BUDGET_ROWS = 1_500_000
ATTR_SCAN_BUDGET_ROWS = 500_000  # with attribute conditions every stored body is read: ~0.6 us a row
SAMPLE_ROWS = 150_000  # block rows read for that sample (~20k requests of a 10M-span hour)
SAMPLE_MIN_MATCHES = 100_000  # fewer matching rows: read them all (cheaper than the sample, and exact)
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


def warm(store: Any) -> None:
    """Do now what the first search of a process would: open (and verify) every span
    block, read the row-group start ranges of the blocks and their sidecars, import
    and connect DuckDB and let it read the sidecars' footers.

    Why: the UI is started before someone opens the page, and the first search paid
    all of this (~1 s of CPU at 10M spans; 2.6 s of wall on a quiet machine in session
    7, when the store's files were not in the page cache). Run on the UI's start, in
    the background, under the same lock as a search."""
    def run() -> None:
        for b in store._view(SPANS).blocks:
            b.start_ranges()
            for entries, errors in ((True, False), (False, True)):
                path, sidecar = b.source(entries, errors)
                if sidecar:
                    b.start_ranges(path)
        for entries, errors in ((True, False), (False, True)):
            list(store._sql(SPANS, "count(*)", ["start_ns < 0"], [], entries=entries, errors=errors))
    store._retry(run)


class Sample(NamedTuple):
    """What :func:`spread_sample` answers."""

    points: list[dict[str, Any]]  # the plot's sample, oldest first
    total: int | None  # matching spans in the window; None when unknown (attribute filters)
    extent: tuple[int, int] | None  # first and last start (ns) of the matches (see spread_sample)
    newest: list[dict[str, Any]]  # the newest matching spans, newest first (exact unless newest_exact is False)
    read_fraction: float = 1.0  # < 1: the points come from this fraction of the window's rows
    newest_exact: bool = True
    total_estimated: bool = False  # total scaled up from the sample


def spread_sample(store: Any, query: TraceQuery, *, entry: str, buckets: int, per_bucket: int,
                  slowest_per_bucket: int, newest: int = 0) -> Sample:
    """Plot points for the spans matching ``query`` in its window: in each of
    ``buckets`` equal time buckets, ``per_bucket`` chosen at random (by span id hash:
    stable across reloads) plus the ``slowest_per_bucket`` slowest; also the ``newest``
    newest matching spans, exactly (the result list, as Jaeger and Tempo answer a search).
    The matching total and the first and last start time of the matching spans come
    with them (with attribute conditions: the total is unknown and the extent is that
    of the rows that pass the byte prefilter, never narrower).

    ``entry``: ``root`` (trace roots), ``entry`` (roots and SERVER/CONSUMER spans: a
    service's requests, whether a client or another service called it) or ``span``
    (any matching span).

    Why a GROUP BY and not a window: ranking every matching row per bucket (``QUALIFY
    row_number() OVER ...``) sorts all of them, 2-3x the CPU of this at 10M spans;
    ``min_by``/``max_by`` with a count keep a small heap per bucket in one streaming
    pass. The newest come from the same pass or from a top-N statement over the same
    snapshot, whichever reads less (see the comment in the code).

    Over a window holding more than SCAN_BUDGET_ROWS candidate rows (ATTR_SCAN_BUDGET_ROWS
    with attribute conditions), the plot is drawn from a row-group sample instead
    (:func:`_row_group_sample`; ``read_fraction`` says how much was read): always with
    attribute conditions (then the newest are the sample's own, ``newest_exact`` False),
    and otherwise when more than SAMPLE_MIN_MATCHES rows match, counted exactly first
    (so the total, the extent and the newest stay exact).

    Without attribute conditions only the index columns are read, and nothing is
    decoded. Attribute values live in each span's stored protobuf, so with them the
    SQL keeps the rows whose stored bytes contain the key (and a string value's text:
    a necessary condition, see :func:`_prefilter`), samples those, and the decoded
    spans are then checked exactly."""
    q = TraceQuery(service=query.service, span_name=query.span_name, status=query.status,
                   min_duration_ns=query.min_duration_ns, max_duration_ns=query.max_duration_ns,
                   attributes=dict(query.attributes), start_ns=query.start_ns, end_ns=query.end_ns,
                   root_only=entry == "root", limit=None)
    where, params, attrs = store._span_where(q)
    params = list(params)
    # only spans with ERROR status can match: read the blocks' error sidecars (or the
    # entry sidecars, whichever is smaller) instead of every entry span
    from stagetrace.collector.query import _errors_only
    errors = _errors_only(q)
    if entry == "entry":
        where = where + [f"(octet_length(parent_span_id) = 0 OR kind IN ({SERVER}, {CONSUMER}))"]
    for k, v in attrs.items():
        for text in _prefilter(k, v):
            where = where + ["(contains(CAST(rest AS VARCHAR), ?) OR contains(CAST(resource AS VARCHAR), ?))"]
            params += [text, text]
    start, end = int(query.start_ns), int(query.end_ns)
    width = max(1, (end - start) // max(1, buckets))
    cols = _SAMPLE_COLUMNS + (_DECODE_COLUMNS if attrs else ())
    row = "struct_pack(" + ", ".join(f"{c} := {c}" for c in cols) + ")"
    grouped = (f"count(*) AS n, min(start_ns) AS first_start, max(start_ns) AS last_start, "
               f"min_by({row}, hash(span_id), {int(per_bucket)}) AS picked, "
               f"max_by({row}, duration_ns, {int(slowest_per_bucket)}) AS slowest")
    bucket = f"((start_ns - {start}) // {width})"
    counted: list[tuple[int, int | None, int | None]] = []

    def worth_sampling() -> bool:
        """Over a big window: with attribute conditions always (their exact scan decodes
        every body); else only when many rows match, counted exactly first (a cheap scan
        of the filter columns: a selective filter's exact answer is cheaper than a sample)."""
        if attrs:
            return True
        batches = [b for b in store._sql(SPANS, "count(*) AS n, min(start_ns) AS a, max(start_ns) AS z", where,
                                          params, entries=entry != "span", errors=errors) if b.num_rows]
        d = batches[0].to_pydict() if batches else {"n": [0], "a": [None], "z": [None]}
        counted.append((int(d["n"][0]), d["a"][0], d["z"][0]))
        return counted[0][0] > SAMPLE_MIN_MATCHES

    sampled = _row_group_sample(store, entry != "span", errors, start, end, cols + ("parent_span_id", "kind"),
                                ATTR_SCAN_BUDGET_ROWS if attrs else SCAN_BUDGET_ROWS, worth_sampling, attrs)
    if sampled is not None:
        got_sample = _from_rows(store, sampled, grouped, bucket, where, params, entry, attrs, newest)
        if attrs:
            return got_sample
        n, first_start, last_start = counted[0]
        # the total, the extent and the newest are exact still: the newest are a top-N over
        # the start-sorted entry sidecars, which reads their newest row groups only
        order = f"ORDER BY start_ns DESC, span_id DESC LIMIT {int(newest)}"
        rows = [p for batch in (store._sql(SPANS, ", ".join(cols), where, params, order,
                                           entries=entry != "span", errors=errors) if newest > 0 else [])
                for p in _index_points(batch)]
        return got_sample._replace(total=n, extent=(int(first_start), int(last_start)) if n else None, newest=rows,
                                   newest_exact=True, total_estimated=False)
    # The newest: with a selective condition (or an attribute, whose rows come from whole
    # blocks, not the time-sorted sidecars) they ride along in the same pass, as the
    # grand-total grouping set; DuckDB's top-N statement reads files oldest first and only
    # prunes once it holds N rows, so under a selective filter it reads nearly everything
    # again (2x the CPU at 10M). Unfiltered, the top-N fills at once and skips the rest,
    # while max_by over time-sorted rows would push every row through its heap (2x at 1.4M).
    selective = bool(attrs) or any(x is not None for x in (q.status, q.span_name, q.min_duration_ns,
                                                          q.max_duration_ns))
    statements = [(grouped + f", max_by({row}, (start_ns, span_id), {max(1, int(newest))}) AS newest, "
                   f"grouping({bucket}) AS whole", f"GROUP BY GROUPING SETS (({bucket}), ())")] if selective else [
        (grouped + f", NULL AS newest, 0 AS whole", f"GROUP BY {bucket}"),
        (", ".join(cols), f"ORDER BY start_ns DESC, span_id DESC LIMIT {max(1, int(newest))}")]
    got = store._sql_many(SPANS, statements, where, params, entries=entry != "span", errors=errors)
    total, first, last = 0, None, None
    parts = []
    candidates = None
    for batch in got[0]:
        if not batch.num_rows:
            continue
        whole = batch.column("whole").to_pylist()
        if any(whole):
            lst = batch.column("newest")[whole.index(1)]
            candidates = pa.Table.from_struct_array(lst.values) if lst.is_valid else None
        batch = batch.filter(pa.array([w == 0 for w in whole]))
        if not batch.num_rows:
            continue
        d = batch.select(["n", "first_start", "last_start"]).to_pydict()
        total += sum(d["n"])
        first = min([first, *d["first_start"]] if first is not None else d["first_start"])
        last = max([last, *d["last_start"]] if last is not None else d["last_start"])
        for name in ("picked", "slowest"):
            parts.append(batch.column(name).flatten())
    extent = (int(first), int(last)) if first is not None else None
    picked = pa.Table.from_struct_array(pa.concat_arrays(parts)) if parts else None
    ordered = None
    if newest > 0 and candidates is not None:
        import pyarrow.compute as pc
        ordered = candidates.take(pc.sort_indices(candidates, [("start_ns", "descending"), ("span_id", "descending")]))
    if attrs:
        points = _checked_points(store, picked, attrs) if picked is not None else []
        rows = []
        if ordered is not None:
            rows = _checked_points(store, ordered, attrs)[:newest]
            if len(rows) < newest and candidates.num_rows >= newest:  # the prefilter let non-matches through
                rows = _newest_checked(store, where, params, attrs, entry, newest, errors)
        points.sort(key=lambda p: (p["start_ms"], p["span_id"]))
        return Sample(points, None, extent if points else None, rows)
    points = _unique(_index_points(picked)) if picked is not None else []
    points.sort(key=lambda p: (p["start_ms"], p["span_id"]))
    if not selective:
        ordered = pa.Table.from_batches(got[1]) if got[1] else None
    rows = _index_points(ordered)[:newest] if ordered is not None and newest > 0 else []
    return Sample(points, total, extent, rows)


class _Rows(NamedTuple):
    blocks: pa.Table  # the sampled row groups
    tail: pa.Table  # the write-ahead log's rows, sampled alike
    fraction: float  # of the window's candidate rows
    extent: tuple[int, int] | None  # the sampled sources' row-group start range, clipped to the window


def _row_group_sample(store: Any, entries: bool, errors: bool, start: int, end: int, columns: tuple[str, ...], budget: int,
                      worth_it: Callable[[], bool], attrs: dict[str, Any] | None = None) -> _Rows | None:
    """Evenly spaced row groups of every span block that overlap the window, about
    SAMPLE_ROWS rows in all, when a full answer would read more than ``budget`` rows
    (entry sidecars when ``entries``) and ``worth_it()``; None otherwise. With ``attrs``
    only the rows that pass their byte prefilter are kept (:func:`_prefiltered`),
    matched on each row group's dictionary of bodies as it is read."""
    cols = list(dict.fromkeys(columns))

    def run() -> _Rows | None:
        view = store._view(SPANS)
        candidates = 0
        overlapping: list[tuple[Any, list[int], int]] = []
        lo = hi = None
        for b in view.blocks:
            rgs, rows, span = _overlap(b.start_ranges(), start, end)
            overlapping.append((b, rgs, rows))
            if span is not None:
                lo, hi = (span if lo is None else (min(lo, span[0]), max(hi, span[1])))
            path, sidecar = b.source(entries, errors)
            candidates += _overlap(b.start_ranges(path), start, end)[1] if sidecar else rows
        candidates += view.tail.num_rows
        if candidates <= budget or not worth_it():
            return None
        block_rows = sum(r for _, _, r in overlapping) + view.tail.num_rows
        fraction = min(1.0, SAMPLE_ROWS / max(1, block_rows))
        schema = pa.schema([SPAN_SCHEMA.field(c) for c in cols])
        parts = []
        read = 0
        for b, rgs, _ in overlapping:
            k = max(1, round(len(rgs) * fraction))
            pick = sorted({rgs[int(j * len(rgs) / k)] for j in range(k)}) if rgs else []
            if pick:
                # with attributes: bodies as dictionaries, prefiltered before anything is
                # materialised (a fresh 10-30 MB per search cost more in page faults than
                # in matching: docs/benchmarks.md, issue 19 session 8)
                got = (b.bodies_file() if attrs else b.pf).read_row_groups(pick, columns=cols)
                read += got.num_rows
                parts.append((_prefiltered(got, attrs) if attrs else got).cast(schema))
        tail = view.tail.select(cols)
        step = max(1, round(1 / fraction))
        tail = tail.take(pa.array(range(0, tail.num_rows, step), pa.int64())) if tail.num_rows else tail
        read += tail.num_rows
        blocks = pa.concat_tables(parts) if parts else schema.empty_table()
        if tail.num_rows:  # the write-ahead log's rows have no statistics: their own first and last start
            import pyarrow.compute as pc
            ts = view.tail.column("start_ns")
            ts = ts.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, end)))
            if len(ts):
                lo = min(lo, pc.min(ts).as_py()) if lo is not None else pc.min(ts).as_py()
                hi = max(hi, pc.max(ts).as_py()) if hi is not None else pc.max(ts).as_py()
        ext = (max(start, lo), min(end - 1, hi)) if lo is not None else None
        tail = _prefiltered(tail, attrs) if attrs else tail
        return _Rows(blocks, tail.cast(schema), read / max(1, block_rows), ext)
    return store._retry(run)


def _overlap(ranges: tuple[Any, Any, Any], start: int, end: int) -> tuple[list[int], int, tuple[int, int] | None]:
    """(row groups whose start times meet [start, end), their rows, their first and
    last start time), given each row group's (first start, last start, rows) as
    :meth:`_Block.start_ranges <stagetrace.collector.query._Block.start_ranges>` keeps them."""
    lo, hi, rows = ranges
    hit = (hi >= start) & (lo < end)
    if not hit.any():
        return [], 0, None
    return hit.nonzero()[0].tolist(), int(rows[hit].sum()), (int(lo[hit].min()), int(hi[hit].max()))


def _from_rows(store: Any, rows: _Rows, grouped: str, bucket: str, where: list[str], params: list[Any], entry: str,
               attrs: dict[str, Any], newest: int) -> Sample:
    """:func:`spread_sample`'s statement over a row-group sample: the points, the total
    scaled up from the sample (None with attribute conditions), the newest points of the
    sample (not exact)."""
    from stagetrace.collector.store import ENTRY_SQL
    cond = list(where) + ([ENTRY_SQL] if entry != "span" else [])
    con = store.con  # with attributes, rows were prefiltered as they were read (see _row_group_sample)
    con.register("ui_sample_blocks", rows.blocks)
    con.register("ui_sample_tail", rows.tail)
    try:
        sql = (f"SELECT {grouped} FROM (SELECT * FROM ui_sample_blocks "
               f"UNION ALL SELECT * FROM ui_sample_tail) WHERE {' AND '.join(cond) or 'TRUE'} GROUP BY {bucket}")
        got = con.sql(sql, params=params).to_arrow_table()
    finally:
        con.unregister("ui_sample_blocks")
        con.unregister("ui_sample_tail")
    got = got.combine_chunks() if hasattr(got, "combine_chunks") else got
    n = sum(got.column("n").to_pylist()) if got.num_rows else 0
    parts = [got.column(c).combine_chunks().flatten() for c in ("picked", "slowest")] if got.num_rows else []
    picked = pa.Table.from_struct_array(pa.concat_arrays(parts)) if parts else None
    if attrs:
        points = _checked_points(store, picked, attrs) if picked is not None else []
    else:
        points = _unique(_index_points(picked)) if picked is not None else []
    points.sort(key=lambda p: (p["start_ms"], p["span_id"]))
    total = None if attrs else round(n / rows.fraction)
    recent = sorted(points, key=lambda p: (-p["start_ms"], p["span_id"]))[:newest]
    return Sample(points, total, rows.extent if points else None, recent, read_fraction=rows.fraction,
                  newest_exact=False, total_estimated=total is not None)


def _prefiltered(t: pa.Table, attrs: dict[str, Any]) -> pa.Table:
    """The rows of ``t`` whose stored span or resource bytes hold every text of
    :func:`_prefilter`, matched on the raw bytes in Arrow.

    Why: the SQL's ``contains(CAST(rest AS VARCHAR), ...)`` makes DuckDB render every
    row's protobuf as escaped text first; over a 150k-row sample that was half of an
    attribute search (0.47 of 0.93 s at 1.4M spans). On the raw bytes the condition is
    the same necessary one (the texts are printable ASCII without backslashes), and
    the SQL then runs over the few rows that pass. Bodies and resources repeat (a
    span's body holds no ids or times): each distinct value is matched once, on the
    column's own dictionaries when it was read as one, and the answer spread over the rows."""
    import pyarrow.compute as pc

    if not t.num_rows:
        return t
    columns = [_as_dictionaries(t.column(c)) for c in ("rest", "resource")]
    mask = None
    for k, v in attrs.items():
        for text in _prefilter(k, v):
            hit = None
            for chunks in columns:
                one = pa.chunked_array([pc.take(pc.match_substring(ch.dictionary, text), ch.indices)
                                        for ch in chunks], pa.bool_())
                hit = one if hit is None else pc.or_(hit, one)
            mask = hit if mask is None else pc.and_(mask, hit)
    return t if mask is None else t.filter(mask)


def _as_dictionaries(col: pa.ChunkedArray) -> list[pa.DictionaryArray]:
    """``col``'s chunks as dictionary arrays: as they are when read as dictionaries,
    else the whole column encoded once."""
    if pa.types.is_dictionary(col.type):
        return list(col.chunks)
    return [col.combine_chunks().dictionary_encode()]


def _unique(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in points:
        if (p["trace_id"], p["span_id"]) not in seen:  # a bucket's slowest may also be among its picks
            seen.add((p["trace_id"], p["span_id"]))
            out.append(p)
    return out


# what a plot point needs of a span; and what decoding one into a Span needs besides
_SAMPLE_COLUMNS = ("trace_id", "span_id", "name", "service", "start_ns", "duration_ns", "status_code")
_DECODE_COLUMNS = ("parent_span_id", "kind", "rest", "resource", "scope")


def _index_points(rows: Any) -> list[dict[str, Any]]:
    d = rows.to_pydict()
    return [{"trace_id": tid.hex(), "span_id": sid.hex(), "service": svc, "name": name, "start_ms": st / 1e6,
             "duration_ms": dur / 1e6, "error": code == STATUS_ERROR}
            for tid, sid, name, svc, st, dur, code in zip(d["trace_id"], d["span_id"], d["name"], d["service"],
                                                          d["start_ns"], d["duration_ns"], d["status_code"])]


def _span_point(sp: Span) -> dict[str, Any]:
    return {"trace_id": sp.trace_id, "span_id": sp.span_id, "service": sp.service_name, "name": sp.name,
            "start_ms": sp.start_ns / 1e6, "duration_ms": sp.duration_ns / 1e6, "error": sp.is_error}


def _checked_points(store: Any, rows: Any, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoded spans of ``rows`` that match ``attrs`` exactly, once each."""
    from stagetrace.backend import attributes_match
    out, seen = [], set()
    for sp in store._spans(rows):
        if (sp.trace_id, sp.span_id) not in seen and attributes_match(attrs, sp.attributes, sp.resource):
            seen.add((sp.trace_id, sp.span_id))
            out.append(_span_point(sp))
    return out


def _newest_checked(store: Any, where: list[str], params: list[Any], attrs: dict[str, Any], entry: str,
                    newest: int, errors: bool) -> list[dict[str, Any]]:
    """The ``newest`` newest spans that match ``attrs`` exactly: the newest rows that pass
    the byte prefilter, checked after decoding, read again with a doubled limit while
    the prefilter let through rows that do not match and more rows remain."""
    cols = ", ".join(_SAMPLE_COLUMNS + _DECODE_COLUMNS)
    limit = newest
    while True:
        order = f"ORDER BY start_ns DESC, span_id DESC LIMIT {int(limit)}"
        batches = list(store._sql(SPANS, cols, where, params, order, entries=entry != "span",
                                  errors=errors))
        read = sum(b.num_rows for b in batches)
        out = [p for b in batches for p in _checked_points(store, b, attrs)]
        if len(out) >= newest or read < limit:
            return out[:newest]
        limit *= 4


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
