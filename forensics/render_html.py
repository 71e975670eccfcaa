"""One self-contained HTML file: inline CSS and inline SVG charts generated
here, no scripts, no fonts, no CDN, so it opens offline and can be attached to
a ticket. Every chart is an ``<svg data-chart="...">``:

- ``latency-histogram`` (slow): selection vs baseline, log-spaced bins;
- ``stage-breakdown`` (slow): critical-path self time per stage, slow vs baseline;
- ``timeline`` (slow, errors): requests, slow/errors per bucket and p95 latency;
- ``waterfall`` (trace): spans on a time axis, critical path highlighted;
- ``drift-histogram`` (drift): per drifted feature (and the prediction scores), the
  reference's and the window's share of rows in each group of bins the test compared.
"""

from __future__ import annotations

import html
from typing import Sequence

from .metricnames import limit_series
from .render_text import METRIC_ROWS_PER_METRIC
from .report import Report, headline, to_json
from .timefmt import fmt_ms, fmt_time

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1200px}
h1{font-size:22px;margin:32px 0 6px}h2{font-size:17px;margin:22px 0 6px}
table{border-collapse:collapse;margin:8px 0;max-width:100%}td,th{border:1px solid #d5d9e2;padding:3px 8px;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere;word-break:break-word}td.num,th.num{white-space:nowrap;text-align:right}
table.findings{width:100%;table-layout:fixed}table.findings col.summary{width:auto}
table.findings td:not(:last-child),table.findings th{white-space:nowrap;overflow-wrap:normal;word-break:normal}
code,.mono{overflow-wrap:anywhere;word-break:break-word;white-space:pre-wrap}
th{background:#f2f4f8}.dim{color:#8a93a6}.sig{font-weight:600}.err{color:#c0262d}.warn{color:#a76b00}
.verdict{background:#f6f8fb;border-left:4px solid #3a6ee8;padding:8px 12px;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
section,ul,li,p{overflow-wrap:anywhere;max-width:100%}svg{max-width:100%;height:auto}
svg{background:#fff;border:1px solid #e3e6ee;margin:6px 0}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""
SEL, BASE, ERR, CRIT, NORM = "#d9482b", "#3a6ee8", "#8b0a12", "#f08c2b", "#7aa2f7"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def render_html(reports: Sequence[Report]) -> str:
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>{_e(' / '.join(r.title for r in reports))} - stagetrace</title><style>{_CSS}</style></head><body>"]
    for r in reports:
        parts.append(f"<section class='report' data-kind='{_e(r.kind)}'><h1>{_e(r.title)}</h1>")
        if r.kind == "trace":
            parts.append(_trace(r))
        else:
            parts.append(_investigation(r))
        parts.extend(f"<p class='dim'>{_e(n)}</p>" for n in r.notes)
        parts.append("</section>")
    # the machine-readable report travels with the page
    parts.append("<script type='application/json' id='stagetrace-report'>"
                 + to_json(list(reports), indent=None).replace("</", "<\\/") + "</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _investigation(r: Report) -> str:
    d = r.data
    out = []
    w = r.window or {}
    if w.get("start_ns") and w.get("end_ns"):
        out.append(f"<p class='dim'>window {_e(fmt_time(w['start_ns']))} .. {_e(fmt_time(w['end_ns']))}</p>")
    out.append("<h2>Verdict</h2><div class='verdict'>" + _e("\n".join(r.verdict)) + "</div>")
    if r.findings:
        # fixed layout: narrow columns sized here, the summary takes the rest and wraps
        out.append("<h2>Findings</h2><table class='findings'><colgroup><col style='width:3em'><col style='width:7.5em'>"
                   "<col style='width:7.5em'><col style='width:7.5em'><col style='width:4.5em'><col class='summary'></colgroup>"
                   "<tr><th>#</th><th>kind</th><th>significant</th><th>confidence</th><th>score</th><th>summary</th></tr>")
        for i, f in enumerate(r.findings, 1):
            cls = "sig" if f.significant else "dim"
            out.append(f"<tr class='{cls}'><td>{i}</td><td>{_e(f.kind)}</td><td>{'yes' if f.significant else 'no'}</td>"
                       f"<td>{_e(f.confidence or '')}</td><td>{f.score:.2f}</td><td>{_e(f.summary)}</td></tr>")
        out.append("</table>")
    if "latency_histogram" in d:
        out.append("<h2>Latency: slow requests vs baseline</h2>" + _histogram(d["latency_histogram"]))
    if "stage_breakdown" in d:
        out.append("<h2>Critical-path self time per stage</h2>" + _stages(d["stage_breakdown"]))
    for f in r.findings:
        if f.kind == "drift" and f.evidence.get("groups"):
            out.append(_drift_finding(f.evidence))
    if "timeline" in d:
        title = "Errors and latency over time"
        out.append(f"<h2>{title}</h2>" + _timeline(d["timeline"], r.kind))
    for tb in d.get("tables", []):
        out.append(f"<h2>{_e(tb['title'])}</h2><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in tb["columns"]) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in tb["rows"])
        out.append("</table>")
    for c in d.get("clusters", []):
        out.append(f"<h2 title='{_e(c['name'])}'>Incident {_e(c['id'])}: {_e(headline(c['name']))}</h2><ul>")
        out.append(f"<li>{c['failed_requests']} failed requests ({c['error_rate']:.1%}), {c['count']} events; first seen "
                   f"{_e(fmt_time(c['first_seen_ns']))}, last seen {_e(fmt_time(c['last_seen_ns']))}</li>")
        for o in c["origin"][:2]:
            out.append(f"<li>origin: <b>{_e(o['service'])}</b> <code>{_e(o['operation'])}</code> (stage {_e(o['stage'])}), "
                       f"{o['traces']} traces</li>")
        for p in c["propagated"][:4]:
            out.append(f"<li>propagated to: {_e(p['service'])} <code>{_e(p['operation'])}</code>, {p['traces']} traces</li>")
        for a in c["attributes"][:3]:
            if a["significant"]:
                out.append(f"<li><code>{_e(a['attribute'])}={_e(a['value'])}</code> in {a['selection_share']:.0%} of the "
                           f"incident vs {a['baseline_share']:.0%} of successes</li>")
        for ex in c["example_trace_ids"][:3]:
            out.append(f"<li class='mono'>stagetrace trace {_e(ex)}</li>")
        for ln in c["example_log_lines"][:2]:
            out.append(f"<li class='mono'>{_e(ln['line'])}</li>")
        out.append("</ul>")
    return "\n".join(out)


def _svg_open(chart: str, w: int, h: int, label: str) -> str:
    return (f"<svg data-chart='{chart}' role='img' aria-label='{_e(label)}' xmlns='http://www.w3.org/2000/svg' "
            f"width='{w}' height='{h}' viewBox='0 0 {w} {h}' font-size='11' font-family='sans-serif'>")


def _histogram(h: dict) -> str:
    W, H, L, B = 760, 240, 50, 36
    edges, sel, base = h["edges_ms"], h["selection"], h["baseline"]
    n = len(sel)
    # shares, so a 5% selection is visible next to a 95% baseline
    ts, tb = max(1, sum(sel)), max(1, sum(base))
    ss, bs = [x / ts for x in sel], [x / tb for x in base]
    top = max(ss + bs + [1e-9])
    bw = (W - L - 10) / max(n, 1)
    out = [_svg_open("latency-histogram", W, H, "latency histogram, selection vs baseline")]
    for i in range(n):
        x = L + i * bw
        for j, (v, col) in enumerate(((bs[i], BASE), (ss[i], SEL))):
            hh = (H - B - 10) * v / top
            out.append(f"<rect x='{x + j * bw / 2:.1f}' y='{H - B - hh:.1f}' width='{bw / 2 - 1:.1f}' height='{hh:.1f}' "
                       f"fill='{col}'><title>{edges[i]:.1f}-{edges[i + 1]:.1f} ms: {v:.1%}</title></rect>")
    for i in range(0, n + 1, max(1, n // 6)):
        x = L + i * bw
        out.append(f"<text x='{x:.1f}' y='{H - B + 14}' text-anchor='middle'>{edges[i]:.3g}</text>")
    out.append(f"<text x='{W / 2}' y='{H - 6}' text-anchor='middle'>latency (ms, log scale)</text>")
    out.append("<text x='8' y='14'>share of requests</text>")
    out.append(f"<rect x='{W - 220}' y='8' width='10' height='10' fill='{SEL}'/><text x='{W - 206}' y='17'>slow (selection)</text>"
               f"<rect x='{W - 110}' y='8' width='10' height='10' fill='{BASE}'/><text x='{W - 96}' y='17'>baseline</text>")
    out.append("</svg>")
    return "".join(out)


def _drift_finding(ev: dict) -> str:
    """A drifted feature: its histogram against the reference, then where and since when."""
    feature = str(ev.get("feature"))
    out = [f"<h2>Drift: {_e(feature)}</h2>", _drift_histogram(feature, ev["groups"]), "<ul>"]
    if ev.get("onset_ns"):
        where = ev.get("onset_located_in")
        inside = f" (located in {_e(where['attribute'])}={_e(where['value'])})" if where else ""
        out.append(f"<li>onset {_e(fmt_time(ev['onset_ns']))}{inside}</li>")
    for sg in (ev.get("segments") or [])[:3]:
        out.append(f"<li>concentrated in <code>{_e(sg['attribute'])}={_e(sg['value'])}</code>: PSI {sg['psi_inside']:.2f} "
                   f"there vs {sg['psi_outside']:.2f} elsewhere, {sg['share']:.0%} of requests</li>")
    out.extend(f"<li class='mono'>stagetrace trace {_e(t)}</li>" for t in (ev.get("example_trace_ids") or [])[:3])
    out.append("</ul>")
    return "".join(out)


def _drift_histogram(feature: str, groups: list[dict]) -> str:
    """Shares of rows per group (the bins the chi-square and PSI compared), reference
    beside the window: the picture of where the mass went."""
    W, H, L, B = 760, 240, 50, 48
    n = len(groups)
    top = max([g["reference"] for g in groups] + [g["current"] for g in groups] + [1e-9])
    bw = (W - L - 10) / max(n, 1)
    out = [_svg_open("drift-histogram", W, H, f"{feature}: reference vs window").replace(
        "<svg ", f"<svg data-feature='{_e(feature)}' ", 1)]
    for i, g in enumerate(groups):
        x = L + i * bw
        for j, (series, col) in enumerate((("reference", BASE), ("current", SEL))):
            v = float(g[series])
            hh = (H - B - 10) * v / top
            out.append(f"<rect data-series='{series}' data-group='{_e(g['group'])}' data-share='{v:.6f}' "
                       f"x='{x + j * bw / 2:.1f}' y='{H - B - hh:.1f}' width='{max(bw / 2 - 1, 1):.1f}' height='{hh:.1f}' "
                       f"fill='{col}'><title>{_e(g['group'])}: {v:.1%} ({series})</title></rect>")
        out.append(f"<text x='{x + bw / 2:.1f}' y='{H - B + 14}' text-anchor='middle'>{_e(g['group'])}</text>")
    out.append("<text x='8' y='14'>share of rows</text>")
    out.append(f"<rect x='{W - 220}' y='8' width='10' height='10' fill='{BASE}'/><text x='{W - 206}' y='17'>reference</text>"
               f"<rect x='{W - 120}' y='8' width='10' height='10' fill='{SEL}'/><text x='{W - 106}' y='17'>window</text>")
    out.append("</svg>")
    return "".join(out)


def _stages(rows: list[dict]) -> str:
    W, rowh, L = 760, 34, 130
    H = 30 + rowh * max(1, len(rows))
    top = max([max(r["selection_mean_ms"], r["baseline_mean_ms"]) for r in rows] + [1e-9])
    out = [_svg_open("stage-breakdown", W, H, "critical-path self time per stage")]
    for i, r in enumerate(rows):
        y = 20 + i * rowh
        out.append(f"<text x='8' y='{y + 14}'>{_e(r['stage'])}</text>")
        for j, (v, col) in enumerate(((r["selection_mean_ms"], SEL), (r["baseline_mean_ms"], BASE))):
            ww = (W - L - 120) * v / top
            out.append(f"<rect x='{L}' y='{y + j * 13}' width='{max(ww, 1):.1f}' height='12' fill='{col}'>"
                       f"<title>{v:.1f} ms</title></rect><text x='{L + ww + 4:.1f}' y='{y + j * 13 + 10}'>{v:.1f} ms</text>")
    out.append(f"<rect x='{W - 220}' y='4' width='10' height='10' fill='{SEL}'/><text x='{W - 206}' y='13'>slow</text>"
               f"<rect x='{W - 150}' y='4' width='10' height='10' fill='{BASE}'/><text x='{W - 136}' y='13'>baseline</text>")
    out.append("</svg>")
    return "".join(out)


def _timeline(t: dict, kind: str) -> str:
    W, H, L, B = 760, 240, 50, 30
    req = t["requests"]
    n = len(req)
    if n == 0:
        return _svg_open("timeline", W, 40, "timeline") + "<text x='8' y='20'>no data</text></svg>"
    bw = (W - L - 50) / n
    top = max(req + [1])
    out = [_svg_open("timeline", W, H, "errors and latency over time")]
    for i in range(n):
        x = L + i * bw
        hh = (H - B - 20) * req[i] / top
        out.append(f"<rect x='{x:.1f}' y='{H - B - hh:.1f}' width='{max(bw - 1, 1):.1f}' height='{hh:.1f}' fill='#e3e8f4'/>")
        for key, col in (("slow", SEL), ("errors", ERR)):
            if key in t and t[key][i]:
                h2 = (H - B - 20) * t[key][i] / top
                out.append(f"<rect x='{x + (bw / 2 if key == 'errors' else 0):.1f}' y='{H - B - h2:.1f}' "
                           f"width='{max(bw / 2 - 1, 1):.1f}' height='{h2:.1f}' fill='{col}'><title>{key}: {t[key][i]}</title></rect>")
    p95 = t.get("p95_ms")
    if p95 and any(v is not None for v in p95):
        mx = max(v for v in p95 if v is not None) or 1
        pts = " ".join(f"{L + (i + 0.5) * bw:.1f},{H - B - (H - B - 20) * v / mx:.1f}" for i, v in enumerate(p95) if v is not None)
        out.append(f"<polyline points='{pts}' fill='none' stroke='#222' stroke-width='1.5'/>")
        out.append(f"<text x='{W - 45}' y='24'>p95 {mx:.0f} ms</text>")
    out.append(f"<text x='{L}' y='{H - 10}'>{_e(fmt_time(t['bucket_start_ns'][0]))}</text>")
    out.append(f"<text x='{W - 50}' y='{H - 10}' text-anchor='end'>{_e(fmt_time(t['bucket_start_ns'][-1]))}</text>")
    legend = "<rect x='60' y='4' width='10' height='10' fill='#e3e8f4'/><text x='74' y='13'>requests</text>"
    if kind == "slow":
        legend += f"<rect x='140' y='4' width='10' height='10' fill='{SEL}'/><text x='154' y='13'>slow</text>"
    legend += f"<rect x='200' y='4' width='10' height='10' fill='{ERR}'/><text x='214' y='13'>errors</text>"
    if p95:
        legend += "<line x1='270' y1='9' x2='284' y2='9' stroke='#222'/><text x='288' y='13'>p95 latency</text>"
    out.append(legend + "</svg>")
    return "".join(out)


def _trace(r: Report) -> str:
    d = r.data
    if d.get("spans_missing"):  # a trace id only log records carry
        return "\n".join([*(f"<p><b>{_e(line)}</b></p>" for line in r.verdict),
                          "<h2>Logs</h2><table><tr><th>time</th><th>level</th><th>service</th><th>message</th></tr>",
                          *(f"<tr class='{'err' if lg['marked'] else ''}'><td>{_e(fmt_time(lg['time_ns']))}</td>"
                            f"<td>{_e(lg['severity'])}</td><td>{_e(lg['service'])}</td><td class='mono'>{_e(lg['body'])}</td></tr>"
                            for lg in d["unattached_logs"]), "</table>"])
    out = [f"<p>{_e(d['root']['service'])} <code>{_e(d['root']['name'])}</code>, {_e(fmt_ms(d['duration_ms'] * 1e6))}, "
           f"{d['span_count']} spans, {d['log_count']} logs, started {_e(d['start'])}"
           + (" &mdash; <b class='err'>broken trace</b>: orphans shown under the root" if d["broken"] else "") + "</p>"]
    out.append("<h2>Waterfall</h2>" + _waterfall(d))
    if len(d["spans"]) > MAX_WATERFALL_ROWS:
        out.append(f"<p class='dim'>First {MAX_WATERFALL_ROWS} of {len(d['spans'])} spans in tree order; "
                   "the JSON report has all of them.</p>")
    out.append("<h2>Self time per stage on the critical path</h2><table><tr><th>stage</th><th>self time</th><th>share</th></tr>")
    out += [f"<tr><td>{_e(x['stage'])}</td><td>{_e(fmt_ms(x['self_ms'] * 1e6))}</td><td>{x['share']:.0%}</td></tr>"
            for x in d["stage_self_time"]]
    out.append("</table><h2>Logs and exceptions by span</h2><table><tr><th>span</th><th>time</th><th>severity</th><th>line</th></tr>")
    for s in d["spans"]:
        items = [(e["offset_ms"], "EXCEPTION", f"{e.get('exception_type') or ''}: {e.get('message') or ''}", True) for e in s["events"]]
        items += [(lg["offset_ms"], lg["severity"], lg["body"], lg["marked"]) for lg in s["logs"]]
        for t, sev, text, marked in sorted(items, key=lambda x: x[0]):
            cls = "err" if str(sev).upper() in ("ERROR", "EXCEPTION", "FATAL") else "warn" if marked else ""
            out.append(f"<tr class='{cls}'><td>{_e(s['service'])} <code>{_e(s['name'])}</code></td><td>+{t:.1f} ms</td>"
                       f"<td>{_e(sev)}</td><td class='mono'>{_e(text)}</td></tr>")
    out.append("</table>")
    if d["metrics"]:
        out.append("<h2>Metrics around the trace</h2><p class='dim'>Most varying series first; labels shown are those that "
                   "differ between series of one metric.</p><table class='wrap'><tr><th>series</th><th>points</th>"
                   "<th>min</th><th>max</th></tr>")
        for kind, m in limit_series(d["metrics"], METRIC_ROWS_PER_METRIC):
            if kind == "error":
                out.append(f"<tr><td colspan='4' class='err'>{_e(m['service'])}: metrics skipped: {_e(m['error'])}</td></tr>")
            elif kind == "more":
                out.append(f"<tr class='dim'><td colspan='4'>+{m['hidden']} more {_e(m['service'])} {_e(m['name'])} series "
                           "(the JSON report lists all)</td></tr>")
            else:
                vals = [p["value"] for p in m["points"]] or [float("nan")]
                full = ", ".join(f"{k}={v}" for k, v in sorted(m["attributes"].items()))
                out.append(f"<tr><td title='{_e(full)}'>{_e(m['display_name'])}</td>"
                           f"<td>{len(m['points'])}</td><td>{min(vals):.4g}</td><td>{max(vals):.4g}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


MAX_WATERFALL_ROWS = 1500  # a 50k-span trace must not become a 50 MB page


def _waterfall(d: dict) -> str:
    rows = d["spans"][:MAX_WATERFALL_ROWS]
    W, rowh, L = 1000, 18, 360
    H = 24 + rowh * len(rows)
    total = max(d["duration_ms"], 1e-9)
    out = [_svg_open("waterfall", W, H, "trace waterfall")]
    for i, s in enumerate(rows):
        y = 18 + i * rowh
        x = L + (W - L - 10) * max(0.0, s["offset_ms"]) / total
        w = max(1.0, (W - L - 10) * s["duration_ms"] / total)
        w = min(w, W - 10 - x)
        col = CRIT if s["critical"] else NORM
        stroke = f" stroke='{ERR}' stroke-width='2' stroke-dasharray='4 2'" if s["status"] == "ERROR" else ""
        label = ("  " * s["depth"]) + ("★ " if s["critical"] else "") + s["name"]
        bold = ' font-weight="bold"' if s["critical"] else ""
        orphan = ' <tspan fill="#b0338a">(orphan)</tspan>' if s["orphan"] else ""
        out.append(f"<text x='{4 + 10 * s['depth']}' y='{y + 11}'{bold}>"
                   f"{_e(label.strip())} <tspan fill='#8a93a6'>{_e(s['service'])}</tspan>{orphan}</text>")
        out.append(f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{rowh - 5}' fill='{col}'{stroke} rx='2'>"
                   f"<title>{_e(s['name'])}: {s['duration_ms']:.2f} ms, self on critical path {s['self_ms']:.2f} ms</title></rect>")
        for lg in s["logs"]:
            if lg["marked"]:
                lx = L + (W - L - 10) * max(0.0, lg["offset_ms"]) / total
                out.append(f"<circle cx='{lx:.1f}' cy='{y + 6}' r='3' fill='#f0a500'><title>{_e(lg['body'])}</title></circle>")
    out.append(f"<rect x='120' y='3' width='10' height='10' fill='{CRIT}'/><text x='134' y='12'>critical path</text>"
               f"<rect x='220' y='3' width='10' height='10' fill='{NORM}'/><text x='234' y='12'>other spans</text>"
               f"<rect x='310' y='3' width='10' height='10' fill='#fff' stroke='{ERR}' stroke-width='2'/>"
               f"<text x='324' y='12'>error</text>")
    out.append(f"<text x='{L}' y='12'>0 ms</text><text x='{W - 10}' y='12' text-anchor='end'>{total:.1f} ms</text>")
    out.append("</svg>")
    return "".join(out)
