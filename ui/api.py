"""What the UI's JSON endpoints compute, over any :class:`stagetrace.backend.Backend`.

Why bounded samples: the Backend answers "every matching span" by decoding each
one (``find_spans(limit=None)`` reads ~200k requests of a 1M-span hour in ~4 s),
which is fine for an investigation but not for a search page that must answer in
under a second. So the plot is a sample spread over the window that always keeps
each moment's slowest requests (the dots people want to brush). On the embedded
store it is one SQL statement (:mod:`.fastscan`: 60 time buckets x 20 random + 5
slowest, one streaming pass) and the result list is the newest
:data:`MAX_RESULT_ROWS` matching requests, exactly (a top-N over the start-sorted
entry sidecars, as Jaeger and Tempo answer a search with the newest N); over a
window too big to read in full (:data:`.fastscan.SCAN_BUDGET_ROWS`) the plot is
drawn from evenly spaced row groups, and the page says which share of the rows it
read. Elsewhere the portable method here: at most :data:`POINT_BUDGET` requests
over :data:`SLICES` slices, then the slow tail of the busy slices, and the result list
is the newest of those (``newest_exact`` false). The page says how many points it
shows and how many matched.

A request is what ``investigate slow`` calls one (forensics/window.py): a
trace's root span; with a service filter, that service's entry spans (its roots
and SERVER/CONSUMER spans). Filtering on an operation or an attribute plots the
matching spans themselves. On Tempo (``--backend grafana``) a point is a trace
(Tempo's search summaries: root service and name, trace duration), as in Jaeger.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from stagetrace import semconv
from stagetrace.backend import Backend, TraceQuery
from stagetrace.config import normalize_trace_id, parse_duration_ns, parse_time_ns
from stagetrace.errors import UserError
from stagetrace.model import Span, TraceSummary

POINT_BUDGET = 1200  # requests plotted per search (plus the slow tail of busy slices)
SLICES = 12
MAP_SPANS_PER_SLICE = 2500  # spans read per slice for the service map
MAP_SLICES = 8
MAP_TRACES_PER_SLICE = 20  # remote backends: whole traces per slice
MAX_RESULT_ROWS = 300  # rows of the result list (the plot has every point)
DEFAULT_SINCE = "1h"
MAX_WINDOW_NS = 31 * 86_400_000_000_000
_ENTRY_KINDS = ("SERVER", "CONSUMER")
_ENTRY_KIND_CODES = (2, 5)  # OTLP SpanKind of SERVER, CONSUMER (the store's kind column)
FAST_BUCKETS = 60  # the embedded store's one-query sample: 60 time buckets of
FAST_PER_BUCKET = 20  # 20 random requests
FAST_SLOWEST_PER_BUCKET = 5  # plus the 5 slowest
MAP_TRACES = 3000  # the embedded store's map: whole traces sampled by trace id


@dataclass(slots=True)
class SearchFilters:
    """The search form; every field also lives in the page URL (see :meth:`to_query`)."""

    start_ns: int
    end_ns: int
    service: str | None = None
    operation: str | None = None
    route: str | None = None
    status: str | None = None  # error | ok | unset
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        a: dict[str, Any] = dict(self.attributes)
        if self.route:
            a[semconv.HTTP_ROUTE] = self.route
        return a


def _one(params: Mapping[str, Sequence[str]], key: str) -> str | None:
    v = params.get(key)
    if not v:
        return None
    s = v[-1].strip()
    return s or None


def _duration(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration_ns(text, default_unit="ms")
    except UserError:
        raise UserError(f"invalid {what} {text!r}: use e.g. 250ms, 1.5s or a number of milliseconds") from None


def parse_filters(params: Mapping[str, Sequence[str]], now_ns: int | None = None) -> SearchFilters:
    """The URL query of the search page -> filters; a bad value raises :class:`UserError` (HTTP 400)."""
    now_ns = now_ns or time.time_ns()
    since, frm, to = _one(params, "since"), _one(params, "from"), _one(params, "to")
    if frm:
        start = parse_time_ns(frm, "from")
        end = parse_time_ns(to, "to") if to else now_ns
    else:
        if to:
            raise UserError("'to' needs 'from'")
        end = now_ns
        start = end - _duration(since or DEFAULT_SINCE, "since")  # type: ignore[operator]
    if start >= end:
        raise UserError("the time range is empty: 'from' must be before 'to'")
    if end - start > MAX_WINDOW_NS:
        raise UserError("the time range is longer than 31 days")
    status = _one(params, "status")
    if status is not None:
        status = status.lower()
        if status not in ("error", "ok", "unset"):
            raise UserError(f"invalid status {status!r}: use error, ok or unset")
    attrs: dict[str, str] = {}
    for raw in params.get("attr", []):
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise UserError(f"invalid attribute filter {item!r}: use key=value")
            attrs[k.strip()] = v.strip()
    f = SearchFilters(start_ns=start, end_ns=end, service=_one(params, "service"),
                      operation=_one(params, "operation"), route=_one(params, "route"), status=status,
                      min_duration_ns=_duration(_one(params, "min"), "min duration"),
                      max_duration_ns=_duration(_one(params, "max"), "max duration"), attributes=attrs)
    if f.min_duration_ns is not None and f.max_duration_ns is not None and f.min_duration_ns > f.max_duration_ns:
        raise UserError("the minimum duration is above the maximum")
    return f


def _query(f: SearchFilters, start: int, end: int, limit: int | None, *, root_only: bool,
           min_ns: int | None = None) -> TraceQuery:
    lo = f.min_duration_ns if min_ns is None else max(min_ns, f.min_duration_ns or 0)
    return TraceQuery(service=f.service, span_name=f.operation, status=f.status, min_duration_ns=lo,
                      max_duration_ns=f.max_duration_ns, attributes=f.attrs(), start_ns=start, end_ns=end,
                      root_only=root_only, limit=limit)


def _slices(start: int, end: int, n: int) -> list[tuple[int, int]]:
    step = max(1, (end - start) // n)
    edges = [start + i * step for i in range(n)] + [end]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _entry_mode(backend: Backend, f: SearchFilters) -> str:
    """``span`` (plot the matching spans themselves: an operation or an attribute was
    named), ``root`` (requests are trace roots) or ``server`` (a service no root
    carries: its SERVER/CONSUMER spans)."""
    if f.operation or f.attrs():
        return "span"
    if not f.service:
        return "root"
    if backend.find_spans(_query(f, f.start_ns, f.end_ns, 1, root_only=True)):
        return "root"
    return "server"


def _fetch(backend: Backend, f: SearchFilters, mode: str, start: int, end: int, limit: int,
           min_ns: int | None = None) -> tuple[list[Span], bool]:
    """Up to ``limit`` requests of [start, end); second value: the slice held more."""
    if mode == "server":
        # the kind is not a query condition: over-read, keep the service's entry spans
        got = backend.find_spans(_query(f, start, end, limit * 6, root_only=False, min_ns=min_ns))
        spans = [s for s in got if s.kind in _ENTRY_KINDS]
        return spans[:limit], len(got) >= limit * 6 or len(spans) > limit
    got = backend.find_spans(_query(f, start, end, limit + 1, root_only=mode == "root", min_ns=min_ns))
    return got[:limit], len(got) > limit


def _summaries(backend: Backend, f: SearchFilters, start: int, end: int, limit: int,
               min_ns: int | None = None) -> tuple[list[TraceSummary], bool]:
    """Remote backends (Tempo): its search answers with trace summaries directly, where
    ``find_spans`` would fetch every hit's whole trace."""
    got = backend.search_traces(_query(f, start, end, limit + 1, root_only=False, min_ns=min_ns))
    return got[:limit], len(got) > limit


def _summary_point(s: TraceSummary) -> dict[str, Any]:
    return {"trace_id": s.trace_id, "span_id": "", "service": s.root_service, "name": s.root_name,
            "start_ms": s.start_ns / 1e6, "duration_ms": s.duration_ns / 1e6, "error": bool(s.error),
            "route": s.root_attributes.get(semconv.HTTP_ROUTE), "stage": None}


def _point(s: Span) -> dict[str, Any]:
    return {"trace_id": s.trace_id, "span_id": s.span_id, "service": s.service_name, "name": s.name,
            "start_ms": s.start_ns / 1e6, "duration_ms": s.duration_ns / 1e6, "error": s.is_error,
            "route": s.attributes.get(semconv.HTTP_ROUTE), "stage": s.stage}


def wants_fit(params: Mapping[str, Sequence[str]]) -> bool:
    """``fit=1`` and no range chosen: the page may open on the data's extent (:mod:`.extent`)."""
    return _one(params, "fit") == "1" and not any(_one(params, k) for k in ("since", "from", "to"))


def search(backend: Backend, f: SearchFilters, *, budget: int = POINT_BUDGET, fit: bool = False) -> dict[str, Any]:
    """The scatter plot's points and the result list: see the module docstring.

    ``extent`` is the first and last start time (ms) of the matching requests: exact on
    the embedded store, else possibly wider, never narrower (see :func:`_sliced_search`
    and :func:`.fastscan.spread_sample`). With ``fit``, when they cover much
    less than the window (:func:`.extent.fitted_window`), the search runs again over
    their extent, and ``fitted`` says so: ``{"from_ms", "to_ms", "range_ms"}`` (the
    window it replaced)."""
    doc = _search(backend, f, budget)
    ext = doc["extent"]
    if not fit or ext is None:
        return doc
    from .extent import fitted_window
    narrower = fitted_window(int(ext["first_ms"] * 1e6), int(ext["last_ms"] * 1e6), f.start_ns, f.end_ns)
    if narrower is None:
        return doc
    g = replace(f, start_ns=narrower[0], end_ns=narrower[1])
    fitted = _search(backend, g, budget)
    fitted["fitted"] = {"from_ms": g.start_ns // 1_000_000, "to_ms": g.end_ns // 1_000_000,
                        "range_ms": {"start_ms": f.start_ns / 1e6, "end_ms": f.end_ns / 1e6}}
    fitted["took_ms"] = round(fitted["took_ms"] + doc["took_ms"], 1)
    return fitted


def _search(backend: Backend, f: SearchFilters, budget: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    remote = backend.name == "grafana"
    fast = None if remote else _fast_search(backend, f)
    total: int | None = None
    extent: tuple[int, int] | None = None
    rows: list[dict[str, Any]] | None = None
    read_fraction, newest_exact, estimated = 1.0, False, False
    if fast is not None:
        mode, got = fast
        points, total, extent, rows = got.points, got.total, got.extent, got.newest
        read_fraction, newest_exact, estimated = got.read_fraction, got.newest_exact, got.total_estimated
        sampled = total is None or total > len(points)
    else:
        mode, points, sampled, extent = _sliced_search(backend, f, remote, budget)
    ext_ms = {"first_ms": extent[0] / 1e6, "last_ms": extent[1] / 1e6} if extent is not None else None
    durs = sorted(p["duration_ms"] for p in points)

    def q(p: float) -> float | None:
        return durs[min(len(durs) - 1, int(p * len(durs)))] if durs else None
    if rows is None:  # the portable method: the newest of the points read
        rows = sorted(points, key=lambda p: -p["start_ms"])[:MAX_RESULT_ROWS]
    # read_fraction < 1: the points come from that share of the window's rows and
    # "matched" is scaled up from them (an estimate); newest_exact: "rows" are the
    # newest matches of the whole window, not just of the points read
    return {"mode": mode, "points": points, "rows": rows, "newest_exact": newest_exact,
            "read_fraction": read_fraction, "matched_estimated": estimated,
            "count": len(points), "matched": total,
            "sampled": sampled, "errors": sum(1 for p in points if p["error"]), "p50_ms": q(0.5), "p95_ms": q(0.95),
            "window": {"start_ms": f.start_ns / 1e6, "end_ms": f.end_ns / 1e6}, "extent": ext_ms,
            "services": sorted({p["service"] for p in points}),
            "took_ms": round((time.perf_counter() - t0) * 1e3, 1)}


def _fast_search(backend: Backend, f: SearchFilters) -> tuple[str, Any] | None:
    """The embedded store's sample and newest requests (:mod:`.fastscan`); None when it does not apply."""
    from . import fastscan
    store = fastscan.embedded_store(backend)
    if store is None:
        return None
    mode = "span" if f.operation or f.attrs() else "entry" if f.service else "root"
    got = fastscan.spread_sample(store, _query(f, f.start_ns, f.end_ns, None, root_only=False), entry=mode,
                                 buckets=FAST_BUCKETS, per_bucket=FAST_PER_BUCKET,
                                 slowest_per_bucket=FAST_SLOWEST_PER_BUCKET, newest=MAX_RESULT_ROWS)
    return mode, got


def _sliced_search(backend: Backend, f: SearchFilters, remote: bool,
                   budget: int) -> tuple[str, list[dict[str, Any]], bool, tuple[int, int] | None]:
    """The portable method: a query per time slice, then the slow tail of the busy slices.

    The extent (first and last start, ns) is the points' own, widened to the edge of the
    first or last slice when that slice held more than was read (which of its requests
    a backend returns first is its own business): it may be wider than the data, never
    narrower, so a search over it loses nothing."""
    mode = "trace" if remote else _entry_mode(backend, f)

    def fetch(a: int, b: int, limit: int, min_ns: int | None = None) -> tuple[list[Any], bool]:
        if remote:
            return _summaries(backend, f, a, b, limit, min_ns)
        return _fetch(backend, f, mode, a, b, limit, min_ns)

    def key(x: Any) -> str:
        return x.trace_id if remote else x.span_id

    slices = _slices(f.start_ns, f.end_ns, SLICES)
    per = max(1, math.ceil(budget / len(slices)))
    found: dict[str, Any] = {}
    full: list[tuple[int, int]] = []
    for a, b in slices:
        got, more = fetch(a, b, per)
        for x in got:
            found[key(x)] = x
        if more:
            full.append((a, b))
    if full and found:
        # the slow tail of the busy slices: every request above the sample's p90, up to a share each
        durs = sorted(x.duration_ns for x in found.values())
        p90 = durs[int(0.9 * (len(durs) - 1))]
        for a, b in full:
            got, _ = fetch(a, b, per, min_ns=p90 + 1)
            for x in got:
                found[key(x)] = x
    pts = sorted(found.values(), key=lambda x: x.start_ns)
    extent = None
    if pts:
        first, last = pts[0].start_ns, pts[-1].start_ns
        for a, b in full:
            if a <= first < b:
                first = a
            if a <= last < b:
                last = b - 1
        extent = (first, last)
    return mode, [_summary_point(x) if remote else _point(x) for x in pts], bool(full), extent


def _pct(sorted_vals: list[float], p: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(p * len(sorted_vals)))]


def service_map(backend: Backend, start_ns: int, end_ns: int) -> dict[str, Any]:
    """Services and caller -> callee edges with request rate, error rate and latency.

    An edge is a span whose parent span belongs to another service (the callee's
    entry span, as Tempo's service graphs pair CLIENT and SERVER spans); its latency
    is the callee span's duration and its error rate the callee span's. Whole traces
    are sampled so that parents and children come together: on the embedded store
    about :data:`MAP_TRACES` by trace id hash over the whole window (rates divide by
    the sampled fraction); elsewhere the first spans of :data:`MAP_SLICES` slices
    (Tempo: the newest traces of each), and rates divide by the time they cover."""
    from . import fastscan
    t0 = time.perf_counter()
    covered_ns = 0
    spans: list[Any] = []  # fastscan.MapSpan
    sampled = False
    fraction = 1.0
    store = fastscan.embedded_store(backend)
    if store is not None:
        spans, fraction = fastscan.trace_sample(store, start_ns, end_ns, MAP_TRACES)
        sampled = fraction < 1.0
    for a, b in _slices(start_ns, end_ns, MAP_SLICES) if store is None else ():
        if backend.name == "grafana":
            # Tempo: the newest traces of the slice, whole (find_spans would fetch a trace per span)
            hits = backend.search_traces(TraceQuery(start_ns=a, end_ns=b, limit=MAP_TRACES_PER_SLICE))
            traces = backend.get_traces([h.trace_id for h in hits], start_ns=a, end_ns=b + 60_000_000_000,
                                        with_logs=False)
            spans.extend(fastscan.MapSpan.of(sp) for t in traces.values() for sp in t.spans)
            if len(hits) >= MAP_TRACES_PER_SLICE:
                sampled = True
                covered_ns += max(1, b - min(h.start_ns for h in hits))
            else:
                covered_ns += b - a
            continue
        got = backend.find_spans(TraceQuery(start_ns=a, end_ns=b, limit=MAP_SPANS_PER_SLICE))
        if len(got) >= MAP_SPANS_PER_SLICE:
            sampled = True
            covered_ns += max(1, got[-1].start_ns - a)
        else:
            covered_ns += b - a
        spans.extend(fastscan.MapSpan.of(sp) for sp in got)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    nodes: dict[str, dict[str, Any]] = {}
    node_durs: dict[str, list[float]] = defaultdict(list)
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    edge_durs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in spans:
        svc = s.service
        n = nodes.setdefault(svc, {"service": svc, "spans": 0, "requests": 0, "errors": 0, "roots": 0})
        n["spans"] += 1
        parent = by_id.get((s.trace_id, s.parent_span_id)) if s.parent_span_id else None
        if s.parent_span_id and parent is None:
            continue  # parent outside the read spans: neither an entry nor an edge we can tell
        if parent is not None and parent.service == svc:
            continue
        # an entry into this service: a root, or called from another service
        n["requests"] += 1
        n["errors"] += int(s.is_error)
        node_durs[svc].append(s.duration_ns / 1e6)
        if parent is None:
            n["roots"] += 1
            continue
        key = (parent.service, svc)
        e = edges.setdefault(key, {"caller": key[0], "callee": key[1], "requests": 0, "errors": 0})
        e["requests"] += 1
        e["errors"] += int(s.is_error)
        edge_durs[key].append(s.duration_ns / 1e6)
    if store is not None:
        covered_ns = int((end_ns - start_ns) * fraction)  # a fraction of the traces over the whole window
    secs = max(covered_ns / 1e9, 1e-9)
    for svc, n in nodes.items():
        d = sorted(node_durs[svc])
        n.update(rate_per_s=n["requests"] / secs, error_rate=n["errors"] / n["requests"] if n["requests"] else 0.0,
                 p50_ms=_pct(d, 0.5) if d else None, p95_ms=_pct(d, 0.95) if d else None)
    for key, e in edges.items():
        d = sorted(edge_durs[key])
        e.update(rate_per_s=e["requests"] / secs, error_rate=e["errors"] / e["requests"],
                 p50_ms=_pct(d, 0.5), p95_ms=_pct(d, 0.95))
    # layers for drawing: a service's depth is its longest call chain from a root service
    depth = {svc: 0 for svc in nodes}
    for _ in range(len(nodes)):
        changed = False
        for (caller, callee) in edges:
            if caller != callee and depth[callee] < depth[caller] + 1 <= len(nodes):
                depth[callee] = depth[caller] + 1
                changed = True
        if not changed:
            break
    for svc, n in nodes.items():
        n["depth"] = depth[svc]
    return {"nodes": sorted(nodes.values(), key=lambda n: (n["depth"], n["service"])),
            "edges": sorted(edges.values(), key=lambda e: (e["caller"], e["callee"])),
            "spans_read": len(spans), "sampled": sampled, "covered_s": covered_ns / 1e9,
            "trace_fraction": fraction if store is not None else None,
            "window": {"start_ms": start_ns / 1e6, "end_ms": end_ns / 1e6},
            "took_ms": round((time.perf_counter() - t0) * 1e3, 1)}


def trace(backend: Backend, trace_id: str) -> dict[str, Any]:
    """The ``stagetrace trace`` report (same model, same code), as its JSON."""
    from stagetrace.forensics import trace_report
    return trace_report(backend, normalize_trace_id(trace_id)).to_dict()


@dataclass(slots=True)
class InvestigateRequest:
    kind: str  # slow | errors
    start_ns: int
    end_ns: int
    service: str | None = None
    route: str | None = None
    threshold: str | int = "p95"  # slow only: "p95", "500ms", or ns


def parse_investigate(params: Mapping[str, Sequence[str]]) -> InvestigateRequest:
    kind = _one(params, "kind")
    if kind not in ("slow", "errors"):
        raise UserError("kind must be 'slow' or 'errors'")
    f = parse_filters(params)
    thr: str | int = "p95"
    raw = _one(params, "threshold")
    if raw is not None:
        if raw.lower().startswith("p"):
            thr = raw.lower()
        else:
            thr = _duration(raw, "threshold")  # type: ignore[assignment]
    elif f.min_duration_ns is not None:
        thr = max(0, f.min_duration_ns - 1)  # "these" = the requests at or above the brushed duration
    return InvestigateRequest(kind=kind, start_ns=f.start_ns, end_ns=f.end_ns, service=f.service, route=f.route,
                              threshold=thr)


def investigate(backend: Backend, req: InvestigateRequest) -> dict[str, Any]:
    """``investigate slow|errors`` over the window and filters, as forensics/cli.py runs it."""
    from stagetrace.forensics import investigate_errors, investigate_slow
    if req.kind == "slow":
        if isinstance(req.threshold, str):
            import numpy as np
            from stagetrace.forensics.slow import parse_threshold
            parse_threshold(req.threshold, np.array([1]))  # a bad threshold: 400, before any reading
        rep = investigate_slow(backend, service=req.service, route=req.route, start_ns=req.start_ns,
                               end_ns=req.end_ns, threshold=req.threshold)
    else:
        rep = investigate_errors(backend, service=req.service, start_ns=req.start_ns, end_ns=req.end_ns)
    return rep.to_dict()
