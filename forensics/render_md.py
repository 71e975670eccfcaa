"""Markdown rendering (GitHub-flavoured tables), for tickets and post-mortems."""

from __future__ import annotations

from typing import Sequence

from stagetrace.display import visible_tree

from .metricnames import limit_series
from .render_text import METRIC_ROWS_PER_METRIC
from .report import Report, drift_examples, headline
from .timefmt import fmt_ms, fmt_time


def _cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_md(reports: Sequence[Report]) -> str:
    """Control and bidi characters in the telemetry are written as escapes, as on the
    terminal: Markdown is read as plain text as often as it is rendered."""
    out: list[str] = []
    for r in visible_tree(list(reports)):
        out.append(f"# {r.title}\n")
        w = r.window or {}
        if r.kind != "trace" and w.get("start_ns") and w.get("end_ns"):
            out.append(f"Window: {fmt_time(w['start_ns'])} .. {fmt_time(w['end_ns'])}\n")
        if r.kind == "trace":
            out.extend(_trace(r))
        else:
            out.append("## Verdict\n")
            out.extend(f"{line}  " for line in r.verdict)
            out.append("")
            if r.findings:
                out.append("## Findings\n")
                out.append("| # | kind | significant | confidence | score | summary |")
                out.append("|---|---|---|---|---|---|")
                for i, f in enumerate(r.findings, 1):
                    out.append(f"| {i} | {f.kind} | {'yes' if f.significant else 'no'} | {f.confidence or ''} | "
                               f"{f.score:.2f} | {_cell(f.summary)} |")
                out.append("")
                for feature, ids in drift_examples(r):
                    out.append(f"- {_cell(feature)}: " + ", ".join(f"`stagetrace trace {t}`" for t in ids))
                out.append("")
            if r.data.get("stage_breakdown"):
                out.append("## Critical-path self time per stage (mean)\n")
                out.append("| stage | slow | baseline | excess | share of excess |")
                out.append("|---|---|---|---|---|")
                for row in r.data["stage_breakdown"]:
                    out.append(f"| {row['stage']} | {row['selection_mean_ms']:.1f} ms | {row['baseline_mean_ms']:.1f} ms | "
                               f"{row['excess_ms']:+.1f} ms | {row['share_of_excess']:.0%} |")
                out.append("")
            for tb in r.data.get("tables", []):
                out.append(f"## {tb['title']}\n")
                out.append("| " + " | ".join(_cell(c) for c in tb["columns"]) + " |")
                out.append("|" + "---|" * len(tb["columns"]))
                out.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in tb["rows"])
                out.append("")
            for c in r.data.get("clusters", []):
                out.append(f"## Incident {c['id']}: {_cell(headline(c['name']))}\n")
                out.append(f"- {c['failed_requests']} failed requests ({c['error_rate']:.1%}), {c['count']} events")
                out.append(f"- first seen {fmt_time(c['first_seen_ns'])}, last seen {fmt_time(c['last_seen_ns'])}")
                for o in c["origin"][:2]:
                    out.append(f"- origin: {o['service']} `{o['operation']}` (stage {o['stage']}), {o['traces']} traces")
                for p in c["propagated"][:4]:
                    out.append(f"- propagated to: {p['service']} `{p['operation']}`, {p['traces']} traces")
                for a in c["attributes"][:3]:
                    if a["significant"]:
                        out.append(f"- `{a['attribute']}={a['value']}` in {a['selection_share']:.0%} of the incident "
                                   f"vs {a['baseline_share']:.0%} of successes")
                for ex in c["example_trace_ids"][:3]:
                    out.append(f"- example: `stagetrace trace {ex}`")
                for ln in c["example_log_lines"][:2]:
                    out.append(f"- log: `{_cell(ln['line'])}`")
                out.append("")
        for n in r.notes:
            out.append(f"> {n}\n")
    return "\n".join(out) + "\n"


def _trace(r: Report) -> list[str]:
    d = r.data
    if d.get("spans_missing"):  # a trace id only log records carry
        return [*(f"**{line}**  " for line in r.verdict), "", "## Logs\n", "| time | level | service | message |",
                "|---|---|---|---|", *(f"| {fmt_time(lg['time_ns'])} | {_cell(lg['severity'])} | {_cell(lg['service'])} | "
                                       f"{_cell(lg['body'])} |" for lg in d["unattached_logs"]), ""]
    out = [f"{d['root']['service']} `{d['root']['name']}`, {fmt_ms(d['duration_ms'] * 1e6)}, {d['span_count']} spans, "
           f"{d['log_count']} logs, started {d['start']}" + (" — **broken trace** (orphans shown)" if d["broken"] else ""), "",
           "## Waterfall (★ = critical path)\n", "| span | service | stage | start | duration | self on critical path | status |",
           "|---|---|---|---|---|---|---|"]
    for s in d["spans"]:
        name = "&nbsp;" * (4 * s["depth"]) + ("★ " if s["critical"] else "") + _cell(s["name"])
        if s["orphan"]:
            name += " (orphan)"
        out.append(f"| {name} | {s['service']} | {s['stage']} | +{s['offset_ms']:.1f} ms | {fmt_ms(s['duration_ms'] * 1e6)} | "
                   f"{fmt_ms(s['self_ms'] * 1e6) if s['critical'] else ''} | {s['status']} |")
    out += ["", "## Self time per stage on the critical path\n", "| stage | self time | share |", "|---|---|---|"]
    out += [f"| {x['stage']} | {fmt_ms(x['self_ms'] * 1e6)} | {x['share']:.0%} |" for x in d["stage_self_time"]]
    out += ["", "## Logs and exceptions by span\n"]
    for s in d["spans"]:
        items = [(e["offset_ms"], f"**exception** {e.get('exception_type') or ''}: {e.get('message') or ''}") for e in s["events"]]
        items += [(lg["offset_ms"], ("**" + str(lg["severity"]) + "**" if lg["marked"] else str(lg["severity"])) + " " + lg["body"])
                  for lg in s["logs"]]
        if items:
            out.append(f"- {s['service']} `{s['name']}`")
            out += [f"  - +{t:.1f} ms {_cell(text)}" for t, text in sorted(items)]
    if d["metrics"]:
        out += ["", "## Metrics around the trace (most varying series first)\n", "| series | points | min | max |", "|---|---|---|---|"]
        for kind, m in limit_series(d["metrics"], METRIC_ROWS_PER_METRIC):
            if kind == "error":
                out.append(f"| {_cell(m['service'])}: metrics skipped: {_cell(m['error'])} | | | |")
            elif kind == "more":
                out.append(f"| _+{m['hidden']} more {_cell(m['service'])} {_cell(m['name'])} series (JSON lists all)_ | | | |")
            else:
                vals = [p["value"] for p in m["points"]] or [float("nan")]
                out.append(f"| {_cell(m['display_name'])} | {len(m['points'])} | {min(vals):.4g} | {max(vals):.4g} |")
    out.append("")
    return out
