"""``stagetrace investigate slow``: why are these requests slow?

Selection: requests (entry spans) slower than the threshold. Baseline: the other
requests in the window *and* every request before the onset, so the selection
is judged against the service's healthy natural tail, not only against fast
requests. Stage, service/edge, attribute, log, metric and timeline evidence
are computed on bounded samples of whole traces and ranked into findings.

A stage is only called a cause when something shows the slow requests are not
just the natural tail: a significant onset, a significantly higher slow rate
than before the window, or an attribute / log template that sets them apart.
Otherwise the report says there is no significant difference.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import ChainMap
from typing import Any, Mapping, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.backend import Backend, MetricQuery, SpanColumns
from stagetrace.config import parse_duration_ns
from stagetrace.errors import UserError
from stagetrace.model import STATUS_CODES, Span, Trace

from . import attributes, blame, incident, logmining, metricevidence, mlprofiles, stats, timeline
from .progress import steps
from .report import EvidenceGuard, Finding, Report, headline
from .window import (ByTrace, Operations, comparison_weights, entry_requests, fmt_ms, fmt_time,
                     indexed_entry_requests, request_ops, request_weights, rootless_beside_note,
                     rootless_ids_beside, rootless_note)

ERROR = STATUS_CODES.index("ERROR")
MAX_SELECTION = 200
MAX_BASELINE = 400
MAX_AFTER = 300
MIN_BASELINE = 50  # fewer requests before the onset: add the after-onset requests that are not slow
MIN_OP_REQUESTS = 20  # an operation needs this many requests for its own percentile
VERSION_KEYS = (semconv.SERVICE_VERSION, semconv.ML_MODEL_VERSION)


def parse_threshold(threshold: str | int, durations: np.ndarray,
                    weights: np.ndarray | None = None) -> tuple[int, str]:
    """``weights`` (adjusted counts, tail-sampled data) make a percentile threshold
    the percentile of all requests, not of the stored ones (where every slow
    request is kept but only p % of the others, so the stored p95 sits far too high)."""
    if isinstance(threshold, int):
        return threshold, fmt_ms(threshold)
    text = str(threshold).strip().lower()
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", text)
    if m:
        q = float(m.group(1))
        if not 0 < q < 100:
            raise UserError(f"invalid threshold {threshold!r}: percentile must be between p1 and p99.9")
        v = stats.weighted_quantile(durations, q, weights)
        return int(v), f"p{m.group(1)} ({fmt_ms(v)})"
    ns = parse_duration_ns(text)
    return ns, fmt_ms(ns)


def _sample(rows: np.ndarray, k: int, seed: str) -> np.ndarray:
    """``k`` of ``rows`` at random (all of them when there are no more), seeded: the
    positions ``random.sample`` picks depend only on how many there are and ``k``."""
    if len(rows) <= k:
        return rows
    return rows[random.Random(seed).sample(range(len(rows)), k)]


def op_thresholds(threshold: str | int, ops: np.ndarray | Operations, dur: np.ndarray,
                  weights: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, str, dict[str, int]]:
    """Per request, the duration over which it is slow *for its own entry operation*.

    A percentile threshold is that percentile of the request's operation (over
    ``mask``, e.g. the requests before the onset: what the operation normally
    takes); an operation with fewer than MIN_OP_REQUESTS requests there falls
    back to the percentile of all of them. A duration applies to every operation.
    Returns (threshold per request, label, threshold per operation)."""
    mask = np.ones(dur.size, bool) if mask is None else mask
    if mask.sum() < MIN_OP_REQUESTS:
        mask = np.ones(dur.size, bool)
    glob, label = parse_threshold(threshold, dur[mask], None if weights is None else weights[mask])
    per_op: dict[str, int] = {}
    out = np.full(dur.size, glob, dtype=np.int64)
    if isinstance(ops, Operations):  # codes into unique names: no sort of a million strings
        codes, names = ops.codes, ops.names
    else:
        uniq_names, codes = np.unique(ops, return_inverse=True)
        codes, names = codes.reshape(-1), [str(o) for o in uniq_names]
    uniq = sorted(np.unique(codes).tolist(), key=lambda c: names[c])  # in name order, as np.unique(names)
    if isinstance(threshold, int) or not re.fullmatch(r"p\d+(?:\.\d+)?", str(threshold).strip().lower()):
        return out, label, {names[c]: glob for c in uniq}
    for c in uniq:
        sel = codes == c
        m = sel & mask
        thr = glob
        if m.sum() >= MIN_OP_REQUESTS:
            thr, _ = parse_threshold(threshold, dur[m], None if weights is None else weights[m])
        out[sel] = thr
        per_op[names[c]] = thr
    if len(uniq) > 1:
        label = f"{str(threshold).strip().lower()} of each operation"
    return out, label, per_op


def investigate_slow(backend: Backend, *, service: str | None = None, route: str | None = None,
                     start_ns: int | None = None, end_ns: int | None = None,
                     threshold: str | int = "p95", progress: bool = False) -> Report:
    query = {"service": service, "route": route, "threshold": str(threshold)}
    guard = EvidenceGuard()
    with steps(8, progress) as bar:
        bar.step("reading requests")
        # the requests as columns: whole spans only for the sampled ones (10M-span windows)
        req, row_of = indexed_entry_requests(backend, service=service, route=route, start_ns=start_ns, end_ns=end_ns)
        if not len(req):
            r = Report("slow", "Slow requests", query=query, window={"start_ns": start_ns, "end_ns": end_ns})
            r.verdict = ["No requests matched the window and filters, so there is nothing to explain."]
            note = None if route else rootless_note(backend, service=service, start_ns=start_ns, end_ns=end_ns)
            if note:
                r.notes.append(note)
            _note_missing_data(backend, r, start_ns, end_ns)  # "no requests" may be a quarantined block
            return r
        # the rootless-trace count's read runs beside the analysis of the requests below
        rootless = None if route else rootless_ids_beside(backend, start_ns=start_ns, end_ns=end_ns)
        t0 = req.start_ns
        dur = np.maximum(req.duration_ns, 0)  # as Span.duration_ns
        w_start = start_ns if start_ns is not None else int(t0[0])
        w_end = end_ns if end_ns is not None else int(t0.max()) + 1
        ops = request_ops(backend, req)
        op_of = ByTrace(row_of, req.trace_ids, lambda i: ops.names[ops.codes[i]])
        # Tail-sampled data (Tempo behind the gateway Collector): each stored request
        # stands for its adjusted count; {} = unsampled, every analysis unweighted.
        warr = request_weights(req)
        wmap = ByTrace(row_of, req.trace_ids, lambda i: float(warr[i])) if warr is not None else {}
        # --- where the incident is ----------------------------------------------------------
        bar.step("finding the incident")
        inc, thr_arr, thr_label, per_op = _incident(threshold, ops, dur, t0, warr)
        if inc is None or not inc.significant or inc.p > STRONG_P:
            # A fault in one component can leave the entry latency almost unchanged (a few
            # calls among many): then the component's own time per call shows where it began.
            weak = inc is not None and inc.significant
            by_step = guard.run("component steps", _component_step, backend, req, row_of, t0, dur > thr_arr,
                                jumps_only=weak)
            # the clearer of the two: a weak burst of slow requests loses to a component that
            # jumped by an order of magnitude and made requests slower
            if by_step is not None and (inc is None or not inc.significant
                                        or (by_step.p < inc.p and by_step.made_slower)):
                inc = by_step
                normal = ~((t0 >= inc.start_ns) & (t0 < inc.end_ns)) & (t0 >= inc.frame[0]) & (t0 < inc.frame[1])
                thr_arr, thr_label, per_op = op_thresholds(threshold, ops, dur, warr, mask=normal)
        slow = dur > thr_arr
        before = None
        if (inc is None or not inc.significant) and start_ns is not None:
            # No incident inside the window: it may have begun before the window did (a window
            # that starts mid-incident holds no normal data, and its own p95 is the fault's
            # tail). Then the period before the window is the normal data: each request is
            # judged against what its operation took there, and compared with those requests.
            before = guard.run("the period before the window", _before_window, backend, service, route, threshold,
                               ops, dur, thr_arr, warr, w_start, w_end)
            if before is not None:
                thr_arr, thr_label, per_op, slow = before.thr, before.label, before.per_op, before.slow
        if inc is not None and inc.significant:
            # Analyse the incident and the normal data around it; the rest of the window
            # (however long the user made it) does not dilute it.
            f_lo, f_hi = inc.frame
        else:
            f_lo, f_hi = w_start, w_end
        in_frame = (t0 >= f_lo) & (t0 < f_hi)
        width = timeline.analysis_width(f_lo, f_hi, t0[in_frame])
        e = timeline.edges(f_lo, f_hi, width)
        fi = np.flatnonzero(in_frame)  # the frame's requests (rows)
        f_t0, f_slow = t0[in_frame], slow[in_frame]
        f_w = None if warr is None else warr[in_frame]
        k, n = timeline.counts(f_t0, f_slow, e)
        kw, nw = (timeline.weighted_counts(f_t0, f_slow, f_w, e) if f_w is not None else (k, n))
        onset = _onset_of(inc, e) if inc is not None and inc.significant else None
        thr_ns = int(np.median(thr_arr))
        report = Report("slow", f"Slow requests (over {thr_label})", query=query,
                        window={"start_ns": w_start, "end_ns": w_end})
        skipped = None if route else guard.run("the rootless-trace count", rootless_beside_note, backend,
                                                service=service, start_ns=start_ns, end_ns=end_ns, requests=row_of,
                                                ids=rootless)
        if skipped:
            report.notes.append(skipped)
        report.data.update({"threshold_ns": thr_ns, "threshold_label": thr_label,
                            "thresholds_by_operation": {o: v / 1e6 for o, v in list(per_op.items())[:50]},
                            "counts": {"requests": int(dur.size), "slow": int(slow.sum())}})
        report.data["sampling"] = _sampling_info(warr)
        # the chart covers the whole window the user asked for
        d_width = timeline.analysis_width(w_start, w_end, t0)
        d_e = timeline.edges(w_start, w_end, d_width)
        if warr is not None:
            report.data["counts"].update({"estimated_requests": float(warr.sum()),
                                          "estimated_slow": float(warr[slow].sum())})
            dk, dn = timeline.weighted_counts(t0, slow, warr, d_e)
            errw, _ = timeline.weighted_counts(t0, req.status == ERROR, warr, d_e)
            report.data["timeline"] = timeline.request_timeline(d_e, dk, dn, errw, t0, dur, warr)
        else:
            dk, dn = timeline.counts(t0, slow, d_e)
            errk, _ = timeline.counts(t0, req.status == ERROR, d_e)
            report.data["timeline"] = timeline.request_timeline(d_e, dk, dn, errk, t0, dur)
        report.data["incident"] = inc.evidence() | {"significant": inc.significant} if inc is not None else None
        if not slow.any():
            report.verdict = [f"No request was slower than {thr_label} in the window; nothing to explain."]
            return report
        anomaly: list[str] = []
        if onset is not None:
            anomaly.append(_incident_text(inc))
        elif before is not None:
            anomaly.append(before.text)
        # --- samples ----------------------------------------------------------------------
        bar.step("fetching sample traces")
        onset_ns = inc.start_ns if onset is not None else None
        inc_end = inc.end_ns if onset is not None else None

        # pools of rows, in time order (sampling picks positions, so the same requests as ids would)
        f_inside = ((f_t0 >= onset_ns) & (f_t0 < inc_end) if onset_ns is not None
                    else np.zeros(len(fi), dtype=bool))
        sel_pool = fi[f_slow & f_inside] if onset_ns is not None else fi[f_slow]
        if onset_ns is not None:
            # The incident's requests are compared with the normal ones around it (natural tail included).
            base_pool = fi[~f_inside]
            if len(base_pool) < MIN_BASELINE:
                base_pool = np.concatenate([base_pool, fi[~f_slow & f_inside]])
        elif before is not None:  # the whole window is the incident; the period before it is normal
            base_pool = np.arange(len(before.req))
        else:
            base_pool = fi[~f_slow]
        ids_of = req.trace_ids
        sel_ids = [ids_of[i] for i in _sample(sel_pool, MAX_SELECTION, "selection").tolist()]
        base_ids = [(before.req.trace_ids if before is not None else ids_of)[i]
                    for i in _sample(base_pool, MAX_BASELINE, "baseline").tolist()]
        # Every request of the incident, slow or not: what components are scored on (see blame).
        after_ids = ([ids_of[i] for i in _sample(fi[f_inside] if onset_ns is not None else fi, MAX_AFTER,
                                                 "after").tolist()]
                     if onset_ns is not None or before is not None else [])
        want = list(dict.fromkeys(sel_ids + base_ids + after_ids))
        fetched = backend.get_traces(want, start_ns=before.start_ns if before is not None else f_lo,
                                     end_ns=f_hi + 600_000_000_000, with_logs=True)
        entry_of = ByTrace(row_of, ids_of, req.span, in_frame)
        base_entry = ByTrace(before.rows, before.req.trace_ids, before.req.span) if before is not None else entry_of
        # With --service S called by others, the request is S's entry span: analyse its subtree only.
        sel = [_subtree(fetched[t], entry_of[t]) for t in sel_ids if t in fetched]
        base = [_subtree(fetched[t], base_entry[t]) for t in base_ids if t in fetched and t in base_entry]
        if before is not None:  # the baseline's operations and adjusted counts are the period before's
            op_of, wmap = ChainMap(op_of, before.op_of), ChainMap(wmap, before.weights) if before.weights else wmap
        report.data["counts"].update({"selection": len(sel_pool), "baseline": len(base_pool),
                                      "sampled_selection": len(sel), "sampled_baseline": len(base)})
        if onset_ns is not None:
            report.data["counts"]["incident_requests"] = inc.n_in
        report.data["latency_histogram"] = _histogram(dur[slow], dur[~slow], thr_ns,
                                                      None if warr is None else (warr[slow], warr[~slow]))
        # --- where the time went, per component ---------------------------------------------
        bar.step("critical paths")
        sel_costs, base_costs = blame.trace_costs(sel), blame.trace_costs(base)
        after = [_subtree(fetched[t], entry_of[t]) for t in after_ids if t in fetched]
        after_costs = blame.trace_costs(after)
        if onset_ns is not None and inc.by == "rate":
            # The slow rate's onset can sit on a busy component's burst; a component that
            # stepped up earlier marks the real start. And a rate incident that ended can be
            # the first of two faults: a component that stepped up after it, and stayed up,
            # is the trouble going on in another form (its requests may not clear the slow bar,
            # which the first wave's tail set). Either way, re-split the same samples.
            # (An incident located by a component's own step already starts there.)
            start_of = ByTrace(row_of, ids_of, lambda i: int(t0[i]), in_frame)
            pool = {tc.trace_id: tc for tc in (*base_costs, *after_costs)}
            upto = [tc for tc in pool.values() if start_of[tc.trace_id] < inc_end]
            stepped = blame.key_steps(upto, start_of, f_lo, inc_end)
            step = min(stepped, key=lambda o: o.time_ns) if stepped else None
            new_onset = step.time_ns if step is not None and onset_ns - step.time_ns >= (inc_end - f_lo) // 10 \
                else onset_ns
            later = None
            if not inc.ongoing:
                outside = [tc for tc in pool.values() if not onset_ns <= start_of[tc.trace_id] < inc_end]
                after_end = [o for o in blame.key_steps(outside, start_of, f_lo, f_hi) if o.time_ns >= inc_end]
                later = min(after_end, key=lambda o: o.time_ns) if after_end else None
            new_end = f_hi if later is not None else inc_end
            if (new_onset, new_end) != (onset_ns, inc_end):
                onset_ns, inc_end = new_onset, new_end
                base_costs = [tc for tc in pool.values() if not onset_ns <= start_of[tc.trace_id] < inc_end]
                after_costs = [tc for tc in pool.values() if onset_ns <= start_of[tc.trace_id] < inc_end]
                slow_ids = ByTrace(row_of, ids_of, bool, in_frame & slow)
                have = {x.trace_id for x in sel_costs}
                sel_costs = sel_costs + [tc for tc in after_costs if tc.trace_id in slow_ids and tc.trace_id not in have]
                by_trace = {t.trace_id: t for t in (*sel, *base, *after)}
                sel = [by_trace[tc.trace_id] for tc in sel_costs]
                base = [by_trace[tc.trace_id] for tc in base_costs]
                after = [by_trace[tc.trace_id] for tc in after_costs]
                onset = _onset_at(onset_ns, f_t0, f_slow, onset, inc_end)
                what = _rate_change(onset.rate_before, onset.rate_after, onset.time_ns)
                if new_onset != inc.start_ns:
                    report.data["onset_from"] = {"key": list(step.key), "p_value": step.p,
                                                 "before_ms": step.before_ns / 1e6, "after_ms": step.after_ns / 1e6}
                if later is not None:
                    report.data["second_wave"] = {"key": list(later.key), "p_value": later.p, "onset_ns": later.time_ns,
                                                  "first_end_ns": inc.end_ns, "before_ms": later.before_ns / 1e6,
                                                  "after_ms": later.after_ns / 1e6}
                    what += (f"; as that wave ended at {fmt_time(inc.end_ns)}, "
                             f"{_key_text(later.key)} stepped up at {fmt_time(later.time_ns)} (its own time per call) and is still up")
                anomaly[0:1] = [what]
        grown = guard.run("per-call growth", blame.keys_grown, base_costs, after_costs, default=set()) \
            if after_costs else set()
        bl = guard.run("component blame", blame.blame, sel_costs, base_costs, after=after_costs or None,
                       stepped=grown, weights=wmap or None, default=blame.Blame([], {}, {}, {}, {}))
        bar.step("attributes and logs")
        groups = _groups(bl, len(sel))
        by_id = {t.trace_id: t for t in sel}
        # Evidence over all the slow requests (the only comparison that may call them
        # anomalous: slicing them per group first would be dredging), then per group when
        # concurrent causes split them, to attach to each component what sets its requests apart.
        whole = comparison_weights(sel, base, op_of, wmap)
        evidence: list[tuple[blame.Component | None, list, list]] = [
            (groups[0] if len(groups) == 1 else None,
             guard.run("attributes", attributes.compare, sel, base, weights=whole, default=[]),
             guard.run("log templates", logmining.over_represented, sel, base, weights=whole, default=[]))]
        if any(a.significant for a in evidence[0][1]):
            # the headline only says *that* attributes set them apart: the cause is finding #1 (one story)
            anomaly.append("span or resource attributes set the slow requests apart")
        if any(s.significant for s in evidence[0][2]):
            anomaly.append("log templates set the slow requests apart")
        # The model's inputs (issue 18): what the slow requests' predictions were fed, per feature,
        # against the incident's other requests (the same time: inputs that drift over the
        # window would otherwise set the whole incident apart, slow or not).
        slow_set = ByTrace(row_of, ids_of, bool, in_frame & slow)  # the frame's slow requests
        peers = [t for t in after if t.trace_id not in slow_set] if after else base
        inputs = guard.run("model inputs", mlprofiles.compare_trace_inputs, sel, peers, "slow", default=[])
        if any(x["significant"] for x in inputs):
            anomaly.append("the model's inputs set the slow requests apart")
        for comp in groups if len(groups) > 1 else []:
            members = [by_id[t] for t in comp.group if t in by_id]
            weights = comparison_weights(members, base, op_of, wmap)  # this group's operation mix
            evidence.append((comp, guard.run("attributes", attributes.compare, members, base, weights=weights, default=[]),
                             guard.run("log templates", logmining.over_represented, members, base, weights=weights,
                                       default=[])))
        # Where in the blamed component: its slow calls against its normal ones, one span each,
        # so a bad host that serves half the calls stands out (per request, nearly every
        # request touches it once among several calls and nothing separates).
        call_attrs = [(c, guard.run("call attributes", _call_attributes, c, [*sel, *after], base, default=[]))
                      for c in bl.components if c.significant][:2]
        if not anomaly:  # the natural tail: nothing is a cause, in any group
            for c in bl.components:
                c.significant = False
            for _, al, ll in evidence:
                for x in (*al, *ll):
                    x.significant = False
            for _, al in call_attrs:
                for x in al:
                    x.significant = False
            for x in inputs:
                x["significant"] = False
        bar.step("metrics")
        rate = np.where(nw > 0, kw / np.where(nw > 0, nw, 1), np.nan)
        if onset_ns is not None:
            slow_periods = (e[1:] > onset_ns) & (e[:-1] < inc_end)
        else:
            base_rate = kw.sum() / max(nw.sum(), 1)
            slow_periods = rate > base_rate
        series = guard.run("metrics", backend.metric_series, MetricQuery(start_ns=f_lo, end_ns=f_hi), default=[])
        metric_stats = guard.run("metrics", metricevidence.evidence, series, e, rate, slow_periods, default=[])
        # A resource step is a cause of slowness only for a service on the requests' path
        # whose own calls did take longer after it (however few of them the traces hold).
        all_costs = [*sel_costs, *base_costs, *after_costs]
        start_of_all = ByTrace(row_of, ids_of, lambda i: int(t0[i]), in_frame)
        res_steps = [r for r in guard.run("resource metrics", _resource_steps, backend, f_lo, f_hi, default=[])
                     if blame.service_slowed(all_costs, start_of_all, r.service, r.time_ns)]
        if res_steps and not anomaly:
            r = res_steps[0]
            anomaly.append(f"{r.service}: {r.name} stepped up from {_lvl(r.before, r.unit)} to "
                           f"{_lvl(r.after, r.unit)} at {fmt_time(r.time_ns)}")
        bar.step("versions")
        changes = guard.run("version changes", _version_changes, req, fi, sel + base, f_lo, width, onset, default=[])
        # --- findings ------------------------------------------------------------------------------
        bar.step("ranking")
        report.findings = _findings(bl, groups, evidence, metric_stats, onset, changes, thr_label, len(sel), res_steps,
                                    call_attrs, inputs)
        if onset is not None and inc.by == "component":
            _add_stepped_component(report.findings, inc)
        if not any(f.significant and f.is_cause for f in report.findings):
            # When it began is context for a cause, not a cause: with none found (a whole machine
            # slowed, one key's warm-up) the onset must not read as a finding the user can act on.
            for f in report.findings:
                if f.kind == "change" and f.attribute is None:
                    f.significant = False
                    f.confidence = "low"
        report.data["stage_breakdown"] = _stage_rows(sel_costs, base_costs, bl)
        report.data["operations"] = [
            {"level": "service", "key": c.service, "service": c.service, "operation": c.operation,
             "selection_mean_ms": c.sel_mean_ns / 1e6, "baseline_mean_ms": c.base_mean_ns / 1e6,
             "excess_ms": c.excess_ns / 1e6, "share_of_excess": c.share, "where": c.where}
            for c in bl.components][:10]
        report.data["edges"] = [g.evidence() for g in sorted(bl.edges.values(), key=lambda g: g.base_mean_ns - g.sel_mean_ns)
                                if g.grew][:10]
        report.data["groups"] = [{"service": c.service, "operation": c.operation, "stage": c.stage,
                                  "requests": len(c.group), "share_of_excess": c.share} for c in groups]
        report.data["onset"] = onset.evidence() | {"significant": onset.significant} if onset else None
        report.data["example_trace_ids"] = [tc.trace_id for tc in sorted(sel_costs, key=lambda b: -b.duration_ns)[:5]]
        report.data["anomaly"] = anomaly
        report.verdict = _verdict(report, thr_label, anomaly)
        report.notes.append("Each request is compared with what its own entry operation, and each span with what its "
                            "own operation, normally costs (the baseline's critical-path time per occurrence), so "
                            "routes that are always heavy are not evidence.")
        report.notes.append(f"Significance: Benjamini-Hochberg adjusted p < {stats.ALPHA} plus a minimum effect size; "
                            f"samples of at most {MAX_SELECTION} slow and {MAX_BASELINE} baseline traces.")
        if warr is not None:
            mark_weighted(report)
        _note_missing_data(backend, report, w_start, w_end)
        guard.note(report)
        return report


def _note_missing_data(backend: Backend, report: Report, start_ns: int | None, end_ns: int | None) -> None:
    """Say in the report when stored data in its window was quarantined as corrupt."""
    from stagetrace.collector.quarantine import missing_data_note
    note = missing_data_note(backend, start_ns, end_ns)
    if note:
        report.notes.append(note)


def _onset_at(time_ns: int, t0: np.ndarray, slow: np.ndarray, like: timeline.Onset, end_ns: int) -> timeline.Onset:
    """The onset moved to ``time_ns``: slow rates outside and inside [time_ns, end_ns), and their test."""
    inside = (t0 >= time_ns) & (t0 < end_ns)
    kb, nb, ka, na = int(slow[~inside].sum()), int((~inside).sum()), int(slow[inside].sum()), int(inside.sum())
    p = stats.share_test(ka, na, kb, nb)
    return timeline.Onset(like.index, int(time_ns), p, kb / max(nb, 1), ka / max(na, 1), True)


def _incident(threshold, ops, dur, t0, warr) -> tuple[incident.Incident | None, np.ndarray, str, dict[str, int]]:
    """Locate the incident on the per-operation slow rate, then re-derive the thresholds from
    its normal periods only (what each operation normally takes) and locate it again."""
    thr_arr, label, per_op = op_thresholds(threshold, ops, dur, warr)
    inc = incident.locate_merged(t0, dur > thr_arr)
    if inc is None or not inc.significant:
        return inc, thr_arr, label, per_op
    normal = (t0 >= inc.frame[0]) & (t0 < inc.frame[1]) & ~((t0 >= inc.start_ns) & (t0 < inc.end_ns))
    thr2, label2, per_op2 = op_thresholds(threshold, ops, dur, warr, mask=normal)
    inc2 = incident.locate_merged(t0, dur > thr2)
    if inc2 is not None and inc2.significant:
        return inc2, thr2, label2, per_op2
    # the period stands; its rates restated with the thresholds of its normal periods
    inside, framed = (t0 >= inc.start_ns) & (t0 < inc.end_ns), (t0 >= inc.frame[0]) & (t0 < inc.frame[1])
    slow2 = dur > thr2
    ki, ni = int(slow2[inside].sum()), int(inside.sum())
    ko, no = int(slow2[framed & ~inside].sum()), int((framed & ~inside).sum())
    inc = dataclasses.replace(inc, rate_in=ki / max(ni, 1), rate_out=ko / max(no, 1), hits_in=ki, n_in=ni,
                              hits_out=ko, n_out=no)
    return inc, thr2, label2, per_op2


MAX_STEP_SAMPLE = 600
STRONG_P = 1e-6  # a rate incident this clear needs no corroboration from components


def _component_step(backend: Backend, req: SpanColumns, row_of: Mapping[str, int], t0: np.ndarray,
                    slow: np.ndarray, jumps_only: bool = False) -> incident.Incident | None:
    """Where one operation's or call edge's own time per call stepped up and stayed there,
    on a sample of requests spread evenly over the data: the clearest order-of-magnitude
    jump, else the earliest lasting step. An incident that runs from there to the end of
    the data, naming the service it blames; None when no component stepped up."""
    n = len(req)
    if n < 2 * incident.MIN_OUTSIDE:
        return None
    pick = np.unique(np.linspace(0, n - 1, min(n, MAX_STEP_SAMPLE)).astype(int))  # requests are in time order
    ids = [req.trace_ids[i] for i in pick.tolist()]
    lo, hi = int(t0.min()), int(t0.max()) + 1
    fetched = backend.get_traces(ids, start_ns=lo, end_ns=hi + 600_000_000_000)
    costs = blame.trace_costs([_subtree(fetched[t], req.span(row_of[t])) for t in ids if t in fetched])
    start_of = {tc.trace_id: int(t0[row_of[tc.trace_id]]) for tc in costs}
    # The newest requests' traces may still be arriving (children exported after their parent
    # look like self time): a jump that begins in the last 5% of the data is not trusted. One
    # in the first tenth has too few calls before it to call a change (warm-up, or data spliced
    # from another period): the same margin key_steps keeps on each side.
    first, edge = lo + (hi - lo) // 10, hi - (hi - lo) // 20
    jumps = [j for j in blame.key_jumps(costs, start_of) if first <= j.time_ns < edge]
    if jumps:
        # the clearest order-of-magnitude jump (a level shift between two recorded periods
        # can jump earlier, and less clearly, than the fault)
        step = min(jumps, key=lambda o: (o.p, o.time_ns))
    elif jumps_only:
        return None
    else:
        steps_found = blame.key_steps(costs, start_of, lo, hi)
        if not steps_found:
            return None
        step = min(steps_found, key=lambda o: o.time_ns)
    inside = t0 >= step.time_ns
    ki, ni, ko, no = int(slow[inside].sum()), int(inside.sum()), int(slow[~inside].sum()), int((~inside).sum())
    through = [(start_of[tc.trace_id] >= step.time_ns, bool(slow[row_of[tc.trace_id]]))
               for tc in costs if blame.has_key(tc, step.key)]
    own = [[s for a, s in through if a == side] for side in (False, True)]
    key_slow = (float(np.mean(own[0])), float(np.mean(own[1]))) if own[0] and own[1] else None
    return incident.Incident(step.time_ns, hi, step.p, ki / max(ni, 1), ko / max(no, 1), ki, ni, ko, no, True, True,
                             incident.frame_of(step.time_ns, hi, lo, hi), by="component", key=step.key,
                             service=blame.key_service(step, costs, start_of),
                             key_ms=(step.before_ns / 1e6, step.after_ns / 1e6), key_slow=key_slow)


def _onset_of(inc: incident.Incident, e: np.ndarray) -> timeline.Onset:
    idx = int(np.clip(np.searchsorted(e, inc.start_ns, side="right") - 1, 0, max(len(e) - 2, 0)))
    return timeline.Onset(idx, inc.start_ns, inc.p, inc.rate_out, inc.rate_in, True)


def _rate_change(before: float, after: float, at_ns: int) -> str:
    """The slow rate's change at a re-split onset, as it went: a re-split that runs to the end
    of the frame (a second wave) can take in more ordinary requests than slow ones."""
    if after > before:
        return f"the slow rate rose from {before:.1%} to {after:.1%} at {fmt_time(at_ns)}"
    return f"the incident starts at {fmt_time(at_ns)} (slow rate {before:.1%} before, {after:.1%} from then on)"


def _key_text(key: tuple[str, str, str]) -> str:
    """An operation or call edge as the verdict names it."""
    level, svc, op = key
    if key == blame.calls_into(svc):
        return f"calls into {svc} (from every caller)"
    return f"calls {op.replace('->', ' to ')}" if level == "edge" else f"{svc}: {op}"


def _incident_text(inc: incident.Incident) -> str:
    if inc.by == "component" and inc.key:
        return (f"{_key_text(inc.key)} stepped up at {fmt_time(inc.start_ns)} (its own time per call), "
                f"{inc.n_in} requests since then")
    until = "and is still going on" if inc.ongoing else f"until {fmt_time(inc.end_ns)}"
    return (f"the slow rate rose from {inc.rate_out:.1%} to {inc.rate_in:.1%} at {fmt_time(inc.start_ns)} {until} "
            f"({inc.n_in} requests in the incident)")


def _groups(bl: blame.Blame, n_sel: int) -> list[blame.Component]:
    """Components that each explain their own set of slow requests (concurrent causes)."""
    floor = max(stats.MIN_SUPPORT, int(0.1 * n_sel))
    out = [c for c in bl.components if c.significant and len(c.group) >= floor]
    if not out:
        out = [c for c in bl.components if c.significant][:1]
    return out


def _stage_rows(sel_costs, base_costs, bl: blame.Blame) -> list[dict[str, Any]]:
    """Critical-path time per ML stage (for the chart): only when the traces carry stages."""
    def per_stage(costs):
        acc: dict[str, float] = {}
        for tc in costs:
            for k, v in tc.self_ns.items():
                st = tc.stage_of.get(k, semconv.STAGE_OTHER)
                acc[st] = acc.get(st, 0.0) + v
        return {st: v / max(len(costs), 1) for st, v in acc.items()}
    s, b = per_stage(sel_costs), per_stage(base_costs)
    if set(s) | set(b) <= {semconv.STAGE_OTHER}:
        return []
    total = sum(max(v[0], 0.0) for v in bl.stage_excess.values()) or 1.0
    rows = []
    for st in sorted(set(s) | set(b)):
        ex = bl.stage_excess.get(st, (0.0, 0.0))[0]
        rows.append({"stage": st, "selection_mean_ms": s.get(st, 0.0) / 1e6, "baseline_mean_ms": b.get(st, 0.0) / 1e6,
                     "excess_ms": ex / 1e6, "share_of_excess": max(ex, 0.0) / total})
    return sorted(rows, key=lambda r: -r["excess_ms"])


def _sampling_info(warr: np.ndarray | None) -> dict[str, Any]:
    if warr is None:
        return {"weighted": False}
    return {"weighted": True, "attribute": semconv.SAMPLING_ADJUSTED_COUNT, "stored_requests": int(warr.size),
            "estimated_requests": float(warr.sum()), "weighted_requests": int((warr != 1.0).sum()),
            "max_adjusted_count": float(warr.max())}


def mark_weighted(report: Report) -> None:
    """Say in every finding and in the notes that the numbers are re-weighted."""
    for f in report.findings:
        f.evidence["sampling_weighted"] = True
    info = report.data.get("sampling") or {}
    report.notes.append(
        f"Tail-sampled data: {info.get('weighted_requests', 0)} of {info.get('stored_requests', 0)} stored requests carry "
        f"{semconv.SAMPLING_ADJUSTED_COUNT} (up to {info.get('max_adjusted_count', 1):g}); percentiles, shares, rates and "
        f"means are weighted by it (Horvitz-Thompson; missing = 1) to stand for the ~{info.get('estimated_requests', 0):.0f} "
        f"requests served. Significance tests use the stored counts (Kish effective sample sizes for weighted shares), "
        f"never the inflated estimates.")


def _subtree(trace: Trace, entry: Span) -> Trace:
    if not entry.parent_span_id:
        return trace
    kids: dict[str, list[Span]] = {}
    for s in trace.spans:
        kids.setdefault(s.parent_span_id, []).append(s)
    keep, stack = [], [entry.span_id]
    seen = set()
    by_id = {s.span_id: s for s in trace.spans}
    while stack:
        sid = stack.pop()
        if sid in seen or sid not in by_id:
            continue
        seen.add(sid)
        keep.append(by_id[sid])
        stack.extend(c.span_id for c in kids.get(sid, []))
    logs = [r for r in trace.logs if r.span_id in seen]
    # keep the ML stage the caller gave this call (a feature service's work is feature_fetch)
    p = by_id.get(entry.parent_span_id)
    hops = 0
    while p is not None and p.stage is None and hops < 1000:
        p, hops = by_id.get(p.parent_span_id), hops + 1
    if p is not None and p.stage and entry.stage is None and keep:
        keep[0] = dataclasses.replace(keep[0], attributes=keep[0].attributes | {semconv.ML_STAGE: p.stage})
    return Trace(trace.trace_id, keep, logs)


@dataclasses.dataclass(frozen=True)
class _Before:
    """The period before the window as the normal data of a window that holds none."""

    req: SpanColumns  # its requests
    rows: Mapping[str, int]  # trace id -> row of ``req``
    start_ns: int
    thr: np.ndarray  # per request of the window: its operation's threshold before the window
    label: str
    per_op: dict[str, int]
    slow: np.ndarray  # per request of the window: slower than that
    text: str  # the anomaly, as the verdict says it
    op_of: Mapping[str, str]  # trace id -> entry operation, of the requests before the window
    weights: Mapping[str, float] | None  # trace id -> adjusted count there (tail-sampled data)


def _before_window(backend: Backend, service: str | None, route: str | None, threshold: str | int,
                   ops: Operations, dur: np.ndarray, own_thr: np.ndarray, warr: np.ndarray | None,
                   w_start: int, w_end: int) -> _Before | None:
    """The window against an equally long period before it (capped at 1 h), when the window's
    requests are slower than their operations were there: the share of them over the
    threshold taken before the window (p95 of each operation there) against that period's
    own share. The test runs on stored counts; the rates compared (the effect) are the
    weighted ones when the data is tail-sampled. An operation not seen before the window
    keeps the window's own threshold. None when the window is not slower."""
    span = min(3 * (w_end - w_start), 3_600_000_000_000)
    req_b, rows_b = indexed_entry_requests(backend, service=service, route=route, start_ns=w_start - span,
                                           end_ns=w_start)
    if len(req_b) < incident.MIN_OUTSIDE:
        return None
    dur_b, w_b = np.maximum(req_b.duration_ns, 0), request_weights(req_b)
    ops_b = request_ops(backend, req_b)
    thr_b, label, per_op = op_thresholds(threshold, ops_b, dur_b, w_b)
    of_code = np.array([per_op.get(name, -1) for name in ops.names], dtype=np.int64)
    thr = np.where(of_code[ops.codes] >= 0, of_code[ops.codes], own_thr)
    slow, slow_b = dur > thr, dur_b > thr_b
    p = stats.share_test(int(slow.sum()), len(slow), int(slow_b.sum()), len(slow_b))

    def rate(flags: np.ndarray, w: np.ndarray | None) -> float:
        return float(w[flags].sum() / max(w.sum(), 1e-9)) if w is not None else float(flags.mean())
    rin, rb = rate(slow, warr), rate(slow_b, w_b)
    if not (p < stats.ALPHA and rin >= 2 * max(rb, 1e-9)):
        return None
    label = f"{label} before the window"
    return _Before(req_b, rows_b, int(req_b.start_ns.min()), thr, label, per_op, slow,
                   f"{rin:.1%} of requests were slower than {label} vs {rb:.1%} before it",
                   ByTrace(rows_b, req_b.trace_ids, lambda i: ops_b.names[ops_b.codes[i]]),
                   ByTrace(rows_b, req_b.trace_ids, lambda i: float(w_b[i])) if w_b is not None else None)


def _histogram(sel: np.ndarray, base: np.ndarray, thr: int, weights=None) -> dict[str, Any]:
    """Counts per latency bin; with ``weights`` (selection, baseline) estimated counts, rounded."""
    allv = np.concatenate([sel, base]).astype(float)
    lo, hi = max(allv.min(), 1e4), max(allv.max(), 1e5)
    edges = np.geomspace(lo, hi * 1.0001, 31)
    if weights is not None:
        hs = [int(round(x)) for x in np.histogram(sel, edges, weights=weights[0])[0]]
        hb = [int(round(x)) for x in np.histogram(base, edges, weights=weights[1])[0]]
        return {"edges_ms": (edges / 1e6).tolist(), "selection": hs, "baseline": hb, "threshold_ms": thr / 1e6}
    return {"edges_ms": (edges / 1e6).tolist(), "selection": np.histogram(sel, edges)[0].tolist(),
            "baseline": np.histogram(base, edges)[0].tolist(), "threshold_ms": thr / 1e6}


def _version_changes(req: SpanColumns, rows: np.ndarray, traces: Sequence[Trace], w_start, width,
                     onset) -> list[dict]:
    """Versions first seen inside the window, over the requests ``rows`` and the sampled traces."""
    groups = timeline.request_groups(req, rows) + timeline.span_groups(s for t in traces for s in t.spans)
    new = timeline.new_in_window(timeline.versions_first_seen_groups(groups, VERSION_KEYS), w_start, width)
    out = []
    for f in sorted(new, key=lambda f: attributes.attribute_priority(f.attribute)):  # model version first on ties
        near = bool(onset and onset.significant and abs(f.first_ns - onset.time_ns) <= timeline.near_ns(width))
        out.append({"attribute": f.attribute, "value": f.value, "first_seen_ns": f.first_ns, "count": f.count,
                    "near_onset": near})
    return out


def _confidence(p: float, support: int) -> str:
    if p < 1e-6 and support >= 2:
        return "high"
    return "medium" if p < stats.ALPHA else "low"


_WHERE = {"calls in": "on calls into it: network or queueing in front of it",
          "calls out": "in its outgoing calls, which all slowed: it is starved (CPU, GC or threads)",
          "self": ""}


def component_summary(c: blame.Component, what: str = "slow requests") -> str:
    """One sentence for a blamed component: service, operation and stage where they apply."""
    name = c.service + (f": {c.operation}" if c.operation else "")
    if c.stage and c.stage != semconv.STAGE_OTHER:
        name += f" (stage {c.stage})"
    where = _WHERE.get(c.where, "")
    text = (f"{name} explains {min(c.share, 1.0):.0%} of the extra {fmt_ms(c.total_excess_ns)} of {what}: "
            f"+{fmt_ms(c.excess_ns)} per request over what their operations normally take"
            + (f", {where}" if where else ""))
    if c.operation is None and len(c.parts) > 1:  # no one part dominates: say where it went
        text += "; " + ", ".join(_part(p) for p in c.parts[:3])
    return text


def _part(p: dict[str, Any]) -> str:
    what = (f"calls {p['key'].replace('->', ' to ')}" if p["level"] == "edge" else p["operation"])
    stage = f" (stage {p['stage']})" if p.get("stage") and p["stage"] != semconv.STAGE_OTHER else ""
    return f"{what}{stage} +{fmt_ms(p['excess_ms'] * 1e6)}"


def _findings(bl: blame.Blame, groups, evidence, metric_stats, onset, changes, thr_label, n_sel,
              steps: Sequence[metricevidence.ResourceStep] = (), call_attrs=(), inputs=()) -> list[Finding]:
    """One ranking model: blamed components first (ranked by the share of the excess they
    explain), then the evidence that sets slow requests apart within their operation
    (attributes, logs, metrics; each scored below the component it supports), then changes.
    Findings that say the same thing twice are merged: a component's stage is part of it."""
    out: list[Finding] = []
    lead = {c.service for c in groups}
    support = sum(1 for _, al, ll in evidence for group in (al, ll) if any(x.significant for x in group))
    for c in bl.components:
        if c.share < 0.05 and not c.significant:
            continue  # explains next to nothing: noise in the report
        ev = c.evidence() | {"level": "service", "lead": c.service in lead}
        edges = [g.evidence() for g in bl.edges.values() if g.grew and c.service in (g.caller, g.callee)]
        if edges:
            ev["edges"] = edges[:6]
        tier = 0 if c.significant else 1
        # A component whose own time per call rose since the onset outranks one that only
        # holds a large share of the excess: a busy, always-variable operation holds a share
        # of any sample of slow requests; a fault makes the culprit's calls slower.
        score = c.share + (1.0 if c.grew else 0.0)
        out.append(Finding("stage", component_summary(c), score, c.significant,
                           _confidence(c.p_adj, support + 1) if c.significant else "low", ev | {"tier": tier},
                           service=c.service, operation=c.operation, stage=c.stage,
                           edge=_edge_of(c, bl)))
    share_of = {c.service: c.share for c in groups}
    best: dict[tuple, Finding] = {}  # one finding per attribute value / template: the group it sets apart most
    for comp, attr_stats, log_stats in evidence:
        scale = share_of.get(comp.service, 1.0) if comp is not None else 1.0
        label = "slow requests" if comp is None or len(groups) < 2 else f"slow requests blamed on {comp.service}"
        for a in attr_stats[:12]:
            f = Finding("attribute", attributes.describe(a, label), abs(a.delta) * 0.9 * max(scale, 0.2),
                        a.significant, _confidence(a.p_adj, support) if a.significant else "low",
                        a.evidence() | {"tier": 1, "supports": comp.service if comp else None},
                        attribute=a.attribute, value=a.value, service=comp.service if comp else None)
            _keep_best(best, ("attribute", a.attribute, str(a.value)), f)
        for s in [x for x in log_stats if x.significant or x.delta >= 0.05][:6]:
            f = Finding("log", f'log "{headline(s.template)}" in {s.sel_share:.0%} of {label} vs '
                               f"{s.base_share:.0%} of baseline (lift {s.lift:.1f}x, {s.lines} lines)",
                        s.delta * 0.85 * max(scale, 0.2), s.significant,
                        _confidence(s.p_adj, support) if s.significant else "low",
                        s.evidence() | {"tier": 1, "supports": comp.service if comp else None},
                        service=s.service or None, template=s.template)
            _keep_best(best, ("log", s.template), f)
    for comp, attr_stats in call_attrs:
        for a in [x for x in attr_stats if x.significant][:3]:
            f = Finding("attribute", attributes.describe(a, f"slow calls of {comp.service}", "its other calls"),
                        abs(a.delta) * 0.9, True, _confidence(a.p_adj, support),
                        a.evidence() | {"tier": 1, "supports": comp.service, "level": "call"},
                        attribute=a.attribute, value=a.value, service=comp.service)
            _keep_best(best, ("attribute", a.attribute, str(a.value)), f)
    for x in [x for x in inputs if x["significant"]][:2]:
        f = Finding("attribute", x["summary"], x["effect"] * 0.9, True,
                    _confidence(min(x["missing_p_value"], x["p_value"]), support), {"input_profile": x, "tier": 1},
                    attribute=semconv.ML_INPUT_FEATURES, value=x["feature"], service=x["service"])
        _keep_best(best, ("attribute", semconv.ML_INPUT_FEATURES, x["feature"]), f)
    out.extend(best.values())
    metric_stats = [m for m in metric_stats if m.significant][:6] + [m for m in metric_stats if not m.significant][:2]
    for m in metric_stats:
        direction = "rises" if m.rho > 0 else "falls"
        lead_txt = (f", leading by {m.lag} bucket(s)" if m.lag > 0 else f", lagging by {-m.lag} bucket(s)" if m.lag < 0 else "")
        out.append(Finding("metric", f"{m.display or m.label} {direction} with the slow-request rate "
                                     f"(Spearman {m.rho:+.2f}{lead_txt}); {_lvl(m.level_slow, m.unit)} in slow periods vs "
                                     f"{_lvl(m.level_base, m.unit)} in baseline periods",
                           abs(m.rho) * 0.8 * (1.0 if m.service in lead or not lead else 0.5), m.significant,
                           _confidence(m.p_adj, support) if m.significant else "low",
                           m.evidence() | {"series": m.series, "tier": 1}, service=m.service, metric=m.name))
    per_service: dict[str, metricevidence.ResourceStep] = {}
    for r in steps:  # one finding per service: cpu and cpu-rate series say the same thing
        per_service.setdefault(r.service, r)
    for r in list(per_service.values())[:3]:
        # A service on the slow requests' path whose own CPU (memory, threads) went up tenfold
        # in the incident is the most direct explanation: the latency the traces blame
        # elsewhere is often what it causes (its few calls hide among many), so it ranks first.
        out.append(Finding("metric", f"{r.service}: {r.name} stepped up from {_lvl(r.before, r.unit)} "
                                     f"to {_lvl(r.after, r.unit)} (x{r.ratio:.0f}) at {fmt_time(r.time_ns)}: a saturated "
                                     f"resource of a service on the slow requests' path",
                           2.5 + min(math.log10(r.ratio), 3.0) / 10, True, "high" if r.p < 1e-4 else "medium",
                           r.evidence() | {"tier": 0}, service=r.service, metric=r.name))
    if onset is not None and onset.significant and onset.rate_after > onset.rate_before:
        # (a component-located onset need not raise the slow rate: then it is no "slowness began")
        out.append(Finding("change", f"Slowness began at {fmt_time(onset.time_ns)}: slow requests went from "
                                     f"{onset.rate_before:.1%} to {onset.rate_after:.1%}", 0.3, True, "medium",
                           onset.evidence() | {"tier": 1}))
    for ch in changes:
        near = ch["near_onset"]
        out.append(Finding("change", f"{ch['attribute']}={ch['value']} first seen at {fmt_time(ch['first_seen_ns'])}"
                                     + (", near the onset" if near else ""), 0.35 if near else 0.1, near,
                           "medium" if near else "low", ch | {"tier": 1}, attribute=ch["attribute"], value=ch["value"]))
    out.sort(key=_rank)
    _attach_support(out)
    return out


def _rank(f: Finding) -> tuple[bool, int, float]:
    """The one ranking order: significant first, then tier (0: blamed components and saturated
    resources), then score."""
    return (not f.significant, f.evidence.get("tier", 1), -f.score)


def _add_stepped_component(findings: list[Finding], inc: incident.Incident) -> None:
    """The component whose own time per call stepped up where the incident began is a cause
    in itself (its step test is corrected for every key scanned), also when the requests it
    slowed are too few, or too little slowed, for the slow-request comparison to blame it: a
    service called a few times a minute. Listed after the components that comparison blames."""
    if not inc.key or not inc.service or not inc.key_ms:
        return
    if any(f.kind == "stage" and f.service == inc.service and f.significant for f in findings):
        return  # blamed already: one finding per component
    findings[:] = [f for f in findings if not (f.kind == "stage" and f.service == inc.service)]
    level, _, op = inc.key
    pooled = inc.key == blame.calls_into(inc.service)  # no one edge to name
    what = _key_text(inc.key) if level == "edge" else op
    caller, _, callee = op.partition("->")
    starved = level == "edge" and inc.service == caller
    before, after = inc.key_ms
    summary = (f"{inc.service}: {what} went from {before:.1f} to {after:.1f} ms per call at "
               f"{fmt_time(inc.start_ns)} and stayed there, where the incident began"
               + ("; its other outgoing calls stepped up too: it is starved (CPU, GC or threads)" if starved else ""))
    f = Finding("stage", summary, 1.0, inc.significant, _confidence(inc.p, 1) if inc.significant else "low",
                {"tier": 1, "level": "component step", "key": list(inc.key), "p_value": inc.p,
                 "before_ms": before, "after_ms": after, "onset_ns": inc.start_ns},
                service=inc.service, operation=op if level == "operation" else None,
                edge={"caller": caller, "callee": callee} if level == "edge" and not pooled else None)
    findings.append(f)
    findings.sort(key=_rank)


def _call_attributes(c: blame.Component, incident: Sequence[Trace], base: Sequence[Trace]) -> list:
    """Attribute values over-represented among the component's slow calls: its SERVER spans
    (of its operation, when it has one) in the incident's requests that took longer than
    the 95th percentile of the same span name in the baseline, against every such span of
    the baseline. Each call is compared as a request of one span (its own and its
    resource's attributes)."""
    def calls(traces):
        return [sp for t in traces for sp in t.spans if sp.service_name == c.service and sp.kind == "SERVER"
                and (c.operation is None or sp.name == c.operation)]
    normal = calls(base)
    if len(normal) < stats.MIN_SUPPORT:
        return []
    p95: dict[str, float] = {}
    for name in {sp.name for sp in normal}:
        d = [sp.duration_ns for sp in normal if sp.name == name]
        p95[name] = float(np.percentile(d, 95)) if len(d) >= stats.MIN_SUPPORT else float("inf")
    slow = [sp for sp in calls(incident) if sp.duration_ns > p95.get(sp.name, float("inf"))]
    if len(slow) < stats.MIN_SUPPORT:
        return []

    def one(sp: Span) -> Trace:
        return Trace(f"{sp.trace_id}:{sp.span_id}", [sp], [])
    return attributes.compare([one(sp) for sp in slow], [one(sp) for sp in normal], max_results=10,
                              exclude=attributes.OUTCOME_KEYS)


RESOURCE_LOOKBACK_NS = 3_600_000_000_000  # history a resource step is judged against
RESOURCE_CONFIRM_NS = 600_000_000_000  # scrapes after the window that show a step inside it lasted


def _resource_steps(backend: Backend, lo: int, hi: int) -> list[metricevidence.ResourceStep]:
    """Resource steps (see :func:`metricevidence.resource_steps`) that start inside ``[lo, hi)``,
    judged against up to an hour of the series' own history before ``lo``; scrapes up to ten
    minutes after ``hi`` may show that the step lasted (a minute-long scrape interval leaves
    a short window one point of it)."""
    start, end = lo - RESOURCE_LOOKBACK_NS, hi + RESOURCE_CONFIRM_NS
    names = [n for n in backend.metric_names(start_ns=start, end_ns=end) if metricevidence.is_resource_metric(n)]
    series = [s for n in names for s in backend.metric_series(MetricQuery(name=n, start_ns=start, end_ns=end))]
    return metricevidence.resource_steps(series, lo, hi)


def _keep_best(best: dict[tuple, Finding], key: tuple, f: Finding) -> None:
    cur = best.get(key)
    if cur is None or (f.significant, f.score) > (cur.significant, cur.score):
        best[key] = f


def _edge_of(c: blame.Component, bl: blame.Blame) -> dict[str, str] | None:
    """The call edge a component's time sits on, when most of it sits on one."""
    if c.where == "self" or not c.parts or c.parts[0]["level"] != "edge":
        return None
    caller, _, callee = c.parts[0]["key"].partition("->")
    return {"caller": caller, "callee": callee}


def _attach_support(findings: list[Finding]) -> None:
    """Each significant attribute, log and metric finding is also listed in the evidence
    of the component it supports (same service, else the top component)."""
    comps = [f for f in findings if f.kind == "stage" and f.significant]
    if not comps:
        return
    for f in findings:
        if f.kind not in ("attribute", "log", "metric") or not f.significant:
            continue
        target = next((c for c in comps if c.service == (f.evidence.get("supports") or f.service)), comps[0])
        target.evidence.setdefault("supported_by", []).append(f.summary)


def _lvl(v: float, unit: str) -> str:
    if v != v:  # NaN
        return "n/a"
    if unit == "s":
        return fmt_ms(v * 1e9)
    if unit == "1":
        return f"{v:.0%}"
    return f"{v:.3g}{(' ' + unit) if unit and unit != 'By' else ''}" if unit != "By" else f"{v / 1e6:.0f} MB"


def _verdict(report: Report, thr_label: str, anomaly: list[str]) -> list[str]:
    c = dict(report.data["counts"])
    if "estimated_requests" in c:  # tail-sampled: speak of the requests served, not of those stored
        c.update(requests=f"~{c['estimated_requests']:.0f}", slow=f"~{c['estimated_slow']:.0f}")
    sig = report.significant_findings
    causes = [f for f in sig if f.is_cause]
    if not causes and anomaly and report.data.get("incident"):
        return [f"{c['slow']} of {c['requests']} requests were slower than {thr_label}; {anomaly[0]}. No component, "
                f"attribute, log template or metric explains it (adjusted p < {stats.ALPHA} and a minimum effect size "
                f"required): every part slowed alike, or the cause is outside what the traces record."]
    if not causes and report.data["counts"].get("slow", 0) < 10:  # stored ones: the sample size
        return [f"No significant difference, and too few slow requests ({c['slow']} over {thr_label}, of "
                f"{c['requests']}) to tell a cause from chance. Widen the window or lower the threshold."]
    if not causes:
        return [f"No significant difference: the {c['slow']} requests over {thr_label} (of {c['requests']}) look like "
                f"the natural tail of their operations. No component, attribute, log template or metric sets them "
                f"apart (adjusted p < {stats.ALPHA} and a minimum effect size required)."]
    lines = []
    if anomaly:
        lines.append(f"{c['slow']} of {c['requests']} requests were slower than {thr_label}; " + anomaly[0] + ".")
    comps = [f for f in causes if f.kind == "stage"]
    leads = [f for f in comps if f.evidence.get("lead")] or comps[:1]
    if causes[0].evidence.get("resource_step"):  # one story: the headline is finding #1
        leads = [causes[0]] + [f for f in leads if f.service != causes[0].service]
    if len(leads) > 1:
        lines.append(f"{len(leads)} causes at once: each holds the extra time of its own slow requests.")
    rank = 1
    for f in leads:
        lines.append(f"{rank}. {f.summary} [confidence: {f.confidence}]")
        rank += 1
        for s in (f.evidence.get("supported_by") or [])[:3]:
            lines.append(f"   supported by: {s}")
    if not any(f.evidence.get("supported_by") for f in leads):
        attr = next((f for f in causes if f.kind == "attribute"), None)
        if attr is not None:
            lines.append(f"{rank}. {attr.summary} [confidence: {attr.confidence}]")
    for f in (x for x in sig if x.kind == "change" and x.attribute):
        lines.append(f"   change nearby: {f.summary}")
    ex = report.data.get("example_trace_ids") or []
    if ex:
        lines.append("Open an example: " + "; ".join(f"stagetrace trace {t}" for t in ex[:3]))
    return lines
