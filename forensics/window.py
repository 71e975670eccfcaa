"""The requests an investigation looks at: entry spans in a time window.

A request is a trace's root span; with ``--service`` it is that service's
entry span (its root, or its SERVER/CONSUMER span when another service called
it). Only these cheap rows are read for the whole window; full traces are
fetched for bounded samples, which is what keeps 1M-span windows fast.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from stagetrace import semconv, traceids
from stagetrace.backend import (Backend, SpanColumns, TraceQuery, find_span_columns, rootless_trace_ids,
                                span_columns)

from stagetrace.model import Span, Trace

from .timefmt import fmt_ms, fmt_time  # noqa: F401 (re-exported: the analyses and incidents import them here)


def entry_requests(backend: Backend, *, service: str | None, route: str | None,
                   start_ns: int | None, end_ns: int | None) -> SpanColumns:
    """:func:`entry_spans` as columns (same rows, same order): a 10M-span window holds
    over a million requests, and the analyses need whole spans for a few hundred."""
    return indexed_entry_requests(backend, service=service, route=route, start_ns=start_ns, end_ns=end_ns)[0]


def indexed_entry_requests(backend: Backend, *, service: str | None, route: str | None,
                           start_ns: int | None, end_ns: int | None) -> tuple[SpanColumns, Mapping[str, int]]:
    """:func:`entry_requests` and its :func:`row_index`, built once: the index is also
    the one-row-per-trace check, which otherwise built a set of a million ids for nothing."""
    attrs = {semconv.HTTP_ROUTE: route} if route else {}
    cols = find_span_columns(backend, TraceQuery(service=service, attributes=dict(attrs), start_ns=start_ns,
                                                 end_ns=end_ns, root_only=True, limit=None, read_only=True))
    if not len(cols) and service:
        cols = find_span_columns(backend, TraceQuery(service=service, attributes=dict(attrs), start_ns=start_ns,
                                                     end_ns=end_ns, limit=None, read_only=True))
        entry_kind = np.array([p.kind in ("SERVER", "CONSUMER") for p in cols.protos], dtype=bool)
        if len(cols):
            cols = cols.take(np.flatnonzero(entry_kind[cols.proto]))
    return indexed_first_per_trace(cols)


def first_per_trace(cols: SpanColumns) -> SpanColumns:
    """One row per trace, the earliest (the first of equals), ordered by start time, ties
    in the order the traces first appear: what :func:`entry_spans` keeps."""
    return indexed_first_per_trace(cols)[0]


def indexed_first_per_trace(cols: SpanColumns) -> tuple[SpanColumns, Mapping[str, int]]:
    """:func:`first_per_trace` and the :func:`row_index` of its answer."""
    n = len(cols)
    if n == 0:
        return cols, {}
    start = cols.start_ns
    if n < 2 or bool((start[1:] >= start[:-1]).all()):
        index = traceids.row_index(cols.trace_ids)
        if index is not None:
            return cols, index  # one row per trace, already in order (the embedded store's answer)
    first: dict[str, int] = {}
    code = np.fromiter((first.setdefault(t, len(first)) for t in cols.trace_ids), dtype=np.int64, count=n)
    order = np.lexsort((np.arange(n), start, code))  # by trace, then start, then position
    c = code[order]
    chosen = order[np.concatenate([[True], c[1:] != c[:-1]])]  # traces in first-appearance order
    out = cols.take(chosen[np.argsort(start[chosen], kind="stable")])
    return out, row_index(out)


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


_ROOTLESS_PROBE = 1000  # spans read to tell "no data" from "data without requests": bounded


def rootless_note(backend: Backend, *, service: str | None, start_ns: int | None,
                  end_ns: int | None) -> str | None:
    """Why a window with no requests is not a window with no data, or None if it is.

    A trace whose root span was lost (or whose parent ids loop) has no entry span, so
    it is no request; without this note such a window read as "nothing there" and
    every span in it was dropped without a word. Read only when there is no request
    at all, and bounded, so a large window pays nothing."""
    spans = backend.find_spans(TraceQuery(service=service, start_ns=start_ns, end_ns=end_ns,
                                          limit=_ROOTLESS_PROBE, read_only=True))
    if not spans:
        return None
    tids = sorted({s.trace_id for s in spans})
    more = "+" if len(spans) >= _ROOTLESS_PROBE else ""
    return (f"{len(spans)}{more} span(s) of {len(tids)}{more} trace(s) in the window were skipped: none is a "
            f"request's entry span (a trace's root{', or a SERVER/CONSUMER span of ' + service if service else ''}); "
            f"the root was lost or the parent ids loop (see `stagetrace trace {tids[0]}`)")


_ROOTLESS_CHECK = 200  # traces without a root in the window looked up whole: the root may lie outside it


def _rootless_ids(backend: Backend, start_ns: int | None, end_ns: int | None) -> list[str]:
    return rootless_trace_ids(backend, TraceQuery(start_ns=start_ns, end_ns=end_ns, limit=None))


def rootless_ids_beside(backend: Backend, *, start_ns: int | None, end_ns: int | None) -> Callable[[], list[str]]:
    """Start :func:`rootless_beside_note`'s one read (:func:`stagetrace.backend.rootless_trace_ids`
    of the window) on a thread of its own, and return what waits for its answer (and
    re-raises its error). At 10M spans that aggregate takes ~2 s, in DuckDB, which releases
    the GIL: started before the investigation's own analysis of the requests, it runs beside
    it instead of after it. The embedded store runs one read at a time, so the thread only
    delays a read of the investigation's own, never races it. Daemon: a command that ends
    early does not wait for it."""
    answer: Future[list[str]] = Future()

    def run() -> None:
        try:
            answer.set_result(_rootless_ids(backend, start_ns, end_ns))
        except BaseException as exc:  # handed to whoever waits, as if the read ran there
            answer.set_exception(exc)
    threading.Thread(target=run, name="stagetrace-rootless-count", daemon=True).start()
    return answer.result


def rootless_beside_note(backend: Backend, *, service: str | None, start_ns: int | None, end_ns: int | None,
                         requests: Mapping[str, int], ids: Callable[[], list[str]] | None = None) -> str | None:
    """How many traces with spans in a window that has requests have no root span at all
    (lost, or parent ids that loop), so they were no request and were skipped; None if none.

    :func:`rootless_note` says it only for a window with no request at all; beside
    counted requests the skipped traces were silent. The traces without a root among
    their spans in the window (one aggregate in the embedded store) are looked up whole,
    at most :data:`_ROOTLESS_CHECK` of them: a root may just lie outside the window, and
    with ``service`` only traces that touch it count. "at least" when the bound was hit.
    ``ids``: the aggregate's answer, started earlier by :func:`rootless_ids_beside`."""
    candidates = [t for t in (ids() if ids is not None else _rootless_ids(backend, start_ns, end_ns))
                  if t not in requests]
    if not candidates:
        return None
    checked = candidates[:_ROOTLESS_CHECK]
    traces = backend.get_traces(checked, with_logs=False)  # no window: the root may lie outside it
    rootless = [t for t in checked if t in traces and all(s.parent_span_id for s in traces[t].spans)
                and (service is None or any(s.service_name == service for s in traces[t].spans))]
    if not rootless:
        return None
    least = "at least " if len(candidates) > len(checked) else ""
    return (f"{least}{len(rootless)} trace(s) in the window were skipped beside the {len(requests)} request(s) "
            f"counted: none of their spans is a root (it was lost, or the parent ids loop), so they are no "
            f"request (see `stagetrace trace {rootless[0]}`)")


def entry_operation(span: Span) -> str:
    """What a request *is*, for per-operation baselines: its service and route
    (``http.route``, else the RPC method), else its span name."""
    a = span.attributes
    route = a.get(semconv.HTTP_ROUTE) or a.get(semconv.RPC_METHOD)
    method = a.get(semconv.HTTP_REQUEST_METHOD) or a.get("http.method") or ""
    name = f"{method} {route}".strip() if route else span.name
    return f"{span.service_name}: {name}"


# A route template that matches any path: the last segment is ``*`` / ``**`` or a greedy
# variable (``{path:.*}``, ``{*rest}``). Every request of a gateway or proxy has it.
_CATCH_ALL = re.compile(r"(^|/)(\*{1,2}|\{[^}]*\*[^}]*\})$")


def is_catch_all(span: Span) -> bool:
    route = span.attributes.get(semconv.HTTP_ROUTE)
    return isinstance(route, str) and bool(_CATCH_ALL.search(route))


@dataclass(slots=True)
class Operations:
    """Each request's entry operation (:func:`entry_ops`) as a code per row into
    ``names`` (one code per distinct name)."""

    codes: np.ndarray
    names: list[str]


def entry_ops(backend: Backend, entries: Sequence[Span]) -> dict[str, str]:
    """Trace id -> :func:`entry_operation` of its entry span. Behind a gateway whose route
    is a catch-all (``/*``) every request would be one operation, so a checkout is
    "slow" next to a health check; there the operation is refined by where the
    gateway forwarded it: the first SERVER span of another service in the trace."""
    cols = span_columns(entries)
    ops = request_ops(backend, cols)
    return {t: ops.names[c] for t, c in zip(cols.trace_ids, ops.codes.tolist())}


def request_ops(backend: Backend, req: SpanColumns) -> Operations:
    """:func:`entry_ops` of requests as columns: one :func:`entry_operation` per prototype."""
    names: list[str] = []
    code_of: dict[str, int] = {}

    def code(name: str) -> int:
        c = code_of.get(name)
        if c is None:
            c = code_of[name] = len(names)
            names.append(name)
        return c
    if not len(req):
        return Operations(np.zeros(0, dtype=np.int32), names)
    used = np.unique(req.proto)
    per_proto = np.zeros(len(req.protos), dtype=np.int32)
    catch_all = np.zeros(len(req.protos), dtype=bool)
    for p in used.tolist():
        per_proto[p] = code(entry_operation(req.protos[p]))
        catch_all[p] = is_catch_all(req.protos[p])
    codes = per_proto[req.proto]
    rows = np.flatnonzero(catch_all[req.proto])
    if len(rows):
        proxied = {req.trace_ids[i]: req.span(i) for i in rows.tolist()}
        row_of = {req.trace_ids[i]: i for i in rows.tolist()}
        for tid, sp in _forwarded_to(backend, proxied).items():
            i = row_of[tid]
            codes[i] = code(f"{names[codes[i]]} -> {entry_operation(sp)}")
    return Operations(codes, names)


def _forwarded_to(backend: Backend, proxied: Mapping[str, Span]) -> dict[str, Span]:
    """Trace id -> the first SERVER span of another service in each proxied request."""
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
    return first


class ByTrace(Mapping[str, Any]):
    """A read-only trace id -> value mapping over the rows of a request table (``value``
    of the row; rows outside ``mask`` are absent), without a dict of a million entries
    per use."""

    __slots__ = ("index", "value", "mask", "ids")

    def __init__(self, index: Mapping[str, int], ids: Sequence[str], value: Callable[[int], Any],
                 mask: np.ndarray | None = None) -> None:
        self.index, self.ids, self.value, self.mask = index, ids, value, mask

    def _row(self, tid: str) -> int | None:
        i = self.index.get(tid)
        if i is None or (self.mask is not None and not self.mask[i]):
            return None
        return i

    def __getitem__(self, tid: str) -> Any:
        i = self._row(tid)
        if i is None:
            raise KeyError(tid)
        return self.value(i)

    def __contains__(self, tid: object) -> bool:
        return isinstance(tid, str) and self._row(tid) is not None

    def __iter__(self) -> Iterator[str]:
        if self.mask is None:
            return iter(self.ids)
        return (self.ids[i] for i in np.flatnonzero(self.mask).tolist())

    def __len__(self) -> int:
        return len(self.ids) if self.mask is None else int(self.mask.sum())


def row_index(req: SpanColumns) -> Mapping[str, int]:
    """Trace id -> row, of requests with one row per trace (:func:`entry_requests`);
    searched in the ids' bytes rather than a dict of a million strings where it can be
    (:mod:`stagetrace.traceids`)."""
    index = traceids.row_index(req.trace_ids)
    return index if index is not None else dict(zip(req.trace_ids, range(len(req.trace_ids))))


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


def request_weights(req: SpanColumns) -> np.ndarray | None:
    """Each request's adjusted count (:func:`sampling_weights`), one per prototype; None
    when nothing was sampled (every weight 1)."""
    if not len(req):
        return None
    used = np.unique(req.proto)
    per_proto = np.ones(len(req.protos), dtype=float)
    for p in used.tolist():
        per_proto[p] = adjusted_count(req.protos[p])
    if (per_proto[used] == 1.0).all():
        return None
    return per_proto[req.proto]


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
