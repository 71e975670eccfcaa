"""``stagetrace postmortem``: a blameless post-mortem *draft*, written from the telemetry.

The template is the usual one (Google SRE book, ch. 15; PagerDuty's and Atlassian's
templates): summary, impact, timeline, root cause and contributing factors, what went
well and what did not, action items. What we add is that every number is measured, and
each one links to the query (an ``investigate`` report written next to the draft, with
the command that reproduces it) or to the trace behind it. Sentences a human must write
(what went well, what did not) stay prompts: a draft must not pretend to know them.

Sources, all read through :class:`stagetrace.backend.Backend`:

- requests, failures, slow requests: the window's entry spans (``investigate``'s);
- onset, version changes, root cause, contributing factors, example traces: the
  ``investigate slow`` and ``investigate errors`` reports over the window;
- alert fired / resolved (time to detect): the watch's saved state, when there is one.
"""

from __future__ import annotations

import html as _html
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stagetrace import semconv
from stagetrace.backend import Backend
from stagetrace.display import visible_tree
from stagetrace.errors import UserError
from stagetrace.forensics.window import entry_spans, fmt_ms, fmt_time, rootless_note

from .rules import WatchConfig, default_rules, fmt_duration
from .series import is_failure

MIN_NS = 60_000_000_000


@dataclass
class Ref:
    id: str
    label: str
    command: str
    file: str | None = None  # report written next to the draft


@dataclass
class Postmortem:
    title: str
    start_ns: int
    end_ns: int
    service: str | None
    numbers: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    impact: list[str] = field(default_factory=list)
    timeline: list[tuple[int, str]] = field(default_factory=list)
    root_causes: list[list[str]] = field(default_factory=list)
    contributing: list[str] = field(default_factory=list)
    went_well: list[str] = field(default_factory=list)
    went_wrong: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)  # slow / errors Report
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _cmd(kind: str, start: int, end: int, service: str | None, extra: str = "") -> str:
    svc = f" --service {service}" if service else ""
    return f"stagetrace investigate {kind} --from {_iso(start)} --until {_iso(end)}{svc}{extra}"


def _iso(ns: int) -> str:
    import datetime as _dt
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _tr(tid: str) -> str:
    return f"[`{tid[:16]}…`](#trace-{tid} \"stagetrace trace {tid}\")"


def build_postmortem(backend: Backend, *, start_ns: int | None, end_ns: int | None, alert: dict | None = None,
                     service: str | None = None, cfg: WatchConfig | None = None,
                     state_dir: str | Path | None = None) -> Postmortem:
    from stagetrace.forensics import investigate_errors, investigate_slow

    now = time.time_ns()
    if alert is not None:
        w0, _w1 = alert.get("window_ns") or [alert["active_since"] - 30 * MIN_NS, alert["active_since"]]
        start_ns = int(min(w0, alert.get("onset_ns") or w0))
        end_ns = int(min(now, (alert.get("resolved_at") or now) + 2 * MIN_NS))
        service = service or alert.get("service")
    assert start_ns is not None and end_ns is not None
    if start_ns >= end_ns:
        raise UserError("the post-mortem window is empty: --from must be before --until")
    rules = cfg.rules if cfg else default_rules()
    lat_rule = next((r for r in rules if r.kind == "latency" and r.stage is None), None)
    err_rule = next((r for r in rules if r.kind == "errors"), None)
    lat_obj = lat_rule.objective if lat_rule else 0.99
    err_obj = err_rule.objective if err_rule else 0.999
    period = cfg.budget_period_ns if cfg else 30 * 24 * 3600 * 10**9

    entries = entry_spans(backend, service=service, route=None, start_ns=start_ns, end_ns=end_ns)
    if not entries:
        note = rootless_note(backend, service=service, start_ns=start_ns, end_ns=end_ns)
        raise UserError(f"no requests between {fmt_time(start_ns)} and {fmt_time(end_ns)}"
                        + (f" for service {service}" if service else "")
                        + (f": {note}" if note else ": nothing to write about"))
    # the latency threshold: the SLO's, else 2x the p99 of an equally long period before the window
    thr_ns, thr_how = None, ""
    if lat_rule and lat_rule.threshold_ns:
        thr_ns, thr_how = lat_rule.threshold_ns, f"the latency SLO threshold ({fmt_ms(lat_rule.threshold_ns)})"
    else:
        span = end_ns - start_ns
        before = entry_spans(backend, service=service, route=None, start_ns=start_ns - span, end_ns=start_ns)
        if len(before) >= 50:
            p99 = float(np.percentile([s.duration_ns for s in before], 99))
            thr_ns = int((lat_rule.ratio if lat_rule else 2.0) * p99)
            thr_how = f"{lat_rule.ratio if lat_rule else 2.0:g}x the p99 of the period before ({fmt_ms(p99)})"
    threshold: str | int = thr_ns if thr_ns else "p95"
    slow_rep = investigate_slow(backend, service=service, start_ns=start_ns, end_ns=end_ns, threshold=threshold)
    err_rep = investigate_errors(backend, service=service, start_ns=start_ns, end_ns=end_ns)
    if not thr_ns:
        thr_ns = int(slow_rep.data.get("threshold_ns") or 0)
        thr_how = f"the window's {slow_rep.data.get('threshold_label', 'p95')}"

    pm = Postmortem("", start_ns, end_ns, service, reports={"slow": slow_rep, "errors": err_rep})
    q_req = Ref("q-requests", "entry requests in the window", _cmd("errors", start_ns, end_ns, service), "postmortem-errors.html")
    q_slow = Ref("q-slow", f"requests slower than {fmt_ms(thr_ns)}", _cmd("slow", start_ns, end_ns, service,
                                                                          f" --threshold {thr_ns // 1_000_000}ms"),
                 "postmortem-slow.html")
    pm.refs += [q_req, q_slow]

    n = len(entries)
    failed = [s for s in entries if is_failure(s)]
    slowed = [s for s in entries if not is_failure(s) and s.duration_ns > thr_ns]
    dur_s = (end_ns - start_ns) / 1e9
    err_burn = (len(failed) / n) / (1 - err_obj)
    lat_burn = (len(slowed) / n) / (1 - lat_obj)
    per_period = n / dur_s * period / 1e9
    err_budget_used = len(failed) / max((1 - err_obj) * per_period, 1e-9)
    lat_budget_used = len(slowed) / max((1 - lat_obj) * per_period, 1e-9)
    pm.numbers = {"requests": n, "failed": len(failed), "slowed": len(slowed), "threshold_ns": thr_ns,
                  "error_burn_rate": err_burn, "latency_burn_rate": lat_burn,
                  "error_budget_used": err_budget_used, "latency_budget_used": lat_budget_used,
                  "window_s": dur_s}
    who = service or ", ".join(sorted({s.service_name for s in entries})[:3])

    # --- timeline ---------------------------------------------------------------------------
    events: list[tuple[int, str]] = []
    onsets = []
    so = slow_rep.data.get("onset")
    if so and so.get("significant") and so.get("onset_ns"):
        onsets.append(int(so["onset_ns"]))
        events.append((int(so["onset_ns"]), f"**Onset of slow requests**: the slow rate rose from "
                                           f"{so.get('rate_before', 0):.1%} to {so.get('rate_after', 0):.1%} [query][q-slow]"))
    for c in err_rep.data.get("clusters", [])[:3]:
        on = c.get("onset") or {}
        if on.get("significant") and on.get("onset_ns"):
            onsets.append(int(on["onset_ns"]))
            events.append((int(on["onset_ns"]), f"**Onset of incident {c['id']}** ({_short(c['name'])}): "
                                               f"{c['failed_requests']} failed requests from here [query][q-requests]"))
        elif c.get("failed_requests", 0) and c is err_rep.data["clusters"][0]:
            events.append((int(c["first_seen_ns"]), f"first error of incident {c['id']} ({_short(c['name'])})"
                                                    f" [query][q-requests]"))
    seen_changes = set()
    for rep, q in ((err_rep, "q-requests"), (slow_rep, "q-slow")):
        for f in rep.findings:
            if f.kind == "change" and f.attribute and f.evidence.get("first_seen_ns") and f.significant:
                k = (f.attribute, str(f.value))
                if k in seen_changes:
                    continue
                seen_changes.add(k)
                events.append((int(f.evidence["first_seen_ns"]),
                               f"**Version change**: `{f.attribute}={f.value}` first seen [query][{q}]"))
    pm.alerts = _alerts_in(state_dir, start_ns, end_ns) if state_dir else []
    if alert is not None and not any(a.get("id") == alert.get("id") for a in pm.alerts):
        pm.alerts.append(alert)
    onset = min(onsets) if onsets else None
    slow_onset = onsets[0] if so and so.get("significant") and so.get("onset_ns") else None
    err_onsets = [o for o in onsets if o != slow_onset]
    first_fire = None
    for a in pm.alerts:
        lab = a.get("labels", {})
        if a.get("fired_at"):
            first_fire = a["fired_at"] if first_fire is None else min(first_fire, a["fired_at"])
            # detection is measured from the onset of the kind of trouble the alert watches
            if a.get("kind") in ("drift", "quality"):  # the slow/errors onsets are not theirs
                mine = a.get("onset_ns")
            else:
                mine = slow_onset if lab.get("slo") == "latency" else (min(err_onsets) if err_onsets else None)
            ref = mine if mine is not None and mine <= a["fired_at"] else onset
            ttd = (f"; time to detect {fmt_duration(max(0, a['fired_at'] - ref) // 10**9 * 10**9)}"
                   if ref is not None and a["fired_at"] >= ref else "")
            events.append((int(a["fired_at"]), f"**Alert fired**: `{lab.get('alertname')}` [{lab.get('severity')}] "
                                               f"(alert {a.get('id')}){ttd}"))
        if a.get("resolved_at"):
            events.append((int(a["resolved_at"]), f"alert `{lab.get('alertname')}` resolved (alert {a.get('id')})"))
    peak_t, peak_rate, rec_t, base_rate = _peak_recovery(entries, start_ns, end_ns, thr_ns, onset)
    if peak_t is not None:
        events.append((peak_t, f"**Peak**: {peak_rate:.1%} of requests failed or were slow "
                               f"[query][q-requests]"))
    if rec_t is not None:
        events.append((rec_t, f"**Recovery**: the bad rate is back near its baseline ({base_rate:.1%}) and stays there"
                              f" [query][q-requests]"))
    elif peak_t is not None:
        events.append((end_ns, "no recovery by the end of the window"))
    pm.timeline = sorted(events)
    pm.numbers.update({"onset_ns": onset, "first_alert_ns": first_fire, "peak_ns": peak_t, "recovery_ns": rec_t,
                       "time_to_detect_s": (first_fire - onset) / 1e9 if onset and first_fire and first_fire >= onset else None})

    # --- causes -----------------------------------------------------------------------------------
    causes = ([f for f in err_rep.findings if f.significant and f.kind == "error_cluster"][:2]
              + [f for f in slow_rep.findings if f.significant and f.is_cause][:2])
    for f in causes:
        q = "q-requests" if f.kind == "error_cluster" else "q-slow"
        lines = [f"{f.summary} [evidence][{q}]"]
        fields = ", ".join(f"{k}=`{v}`" for k, v in (("service", f.service), ("operation", f.operation),
                                                       ("stage", f.stage), ("attribute", f.attribute),
                                                       ("value", f.value), ("confidence", f.confidence)) if v not in (None, ""))
        if fields:
            lines.append(f"where: {fields}")
        ex = list(f.evidence.get("example_trace_ids") or [])
        if not ex and f.kind != "error_cluster":
            ex = list(slow_rep.data.get("example_trace_ids") or [])
        if ex:
            lines.append("example traces: " + ", ".join(_tr(t) for t in ex[:3]))
        pm.root_causes.append(lines)
    sig_ids = {id(f) for f in causes}
    for rep, q in ((slow_rep, "q-slow"), (err_rep, "q-requests")):
        for f in rep.findings:
            if f.significant and id(f) not in sig_ids and f.kind in ("log", "metric", "change", "attribute", "stage"):
                pm.contributing.append(f"{f.summary} [evidence][{q}]")
    pm.contributing = pm.contributing[:8]

    # --- words ------------------------------------------------------------------------------------------
    top = causes[0].summary if causes else "no single cause cleared the significance bar"
    pm.title = f"Post-mortem draft: {who}, {fmt_time(start_ns)}"
    pm.summary = [
        f"Between {fmt_time(start_ns)} and {fmt_time(end_ns)} ({fmt_duration(int(dur_s) * 10**9)}), "
        f"[{len(failed)}][q-requests] of [{n}][q-requests] requests (entering at {who}) failed and "
        f"[{len(slowed)}][q-slow] more were slower than {fmt_ms(thr_ns)}.",
        f"Most likely cause, from the investigations: {top}.",
    ]
    if first_fire and onset:
        pm.summary.append(f"The first alert fired {fmt_duration(max(0, first_fire - onset) // 10**9 * 10**9)} after "
                          f"the onset.")
    pm.impact = [
        f"Requests in the window: [{n}][q-requests] ({n / dur_s:.1f}/s).",
        f"Failed: [{len(failed)}][q-requests] ({len(failed) / n:.2%}); error-budget burn rate "
        f"{err_burn:.1f}x for a {err_obj * 100:g}% availability objective; at this traffic they used "
        f"{err_budget_used:.2%} of the {fmt_duration(period)} error budget.".replace(".000%", "%"),
        f"Slowed (succeeded but slower than {fmt_ms(thr_ns)}, {thr_how}): [{len(slowed)}][q-slow] "
        f"({len(slowed) / n:.2%}); latency burn rate {lat_burn:.1f}x for a {lat_obj * 100:g}% objective, "
        f"{lat_budget_used:.2%} of its {fmt_duration(period)} budget.",
        f"Affected requests in all: [{len(failed) + len(slowed)}][q-requests] ({(len(failed) + len(slowed)) / n:.2%}).",
    ]
    pm.went_well = [
        "_Prompt:_ which alert or person noticed first, and was that fast enough? "
        + (f"(the first alert fired at {fmt_time(first_fire)})" if first_fire else "(no watch alert fired in this window)"),
        "_Prompt:_ which tool, runbook or dashboard helped find the cause?",
    ]
    pm.went_wrong = [
        "_Prompt:_ what made the onset hard to see or slow to mitigate?",
        "_Prompt:_ was the change (deploy, rollout, config) visible to the on-call person when the alert fired?",
    ]
    pm.actions = _actions(causes, slow_rep, err_rep, pm.numbers, pm.alerts)
    return pm


def _short(name: str, n: int = 90) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= n else name[: n - 1] + "…"


def _alerts_in(state_dir: str | Path, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    from .state import StateStore
    try:
        st = StateStore(state_dir).load()
    except UserError:
        return []
    out = []
    for a in list(st.get("alerts", {}).values()) + list(st.get("history", [])):
        t = a.get("fired_at")
        if t and start_ns <= t <= end_ns:
            out.append(a)
    return sorted(out, key=lambda a: a["fired_at"])


def _peak_recovery(entries, start_ns: int, end_ns: int, thr_ns: int, onset: int | None):
    """Buckets of 1/30 of the window (at least 10 s): the worst one, and the first after it
    from which the bad rate stays within 2x (and 1 point) of the rate before the onset."""
    width = max(10 * 10**9, (end_ns - start_ns) // 30)
    nb = int((end_ns - start_ns) // width) + 1
    n = np.zeros(nb)
    bad = np.zeros(nb)
    for s in entries:
        i = int((s.start_ns - start_ns) // width)
        if 0 <= i < nb:
            n[i] += 1
            bad[i] += is_failure(s) or s.duration_ns > thr_ns
    rate = np.where(n > 0, bad / np.maximum(n, 1), np.nan)
    valid = n >= 5
    if not valid.any():
        return None, 0.0, None, 0.0
    pre = valid & (np.arange(nb) * width + start_ns < (onset if onset else start_ns + (end_ns - start_ns) // 5))
    base = float(bad[pre].sum() / n[pre].sum()) if pre.any() and n[pre].sum() else float(np.nanmin(rate[valid]))
    r = np.where(valid, rate, -1)
    peak = int(np.argmax(r))
    if r[peak] <= max(2 * base, base + 0.01):
        return None, 0.0, None, base
    limit = max(2 * base, base + 0.01)
    rec = None
    for i in range(peak + 1, nb):
        rest = valid[i:]
        if rest.any() and (r[i:][rest] <= limit).all():
            rec = i
            break
    rec_t = int(start_ns + rec * width) if rec is not None else None
    return int(start_ns + peak * width), float(r[peak]), rec_t, base


def _actions(causes, slow_rep, err_rep, numbers, alerts) -> list[str]:
    out: list[str] = []
    allf = [f for f in err_rep.findings + slow_rep.findings if f.significant]
    attrs = {(f.attribute, str(f.value)) for f in allf if f.attribute}
    if any(a == semconv.ML_MODEL_VERSION for a, _ in attrs):
        v = next(val for a, val in attrs if a == semconv.ML_MODEL_VERSION)
        out.append(f"[ ] Add a canary check on `{semconv.ML_MODEL_VERSION}` before full rollout: compare {v}'s error "
                   f"rate and latency with the current version's, and stop the rollout on a regression "
                   f"(`stagetrace watch` rule kind `version_change`).")
    if any(a == semconv.SERVICE_VERSION for a, _ in attrs):
        out.append(f"[ ] Gate deploys on a canary comparison of `{semconv.SERVICE_VERSION}` (error rate and p99).")
    for f in causes:
        if f.kind == "error_cluster":
            name = _short(f.evidence.get("name") or f.summary, 80)
            ex = (f.evidence.get("example_trace_ids") or [""])[0]
            out.append(f"[ ] Handle `{name}` in {f.service} `{f.operation}`"
                       + (f" (stage {f.stage})" if f.stage else "") + ": add a test with the failing input"
                       + (f" of trace {_tr(ex)}" if ex else "") + ".")
        elif f.kind == "attribute" and f.attribute:
            out.append(f"[ ] Add a latency SLO or alert scoped to `{f.attribute}={f.value}`, and find why it is slower "
                       f"(capacity, cache, hot key).")
        elif f.kind == "stage" and f.stage:
            out.append(f"[ ] Add a latency SLO on the `{f.stage}` stage"
                       + (f" of {f.service}" if f.service else "") + " (`stagetrace watch` stage rule) and a timeout "
                       f"budget for it.")
    for f in allf:
        if f.kind == "metric" and f.metric:
            out.append(f"[ ] Alert on `{f.metric}`: it moved with the slow requests.")
            break
    if numbers.get("time_to_detect_s") and numbers["time_to_detect_s"] > 300:
        out.append(f"[ ] Detection took {numbers['time_to_detect_s'] / 60:.0f} min: review the burn-rate windows "
                   f"of the alert that fired.")
    if not alerts:
        out.append("[ ] No `stagetrace watch` alert fired for this window: add the rule that would have caught it.")
    out.append("[ ] _Add the team's own items here._")
    seen, uniq = set(), []
    for a in out:
        if a not in seen:
            seen.add(a)
            uniq.append(a)
    return uniq


# --- rendering ---------------------------------------------------------------------------------------

def render_md(pm: Postmortem) -> str:
    """The draft as Markdown; control and bidi characters from the telemetry are written as
    escapes, as in every text view (the HTML draft is made from this text)."""
    pm = visible_tree(replace(pm, reports={}, alerts=[]))  # the rest is all the draft shows
    L = [f"# {pm.title}", "",
         "_Blameless draft generated by `stagetrace postmortem` from the telemetry. Every number links to the "
         "query behind it (see [Queries](#queries)); edit freely._", "",
         "## Summary", ""]
    L += [f"{s}" for s in pm.summary] + ["", "## Impact", ""]
    L += [f"- {s}" for s in pm.impact] + ["", "## Timeline (UTC)", ""]
    L += [f"- {fmt_time(t).replace(' UTC', '')} — {what}" for t, what in pm.timeline] or ["- (no events found)"]
    L += ["", "## Root cause", ""]
    if pm.root_causes:
        for i, lines in enumerate(pm.root_causes, 1):
            L.append(f"{i}. {lines[0]}")
            L += [f"   - {x}" for x in lines[1:]]
    else:
        L.append("No finding cleared the significance bar; see the investigations linked below.")
    L += ["", "## Contributing factors", ""]
    L += [f"- {c}" for c in pm.contributing] or ["- _(none found in the telemetry; add what you know)_"]
    L += ["", "## What went well", ""] + [f"- {x}" for x in pm.went_well]
    L += ["", "## What went wrong", ""] + [f"- {x}" for x in pm.went_wrong]
    L += ["", "## Action items", ""] + [f"- {x}" for x in pm.actions]
    L += ["", "## Queries", ""]
    for r in pm.refs:
        L.append(f"- <a id=\"{r.id}\"></a>**{r.id}** — {r.label}: `{r.command}`" + (f" → [{r.file}]({r.file})" if r.file else ""))
    tids = sorted(set(re.findall(r"#trace-([0-9a-f]{32})", "\n".join(L))))
    if tids:
        L += ["", "## Traces", ""]
        L += [f"- <a id=\"trace-{t}\"></a>`stagetrace trace {t}`" for t in tids]
    L.append("")
    for r in pm.refs:
        L.append(f"[{r.id}]: #{r.id} \"{r.command}\"")
    return "\n".join(L) + "\n"


_LINK = re.compile(r"\[([^\]]+)\]\[([\w-]+)\]|\[([^\]]+)\]\(([^)\s]+)(?: \"([^\"]*)\")?\)")


def render_html(pm: Postmortem) -> str:
    """The same draft as HTML (self-contained; the links point at the same queries and traces)."""
    md = render_md(pm)
    refs = {r.id: r for r in pm.refs}
    body: list[str] = []
    in_list = None
    for raw in md.splitlines():
        if raw.startswith("[") and "]: #" in raw:
            continue  # reference definitions
        m = re.match(r"^(\s*)(-|\d+\.) (.*)$", raw)
        if raw.startswith("#"):
            in_list = _close(body, in_list)
            level = len(raw) - len(raw.lstrip("#"))
            text = raw[level:].strip()
            anchor = re.sub(r"[^a-z]+", "-", text.lower()).strip("-")
            body.append(f"<h{level} id=\"{anchor}\">{_inline(text, refs)}</h{level}>")
        elif m:
            tag = "ol" if m.group(2)[0].isdigit() and not m.group(1) else "ul"
            if m.group(1):  # nested bullet: keep it simple, indent
                body.append(f"<div class=\"sub\">{_inline(m.group(3), refs)}</div>")
                continue
            if in_list != tag:
                in_list = _close(body, in_list)
                body.append(f"<{tag}>")
                in_list = tag
            body.append(f"<li>{_inline(m.group(3), refs)}</li>")
        elif raw.strip():
            in_list = _close(body, in_list)
            body.append(f"<p>{_inline(raw, refs)}</p>")
        else:
            in_list = _close(body, in_list)
    _close(body, in_list)
    css = ("body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
           "code{background:#f3f3f3;padding:0 .2em}.sub{margin-left:1.5em;color:#444;font-size:.95em}"
           "a.q{font-weight:600}h1{font-size:1.5em}")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_html.escape(pm.title)}</title>"
            f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _close(body: list[str], tag: str | None) -> None:
    if tag:
        body.append(f"</{tag}>")
    return None


def _inline(text: str, refs: dict[str, Ref]) -> str:
    out, pos = [], 0
    for m in _LINK.finditer(text):
        out.append(_fmt(text[pos:m.start()]))
        if m.group(2):
            r = refs.get(m.group(2))
            title = _html.escape(r.command if r else "", quote=True)
            out.append(f"<a class=\"q\" href=\"#{m.group(2)}\" title=\"{title}\">{_fmt(m.group(1))}</a>")
        else:
            title = _html.escape(m.group(5) or "", quote=True)
            out.append(f"<a href=\"{_html.escape(m.group(4), quote=True)}\" title=\"{title}\">{_fmt(m.group(3))}</a>")
        pos = m.end()
    out.append(_fmt(text[pos:]))
    s = "".join(out)
    # raw anchors we emit ourselves
    return re.sub(r"&lt;a id=&quot;([\w-]+)&quot;&gt;&lt;/a&gt;", r'<a id="\1"></a>', s)


def _fmt(t: str) -> str:
    t = _html.escape(t, quote=False).replace('"', "&quot;")
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"<em>\1</em>", t)
    return t


def write_postmortem(pm: Postmortem, out: Path) -> dict[str, str]:
    """postmortem.md and postmortem.html, plus the two investigations they link to
    (html, md, json) and postmortem.json with the measured numbers."""
    from stagetrace.forensics import render
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for kind, rep in pm.reports.items():
            for fmt in ("html", "md", "json"):
                (out / f"postmortem-{kind}.{fmt}").write_text(render(rep, fmt), encoding="utf-8")
        (out / "postmortem.md").write_text(render_md(pm), encoding="utf-8")
        (out / "postmortem.html").write_text(render_html(pm), encoding="utf-8")
        (out / "postmortem.json").write_text(json.dumps(
            {"title": pm.title, "window": {"start_ns": pm.start_ns, "end_ns": pm.end_ns}, "service": pm.service,
             "numbers": pm.numbers, "timeline": [{"time_ns": t, "event": e} for t, e in pm.timeline],
             "alerts": [a.get("id") for a in pm.alerts],
             "queries": [{"id": r.id, "label": r.label, "command": r.command, "file": r.file} for r in pm.refs]},
            indent=2, default=str), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the post-mortem to {out}: {exc.strerror or exc}") from None
    files = {"md": str(out / "postmortem.md"), "html": str(out / "postmortem.html"), "json": str(out / "postmortem.json")}
    return files
