"""Rule evaluation: from the aggregates to the conditions that hold *now*.

A :class:`Condition` is one (rule, label set) that is currently true; the lifecycle
(pending, firing, resolved, notifications) lives in :mod:`stagetrace.incidents.watch`.
Nothing here reads the backend: evaluation is pure over :class:`Aggregates`, so it is
deterministic and cheap to run every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetrace.forensics.window import fmt_ms, fmt_time

from .rules import BurnWindow, Rule, WatchConfig, fmt_duration
from .series import Aggregates, SeriesKey, Window

SEVERITY_ORDER = {"page": 0, "ticket": 1, "info": 2}


@dataclass(slots=True)
class Condition:
    rule: Rule
    labels: dict[str, str]  # identity: alertname, severity and the series' labels
    summary: str
    description: str
    value: float  # burn rate (SLO rules), bad rate, or event count
    investigate: str | None  # "slow" | "errors" | None
    window_ns: tuple[int, int]  # what the investigation should read
    service: str | None = None
    route: str | None = None
    threshold_ns: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    onset_ns: int | None = None  # when the evidence says it began (new error / version change)
    report: Any = None  # drift / quality rules: the investigation that found it (its cause)


def evaluate(cfg: WatchConfig, agg: Aggregates, now_ns: int, frozen: dict[str, int] | None = None) -> list[Condition]:
    """All conditions true at ``now_ns``. ``frozen`` maps a series identity to the latency
    threshold in force while its alert is active (see :class:`Rule`)."""
    frozen = frozen or {}
    out: list[Condition] = []
    for rule in cfg.rules:
        if rule.kind in ("latency", "errors"):
            for key in _series_for(rule, agg):
                out += _slo(cfg, rule, agg, key, now_ns, frozen)
        elif rule.kind == "new_error":
            out += _new_errors(cfg, rule, agg, now_ns)
        elif rule.kind == "version_change":
            out += _version_changes(cfg, rule, agg, now_ns)
    return out


def series_id(rule: Rule, key: SeriesKey) -> str:
    return f"{rule.name}|{key.kind}|{key.service}|{key.name}"


def _series_for(rule: Rule, agg: Aggregates) -> list[SeriesKey]:
    kind = "stage" if rule.stage is not None else "route"
    out = []
    for k in agg.series(kind):
        if rule.service and k.service != rule.service:
            continue
        want = rule.stage if kind == "stage" else rule.route
        if want not in (None, "*") and k.name != want:
            continue
        out.append(k)
    return out


def latency_threshold(cfg: WatchConfig, rule: Rule, agg: Aggregates, key: SeriesKey, now_ns: int) -> int | None:
    """The absolute threshold, else ``ratio`` x the baseline percentile over the look-back
    up to the first tier's long window ago (so the burn being measured is not its own baseline)."""
    if rule.threshold_ns is not None:
        return rule.threshold_ns
    gap = cfg.burn_windows[0].long_ns
    base = agg.window(key, now_ns - cfg.lookback_ns, now_ns - gap)
    if base.total < 50:
        return None  # too little history to know what is normal
    p = base.percentile(rule.baseline)
    if p is None:
        return None
    return int(max(rule.ratio * p, p + 1_000_000))


def _slo(cfg: WatchConfig, rule: Rule, agg: Aggregates, key: SeriesKey, now_ns: int,
         frozen: dict[str, int]) -> list[Condition]:
    sid = series_id(rule, key)
    thr = None
    if rule.kind == "latency":
        thr = frozen.get(sid) or latency_threshold(cfg, rule, agg, key, now_ns)
        if thr is None:
            return []
    budget = 1.0 - rule.objective
    hits: dict[str, list[tuple[BurnWindow, float, float, Window]]] = {}
    for tier in cfg.burn_windows:
        lw = agg.window(key, now_ns - tier.long_ns, now_ns)
        sw = agg.window(key, now_ns - tier.short_ns, now_ns)
        if sw.total < cfg.min_requests or lw.total < cfg.min_requests:
            continue
        lb = (_bad(rule, lw, thr) / lw.total) / budget
        sb = (_bad(rule, sw, thr) / sw.total) / budget
        if lb >= tier.factor and sb >= tier.factor:
            hits.setdefault(rule.severity or tier.severity, []).append((tier, lb, sb, lw))
    out = []
    for sev, tiers in hits.items():
        tier, lb, sb, lw = max(tiers, key=lambda x: x[1] / x[0].factor)
        what = "latency" if rule.kind == "latency" else "errors"
        where = f"{key.service} {key.name}" if key.kind == "route" else f"{key.service} stage {key.name}"
        bad = _bad(rule, lw, thr)
        slo = (f"{rule.objective * 100:g}% of " +
               ("requests" if key.kind == "route" else f"{key.name} spans") +
               (f" faster than {fmt_ms(thr)}" if thr is not None else " succeed"))
        summary = (f"{where}: {what} SLO burning {lb:.1f}x the error budget "
                   f"({bad} of {lw.total} {'slower than ' + fmt_ms(thr) if thr is not None else 'failed'} "
                   f"in the last {fmt_duration(tier.long_ns)})")
        desc = (f"SLO: {slo}. Burn rate {lb:.1f}x over {fmt_duration(tier.long_ns)} and {sb:.1f}x over "
                f"{fmt_duration(tier.short_ns)} (alerting at {tier.factor:g}x: "
                f"{tier.factor * tier.long_ns / cfg.budget_period_ns * 100:.2g}% of a {fmt_duration(cfg.budget_period_ns)} "
                f"budget in {fmt_duration(tier.long_ns)}).")
        labels = {"alertname": rule.name, "severity": sev, **key.labels(), "slo": what}
        span = max(2 * tier.long_ns, 10 * cfg.interval_ns)
        out.append(Condition(rule, labels, rule.summary or summary, desc, lb,
                             "slow" if rule.kind == "latency" else "errors",
                             (now_ns - min(span, cfg.lookback_ns), now_ns), key.service,
                             key.name if key.kind == "route" else None, thr,
                             {"window": tier.label(), "burn_rate": f"{lb:.2f}", "burn_rate_short": f"{sb:.2f}", "objective": f"{rule.objective:g}",
                              **({"threshold_ms": f"{thr / 1e6:.1f}"} if thr is not None else {}),
                              "series_id": sid}))
    return out


def _bad(rule: Rule, w: Window, thr: int | None) -> int:
    return w.slower_than(thr) if rule.kind == "latency" and thr is not None else w.errors


def _new_errors(cfg: WatchConfig, rule: Rule, agg: Aggregates, now_ns: int) -> list[Condition]:
    """An incident (fingerprints that share traces, merged as ``investigate errors`` merges
    them) whose first event is recent, after at least ``within`` of earlier data (so
    "never seen" means something), with at least ``min_events`` events."""
    import numpy as np

    from stagetrace.forensics import errorclusters as ec

    if agg.earliest_ns is None:
        return []
    events = [e for e in agg.errors if e.time_ns < now_ns and (rule.service is None or e.service == rule.service)]
    if not events:
        return []
    lo = min(e.time_ns for e in events)
    edges = np.arange(lo - lo % agg.resolution_ns, now_ns + agg.resolution_ns, agg.resolution_ns, dtype=np.int64)
    by_fp: dict[str, list] = {}
    for e in events:
        by_fp.setdefault(e.fingerprint, []).append(e)
    out = []
    for cluster in ec._merge(events, edges):  # the same merge as investigate errors
        # the new fingerprints of the incident: a shared, older one (an HTTP 500 log line that
        # every failure writes) groups them but does not make the incident old
        firsts = {fp: min(e.time_ns for e in by_fp[fp]) for fp in cluster.fingerprints if by_fp.get(fp)}
        fresh = [fp for fp, t in firsts.items() if t >= now_ns - rule.within_ns and t >= agg.earliest_ns + rule.within_ns]
        if not fresh:
            continue
        evs = [e for fp in fresh for e in by_fp[fp]]
        first = min(firsts[fp] for fp in fresh)
        if len(evs) < rule.min_events:
            continue
        cluster.fingerprints = fresh
        main = max(evs, key=lambda e: (e.exc_type != "", len(e.frames), e.operation != ""))
        # identity: the incident's earliest fingerprint, stable while it keeps firing
        fp = min(cluster.fingerprints, key=lambda f: (min(e.time_ns for e in by_fp[f]), f))
        traces = sorted({e.trace_id for e in evs if e.trace_id})
        name = f"{main.exc_type}: {main.template}" if main.exc_type else main.template
        out.append(Condition(
            # identity by what failed where: a drain3 template that generalises later changes the
            # fingerprint hash, and must not turn one incident into a resolved and a new alert
            rule, {"alertname": rule.name, "severity": rule.severity or "ticket", "service": main.service,
                   "operation": main.operation or "-", "exception_type": main.exc_type or "-"},
            rule.summary or f"new error in {main.service}: {name[:150]}",
            f"Error fingerprint {fp} (as in `investigate errors`) first seen at {fmt_time(first)}, never in the "
            f"{fmt_duration(min(cfg.lookback_ns, first - agg.earliest_ns))} before; {len(evs)} events in "
            f"{len(traces)} traces since.",
            float(len(evs)), "errors", (max(first - rule.within_ns, now_ns - cfg.lookback_ns), now_ns),
            main.service, None, None,
            {"fingerprint": fp, "fingerprints": ",".join(sorted(cluster.fingerprints)),
             "exception_type": main.exc_type, "template": main.template[:300],
             "first_seen": fmt_time(first), "example_trace_id": traces[0] if traces else ""},
            onset_ns=first))
    return out


def _version_changes(cfg: WatchConfig, rule: Rule, agg: Aggregates, now_ns: int) -> list[Condition]:
    """A version value first seen recently (and not at the very start of the data), after
    which its service's error rate or slow rate rose ``rise`` x, by at least ``min_events``."""
    if agg.earliest_ns is None:
        return []
    out = []
    for (service, attr, value), (first, _last, _count) in agg.versions.items():
        if rule.service and service != rule.service:
            continue
        if first < now_ns - rule.within_ns or first <= agg.earliest_ns + agg.resolution_ns or first >= now_ns:
            continue
        keys = [k for k in agg.series("route") if k.service == service]
        if not keys:
            continue
        before = _merge(agg, keys, max(first - rule.within_ns, now_ns - cfg.lookback_ns), first)
        after = _merge(agg, keys, first, now_ns)
        if before.total < cfg.min_requests or after.total < cfg.min_requests:
            continue
        found = []
        e_before, e_after = before.errors / before.total, after.errors / after.total
        if after.errors >= rule.min_events and e_after >= rule.rise * e_before and e_after - e_before >= 0.01:
            found.append(("errors", e_before, e_after, after.errors))
        p99 = before.percentile(99.0)
        if p99 is not None:
            s_before = before.slower_than(p99) / before.total
            s_after_n = after.slower_than(p99)
            s_after = s_after_n / after.total
            if s_after_n >= rule.min_events and s_after >= rule.rise * max(s_before, 0.01) and s_after - s_before >= 0.02:
                found.append(("latency", s_before, s_after, s_after_n))
        if not found:
            continue
        what, rb, ra, n = found[0]
        rise = ("error rate" if what == "errors" else f"share slower than the earlier p99 ({fmt_ms(p99 or 0)})")
        out.append(Condition(
            rule, {"alertname": rule.name, "severity": rule.severity or "page", "service": service,
                   "version_attribute": attr, "version": value},
            rule.summary or f"{service}: {attr}={value} first seen at {fmt_time(first)}, then the {rise} rose "
                            f"from {rb:.1%} to {ra:.1%}",
            f"{attr}={value} first seen at {fmt_time(first)}; {service}'s {rise} went from {rb:.1%} "
            f"({before.total} requests before) to {ra:.1%} ({n} of {after.total} after).",
            ra / max(rb, 1e-9), "errors" if what == "errors" else "slow",
            (max(first - rule.within_ns, now_ns - cfg.lookback_ns), now_ns), service, None,
            int(p99) if what == "latency" and p99 else None,
            {"version_attribute": attr, "version": value, "first_seen": fmt_time(first),
             "rate_before": f"{rb:.4f}", "rate_after": f"{ra:.4f}", "regression": what},
            onset_ns=first))
    return out


def _merge(agg: Aggregates, keys: list[SeriesKey], start_ns: int, end_ns: int) -> Window:
    ws = [agg.window(k, start_ns, end_ns) for k in keys]
    w = ws[0]
    for x in ws[1:]:
        w = Window(w.hist + x.hist, w.errors + x.errors)
    return w


def severity_rank(labels: dict[str, Any]) -> int:
    return SEVERITY_ORDER.get(str(labels.get("severity")), 9)
