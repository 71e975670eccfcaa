"""``stagetrace trace ID``: one trace, joined with its logs and metrics.

The report's ``data`` holds the waterfall as a flat list in tree order (depth,
offset, duration, critical-path flag and self time, orphan/clamp marks), each
span's log records and exception events interleaved in time order, the self
time per stage on the critical path, and the metric points of the trace's
services in its time window (padded, since gauges are sampled every few seconds).
"""

from __future__ import annotations

from typing import Any

from stagetrace import semconv
from stagetrace.backend import Backend, LogQuery, MetricQuery
from stagetrace.config import normalize_trace_id
from stagetrace.display import severity_name, shown
from stagetrace.errors import NotFound
from stagetrace.model import Trace

from .critical_path import critical_path
from .logmining import body_text
from .metricnames import SeriesKey, display_names
from .report import Finding, Report, skipped_reason
from .timefmt import fmt_ms, fmt_time

METRIC_PAD_NS = 30_000_000_000
MAX_LOGS_WITHOUT_SPANS = 1000  # log records shown for a trace id that only logs carry


def build_trace_report(backend: Backend, trace_id: str, *, trace: Trace | None = None) -> Report:
    """``trace``: the trace when the caller already fetched it from ``backend``.

    Attribute values, log bodies and exception texts are cut at
    :data:`stagetrace.display.MAX_SHOWN_BYTES` (a view of a trace is no place for a 2 MB
    value; the store keeps it whole). A trace id that only log records carry (the spans
    were lost or never sent) is a report of those logs that says no span was found."""
    tid = normalize_trace_id(trace_id)
    if trace is None:
        trace = backend.get_trace(tid)
    if trace is None or not trace.spans:
        logs = backend.find_logs(LogQuery(trace_ids=[tid], limit=MAX_LOGS_WITHOUT_SPANS))
        if not logs:
            raise NotFound(f"trace {tid} not found in the {backend.name} backend")
        return _logs_only_report(backend, tid, logs)
    cp = critical_path(trace)
    root = cp.root
    t0 = root.span.start_ns
    logs_by_span: dict[str, list] = {}
    unattached = []
    for r in sorted(trace.logs, key=lambda r: r.time_ns):
        item = _log_item(r, t0)
        if r.span_id and r.span_id in cp.nodes:
            logs_by_span.setdefault(r.span_id, []).append(item)
        else:
            unattached.append(item)
    rows: list[dict[str, Any]] = []
    stack = [root]
    seen = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        s = n.span
        events = [{"time_ns": e.time_ns, "offset_ms": (e.time_ns - t0) / 1e6, "name": e.name,
                   "exception_type": shown(e.attributes.get(semconv.EXCEPTION_TYPE)),
                   "message": shown(e.attributes.get(semconv.EXCEPTION_MESSAGE)),
                   "stacktrace": shown(e.attributes.get(semconv.EXCEPTION_STACKTRACE))} for e in s.events]
        rows.append({
            "span_id": s.span_id, "parent_span_id": s.parent_span_id, "depth": n.depth, "service": s.service_name,
            "name": s.name, "kind": s.kind, "stage": n.stage, "own_stage": s.stage,
            "offset_ms": (s.start_ns - t0) / 1e6, "duration_ms": s.duration_ns / 1e6,
            "status": s.status_code, "status_message": shown(s.status_message),
            "critical": s.span_id in cp.self_ns, "self_ms": cp.self_ns.get(s.span_id, 0) / 1e6,
            "orphan": n.orphan, "clamped": n.clamped, "outside_parent": n.outside_parent,
            "attributes": {k: shown(v) for k, v in s.attributes.items()
                           if k not in (semconv.ML_INPUT_VALUE, semconv.ML_OUTPUT_VALUE)},
            "events": events, "logs": logs_by_span.get(s.span_id, []),
        })
        stack.extend(reversed(n.children))
    services = sorted({s.service_name for s in trace.spans})
    metrics = []
    for svc in services:
        try:
            series = backend.metric_series(MetricQuery(service=svc, start_ns=trace.start_ns - METRIC_PAD_NS,
                                                       end_ns=trace.end_ns + METRIC_PAD_NS))
        except Exception as exc:  # metrics are context; a metrics outage must not hide the trace
            metrics.append({"service": svc, "error": skipped_reason(exc)})
            continue
        for ms in series:
            inst = ms.resource.get(semconv.SERVICE_INSTANCE_ID)
            metrics.append({"service": svc, "name": ms.name, "unit": ms.unit, "attributes": ms.attributes,
                            "instance": inst,
                            "points": [{"time_ns": p.time_ns, "offset_ms": (p.time_ns - t0) / 1e6, "value": p.value}
                                       for p in ms.points]})
    # Short names that keep only the labels telling sibling series apart (full labels stay in "attributes").
    named = [m for m in metrics if "error" not in m]
    for m, dn in zip(named, display_names([SeriesKey(m["service"], m["name"], dict(m["attributes"]) | (
            {semconv.SERVICE_INSTANCE_ID: m["instance"]} if m["instance"] else {})) for m in named])):
        m["display_name"] = dn
    by_stage = cp.by_stage()
    total = max(1, sum(by_stage.values()))
    report = Report("trace", f"Trace {tid}", query={"trace_id": tid},
                    window={"start_ns": trace.start_ns, "end_ns": trace.end_ns})
    report.data = {
        "trace_id": tid, "root": {"service": root.span.service_name, "name": root.span.name},
        "start": fmt_time(trace.start_ns), "duration_ms": cp.duration_ns / 1e6, "span_count": len(trace.spans),
        "log_count": len(trace.logs), "services": services, "spans": rows, "unattached_logs": unattached,
        "critical_path": [{"span_id": s.span_id, "offset_ms": (s.start_ns - t0) / 1e6, "duration_ms": s.duration_ns / 1e6}
                          for s in cp.segments if s.duration_ns > 0],
        "stage_self_time": [{"stage": k, "self_ms": v / 1e6, "share": v / total}
                            for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1])],
        "orphans": cp.orphans, "clamped": cp.clamped, "dropped": cp.dropped, "broken": bool(cp.orphans),
        "metrics": metrics,
        "errors": sum(1 for s in trace.spans if s.is_error),
    }
    for st in report.data["stage_self_time"][:1]:
        report.findings.append(Finding("stage", f"{st['stage']} is {st['share']:.0%} of the critical path "
                                                f"({fmt_ms(st['self_ms'] * 1e6)} of {fmt_ms(cp.duration_ns)})",
                                       st["share"], True, None, {"self_ms": st["self_ms"], "share": st["share"]},
                                       stage=st["stage"]))
    err = [r for r in rows if r["status"] == "ERROR" or any(e["name"] == semconv.EXCEPTION_EVENT for e in r["events"])]
    if err:
        deepest = max(err, key=lambda r: r["depth"])
        exc = next((e for e in deepest["events"] if e["exception_type"]), None)
        what = f"{exc['exception_type']}: {exc['message']}" if exc else (deepest["status_message"] or "error")
        report.findings.append(Finding("error_cluster", f"error originates in {deepest['service']} '{deepest['name']}': {what}",
                                       1.0, True, None, {"span_id": deepest["span_id"]}, service=deepest["service"],
                                       operation=deepest["name"], stage=deepest["stage"]))
    report.findings.sort(key=lambda f: -f.score)
    if cp.orphans:
        report.notes.append(f"Broken trace: {len(cp.orphans)} span(s) whose parent is missing (or whose parent ids "
                            "loop) are shown under the root.")
    if cp.clamped:
        report.notes.append(f"{len(cp.clamped)} span(s) overflowed their parent (clock skew) and were clamped for the critical path.")
    if cp.dropped:  # shown in the waterfall, but their time counts nowhere: say so
        report.notes.append(f"{len(cp.dropped)} span(s) lie wholly outside their parent's time (clock skew, or a parent "
                            "that ends before it starts) and were left off the critical path.")
    return report


def _log_item(r, t0: int) -> dict[str, Any]:
    """One log record as the trace view shows it (its body cut at the display limit)."""
    return {"time_ns": r.time_ns, "offset_ms": (r.time_ns - t0) / 1e6, "severity": severity_name(r.severity_text, r.severity_number),
            "severity_number": r.severity_number, "body": shown(body_text(r)), "service": r.service_name,
            "marked": r.severity_number >= 13 or r.is_error}


def _logs_only_report(backend: Backend, tid: str, logs: list) -> Report:
    """The report for a trace id that log records carry but no span does: the logs
    (time, level, service, message), and plainly that no span was found. The same keys
    as a trace with spans, so every renderer and the UI draw it."""
    logs = sorted(logs, key=lambda r: r.time_ns)
    t0, t1 = logs[0].time_ns, logs[-1].time_ns
    services = sorted({r.service_name for r in logs if r.service_name})
    report = Report("trace", f"Trace {tid}", query={"trace_id": tid}, window={"start_ns": t0, "end_ns": t1})
    report.data = {
        "trace_id": tid, "root": None, "start": fmt_time(t0), "duration_ms": (t1 - t0) / 1e6, "span_count": 0,
        "log_count": len(logs), "services": services, "spans": [], "unattached_logs": [_log_item(r, t0) for r in logs],
        "critical_path": [], "stage_self_time": [], "orphans": [], "clamped": [], "dropped": [], "broken": False,
        "metrics": [], "errors": 0, "spans_missing": True,
    }
    more = " (the first ones)" if len(logs) >= MAX_LOGS_WITHOUT_SPANS else ""
    report.verdict = [f"No spans were found for trace {tid} in the {backend.name} backend; "
                      f"{len(logs)} log record(s){more} carry its id and are shown below."]
    return report
