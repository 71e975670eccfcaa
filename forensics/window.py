"""The requests an investigation looks at: entry spans in a time window.

A request is a trace's root span; with ``--service`` it is that service's
entry span (its root, or its SERVER/CONSUMER span when another service called
it). Only these cheap rows are read for the whole window; full traces are
fetched for bounded samples, which is what keeps 1M-span windows fast.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Mapping, Sequence

from stagetrace import semconv
from stagetrace.backend import Backend, TraceQuery

from stagetrace.model import Span, Trace


def entry_spans(backend: Backend, *, service: str | None, route: str | None,
                start_ns: int | None, end_ns: int | None) -> list[Span]:
    attrs = {semconv.HTTP_ROUTE: route} if route else {}
    # read_only: entry spans are only read, so a backend may share their decoded dicts
    roots = backend.find_spans(TraceQuery(service=service, attributes=dict(attrs), start_ns=start_ns,
                                          end_ns=end_ns, root_only=True, limit=None, read_only=True))
    if not roots and service:
        spans = backend.find_spans(TraceQuery(service=service, attributes=dict(attrs), start_ns=start_ns,
                                              end_ns=end_ns, limit=None, read_only=True))
        roots = [s for s in spans if s.kind in ("SERVER", "CONSUMER")]
    # one entry per trace (a service may be entered twice in one trace: keep the first)
    seen: dict[str, Span] = {}
    for s in roots:
        cur = seen.get(s.trace_id)
        if cur is None or s.start_ns < cur.start_ns:
            seen[s.trace_id] = s
    return sorted(seen.values(), key=lambda s: s.start_ns)


def entry_operation(span: Span) -> str:
    """What a request *is*, for per-operation baselines: its service and route
    (``http.route``, else the RPC method), else its span name."""
    a = span.attributes
    route = a.get(semconv.HTTP_ROUTE) or a.get(semconv.RPC_METHOD)
    method = a.get(semconv.HTTP_REQUEST_METHOD) or a.get("http.method") or ""
    name = f"{method} {route}".strip() if route else span.name
    return f"{span.service_name}: {name}"


def entry_operations(entries: Sequence[Span]) -> list[str]:
    """:func:`entry_operation` of each entry, computed once per distinct (attributes,
    resource, name): the spans of a read-only answer share their dicts, so 1.4M
    requests cost a dict lookup each instead of a string build each."""
    memo: dict[tuple[int, int, str], str] = {}
    out = []
    for s in entries:  # `entries` holds every span, so no id() is reused meanwhile
        key = (id(s.attributes), id(s.resource), s.name)
        op = memo.get(key)
        if op is None:
            op = memo[key] = entry_operation(s)
        out.append(op)
    return out


# A route template that matches any path: the last segment is ``*`` / ``**`` or a greedy
# variable (``{path:.*}``, ``{*rest}``). Every request of a gateway or proxy has it.
_CATCH_ALL = re.compile(r"(^|/)(\*{1,2}|\{[^}]*\*[^}]*\})$")


def is_catch_all(span: Span) -> bool:
    route = span.attributes.get(semconv.HTTP_ROUTE)
    return isinstance(route, str) and bool(_CATCH_ALL.search(route))


def entry_ops(backend: Backend, entries: Sequence[Span]) -> dict[str, str]:
    """Trace id -> :func:`entry_operation` of its entry span. Behind a gateway whose route
    is a catch-all (``/*``) every request would be one operation, so a checkout is
    "slow" next to a health check; there the operation is refined by where the
    gateway forwarded it: the first SERVER span of another service in the trace."""
    ops = dict(zip((s.trace_id for s in entries), entry_operations(entries)))
    proxied = {s.trace_id: s for s in entries if is_catch_all(s)}
    if not proxied:
        return ops
    lo = min(s.start_ns for s in proxied.values())
    hi = max(s.start_ns + max(s.duration_ns, 0) for s in proxied.values()) + 1
    first: dict[str, Span] = {}
    for sp in backend.find_spans(TraceQuery(kind="server", start_ns=lo, end_ns=hi, limit=None)):
        e = proxied.get(sp.trace_id)
        if e is None or sp.service_name == e.service_name:
            continue
        cur = first.get(sp.trace_id)
        if cur is None or sp.start_ns < cur.start_ns:
            first[sp.trace_id] = sp
    for tid, sp in first.items():
        ops[tid] = f"{ops[tid]} -> {entry_operation(sp)}"
    return ops


def adjusted_count(span: Span) -> float:
    """How many requests this stored request stands for: the gateway Collector's
    ``sampling.adjusted_count`` (1/p on the probabilistic baseline share of tail
    sampling, set on every span of the trace), 1 when absent or unusable, so
    unsampled data (the embedded store) is weighted 1 throughout."""
    v = span.attributes.get(semconv.SAMPLING_ADJUSTED_COUNT)
    if v is None:
        return 1.0
    try:
        w = float(v)
    except (TypeError, ValueError):
        return 1.0
    return w if w >= 1.0 and w == w and w != float("inf") else 1.0


def sampling_weights(entries: list[Span]) -> dict[str, float]:
    """Trace id -> adjusted count of its entry span; empty when nothing was sampled
    (every weight 1), so callers can tell weighted from unweighted analyses."""
    # one adjusted_count per distinct attribute dict (shared in read-only answers), and
    # no per-request dict at all when nothing was sampled (the usual case)
    memo: dict[int, float] = {}
    for s in entries:
        if id(s.attributes) not in memo:
            memo[id(s.attributes)] = adjusted_count(s)
    if all(x == 1.0 for x in memo.values()):
        return {}
    return {s.trace_id: memo[id(s.attributes)] for s in entries}


def weighted_evidence(sel_w: tuple[float, float] | None, base_w: tuple[float, float] | None,
                      neff: tuple[float, float] | None) -> dict[str, Any]:
    """The evidence keys of a sampling-weighted comparison (empty when unweighted): the
    stored-trace counts beside them stay as they are; these are the estimates for all
    requests, and the effective sample sizes the test used."""
    if sel_w is None or base_w is None:
        return {}
    return {"sampling_weighted": True, "selection_weighted_count": sel_w[0],
            "selection_weighted_total": sel_w[1], "baseline_weighted_count": base_w[0],
            "baseline_weighted_total": base_w[1],
            "selection_effective_n": neff[0] if neff else None,
            "baseline_effective_n": neff[1] if neff else None}


def fmt_ms(ns: float) -> str:
    ms = ns / 1e6
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms * 1000:.0f} µs"


def fmt_time(ns: int) -> str:
    import datetime as _dt
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def mix_weights(sel_ops: Mapping[str, str], base_ops: Mapping[str, str]) -> dict[str, float]:
    """Baseline weights that give the baseline the selection's mix of entry operations
    (direct standardisation): a baseline request of an operation that is 60% of the
    slow requests but 10% of the baseline weighs 6x. Operations the selection lacks
    weigh 0 (only a tiny epsilon, so shares stay defined). Trace id -> weight."""
    sc, bc = Counter(sel_ops.values()), Counter(base_ops.values())
    ns, nb = sum(sc.values()), sum(bc.values())
    if not ns or not nb:
        return {}
    out = {}
    for tid, op in base_ops.items():
        if bc[op] and sc.get(op):
            out[tid] = (sc[op] / ns) / (bc[op] / nb)
        else:
            out[tid] = 1e-6
    return out


def comparison_weights(sel: Sequence[Trace], base: Sequence[Trace], op_of: Mapping[str, str],
                       wmap: Mapping[str, float]) -> dict[str, float] | None:
    """Trace id -> weight for attribute and log comparisons: the baseline standardised to
    the selection's entry-operation mix (``op_of``: trace id -> :func:`entry_ops`), times
    the adjusted count on tail-sampled data; None when neither applies (one operation,
    unsampled data)."""
    sel_ops = {t.trace_id: op_of[t.trace_id] for t in sel if t.trace_id in op_of}
    base_ops = {t.trace_id: op_of[t.trace_id] for t in base if t.trace_id in op_of}
    mix = mix_weights(sel_ops, base_ops) if len(set(base_ops.values())) > 1 else {}
    if not mix and not wmap:
        return None
    return {tid: mix.get(tid, 1.0) * wmap.get(tid, 1.0) for tid in (*sel_ops, *base_ops)}
