"""Terminal rendering with rich: colours on a terminal, plain text when piped."""

from __future__ import annotations

import io
from typing import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stagetrace.display import visible_tree

from .metricnames import limit_series
from .report import Report, drift_examples, headline
from .timefmt import fmt_ms, fmt_time

_SEV_STYLE = {"ERROR": "bold red", "FATAL": "bold red", "CRITICAL": "bold red", "WARN": "yellow", "WARNING": "yellow"}
BAR = 36
METRIC_ROWS_PER_METRIC = 4  # per service and metric; the rest is one "+N more" row


def render_text(reports: Sequence[Report], color: bool = False, width: int = 140) -> str:
    """Control and bidi characters in the telemetry are drawn as escapes (a span name must
    not recolour or reverse the terminal), and rich's markup and :emoji: codes are off
    (a name with ``[red]`` or ``:fire:`` in it is shown as sent)."""
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=color, color_system="standard" if color else None, width=width,
                  highlight=False, soft_wrap=False, markup=False, emoji=False)
    for i, r in enumerate(visible_tree(list(reports))):
        if i:
            con.rule()
        {"trace": _trace, "slow": _investigation, "errors": _investigation}.get(r.kind, _investigation)(con, r)
    return buf.getvalue()


def _header(con: Console, r: Report) -> None:
    con.print(Text(r.title, style="bold"))
    w = r.window or {}
    if w.get("start_ns") is not None and w.get("end_ns") and r.kind != "trace":  # 0 is the epoch, a real start
        con.print(f"window {fmt_time(w['start_ns'])} .. {fmt_time(w['end_ns'])}", style="dim")


def _investigation(con: Console, r: Report) -> None:
    _header(con, r)
    con.print()
    con.print(Text("Verdict", style="bold underline"))
    for line in r.verdict:
        con.print(line)
    if r.findings:
        con.print()
        t = Table(title="Findings (rank order)", show_lines=False, expand=False)
        for col in ("#", "kind", "sig", "conf", "score", "summary"):
            t.add_column(col, overflow="fold")
        shown = [f for f in r.findings if f.significant]
        shown += [f for f in r.findings if not f.significant][:max(3, 8 - len(shown))]
        for i, f in enumerate(shown, 1):
            style = None if f.significant else "dim"
            t.add_row(str(i), f.kind, "yes" if f.significant else "no", f.confidence or "", f"{f.score:.2f}",
                      f.summary, style=style)
        con.print(t)
        if len(shown) < len(r.findings):
            con.print(f"({len(r.findings) - len(shown)} more below the significance bar: --format json lists all)",
                      style="dim")
        for feature, ids in drift_examples(r):
            for tid in ids:  # one per line: a console narrower than three ids would wrap one apart
                con.print(f"{feature}: example stagetrace trace {tid}", soft_wrap=True)
    if r.data.get("stage_breakdown"):
        t = Table(title="Critical-path self time per stage (mean)")
        for col in ("stage", "slow", "baseline", "excess", "share of excess"):
            t.add_column(col)
        for row in r.data["stage_breakdown"]:
            t.add_row(row["stage"], f"{row['selection_mean_ms']:.1f} ms", f"{row['baseline_mean_ms']:.1f} ms",
                      f"{row['excess_ms']:+.1f} ms", f"{row['share_of_excess']:.0%}")
        con.print(t)
    for tb in r.data.get("tables", []):
        t = Table(title=tb["title"])
        for col in tb["columns"]:
            t.add_column(col, overflow="fold")
        for row in tb["rows"]:
            t.add_row(*[str(c) for c in row])
        con.print(t)
    for c in r.data.get("clusters", []):
        con.print()
        con.print(Text(f"Incident {c['id']}: {headline(c['name'])}", style="bold"))
        con.print(f"  {c['failed_requests']} failed requests ({c['error_rate']:.1%}), {c['count']} events, "
                  f"first {fmt_time(c['first_seen_ns'])}, last {fmt_time(c['last_seen_ns'])}")
        for o in c["origin"][:2]:
            con.print(f"  origin: {o['service']} '{o['operation']}' (stage {o['stage']}) in {o['traces']} traces")
        for p in c["propagated"][:4]:
            con.print(f"  propagated to: {p['service']} '{p['operation']}' in {p['traces']} traces")
        for fp in c["fingerprints"][:4]:
            frames = " <- ".join(fp["frames"]) if fp["frames"] else ""
            con.print(f"  fingerprint {fp['fingerprint']} [{fp['source']}] {fp['exception_type']} {fp['template']} "
                      f"{frames} x{fp['count']}", style="dim")
        for ex in c["example_trace_ids"][:3]:
            con.print(f"  example: stagetrace trace {ex}")
    for n in r.notes:
        con.print(n, style="dim")


def _trace(con: Console, r: Report) -> None:
    d = r.data
    con.print(Text(f"Trace {d['trace_id']}", style="bold"))
    if d.get("spans_missing"):
        _logs_without_spans(con, r)
        return
    con.print(f"{d['root']['service']} '{d['root']['name']}'  {fmt_ms(d['duration_ms'] * 1e6)}  {d['span_count']} spans  "
              f"{d['log_count']} logs  started {d['start']}" + ("  BROKEN TRACE (orphans shown)" if d["broken"] else ""))
    total = max(d["duration_ms"], 1e-9)
    # Plain aligned lines rather than a table, so log lines under a span are never wrapped into a column.
    nw = min(60, max(12, max(2 * s["depth"] + 2 + len(s["name"]) for s in d["spans"]) + 1))
    con.print(Text(f"{'span':<{nw}} {'service':<16} {'stage':<14} {'duration':>9} {'crit.self':>9}  timeline", style="bold"))
    for s in d["spans"]:
        start = min(BAR - 1, int(BAR * max(0.0, s["offset_ms"]) / total))
        length = min(max(1, int(round(BAR * s["duration_ms"] / total))), BAR - start)
        name = ("  " * s["depth"] + ("★ " if s["critical"] else "  ") + s["name"])[:nw]
        line = Text(f"{name:<{nw}} ", style="bold" if s["critical"] else None)
        line.append(f"{s['service'][:16]:<16} {s['stage'][:14]:<14} {fmt_ms(s['duration_ms'] * 1e6):>9} "
                    f"{fmt_ms(s['self_ms'] * 1e6) if s['critical'] else '':>9}  ")
        line.append(" " * start)
        line.append("█" * length, style="bold red" if s["critical"] else "cyan")
        if s["status"] == "ERROR":
            line.append("  ✗ ERROR", style="bold red")
        if s["orphan"]:
            line.append("  (orphan: parent missing)", style="magenta")
        if s["clamped"]:
            line.append("  (clamped: clock skew)", style="magenta")
        con.print(line, no_wrap=True, overflow="ignore", crop=False)
        items = [(e["offset_ms"], "exc", e) for e in s["events"]] + [(lg["offset_ms"], "log", lg) for lg in s["logs"]]
        for _, kind, it in sorted(items, key=lambda x: x[0]):
            pad = "  " * (s["depth"] + 2)
            if kind == "exc":
                out = Text(f"{pad}⚠ +{it['offset_ms']:.1f}ms {it['name']}: {it.get('exception_type') or ''}: "
                           f"{it.get('message') or ''}", style="bold red")
            else:
                sev = str(it["severity"]).upper()
                mark = "!" if it["marked"] else "·"
                out = Text(f"{pad}{mark} +{it['offset_ms']:.1f}ms {sev:5} {it['body']}", style=_SEV_STYLE.get(sev, "dim"))
            con.print(out, soft_wrap=True)
    st = Table(title="Self time per stage on the critical path")
    st.add_column("stage")
    st.add_column("self time")
    st.add_column("share")
    for row in d["stage_self_time"]:
        st.add_row(row["stage"], fmt_ms(row["self_ms"] * 1e6), f"{row['share']:.0%}")
    con.print(st)
    if d["unattached_logs"]:
        con.print(Text("Logs not attached to a known span", style="bold"))
        for lg in d["unattached_logs"]:
            con.print(f"  +{lg['offset_ms']:.1f}ms {lg['severity']} {lg['body']}")
    if d["metrics"]:
        mt = Table(title="Metric points of the trace's services around its window (most varying series first)")
        mt.add_column("series", overflow="fold")
        for col in ("points", "min", "max", "last"):
            mt.add_column(col, justify="right")
        for kind, m in limit_series(d["metrics"], METRIC_ROWS_PER_METRIC):
            if kind == "error":
                mt.add_row(f"{m['service']}: metrics skipped: {m['error']}", "", "", "", "")
            elif kind == "more":
                mt.add_row(Text(f"  +{m['hidden']} more {m['service']} {m['name']} series (--format json lists all)",
                                style="dim"), "", "", "", "")
            else:
                vals = [p["value"] for p in m["points"]]
                if not vals:
                    mt.add_row(m["display_name"], "0", "", "", "")
                    continue
                mt.add_row(m["display_name"], str(len(vals)), f"{min(vals):.4g}", f"{max(vals):.4g}", f"{vals[-1]:.4g}")
        con.print(mt)
    for n in r.notes:
        con.print(n, style="magenta")


def _logs_without_spans(con: Console, r: Report) -> None:
    """A trace id only log records carry: say so, then the logs (time, level, service, message)."""
    for line in r.verdict:
        con.print(line, style="bold")
    for lg in r.data["unattached_logs"]:
        sev = str(lg["severity"]).upper()
        con.print(Text(f"{fmt_time(lg['time_ns'])}  {sev:5} {lg['service'] or '-'}: {lg['body']}",
                       style=_SEV_STYLE.get(sev)), soft_wrap=True)
    for n in r.notes:
        con.print(n, style="magenta")
