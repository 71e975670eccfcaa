"""``stagetrace investigate errors``: failing requests grouped into incidents.

1. Error events come from three sources, so spans without a status are not
   missed: spans with ERROR status, exception span events, and ERROR logs.
2. Each event gets a fingerprint: exception type + message template (drain3,
   numbers masked) + top stack frames.
3. Fingerprints that co-occur in the same traces (Jaccard >= 0.5), or burst
   together in time when they carry no trace id, merge into one incident.
4. Per incident, on a bounded sample of whole traces: the origin (the deepest
   failing span, no failing descendant) versus the ancestors that failed
   because of it, services / stages / operations, attributes over-represented
   versus successful requests, the burst (onset) and first/last seen.
5. Incidents are ranked by impact (failed requests). Background errors that
   neither burst nor set themselves apart by an attribute are reported as
   such, below the significance bar.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from stagetrace import semconv, traceids
from stagetrace.backend import Backend, LogQuery, SpanColumns, TraceQuery
from stagetrace.model import STATUS_CODES, LogRecord, Span, Trace

from . import attributes, mlprofiles, stats, timeline
from .critical_path import build_tree
from .incident import Incident, locate
from .logmining import LogMiner, message_text
from .logtext import MessageTexts, message
from .progress import steps
from .report import EvidenceGuard, Finding, Report, headline
from .slow import _note_missing_data
from .window import (ByTrace, comparison_weights, fmt_time, indexed_entry_requests, request_ops, request_weights,
                     rootless_beside_note, rootless_ids_beside, rootless_note)

MAX_ERROR_TRACES = 300
MAX_SUCCESS_TRACES = 300
TOP_FRAMES = 3
_FRAME_RE = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


@dataclass(slots=True)
class ErrorEvent:
    time_ns: int
    trace_id: str
    span_id: str
    service: str
    operation: str
    source: str  # span | exception | log
    exc_type: str
    message: str
    frames: tuple[str, ...]
    fingerprint: str = ""
    template: str = ""


def top_frames(stacktrace: Any) -> tuple[str, ...]:
    """Innermost frames first: where the exception was raised, not the framework around it.

    ``exception.stacktrace`` is a string by the semantic conventions, but an attribute can
    hold any type (an array of lines, a number): read as text, never a TypeError."""
    if not stacktrace:
        return ()
    if not isinstance(stacktrace, str):
        stacktrace = "\n".join(map(str, stacktrace)) if isinstance(stacktrace, (list, tuple)) else str(stacktrace)
    return _top_frames(stacktrace)


@functools.lru_cache(maxsize=1 << 16)  # the same stack trace repeats with every failure of its kind
def _top_frames(stacktrace: str) -> tuple[str, ...]:
    frames = [f"{m.group(1).rsplit('/', 2)[-1] if '/' in m.group(1) else m.group(1)}:{m.group(2)}"
              for m in _FRAME_RE.finditer(stacktrace)]
    return tuple(reversed(frames))[:TOP_FRAMES]


def _span_events(s: Span) -> list[ErrorEvent]:
    out = []
    for ev in s.events:
        if ev.name == semconv.EXCEPTION_EVENT:
            a = ev.attributes
            out.append(ErrorEvent(ev.time_ns, s.trace_id, s.span_id, s.service_name, s.name, "exception",
                                  str(a.get(semconv.EXCEPTION_TYPE, "")), message(str(a.get(semconv.EXCEPTION_MESSAGE, ""))),
                                  top_frames(a.get(semconv.EXCEPTION_STACKTRACE))))
    if not out and s.is_error:
        a = s.attributes
        etype = a.get(semconv.ERROR_TYPE) or (f"HTTP {a[semconv.HTTP_RESPONSE_STATUS_CODE]}"
                                              if semconv.HTTP_RESPONSE_STATUS_CODE in a else "error")
        out.append(ErrorEvent(s.end_ns, s.trace_id, s.span_id, s.service_name, s.name, "span", str(etype),
                              message(s.status_message or ""), ()))
    return out


def _log_event(r: LogRecord, texts: MessageTexts | None = None) -> ErrorEvent:
    a = r.attributes
    return ErrorEvent(r.time_ns, r.trace_id, r.span_id, r.service_name, "", "log",
                      str(a.get(semconv.EXCEPTION_TYPE, "")), texts.text(r) if texts else message_text(r),
                      top_frames(a.get(semconv.EXCEPTION_STACKTRACE)))


@dataclass
class Cluster:
    fingerprints: list[str]
    traces: set[str] = field(default_factory=set)
    events: list[ErrorEvent] = field(default_factory=list)
    origin: Counter = field(default_factory=Counter)
    propagated: Counter = field(default_factory=Counter)
    stages: Counter = field(default_factory=Counter)
    attrs: list = field(default_factory=list)
    onset: Any = None
    counts: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # when each of its failed requests started
    inputs: list = field(default_factory=list)  # significant differences of the model's input profiles


def investigate_errors(backend: Backend, *, service: str | None = None, start_ns: int | None = None,
                       end_ns: int | None = None, progress: bool = False) -> Report:
    query = {"service": service}
    guard = EvidenceGuard()
    with steps(6, progress) as bar:
        bar.step("reading requests")
        # the requests as columns: whole spans only for the sampled ones (10M-span windows)
        req, row_of = indexed_entry_requests(backend, service=service, route=None, start_ns=start_ns, end_ns=end_ns)
        t_entries = req.start_ns.tolist()
        bar.step("reading errors")
        # read_only: the error spans are only read, so the store shares their decoded bodies
        err_spans = backend.find_spans(TraceQuery(service=service, status="error", start_ns=start_ns,
                                                  end_ns=end_ns, limit=None, read_only=True))
        err_logs = backend.find_logs(LogQuery(start_ns=start_ns, end_ns=end_ns, min_severity=17,
                                              service=service, limit=None))
        times = t_entries + [s.start_ns for s in err_spans] + [r.time_ns for r in err_logs]
        report = Report("errors", "Errors", query=query, window={"start_ns": start_ns, "end_ns": end_ns})
        if not times:
            report.verdict = ["No requests and no errors in the window."]
            note = rootless_note(backend, service=service, start_ns=start_ns, end_ns=end_ns)
            if note:
                report.notes.append(note)
            _note_missing_data(backend, report, start_ns, end_ns)  # "no requests" may be a quarantined block
            return report
        # the rootless-trace count's read runs beside the fingerprinting below; its note takes
        # this place among the notes when it is collected, before the next read of traces
        rootless, rootless_at = rootless_ids_beside(backend, start_ns=start_ns, end_ns=end_ns), len(report.notes)

        def note_rootless() -> None:
            skipped = guard.run("the rootless-trace count", rootless_beside_note, backend, service=service,
                                start_ns=start_ns, end_ns=end_ns, requests=row_of, ids=rootless)
            if skipped:
                report.notes.insert(rootless_at, skipped)
        w_start = start_ns if start_ns is not None else min(times)
        w_end = end_ns if end_ns is not None else max(times) + 1
        report.window = {"start_ns": w_start, "end_ns": w_end}
        texts = MessageTexts().learn(err_logs)  # each service's own header, learned from its lines
        events = [e for s in err_spans for e in _span_events(s)] + [_log_event(r, texts) for r in err_logs]
        # --- fingerprints ------------------------------------------------------------------
        bar.step("fingerprinting")
        miner = LogMiner()
        cids = [miner.add(e.message or e.exc_type or "error") for e in events]
        tmpl = miner.templates()
        for e, cid in zip(events, cids):
            e.template = tmpl.get(cid, e.message)
            # The service is part of a failure mode: the same framework line ("Servlet.service()
            # ... threw exception") logged by two services is two failures, which co-occurrence
            # in the same requests may still merge into one incident below.
            key = "\x1f".join((e.service, e.exc_type, e.template, *e.frames))
            e.fingerprint = hashlib.sha1(key.encode()).hexdigest()[:12]
        total_requests = len(req)
        ids = req.trace_ids
        ops = request_ops(backend, req)
        op_of = ByTrace(row_of, ids, lambda i: ops.names[ops.codes[i]])
        # A request failed when its entry span says so, or when an ERROR span or a trace-linked
        # ERROR log sits inside it (many services answer 200 and log the failure).
        entry_failed = req.status == STATUS_CODES.index("ERROR")
        failed_entry = {ids[i] for i in np.flatnonzero(entry_failed).tolist()}
        # each distinct id looked up once, all together (the index searches the ids' bytes)
        ev_tids = sorted({e.trace_id for e in events})
        failed_inner = {t for t, i in zip(ev_tids, traceids.rows_of(row_of, ev_tids)) if i is not None} - failed_entry
        failed = failed_entry | failed_inner
        # the same as a row mask (the per-request passes below run over a million rows at 10M spans)
        failed_rows = entry_failed.copy()
        failed_rows[[row_of[t] for t in failed_inner]] = True
        # Tail-sampled data: every failing trace is kept (weight 1), successes only p % of the
        # time (weight 1/p), so rates over stored requests need the weights; {} = unsampled.
        warr = request_weights(req)
        w_entries = warr.tolist() if warr is not None else None
        wmap = ByTrace(row_of, ids, w_entries.__getitem__) if w_entries is not None else {}
        est_total = sum(w_entries) if w_entries is not None else float(total_requests)
        width = timeline.analysis_width(w_start, w_end, req.start_ns if total_requests else times)
        e_edges = timeline.edges(w_start, w_end, width)
        is_failed = failed_rows  # per request, in row order
        req_k, req_n = timeline.counts(req.start_ns, is_failed, e_edges)
        req_nw = None
        dur = np.maximum(req.duration_ns, 0)  # as Span.duration_ns
        if w_entries is not None:
            req_kw, req_nw = timeline.weighted_counts(req.start_ns, is_failed, w_entries, e_edges)
            report.data["timeline"] = timeline.request_timeline(
                e_edges, np.zeros_like(req_kw), req_nw, req_kw, req.start_ns, dur, w_entries)
        else:
            report.data["timeline"] = timeline.request_timeline(
                e_edges, np.zeros_like(req_k), req_n, req_k, req.start_ns, dur)
        del report.data["timeline"]["slow"]
        report.data["sampling"] = {"weighted": bool(wmap)}
        if wmap:
            wv = np.array(w_entries)
            report.data["sampling"].update({
                "attribute": semconv.SAMPLING_ADJUSTED_COUNT, "stored_requests": total_requests,
                "estimated_requests": est_total, "weighted_requests": int((wv != 1.0).sum()),
                "max_adjusted_count": float(wv.max())})
        note_rootless()
        if not events:
            report.data["counts"] = {"requests": total_requests, "error_events": 0, "failed_requests": 0}
            report.verdict = [f"No errors among {total_requests} requests in the window."]
            return report
        clusters = _merge(events, e_edges)
        # --- whole traces for origin and attributes ---------------------------------------
        bar.step("fetching sample traces")
        err_tids = sorted({e.trace_id for e in events if e.trace_id})
        rnd = random.Random(0)
        err_sample = err_tids if len(err_tids) <= MAX_ERROR_TRACES else rnd.sample(err_tids, MAX_ERROR_TRACES)
        # the successful requests with no error event, as rows in request order; sampling
        # positions picks the requests that sampling the list of their ids picked
        busy = failed_rows.copy()
        busy[[i for i in traceids.rows_of(row_of, err_tids) if i is not None]] = True
        ok_rows = np.flatnonzero(~busy)
        if len(ok_rows) > MAX_SUCCESS_TRACES:
            ok_rows = ok_rows[rnd.sample(range(len(ok_rows)), MAX_SUCCESS_TRACES)]
        ok_sample = [ids[i] for i in ok_rows.tolist()]
        fetched = backend.get_traces(err_sample + ok_sample, start_ns=w_start, end_ns=w_end + 600_000_000_000)
        successes = [fetched[t] for t in ok_sample if t in fetched]
        fp_cluster = {fp: i for i, c in enumerate(clusters) for fp in c.fingerprints}
        events_by_trace: dict[str, list[ErrorEvent]] = defaultdict(list)
        for e in events:
            if e.trace_id:
                events_by_trace[e.trace_id].append(e)
        # assign each failing trace to one incident: the one of its origin
        failures: dict[str, _Failure | None] = {}
        for tid, evs in events_by_trace.items():
            t = fetched.get(tid)
            if t is not None:
                failures[tid] = guard.run("error origins", _failure, t, evs)
            origin_ev = _origin_event(failures.get(tid), evs)
            if origin_ev is None:
                origin_ev = max(evs, key=lambda e: len(e.frames) + (e.source != "log"))
            c = clusters[fp_cluster[origin_ev.fingerprint]]
            c.traces.add(tid)
        for e in events:
            if not e.trace_id:
                clusters[fp_cluster[e.fingerprint]].events.append(e)
        bar.step("comparing with successes")
        owner = {t: i for i, c in enumerate(clusters) for t in c.traces}
        for e in events:
            if e.trace_id and e.trace_id in owner:
                clusters[owner[e.trace_id]].events.append(e)
        clusters = [c for c in clusters if c.events]
        for c in clusters:
            traces = sorted(c.traces)  # a set: its order would follow the hash seed into the comparisons
            sample = [fetched[t] for t in traces if t in fetched]
            for t in sample:
                _record(failures.get(t.trace_id), c)
            # every span of the failing requests (server span and resources included), against
            # successes re-weighted to the same mix of entry operations
            # the model's inputs (stagetrace's input profiles on inference spans), failing vs successful
            c.inputs = [x for x in guard.run("model inputs", mlprofiles.compare_trace_inputs, sample, successes, default=[])
                        if x.get("significant")]
            c.attrs = guard.run("attributes", attributes.compare, sample, successes, max_results=10,
                                exclude=attributes.OUTCOME_KEYS,
                                weights=comparison_weights(sample, successes, op_of, wmap),
                                default=[]) if sample and successes else []
            times_c = [t_entries[i] if i is not None else min(e.time_ns for e in events_by_trace[t])
                       for t, i in zip(traces, traceids.rows_of(row_of, traces))] or [e.time_ns for e in c.events]
            c.times = list(times_c)
            k, _ = timeline.counts(times_c, [True] * len(times_c), e_edges)
            c.counts = k.tolist()
            n = np.maximum(req_n, k)
            if wmap:  # the test on stored counts, the rates (effect floor) weighted
                kw, _ = timeline.weighted_counts(times_c, [True] * len(times_c),
                                                 [wmap.get(t, 1.0) for t in traces] or [1.0] * len(times_c), e_edges)
                c.onset = timeline.detect_onset(k, n, e_edges, min_ratio=3.0, weighted=(kw, np.maximum(req_nw, kw)))
            else:
                c.onset = timeline.detect_onset(k, n, e_edges, min_ratio=3.0)
        clusters.sort(key=lambda c: -(len(c.traces) or len(c.events)))
        bar.step("ranking")
        # When the failure rate has an onset, incidents are what is new or grown since it;
        # clusters at the same rate before and after are the system's steady background.
        inc = locate(req.start_ns, is_failed) if total_requests else None
        err_onset = inc if inc is not None and inc.significant else None
        report.data["onset"] = err_onset.evidence() if err_onset else None
        report.data["incident"] = inc.evidence() | {"significant": inc.significant} if inc is not None else None
        report.findings, report.data["clusters"] = _findings(clusters, total_requests, events_by_trace, req,
                                                             fetched, w_start, width, wmap, err_onset, req_n)
        report.data["timeline"]["clusters"] = [{"id": d["id"], "counts": c.counts}
                                               for d, c in zip(report.data["clusters"], clusters)]
        report.data["counts"] = {"requests": total_requests, "failed_requests": len(failed),
                                 "failed_by_entry_status": len(failed_entry), "failed_seen_inside": len(failed_inner),
                                 "error_events": len(events), "error_traces": len(err_tids),
                                 "sampled_error_traces": len(err_sample), "sampled_successes": len(successes)}
        if wmap:
            report.data["counts"].update({"estimated_requests": est_total,
                                          "estimated_failed_requests": sum(wmap.get(t, 1.0) for t in sorted(failed))})
        report.verdict = _verdict(report)
        report.notes.append(f"Error events: spans with ERROR status, exception events and ERROR logs. Samples of at "
                            f"most {MAX_ERROR_TRACES} failing and {MAX_SUCCESS_TRACES} successful traces; "
                            f"significance: adjusted p < {stats.ALPHA}.")
        if wmap:
            from .slow import mark_weighted
            mark_weighted(report)
        _note_missing_data(backend, report, w_start, w_end)
        guard.note(report)
        return report


def _merge(events: Sequence[ErrorEvent], e_edges: np.ndarray) -> list[Cluster]:
    """Union fingerprints that share traces (Jaccard >= 0.5) or, without trace ids, burst together."""
    tr: dict[str, set[str]] = defaultdict(set)
    times: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.trace_id:
            tr[e.fingerprint].add(e.trace_id)
        times[e.fingerprint].append(e.time_ns)
    fps = sorted(times, key=lambda f: -len(times[f]))
    parent = {f: f for f in fps}

    def find(f):
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    by_trace: dict[str, list[str]] = defaultdict(list)
    for f, ts in tr.items():
        for t in ts:
            by_trace[t].append(f)
    pairs: Counter = Counter()
    for fs in by_trace.values():
        fs = sorted(set(fs))
        if len(fs) > 20:
            continue
        for i in range(len(fs)):
            for j in range(i + 1, len(fs)):
                pairs[(fs[i], fs[j])] += 1
    for (a, b), inter in pairs.items():
        if inter / len(tr[a] | tr[b]) >= 0.5:
            parent[find(a)] = find(b)
    # fingerprints seen only in logs without a trace id: merge by burst shape
    loose = [f for f in fps if not tr.get(f) and len(times[f]) >= 5]
    if loose:
        series = {f: timeline.counts(times[f], [True] * len(times[f]), e_edges)[0] for f in fps if len(times[f]) >= 5}
        for f in loose:
            best, best_r = None, 0.9
            for g, s in series.items():
                if g == f or find(g) == find(f):
                    continue
                r = float(np.corrcoef(series[f], s)[0, 1]) if np.std(series[f]) and np.std(s) else 0.0
                if r >= best_r:
                    best, best_r = g, r
            if best is not None:
                parent[find(f)] = find(best)
    groups: dict[str, list[str]] = defaultdict(list)
    for f in fps:
        groups[find(f)].append(f)
    return [Cluster(sorted(g, key=lambda f: -len(times[f]))) for g in groups.values()]


def _error_spans(t: Trace, evs: Sequence[ErrorEvent]) -> set[str]:
    """Spans that failed: ERROR status, an exception event, or an ERROR log emitted in them."""
    ids = {s.span_id for s in t.spans if s.is_error or any(ev.name == semconv.EXCEPTION_EVENT for ev in s.events)}
    ids |= {e.span_id for e in evs if e.span_id}
    ids |= {r.span_id for r in t.logs if r.is_error and r.span_id}
    return ids


@dataclass(slots=True)
class _Failure:
    """Where one failing trace's error started (origin) and which ancestors failed with it."""

    origin: Any  # critical_path.Node
    propagated: list[Any]


def _failure(t: Trace, evs: Sequence[ErrorEvent]) -> _Failure | None:
    """The origin is the deepest failing span with no failing descendant (ties: the
    earliest); the failing ancestors are where it propagated."""
    root, nodes, _ = build_tree(t.spans)
    if root is None:
        return None
    _depths(root)
    bad = _error_spans(t, evs) & set(nodes)
    leaves = [nodes[s] for s in sorted(bad) if not _has_bad_desc(nodes[s], bad)]  # sorted: ties by span id
    if not leaves:
        return None
    origin = max(leaves, key=lambda n: (n.depth, -n.span.start_ns))
    up, p = [], origin.parent
    while p is not None:
        if p.span.span_id in bad:
            up.append(p)
        p = p.parent
    return _Failure(origin, up)


def _origin_event(f: _Failure | None, evs: Sequence[ErrorEvent]) -> ErrorEvent | None:
    if f is None:
        return None
    mine = [e for e in evs if e.span_id == f.origin.span.span_id]
    if not mine:
        return None
    return max(mine, key=lambda e: (e.source == "exception", len(e.frames), e.source == "span"))


def _depths(root) -> None:
    stack = [root]
    root.depth = 0
    while stack:
        n = stack.pop()
        for c in n.children:
            c.depth = n.depth + 1
            stack.append(c)


def _has_bad_desc(node, bad: set[str]) -> bool:
    stack = list(node.children)
    while stack:
        n = stack.pop()
        if n.span.span_id in bad:
            return True
        stack.extend(n.children)
    return False


def _record(f: _Failure | None, c: Cluster) -> None:
    if f is None:
        return
    origin = f.origin
    stage, p = None, origin
    while p is not None and stage is None:
        stage, p = p.span.stage, p.parent
    stage = stage or semconv.STAGE_OTHER
    c.origin[(origin.span.service_name, origin.span.name, stage)] += 1
    for a in f.propagated:
        c.propagated[(a.span.service_name, a.span.name)] += 1
    c.stages[stage] += 1


def _short_name(e: ErrorEvent) -> str:
    """The incident's name for a one-sentence summary: exception type and the first
    line of the message template, cut at ~120 characters. The miner joins lines
    with spaces, so the first line is cut from the template by its word count."""
    msg, tmpl = e.message or "", e.template or ""
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    if len(lines) > 1 and tmpl:
        words = tmpl.split()
        n = len(lines[0].split())
        tmpl = " ".join(words[:n]) + (" …" if n < len(words) else "")
    text = headline(tmpl)
    if text.endswith(" …"):
        text = text[:-2] + "…"
    return _typed(e.exc_type, text)


def _typed(exc_type: str, text: str) -> str:
    """``Type: text``; just the type when the text is the type itself (an ERROR span with no
    message is templated by its type: it read "error: error")."""
    return f"{exc_type}: {text}" if exc_type and text and text != exc_type else (exc_type or text)


def trend(times: Sequence[int], entry_times: np.ndarray, inc: Incident) -> tuple[str, float, float]:
    """A cluster against the failure incident: ``new`` (none outside it), ``grown``
    (significantly higher rate inside it, at least doubled) or ``background`` (steady),
    with its rate outside and inside. Outside means the normal data of the incident's frame."""
    t = np.asarray(times, dtype=np.int64)
    lo, hi = inc.frame
    inside_c = (t >= inc.start_ns) & (t < inc.end_ns)
    outside_c = (t >= lo) & (t < hi) & ~inside_c
    inside_r = (entry_times >= inc.start_ns) & (entry_times < inc.end_ns)
    outside_r = (entry_times >= lo) & (entry_times < hi) & ~inside_r
    if not outside_c.any() and (t < lo).any():
        # Quiet around the incident but seen earlier in the window: not new. Its rate
        # before is taken over everything before the incident, history included.
        outside_c, outside_r = t < inc.start_ns, entry_times < inc.start_ns
    ka, kb = int(inside_c.sum()), int(outside_c.sum())
    na, nb = int(max(inside_r.sum(), ka)), int(max(outside_r.sum(), kb))
    rb, ra = kb / nb if nb else 0.0, ka / na if na else 0.0
    grown = ka >= stats.MIN_SUPPORT and stats.share_test(ka, na, kb, nb) < stats.ALPHA and ra >= 2 * rb
    return ("new" if grown and kb == 0 else "grown" if grown else "background"), rb, ra


def late_start_p(times: Sequence[int], entry_times: np.ndarray) -> float:
    """P(a cluster's first failed request comes this late | its k failed requests are spread
    at random over the window's N requests): C(N - f, k) / C(N, k), f the requests before
    its first. Exact for the first occurrence, so no scan over start times to correct for:
    steady background errors begin near the start and score near 1."""
    k = len(set(times))
    n = int(entry_times.size)
    if k == 0 or n == 0:
        return 1.0
    f = int((entry_times < min(times)).sum())
    m = max(n - f, k)
    n = max(n, m)
    lg = math.lgamma
    return float(min(1.0, math.exp(lg(m + 1) - lg(k + 1) - lg(m - k + 1) - (lg(n + 1) - lg(k + 1) - lg(n - k + 1)))))


def _findings(clusters: list[Cluster], total: int, events_by_trace, req: SpanColumns, fetched, w_start, width,
              wmap: dict[str, float] | None = None, onset=None, req_n=None):
    """``wmap`` (trace id -> adjusted count, tail-sampled data): error rates are
    Σ w(failed in cluster) / Σ w(requests), i.e. rates among the requests served.
    ``onset`` (of the failure rate) splits new or grown incidents from steady background."""
    findings: list[Finding] = []
    wmap = wmap or {}
    entry_times = np.asarray(req.start_ns, dtype=np.int64)
    est_total = sum(wmap.get(t, 1.0) for t in req.trace_ids) if wmap else total
    total_label = f"~{est_total:.0f}" if wmap else f"{total}"
    details: list[dict[str, Any]] = []
    groups = (timeline.request_groups(req, np.arange(len(req)))
              + timeline.span_groups(s for t in fetched.values() for s in t.spans))
    first_seen = timeline.versions_first_seen_groups(groups, (semconv.SERVICE_VERSION, semconv.ML_MODEL_VERSION))
    new_versions = timeline.new_in_window(first_seen, w_start, width)
    late = dict(zip(map(id, clusters), stats.bh_adjust([late_start_p(c.times, entry_times) for c in clusters])))
    for i, c in enumerate(clusters):
        fp_events: dict[str, list[ErrorEvent]] = defaultdict(list)
        for e in c.events:
            fp_events[e.fingerprint].append(e)
        main = max((e for e in c.events if e.source != "log"), key=lambda e: (len(e.frames), e.source == "exception"),
                   default=c.events[0])
        log_tmpls = Counter(e.template for e in c.events if e.source == "log")
        template = log_tmpls.most_common(1)[0][0] if log_tmpls else None
        affected = len(c.traces) or len({e.time_ns for e in c.events})
        rate = (sum(wmap.get(t, 1.0) for t in sorted(c.traces)) / est_total if wmap else len(c.traces) / total) if total else 0.0
        sig_attrs = [a for a in c.attrs if a.significant]
        burst = c.onset is not None and c.onset.significant
        began = onset.start_ns if onset is not None else None
        if onset is not None:
            kind, r_before, r_after = trend(c.times, entry_times, onset)
        else:
            # No incident in the failure rate as a whole (steady background errors can hide one):
            # a cluster that began on its own inside the window is still new.
            own = locate(entry_times, np.isin(entry_times, np.asarray(c.times, dtype=np.int64))) if c.times else None
            kind, r_before, r_after = (trend(c.times, entry_times, own) if own is not None and own.significant
                                       else (None, 0.0, 0.0))
            began = own.start_ns if own is not None and own.significant else None
            if kind == "background" or (kind == "new" and late[id(c)] >= stats.ALPHA):
                # A burst of its own, but "new" needs the data before it to show that it was
                # absent: a burst near the start of the data is only a burst.
                kind = None
            if kind is None and len(set(c.times)) >= stats.MIN_SUPPORT and late[id(c)] < stats.ALPHA:
                # Too few to stand out as a burst among steady errors elsewhere, but none of
                # them before its first one: a failure that began inside the window.
                first = min(c.times)
                began = first
                kind, r_before, r_after = "new", 0.0, len(set(c.times)) / max(int((entry_times >= first).sum()), 1)
        significant = kind in ("new", "grown") if kind else bool(burst or sig_attrs)
        # What began with the incident outranks what merely grew, and both outrank the steady
        # background; within a tier, by impact (the share of requests it failed).
        if kind in ("new", "grown"):
            cscore = 1.0 + (0.5 if kind == "new" else 0.0) + min(0.49, rate)
        else:
            cscore = min(1.0, rate * 10) if significant else min(0.3, rate * 10)
        times = sorted(e.time_ns for e in c.events)
        origin = c.origin.most_common(1)[0][0] if c.origin else (main.service, main.operation, None)
        origin_share = (c.origin.most_common(1)[0][1] / sum(c.origin.values())) if c.origin else None
        cid = f"E{i + 1}"
        name = _typed(main.exc_type, main.template)
        short = _short_name(main)
        share = f"{rate:.1%} of {total_label}" if total else "their spans are not in the window: seen in logs alone"
        parts = [f"{short}: {affected} failed request{'s' if affected != 1 else ''} ({share})",
                 f"origin {origin[0]} '{origin[1]}'" + (f" (stage {origin[2]})" if origin[2] else "")]
        if c.propagated:
            parts.append("propagated to " + ", ".join(f"{s} '{o}'" for (s, o), _ in c.propagated.most_common(3)))
        if c.inputs:
            parts.append(c.inputs[0]["summary"])
        if sig_attrs:
            parts.append(attributes.describe(sig_attrs[0], "the cluster", "successes"))
        if kind == "new":
            parts.append(f"new since the onset at {fmt_time(began)}")
        elif kind == "grown":
            parts.append(f"grew from {r_before:.1%} to {r_after:.1%} of requests at {fmt_time(began)}")
        elif kind == "background":
            parts.append(f"steady background errors: {r_before:.1%} of requests before the onset, {r_after:.1%} after")
        elif burst:
            parts.append(f"began at {fmt_time(c.onset.time_ns)}")
        elif not significant:
            parts.append("steady background errors, no burst and no distinguishing attribute")
        examples_logs = [{"trace_id": e.trace_id, "line": e.message[:300]} for e in c.events if e.source == "log"][:3]
        detail = {
            "id": cid, "name": name, "fingerprints": [
                {"fingerprint": fp, "exception_type": evs[0].exc_type, "template": evs[0].template,
                 "frames": list(evs[0].frames), "source": evs[0].source, "count": len(evs)}
                for fp, evs in sorted(fp_events.items(), key=lambda kv: -len(kv[1]))],
            "count": len(c.events), "failed_requests": len(c.traces), "error_rate": rate,
            "first_seen_ns": times[0], "last_seen_ns": times[-1], "burst_counts": c.counts,
            "onset": (c.onset.evidence() | {"significant": c.onset.significant}) if c.onset else None,
            "trend": kind or ("burst" if burst else None), "background": kind == "background",
            "services": sorted({e.service for e in c.events}),
            "operations": sorted({f"{e.service}: {e.operation}" for e in c.events if e.operation}),
            "stages": dict(c.stages),
            "origin": [{"service": s, "operation": o, "stage": st, "traces": n} for (s, o, st), n in c.origin.most_common(5)],
            "propagated": [{"service": s, "operation": o, "traces": n} for (s, o), n in c.propagated.most_common(8)],
            "attributes": [a.evidence() | {"attribute": a.attribute, "value": a.value, "significant": a.significant}
                           for a in c.attrs[:8]],
            "example_trace_ids": sorted(c.traces)[:5], "example_log_lines": examples_logs,
            "log_templates": [{"template": t, "lines": n} for t, n in log_tmpls.most_common(5)],
        }
        details.append(detail)
        top_attr = sig_attrs[0] if sig_attrs else None
        p_best = min([a.p_adj for a in sig_attrs] + ([c.onset.p] if burst else []) + [1.0])
        conf = ("high" if p_best < 1e-6 and origin_share and origin_share >= 0.8 else "medium") if significant else "low"
        findings.append(Finding(
            "error_cluster", "; ".join(parts), cscore, significant,
            conf, {k: detail[k] for k in ("id", "count", "failed_requests", "error_rate", "first_seen_ns", "last_seen_ns",
                                          "origin", "propagated", "services", "stages", "example_trace_ids",
                                          "example_log_lines", "fingerprints")}
            | {"origin_share": origin_share, "attributes": detail["attributes"][:3], "onset": detail["onset"],
               "name": name, "message": main.message, "trend": kind or ("burst" if burst else None),
               "background": kind == "background" or (kind is None and not significant),
               "rate_before_onset": r_before, "rate_after_onset": r_after},
            service=origin[0], operation=origin[1], stage=origin[2],
            attribute=top_attr.attribute if top_attr else None, value=top_attr.value if top_attr else None,
            template=template))
        for x in c.inputs[:2] if significant else []:
            findings.append(Finding("attribute", f"{x['summary']} (incident {cid})", cscore * 0.95, True, conf,
                                    {"cluster": cid, "input_profile": x, "tier": 1},
                                    service=origin[0], attribute=semconv.ML_INPUT_FEATURES, value=x["feature"]))
        if significant and template:
            findings.append(Finding("log", f'ERROR log "{headline(template)}" in {log_tmpls[template]} lines of incident {cid} '
                                           f"({short})", cscore * 0.9, True, conf,
                                    {"cluster": cid, "lines": log_tmpls[template], "example_lines": examples_logs,
                                     "example_trace_ids": [x["trace_id"] for x in examples_logs]},
                                    service=origin[0], template=template))
        if significant:
            # a version is linked to the incident if any distinguishing attribute (or a
            # perfectly confounded alias of one) is that version key, not only the top one
            linked = {a.attribute for a in sig_attrs} | {k for a in sig_attrs for k, _ in a.aliases}
            for v in sorted(new_versions, key=lambda v: attributes.attribute_priority(v.attribute)):  # model first
                if abs(v.first_ns - times[0]) <= timeline.near_ns(width) and (
                        top_attr is None or v.attribute in linked):
                    findings.append(Finding("change", f"{v.attribute}={v.value} first seen at {fmt_time(v.first_ns)}, "
                                                      f"as incident {cid} began", cscore * 0.8, True, "medium",
                                            {"cluster": cid, "first_seen_ns": v.first_ns, "count": v.count},
                                            attribute=v.attribute, value=v.value))
    findings.sort(key=lambda f: (not f.significant, -f.score))
    return findings, details


def _verdict(report: Report) -> list[str]:
    c = report.data["counts"]
    sig = [f for f in report.findings if f.significant and f.kind == "error_cluster"]
    quiet = [f for f in report.findings if not f.significant and f.kind == "error_cluster"]
    if "estimated_requests" in c:  # tail-sampled: estimates for the requests served
        head = (f"~{c['estimated_failed_requests']:.0f} of ~{c['estimated_requests']:.0f} requests failed "
                f"({c['estimated_failed_requests'] / max(c['estimated_requests'], 1e-9):.1%}, re-weighted for tail "
                f"sampling; {c['failed_requests']} of {c['requests']} stored)")
    elif not c["requests"]:
        # trace-linked ERROR logs whose spans never arrived (or were not kept): the failures are
        # real, but there is no request to count them against
        head = "No request's spans are in the window: the errors below were seen in ERROR logs alone"
    else:
        head = f"{c['failed_requests']} of {c['requests']} requests failed"
    inside = c.get("failed_seen_inside", 0)
    if inside:  # many services answer 200 and log the failure: say how the failures were seen
        head += (f" ({c.get('failed_by_entry_status', 0)} by their entry span's status, {inside} seen only inside "
                 f"them: an ERROR span or a trace-linked ERROR log)")
    lines = [f"{head}; {c['error_events']} error events in {len(report.data['clusters'])} incident(s)."]
    if not sig:
        lines.append("No incident stands out: the errors are steady background errors with no burst and no "
                     "attribute that sets them apart from successful requests.")
    for rank, f in enumerate(sig, 1):
        lines.append(f"{rank}. {f.summary} [confidence: {f.confidence}]")
        ex = f.evidence.get("example_trace_ids") or []
        if ex:
            lines.append(f"   open: stagetrace trace {ex[0]}")
    if sig and quiet:
        bg = [f for f in quiet if f.evidence.get("trend") == "background"]
        lines.append(f"Also {len(quiet)} background incident(s) below the significance bar"
                     + (f" ({len(bg)} at the same rate before and after the onset)." if bg else "."))
    return lines
