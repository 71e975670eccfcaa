// stagetrace ui: search + latency scatter (brush to investigate), trace waterfall, service map.
// Plain DOM and SVG, no framework and no build step: the file ships as is in the Python package.
// Telemetry text (span names, attributes, log bodies) only ever goes into textContent, never HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const app = document.getElementById("app");
const statusEl = document.getElementById("status");
const tooltip = document.getElementById("tooltip");
// Tests and scripts read the last answers here (the structured JSON the page drew).
window.stagetrace = { lastSearch: null, lastReport: null, lastTrace: null, lastMap: null };

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms === 0) return "0";
  if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
  if (ms >= 100) return ms.toFixed(0) + " ms";
  if (ms >= 1) return ms.toFixed(1) + " ms";
  return (ms * 1000).toFixed(0) + " µs";
}

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function esc(s) { return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, (c) => ESC[c]); }

function pad2(n) { return String(n).padStart(2, "0"); }
function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}`;
}
function fmtTime(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${fmtClock(ms)} UTC`;
}
function fmtPct(x) { return (x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1) + "%"; }
function fmtRate(x) { return x >= 10 ? x.toFixed(0) + "/s" : x >= 0.1 ? x.toFixed(2) + "/s" : (x * 60).toFixed(1) + "/min"; }

function hue(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}
function serviceColor(name) { return `hsl(${hue(name)}, 55%, 52%)`; }

function traceLink(tid, label) {
  return el("a", { href: "/trace/" + encodeURIComponent(tid), class: "trace-link", "data-trace-id": tid }, label || tid);
}

async function getJSON(url, options) {
  const r = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(doc && doc.error ? doc.error : `HTTP ${r.status}`);
  return doc;
}

function setStatus(text) { statusEl.textContent = text || ""; }

function showError(where, err) {
  where.replaceChildren(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
}

function linkish(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

// A round step (1, 2 or 5 times a power of ten) that cuts `span` into at most n parts.
function niceStep(span, n) {
  const raw = (span || 1) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => (span || 1) / s <= n) || 10 * mag;
}

function niceTicks(lo, hi, n) {
  const step = niceStep(hi - lo, n);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
  return out;
}

function timeTicks(lo, hi, n) {
  const steps = [1e3, 5e3, 1e4, 15e3, 3e4, 6e4, 3e5, 6e5, 9e5, 18e5, 36e5, 3 * 36e5, 6 * 36e5, 12 * 36e5, 864e5];
  const step = steps.find((s) => (hi - lo) / s <= n) || 864e5;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  return out;
}

// ---------------------------------------------------------------- search page

const FILTERS = ["service", "operation", "route", "status", "min", "max", "attr", "since", "from", "to"];
const DEFAULT_SINCE = "1h";  // the server's default range (ui/api.py DEFAULT_SINCE)

function customRangeLabel(f) {
  const a = Number(f.from), b = f.to ? Number(f.to) : Date.now();
  return Number.isFinite(a) && Number.isFinite(b) ? `${fmtClock(a)} – ${fmtClock(b)} UTC` : "zoomed range";
}

function currentFilters() {
  const q = new URLSearchParams(location.search);
  const f = {};
  for (const k of FILTERS) { const v = q.get(k); if (v) f[k] = v; }
  return f;
}

function searchForm(f, services) {
  const field = (name, label, input) => el("label", { class: "field" }, el("span", { text: label }), input);
  const input = (name, ph) => el("input", { name, id: "f-" + name, value: f[name] || "", placeholder: ph || "", autocomplete: "off" });
  const svcInput = input("service", "any");
  svcInput.setAttribute("list", "services");
  const dl = el("datalist", { id: "services" }, ...services.map((s) => el("option", { value: s })));
  const status = el("select", { name: "status", id: "f-status" },
    ...[["", "any"], ["error", "error"], ["ok", "ok"], ["unset", "unset"]].map(([v, t]) =>
      el("option", { value: v, selected: (f.status || "") === v }, t)));
  const range = f.from ? "custom" : (f.since || DEFAULT_SINCE);
  const since = el("select", { name: "since", id: "f-since" },
    ...["15m", "1h", "6h", "24h", "7d"].concat(range === "custom" ? ["custom"] : []).map((v) =>
      el("option", { value: v, selected: v === range }, v === "custom" ? customRangeLabel(f) : "last " + v)));
  const form = el("form", { id: "search-form", class: "filters" },
    field("service", "Service", svcInput), dl,
    field("operation", "Operation", input("operation", "span name")),
    field("route", "Route", input("route", "/predict")),
    field("status", "Status", status),
    field("min", "Min duration", input("min", "e.g. 300ms")),
    field("max", "Max duration", input("max", "e.g. 2s")),
    field("attr", "Attributes", input("attr", "key=value, key=value")),
    field("since", "Time range", since),
    el("button", { type: "submit", id: "search-button" }, "Search"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const p = {};
    for (const k of FILTERS) { const v = data.get(k); if (v) p[k] = String(v).trim(); }
    if (p.since === "custom") { delete p.since; p.from = f.from; p.to = f.to; }
    location.assign("/?" + linkish(p));
  });
  return form;
}

async function searchPage() {
  let f = currentFilters();
  // No range chosen: the server may open on the requests' extent instead (ui/extent.py).
  const mayFit = !f.since && !f.from && !f.to;
  document.title = "stagetrace · search";
  const plotBox = el("div", { id: "plot", class: "plot" });
  const summary = el("div", { id: "search-summary", class: "summary" }, "searching…");
  const actions = el("div", { class: "actions" },
    el("button", { id: "why-slow", type: "button", title: "investigate slow over this window and filters" }, "why are these slow?"),
    el("button", { id: "why-failing", type: "button", title: "investigate errors over this window and filters" }, "why are these failing?"),
    el("span", { class: "muted hint", text: "Drag over the plot to select requests; click a dot to open its trace." }));
  const panel = el("section", { id: "investigation", class: "investigation", "data-state": "idle" });
  const results = el("div", { id: "results" });
  app.replaceChildren(searchForm(f, []), summary, plotBox, actions, panel, results);
  let doc;
  try {
    doc = await getJSON("/api/search?" + linkish(mayFit ? Object.assign({ fit: "1" }, f) : f));
  } catch (err) {
    showError(summary, err);
    app.dataset.state = "error";
    return;
  }
  window.stagetrace.lastSearch = doc;
  let fitNote = null;
  if (doc.fitted) {
    // The range shown goes into the URL, so a reload or a shared link shows this same view.
    const whole = linkish(Object.assign({}, f, { since: DEFAULT_SINCE }));
    f = Object.assign({}, f, { from: String(doc.fitted.from_ms), to: String(doc.fitted.to_ms) });
    history.replaceState(null, "", "/?" + linkish(f));
    setMapLink();
    fitNote = el("p", { id: "fit-note", class: "note" },
      `Opened on the requests' extent: the last ${DEFAULT_SINCE} holds them only from ${fmtClock(doc.extent.first_ms)} to ${fmtClock(doc.extent.last_ms)} UTC. `,
      el("a", { id: "fit-undo", href: "/?" + whole }, `Show the whole last ${DEFAULT_SINCE}`));
  }
  app.children[0].replaceWith(searchForm(f, doc.services));
  if (fitNote) summary.after(fitNote);
  const w = doc.window;
  summary.replaceChildren(
    el("strong", { id: "search-count", text: searchCount(doc) }),
    ` ${sampleNote(doc)} · ${doc.errors} error${doc.errors === 1 ? "" : "s"} · p50 ${fmtMs(doc.p50_ms)} · p95 ${fmtMs(doc.p95_ms)} · ${fmtTime(w.start_ms)} – ${fmtClock(w.end_ms)} · ${doc.took_ms} ms`);
  const win = { from: Math.round(w.start_ms), to: Math.round(w.end_ms) };
  const investigateWith = (kind, extra) => runInvestigation(panel, kind, Object.assign({}, f, win, extra || {}));
  actions.querySelector("#why-slow").addEventListener("click", () => investigateWith("slow"));
  actions.querySelector("#why-failing").addEventListener("click", () => investigateWith("errors"));
  drawScatter(plotBox, doc, (sel) => {
    const chosen = doc.points.filter((p) => p.start_ms >= sel.t0 && p.start_ms <= sel.t1 && p.duration_ms >= sel.d0 && p.duration_ms <= sel.d1);
    const errs = chosen.filter((p) => p.error).length;
    const range = { from: Math.floor(sel.t0), to: Math.ceil(sel.t1) };
    const kind = chosen.length && errs * 2 >= chosen.length ? "errors" : "slow";
    const extra = kind === "slow" ? Object.assign({ min: sel.d0.toFixed(3) + "ms" }, range) : range;
    panel.dataset.selected = String(chosen.length);
    runInvestigation(panel, kind, Object.assign({}, f, extra), {
      selected: chosen.length, zoom: "/?" + linkish(Object.assign({}, f, range, { since: null })),
      other: kind === "slow" ? () => runInvestigation(panel, "errors", Object.assign({}, f, range))
        : () => runInvestigation(panel, "slow", Object.assign({}, f, range, { min: sel.d0.toFixed(3) + "ms" })),
    });
  });
  // the list is the newest of every match when the store says so, else the newest of the points
  results.replaceChildren(doc.newest_exact && doc.matched !== null && doc.matched !== undefined
    ? resultTable(doc.rows, doc.matched, doc.matched_estimated) : resultTable(doc.rows, doc.count, false));
  app.dataset.state = "ready";
}

// "N of M shown": how many points the plot holds of how many requests matched (about
// how many, when the store was too big to count them all and a share of it was read).
function searchCount(doc) {
  const what = doc.mode === "span" ? "spans" : "requests";
  if (doc.matched === null || doc.matched === undefined || doc.matched === doc.count) return `${doc.count} ${what}`;
  return `${doc.count} of ${doc.matched_estimated ? "about " : ""}${doc.matched.toLocaleString("en")} ${what} shown`;
}

function sampleNote(doc) {
  if (!doc.sampled) return "";
  if (doc.read_fraction < 1) {
    const pct = (100 * doc.read_fraction).toFixed(doc.read_fraction < 0.1 ? 1 : 0);
    return `(a sample: the plot is drawn from ${pct}% of the window's rows, read evenly over it${doc.newest_exact ? "; the list below is the newest of all of them" : "; the list below is the newest of that sample"})`;
  }
  return "(a sample spread over the window, with each moment's slowest)";
}

function resultTable(rows, total, about) {
  if (!rows.length) return el("p", { class: "muted", id: "no-results", text: "No requests match these filters in this time range." });
  const max = Math.max(...rows.map((r) => r.duration_ms)) || 1;
  const body = el("tbody");
  for (const r of rows) {
    body.append(el("tr", { class: r.error ? "row-error" : "", "data-trace-id": r.trace_id },
      el("td", { class: "nowrap", text: fmtTime(r.start_ms) }),
      el("td", {}, el("span", { class: "chip", style: `border-color:${serviceColor(r.service)}`, text: r.service })),
      el("td", { text: r.name }),
      el("td", { class: "num nowrap" }, el("span", { class: "dbar", style: `width:${(60 * r.duration_ms / max).toFixed(1)}px` }), " ", fmtMs(r.duration_ms)),
      el("td", { text: r.error ? "error" : "" }),
      el("td", {}, traceLink(r.trace_id, r.trace_id.slice(0, 16) + "…"))));
  }
  return el("div", {},
    el("h3", { id: "result-heading", text: rows.length < total ? `Newest ${rows.length} of ${about ? "about " : ""}${total.toLocaleString("en")}` : `${rows.length} requests` }),
    el("table", { class: "results", id: "result-table" },
      el("thead", {}, el("tr", {}, ...["time", "service", "operation", "duration", "status", "trace"].map((h) => el("th", { text: h })))),
      body));
}

function drawScatter(box, doc, onBrush) {
  const W = Math.max(600, box.clientWidth || 900), H = 280, m = { l: 62, r: 14, t: 10, b: 28 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const t0 = doc.window.start_ms, t1 = doc.window.end_ms;
  const maxD = Math.max(1, ...doc.points.map((p) => p.duration_ms)) * 1.05;
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * pw;
  const y = (d) => m.t + ph - (d / maxD) * ph;
  const xi = (px) => t0 + ((px - m.l) / pw) * (t1 - t0);
  const yi = (py) => ((m.t + ph - py) / ph) * maxD;
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "scatter", id: "scatter" });
  s.append(svg("rect", { x: m.l, y: m.t, width: pw, height: ph, class: "plot-bg" }));
  for (const v of niceTicks(0, maxD, 5)) {
    s.append(svg("line", { x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), class: "grid" }));
    s.append(svg("text", { x: m.l - 6, y: y(v) + 4, class: "axis", "text-anchor": "end", text: fmtMs(v) }));
  }
  for (const t of timeTicks(t0, t1, 8)) {
    s.append(svg("text", { x: x(t), y: H - 8, class: "axis", "text-anchor": "middle", text: fmtClock(t) }));
  }
  const dots = svg("g", { class: "dots" });
  for (const p of doc.points) {
    const cx = x(p.start_ms).toFixed(1), cy = y(p.duration_ms).toFixed(1);
    dots.append(p.error
      ? svg("path", { d: `M${cx - 3.5},${cy - 3.5}l7,7m0,-7l-7,7`, class: "dot dot-error", "data-trace-id": p.trace_id })
      : svg("circle", { cx, cy, r: 3, class: "dot", "data-trace-id": p.trace_id, fill: serviceColor(p.service) }));
  }
  s.append(dots);
  const brush = svg("rect", { class: "brush", x: 0, y: 0, width: 0, height: 0, visibility: "hidden" });
  s.append(brush);
  box.replaceChildren(s, el("div", { class: "legend muted" }, "● request  ", el("span", { class: "err-mark", text: "✕" }), " error  · y: duration · x: start time (UTC)"));
  if (!doc.points.length) box.append(el("p", { class: "muted", text: "No requests match these filters in this time range." }));

  const pos = (ev) => { const r = s.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
  const clampX = (v) => Math.min(m.l + pw, Math.max(m.l, v));
  const clampY = (v) => Math.min(m.t + ph, Math.max(m.t, v));
  const nearest = (px, py, within) => {
    let best = null, bd = within * within;
    for (const p of doc.points) {
      const dx = x(p.start_ms) - px, dy = y(p.duration_ms) - py, d = dx * dx + dy * dy;
      if (d <= bd) { bd = d; best = p; }
    }
    return best;
  };
  let start = null;
  s.addEventListener("mousedown", (ev) => { ev.preventDefault(); start = pos(ev); });
  s.addEventListener("mousemove", (ev) => {
    const [px, py] = pos(ev);
    if (start) {
      const ax = clampX(Math.min(start[0], px)), bx = clampX(Math.max(start[0], px));
      const ay = clampY(Math.min(start[1], py)), by = clampY(Math.max(start[1], py));
      brush.setAttribute("x", ax); brush.setAttribute("y", ay);
      brush.setAttribute("width", bx - ax); brush.setAttribute("height", by - ay);
      brush.setAttribute("visibility", "visible");
      tooltip.hidden = true;
      return;
    }
    const p = nearest(px, py, 8);
    if (p) {
      tooltip.textContent = `${p.service} · ${p.name} · ${fmtMs(p.duration_ms)}${p.error ? " · error" : ""} · ${fmtClock(p.start_ms)}`;
      tooltip.style.left = ev.pageX + 12 + "px"; tooltip.style.top = ev.pageY + 12 + "px";
      tooltip.hidden = false;
      s.style.cursor = "pointer";
    } else { tooltip.hidden = true; s.style.cursor = "crosshair"; }
  });
  s.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  window.addEventListener("mouseup", (ev) => {
    if (!start) return;
    const [px, py] = pos(ev);
    const [sx, sy] = start;
    start = null;
    if (Math.abs(px - sx) < 5 && Math.abs(py - sy) < 5) {
      brush.setAttribute("visibility", "hidden");
      const p = nearest(px, py, 8);
      if (p) location.assign("/trace/" + encodeURIComponent(p.trace_id));
      return;
    }
    const ax = clampX(Math.min(sx, px)), bx = clampX(Math.max(sx, px));
    const ay = clampY(Math.min(sy, py)), by = clampY(Math.max(sy, py));
    onBrush({ t0: xi(ax), t1: xi(bx), d0: Math.max(0, yi(by)), d1: yi(ay) });
  });
}

// ---------------------------------------------------------------- investigation

async function runInvestigation(panel, kind, params, sel) {
  const body = Object.assign({ kind }, params);
  delete body.operation; delete body.status; delete body.attr; delete body.max;  // investigate takes window + service/route
  if (kind === "errors") delete body.min;
  if (body.from) delete body.since;
  const what = kind === "slow" ? "investigate slow" : "investigate errors";
  const win = body.from ? `${fmtTime(Number(body.from))} – ${fmtClock(Number(body.to))}` : `last ${body.since || DEFAULT_SINCE}`;
  const head = el("div", { class: "inv-head" },
    el("h2", { text: kind === "slow" ? "Why are these slow?" : "Why are these failing?" }),
    el("span", { class: "muted", text: `${what} · ${win}${body.service ? " · service " + body.service : ""}${body.route ? " · route " + body.route : ""}${kind === "slow" && body.min ? " · slower than " + fmtMs(parseFloat(body.min)) : ""}${sel ? ` · ${sel.selected} plotted requests selected` : ""}` }));
  const tools = el("div", { class: "inv-tools" });
  if (sel) {
    tools.append(el("a", { href: sel.zoom, id: "zoom-selection" }, "zoom to the selection"), " · ",
      el("a", { href: "#", id: "other-kind", onclick: (ev) => { ev.preventDefault(); sel.other(); } },
        kind === "slow" ? "why are these failing?" : "why are these slow?"));
  }
  panel.dataset.state = "running";
  panel.replaceChildren(head, tools, el("p", { class: "muted running", text: "running… (a few seconds)" }));
  panel.scrollIntoView({ block: "nearest" });
  let doc;
  try {
    doc = await getJSON("/api/investigate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (err) {
    panel.dataset.state = "error";
    panel.replaceChildren(head, tools, el("p", { class: "error", role: "alert", text: String(err.message || err) }));
    return;
  }
  window.stagetrace.lastReport = doc;
  panel.replaceChildren(head, tools, renderReport(doc));
  panel.dataset.state = "done";
  panel.dataset.kind = doc.kind;
}

function renderReport(doc) {
  const out = el("div", { class: "report", id: "report" });
  out.append(el("h3", { text: doc.title }));
  if (doc.verdict && doc.verdict.length) out.append(el("ul", { class: "verdict" }, ...doc.verdict.map((v) => el("li", { text: v }))));
  const d = doc.data || {};
  const charts = el("div", { class: "charts" });
  if (d.timeline && d.timeline.bucket_start_ns) charts.append(timelineChart(d.timeline, doc.kind));
  if (d.latency_histogram && d.latency_histogram.edges_ms) charts.append(histogramChart(d.latency_histogram));
  if (charts.children.length) out.append(charts);
  if (doc.findings.length) {
    const list = el("ol", { class: "findings", id: "findings" });
    doc.findings.forEach((f, i) => list.append(findingItem(f, i)));
    out.append(el("h3", { text: "Findings" }), list);
  } else {
    out.append(el("p", { class: "muted", text: "No findings." }));
  }
  const ex = d.example_trace_ids || [];
  if (ex.length) out.append(el("p", { class: "examples" }, "Example traces: ", ...ex.flatMap((t, i) => [i ? ", " : "", traceLink(t, t.slice(0, 12) + "…")])));
  if (doc.notes && doc.notes.length) out.append(el("details", {}, el("summary", { text: "Notes" }), el("ul", {}, ...doc.notes.map((n) => el("li", { text: n })))));
  return out;
}

function findingItem(f, i) {
  const chips = [];
  const chip = (k, v) => v !== null && v !== undefined && v !== "" ? chips.push(el("span", { class: "chip", "data-key": k, text: `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}` })) : null;
  chip("service", f.service); chip("operation", f.operation); chip("stage", f.stage);
  if (f.edge) chip("edge", `${f.edge.caller} → ${f.edge.callee}`);
  if (f.attribute) chip("attribute", `${f.attribute}=${f.value}`);
  chip("template", f.template); chip("metric", f.metric);
  const ev = f.evidence || {};
  const li = el("li", { class: `finding ${f.significant ? "significant" : "context"}`, "data-kind": f.kind, "data-rank": String(i) },
    el("div", { class: "finding-head" },
      el("span", { class: "badge", text: f.kind }),
      f.confidence ? el("span", { class: `badge conf-${f.confidence}`, text: f.confidence }) : null,
      f.significant ? null : el("span", { class: "badge muted", text: "not significant" }),
      el("span", { class: "summary-text", text: f.summary })),
    el("div", { class: "chips" }, ...chips));
  const examples = ev.example_trace_ids || [];
  const det = el("details", { class: "evidence" }, el("summary", { text: "evidence" }));
  if (examples.length) det.append(el("p", {}, "traces: ", ...examples.slice(0, 8).flatMap((t, j) => [j ? ", " : "", traceLink(t, t.slice(0, 12) + "…")])));
  for (const line of (ev.example_lines || ev.example_log_lines || []).slice(0, 5)) {
    const text = typeof line === "string" ? line : line.line || JSON.stringify(line);
    det.append(el("div", { class: "logline" }, line.trace_id ? traceLink(line.trace_id, "▸") : "", " ", text));
  }
  if (Array.isArray(ev.series) && ev.series.length > 1) det.append(sparkline(ev.series.map((v) => (v === null ? NaN : v)), 240, 40));
  const flat = {};
  for (const [k, v] of Object.entries(ev)) if (!["example_trace_ids", "example_lines", "example_log_lines", "series"].includes(k)) flat[k] = v;
  det.append(el("pre", { class: "json", text: JSON.stringify(flat, null, 1) }));
  li.append(det);
  return li;
}

function sparkline(vals, W, H) {
  const ok = vals.filter((v) => Number.isFinite(v));
  const lo = Math.min(...ok), hi = Math.max(...ok);
  const x = (i) => (i / Math.max(1, vals.length - 1)) * (W - 4) + 2;
  const y = (v) => H - 3 - ((v - lo) / (hi - lo || 1)) * (H - 6);
  let d = "";
  vals.forEach((v, i) => { if (Number.isFinite(v)) d += `${d && Number.isFinite(vals[i - 1]) ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`; });
  return svg("svg", { width: W, height: H, class: "spark" }, svg("path", { d, class: "line" }));
}

function timelineChart(tl, kind) {
  const W = 420, H = 130, m = { l: 34, r: 6, t: 16, b: 20 };
  const n = tl.requests.length, pw = W - m.l - m.r, ph = H - m.t - m.b;
  const max = Math.max(1, ...tl.requests);
  const bw = pw / Math.max(1, n);
  const s = svg("svg", { width: W, height: H, class: "chart" });
  s.append(svg("text", { x: m.l, y: 11, class: "axis", text: kind === "slow" ? "requests per bucket (slow in red)" : "requests per bucket (errors in red)" }));
  const bad = kind === "slow" ? tl.slow : tl.errors;
  for (let i = 0; i < n; i++) {
    const h = (tl.requests[i] / max) * ph, hb = ((bad && bad[i]) || 0) / max * ph;
    s.append(svg("rect", { x: m.l + i * bw, y: m.t + ph - h, width: Math.max(1, bw - 1), height: h, class: "bar" }));
    if (hb > 0) s.append(svg("rect", { x: m.l + i * bw, y: m.t + ph - hb, width: Math.max(1, bw - 1), height: hb, class: "bar-bad" }));
  }
  const st = tl.bucket_start_ns;
  if (st && st.length) {
    s.append(svg("text", { x: m.l, y: H - 5, class: "axis", text: fmtClock(st[0] / 1e6) }));
    s.append(svg("text", { x: W - m.r, y: H - 5, class: "axis", "text-anchor": "end", text: fmtClock(st[st.length - 1] / 1e6) }));
  }
  s.append(svg("text", { x: m.l - 4, y: m.t + 8, class: "axis", "text-anchor": "end", text: String(max) }));
  return s;
}

function histogramChart(hg) {
  const W = 420, H = 130, m = { l: 34, r: 6, t: 16, b: 20 };
  const n = hg.selection.length, pw = W - m.l - m.r, ph = H - m.t - m.b;
  const tot = (a) => a.reduce((x, y) => x + y, 0) || 1;
  const ts = tot(hg.selection), tb = tot(hg.baseline);
  const max = Math.max(...hg.selection.map((v) => v / ts), ...hg.baseline.map((v) => v / tb), 1e-9);
  const bw = pw / Math.max(1, n);
  const s = svg("svg", { width: W, height: H, class: "chart" });
  s.append(svg("text", { x: m.l, y: 11, class: "axis", text: "latency: selection (red) vs baseline (grey)" }));
  for (let i = 0; i < n; i++) {
    const hb = (hg.baseline[i] / tb / max) * ph, hs = (hg.selection[i] / ts / max) * ph;
    s.append(svg("rect", { x: m.l + i * bw, y: m.t + ph - hb, width: Math.max(1, bw / 2 - 0.5), height: hb, class: "bar" }));
    s.append(svg("rect", { x: m.l + i * bw + bw / 2, y: m.t + ph - hs, width: Math.max(1, bw / 2 - 0.5), height: hs, class: "bar-bad" }));
  }
  const e = hg.edges_ms;
  s.append(svg("text", { x: m.l, y: H - 5, class: "axis", text: fmtMs(e[0]) }));
  s.append(svg("text", { x: W - m.r, y: H - 5, class: "axis", "text-anchor": "end", text: fmtMs(e[e.length - 1]) }));
  return s;
}

// ---------------------------------------------------------------- trace page

async function tracePage(tid) {
  document.title = "stagetrace · trace " + tid.slice(0, 8);
  app.replaceChildren(el("p", { class: "muted", text: "loading trace " + tid + "…" }));
  let doc;
  try {
    doc = await getJSON("/api/trace/" + encodeURIComponent(tid));
  } catch (err) {
    showError(app, err);
    app.dataset.state = "error";
    return;
  }
  const t0 = performance.now();
  window.stagetrace.lastTrace = doc;
  renderTrace(doc);
  // ready once laid out and painted: the next frame, then a task after it
  await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  app.dataset.renderMs = (performance.now() - t0).toFixed(1);  // drawing, layout and paint
  app.dataset.readyMs = performance.now().toFixed(1);  // since navigation start
  app.dataset.state = "ready";
}

function renderTrace(doc) {
  const d = doc.data;
  const total = Math.max(d.duration_ms, 1e-6);
  const head = el("div", { class: "trace-head" },
    el("h2", {}, "Trace ", el("code", { text: d.trace_id })),
    // root is null for a trace id only log records carry (its verdict says no span was found)
    el("p", { class: "muted", text: `${d.root ? d.root.service + " · " + d.root.name + " · " : ""}${d.start} · ${fmtMs(d.duration_ms)} · ${d.span_count} spans · ${d.log_count} logs · ${d.errors} errors` }),
    ...(doc.verdict || []).map((v) => el("p", { class: "verdict", text: v })));
  const stageBar = el("div", { class: "stagebar", id: "stage-bar", title: "self time per ML stage on the critical path" });
  for (const st of d.stage_self_time) {
    stageBar.append(el("span", { class: "stage-seg", style: `flex:${Math.max(st.share, 0.002)};background:${serviceColor("stage:" + st.stage)}`, title: `${st.stage}: ${fmtMs(st.self_ms)} (${fmtPct(st.share)})` },
      st.share > 0.06 ? `${st.stage} ${fmtPct(st.share)}` : ""));
  }
  const findings = el("ul", { class: "trace-findings" }, ...doc.findings.map((f) => el("li", { "data-kind": f.kind, text: f.summary })));
  const notes = (doc.notes || []).map((n) => el("p", { class: "note", text: n }));
  const detail = el("aside", { id: "span-detail", class: "span-detail" }, el("p", { class: "muted", text: "Click a span to see its attributes and events." }));
  const wf = el("div", { class: "waterfall", id: "waterfall" });
  const axis = el("div", { class: "wf-row wf-axis" }, el("div", { class: "wf-label", text: "span · service · stage" }), el("div", { class: "wf-track" }));
  for (const v of niceTicks(0, total, 6)) {
    axis.lastChild.append(el("span", { class: "tick", style: `left:${(100 * v / total).toFixed(3)}%`, text: fmtMs(v) }));
  }
  const critSegs = new Map();
  for (const c of d.critical_path) {
    if (!critSegs.has(c.span_id)) critSegs.set(c.span_id, []);
    critSegs.get(c.span_id).push(c);
  }
  // One HTML string for the rows (2,000 spans + 2,000 logs draw in one parse, several
  // times faster than a node at a time); every telemetry text goes through esc().
  const pct = (ms) => Math.min(100, Math.max(0, (100 * ms) / total)).toFixed(3) + "%";
  const html = [];
  const byId = new Map();
  for (const sp of d.spans) {
    byId.set(sp.span_id, sp);
    const err = sp.status === "ERROR";
    const sid = esc(sp.span_id);
    html.push(`<div class="wf-row span-row${sp.critical ? " critical" : ""}${err ? " span-error" : ""}" data-span-id="${sid}" tabindex="0">`,
      `<div class="wf-label" style="padding-left:${6 + sp.depth * 14}px">`,
      sp.critical ? `<span class="star" title="on the critical path">★</span>` : "",
      `<span class="svc-dot" style="background:${serviceColor(sp.service)}"></span>`,
      `<span class="span-name">${esc(sp.name)}</span><span class="span-svc muted">${esc(sp.service)}</span>`,
      sp.stage ? `<span class="stage-badge" data-stage="${esc(sp.stage)}" style="border-color:${serviceColor("stage:" + sp.stage)}">${esc(sp.stage)}</span>` : "",
      err ? `<span class="err-mark">✕</span>` : "",
      `</div><div class="wf-track">`,
      `<span class="bar" style="left:${pct(sp.offset_ms)};width:${pct(Math.max(sp.duration_ms, total / 1000))};background:${serviceColor(sp.service)}"></span>`);
    for (const c of critSegs.get(sp.span_id) || []) {
      html.push(`<span class="crit-seg" style="left:${pct(c.offset_ms)};width:${pct(Math.max(c.duration_ms, total / 1000))}"></span>`);
    }
    for (const lg of sp.logs) if (lg.marked) html.push(`<span class="log-tick" style="left:${pct(lg.offset_ms)}"></span>`);
    html.push(`<span class="dur" style="left:${pct(sp.offset_ms + sp.duration_ms)}">${fmtMs(sp.duration_ms)}${sp.critical ? " · self " + fmtMs(sp.self_ms) : ""}</span></div></div>`);
    // its logs and exception events, interleaved in time order, right under it
    const items = sp.logs.map((l) => ({ t: l.offset_ms, log: l })).concat(
      sp.events.filter((e) => e.exception_type || e.name === "exception").map((e) => ({ t: e.offset_ms, ev: e })));
    items.sort((a, b) => a.t - b.t);
    const pad = `padding-left:${26 + sp.depth * 14}px`;
    for (const it of items) {
      if (it.log) {
        const l = it.log;
        html.push(`<div class="log-row sev-${esc((l.severity || "").toLowerCase())}${l.marked ? " marked" : ""}" data-span-id="${sid}" style="${pad}">`,
          `<span class="offset">+${l.offset_ms.toFixed(1)}ms</span><span class="sev">${esc(l.severity)}</span>`,
          `<span class="svc muted">${esc(l.service)}</span><span class="body">${esc(l.body)}</span></div>`);
      } else {
        const e = it.ev;
        html.push(`<div class="log-row exception marked" data-span-id="${sid}" style="${pad}">`,
          `<span class="offset">+${e.offset_ms.toFixed(1)}ms</span><span class="sev">EXC</span>`,
          `<span class="body">${esc(`${e.exception_type || e.name}: ${e.message || ""}`)}</span></div>`);
      }
    }
  }
  wf.append(axis);
  wf.insertAdjacentHTML("beforeend", html.join(""));
  let selected = null;
  const open = (row) => {
    if (selected) selected.classList.remove("selected");
    row.classList.add("selected"); selected = row;
    detail.replaceChildren(spanDetail(byId.get(row.dataset.spanId)));
  };
  wf.addEventListener("click", (ev) => { const row = ev.target.closest(".span-row"); if (row) open(row); });
  wf.addEventListener("keydown", (ev) => { const row = ev.target.closest(".span-row"); if (row && ev.key === "Enter") open(row); });
  const parts = [head, stageBar, findings, ...notes, el("div", { class: "trace-body" }, wf, detail)];
  if (d.unattached_logs && d.unattached_logs.length) {
    parts.push(el("h3", { text: "Logs of this trace outside its spans" }),
      el("div", { class: "unattached" }, ...d.unattached_logs.map((l) => el("div", { class: "log-row" },
        el("span", { class: "offset", text: `+${l.offset_ms.toFixed(1)}ms` }), el("span", { class: "sev", text: l.severity }),
        el("span", { class: "svc muted", text: l.service }), el("span", { class: "body", text: l.body })))));
  }
  parts.push(metricsSection(d, total));
  app.replaceChildren(...parts);
}

function spanDetail(sp) {
  const rows = Object.entries(sp.attributes).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
    el("tr", {}, el("th", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
  const out = el("div", { "data-span-id": sp.span_id },
    el("h3", { text: sp.name }),
    el("p", { class: "muted", text: `${sp.service} · ${sp.kind} · ${fmtMs(sp.duration_ms)} at +${fmtMs(sp.offset_ms)} · stage ${sp.stage || "–"}${sp.critical ? " · critical path, self " + fmtMs(sp.self_ms) : ""}` }),
    sp.status === "ERROR" ? el("p", { class: "error", text: `ERROR ${sp.status_message || ""}` }) : null,
    el("h4", { text: "Attributes" }),
    el("table", { class: "attrs", id: "span-attributes" }, el("tbody", {}, ...rows)));
  if (sp.events.length) {
    out.append(el("h4", { text: "Events" }));
    for (const e of sp.events) {
      out.append(el("div", { class: "event" }, el("strong", { text: `+${fmtMs(e.offset_ms)} ${e.name}` }),
        e.exception_type ? el("div", { text: `${e.exception_type}: ${e.message || ""}` }) : null,
        e.stacktrace ? el("pre", { class: "stack", text: e.stacktrace }) : null));
    }
  }
  return out;
}

function metricsSection(d, total) {
  const box = el("section", { class: "metrics", id: "metrics" }, el("h3", { text: "Service metrics around the trace" }));
  const series = d.metrics.filter((m) => !m.error && m.points && m.points.length);
  for (const m of d.metrics.filter((m) => m.error)) box.append(el("p", { class: "error", text: `${m.service}: metrics skipped: ${m.error}` }));
  if (!series.length) { box.append(el("p", { class: "muted", text: "No metric points for these services in this window." })); return box; }
  const grid = el("div", { class: "metric-grid" });
  const shown = series.slice(0, 24);
  for (const m of shown) {
    grid.append(el("figure", { class: "metric" }, metricChart(m, total), el("figcaption", { text: m.display_name || `${m.service} ${m.name}`, title: `${m.service} ${m.name}${m.unit ? " (" + m.unit + ")" : ""}` })));
  }
  box.append(el("p", { class: "muted", text: "Shaded: the trace's own time window. Times in UTC." }), grid);
  if (series.length > shown.length) box.append(el("p", { class: "muted", text: `${series.length - shown.length} more series not drawn.` }));
  return box;
}

// How a metric's values read on its axis, from its OpenTelemetry (UCUM) unit: a tick shows
// value / div followed by suffix ("296 MiB", "120 ms", "35%", "1.2k"); an annotation unit
// ("{request}", "{request}/s") would not fit beside every tick, so it is the axis title.
function metricScale(unit, name, maxAbs) {
  const u = unit || "";
  const time = { s: 1, ms: 1e-3, us: 1e-6, "µs": 1e-6, ns: 1e-9 };
  if (u in time) {
    const secs = maxAbs * time[u];
    if (!secs) return { div: 1, suffix: " " + (u === "us" ? "µs" : u), title: "" };
    const [perS, suffix] = secs >= 1 ? [1, " s"] : secs >= 1e-3 ? [1e-3, " ms"] : secs >= 1e-6 ? [1e-6, " µs"] : [1e-9, " ns"];
    return { div: perS / time[u], suffix, title: "" };
  }
  if (u === "By" || u === "By/s") {
    const per = u === "By/s" ? "/s" : "";
    const k = [[2 ** 40, " TiB"], [2 ** 30, " GiB"], [2 ** 20, " MiB"], [2 ** 10, " KiB"]].find(([v]) => maxAbs >= v);
    return k ? { div: k[0], suffix: k[1] + per, title: "" } : { div: 1, suffix: " B" + per, title: "" };
  }
  // a dimensionless utilization or ratio (0..1, as the semantic conventions define them)
  if (u === "1" && /utilization|ratio/.test(name || "")) return { div: 0.01, suffix: "%", title: "" };
  if (u === "%") return { div: 1, suffix: "%", title: "" };
  const k = [[1e9, "G"], [1e6, "M"], [1e3, "k"]].find(([v]) => maxAbs >= v);
  const mag = { div: k ? k[0] : 1, suffix: k ? k[1] : "" };
  const ann = /^\{([^}]*)\}(\/.*)?$/.exec(u);
  if (ann) return { div: mag.div, suffix: mag.suffix + (ann[2] || ""), title: ann[1] };
  return { div: mag.div, suffix: mag.suffix + (u && u !== "1" ? " " + u : ""), title: "" };
}

function metricChart(m, total) {
  const W = 300, H = 132, mg = { l: 58, r: 8, t: 16, b: 20 };
  const pw = W - mg.l - mg.r, ph = H - mg.t - mg.b;
  const xs = m.points.map((p) => p.offset_ms), vs = m.points.map((p) => p.value);
  const lo = Math.min(...xs, 0), hi = Math.max(...xs, total);
  const vmin = Math.min(...vs), vmax = Math.max(...vs);
  const sc = metricScale(m.unit, m.name, Math.max(Math.abs(vmin), Math.abs(vmax)));
  // the y axis in display units, widened to whole ticks so every point lies on the scale
  let dlo = vmin / sc.div, dhi = vmax / sc.div;
  if (dhi - dlo < 1e-9 * Math.max(1, Math.abs(dhi))) {  // a flat series: an axis around it (0 to 1 when all 0)
    if (dhi === 0) dhi = 1; else { const pad = Math.abs(dhi) * 0.1; dlo -= pad; dhi += pad; }
  }
  const step = niceStep(dhi - dlo, 3);
  const k0 = Math.floor(dlo / step + 1e-9), k1 = Math.ceil(dhi / step - 1e-9);
  dlo = k0 * step; dhi = k1 * step;
  const ticks = [];
  for (let k = k0; k <= k1; k++) ticks.push(k * step);
  const x = (o) => mg.l + ((o - lo) / (hi - lo || 1)) * pw;
  const y = (v) => mg.t + ph - ((v / sc.div - dlo) / (dhi - dlo)) * ph;
  const s = svg("svg", { width: W, height: H, class: "metric-chart", "data-lo": dlo * sc.div, "data-hi": dhi * sc.div });
  s.append(svg("rect", { x: mg.l, y: mg.t, width: pw, height: ph, class: "plot-bg" }));
  if (sc.title) s.append(svg("text", { x: 4, y: 10, class: "axis unit-title", text: sc.title }));
  // the trace's own window: at least 2 px, so a 50 ms trace in a 60 s chart still shows
  const wx = x(0), ww = Math.max(2, x(total) - x(0));
  s.append(svg("rect", { x: wx, y: mg.t, width: ww, height: ph, class: "trace-window" }));
  for (const t of ticks) {
    const v = t * sc.div, ty = y(v);
    s.append(svg("line", { x1: mg.l, x2: mg.l + pw, y1: ty, y2: ty, class: "grid" }));
    s.append(svg("text", { x: mg.l - 5, y: ty + 3.5, class: "axis y-tick", "text-anchor": "end", "data-value": v, text: `${+t.toPrecision(6)}${sc.suffix}` }));
  }
  // x: wall-clock time (UTC), from the points' own timestamps
  const p0 = m.points[0], epoch = p0.time_ns / 1e6 - p0.offset_ms;
  for (const t of timeTicks(epoch + lo, epoch + hi, 4)) {
    s.append(svg("text", { x: x(t - epoch), y: H - 5, class: "axis x-tick", "text-anchor": "middle", text: fmtClock(t) }));
  }
  let dpath = "";
  m.points.forEach((p, i) => { dpath += `${i ? "L" : "M"}${x(p.offset_ms).toFixed(1)},${y(p.value).toFixed(1)}`; });
  s.append(svg("path", { d: dpath, class: "line" }));
  for (const p of m.points) s.append(svg("circle", { cx: x(p.offset_ms), cy: y(p.value), r: 1.6, class: "pt", "data-value": p.value }));
  return s;
}

// ---------------------------------------------------------------- service map

async function mapPage() {
  document.title = "stagetrace · service map";
  const f = currentFilters();
  const range = f.from ? "custom" : (f.since || DEFAULT_SINCE);
  const since = el("select", { id: "map-since" }, ...["15m", "1h", "6h", "24h", "7d"].concat(range === "custom" ? ["custom"] : []).map((v) =>
    el("option", { value: v, selected: v === range }, v === "custom" ? customRangeLabel(f) : "last " + v)));
  since.addEventListener("change", () => location.assign("/map?" + linkish({ since: since.value })));
  const box = el("div", { id: "map", class: "map" }, el("p", { class: "muted", text: "reading spans…" }));
  app.replaceChildren(el("div", { class: "filters" }, el("label", { class: "field" }, el("span", { text: "Time range" }), since)), box);
  let doc;
  try {
    doc = await getJSON("/api/map?" + linkish({ since: f.since, from: f.from, to: f.to }));
  } catch (err) {
    showError(box, err);
    app.dataset.state = "error";
    return;
  }
  window.stagetrace.lastMap = doc;
  box.replaceChildren(drawMap(doc), mapTables(doc));
  app.dataset.state = "ready";
}

function drawMap(doc) {
  if (!doc.nodes.length) return el("p", { class: "muted", text: "No spans in this time range." });
  const cols = new Map();
  for (const n of doc.nodes) { if (!cols.has(n.depth)) cols.set(n.depth, []); cols.get(n.depth).push(n); }
  const colW = 400, rowH = 110, nw = 200, nh = 58;
  const W = Math.max(600, cols.size * colW + 40), H = Math.max(...[...cols.values()].map((c) => c.length)) * rowH + 20;
  const at = new Map();
  for (const [depth, list] of cols) list.forEach((n, i) => at.set(n.service, { x: 20 + depth * colW, y: 20 + i * rowH + (H - 40 - list.length * rowH) / 2 }));
  const s = svg("svg", { width: W, height: H, class: "servicemap", id: "servicemap" });
  s.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0L10,5L0,10z", class: "arrowhead" }))));
  for (const e of doc.edges) {
    const a = at.get(e.caller), b = at.get(e.callee);
    if (!a || !b) continue;
    const x1 = a.x + nw, y1 = a.y + nh / 2, x2 = b.x, y2 = b.y + nh / 2;
    const back = x2 <= x1;
    const dpath = back ? `M${a.x + nw / 2},${a.y + nh} C${a.x + nw / 2},${a.y + nh + 60} ${b.x + nw / 2},${b.y + nh + 60} ${b.x + nw / 2},${b.y + nh}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    s.append(svg("path", { d: dpath, class: `edge${e.error_rate > 0.05 ? " edge-bad" : ""}`, "marker-end": "url(#arrow)", "data-caller": e.caller, "data-callee": e.callee }));
    const lx = back ? (a.x + b.x + nw) / 2 : (x1 + x2) / 2, ly = back ? Math.max(a.y, b.y) + nh + 50 : (y1 + y2) / 2 - 22;
    s.append(svg("text", { x: lx, y: ly, class: "edge-label", "text-anchor": "middle", text: `${fmtRate(e.rate_per_s)} · ${fmtPct(e.error_rate)} err` }));
    s.append(svg("text", { x: lx, y: ly + 13, class: "edge-label", "text-anchor": "middle", text: `p50 ${fmtMs(e.p50_ms)} · p95 ${fmtMs(e.p95_ms)}` }));
  }
  for (const n of doc.nodes) {
    const p = at.get(n.service);
    const g = svg("g", { class: "node", "data-service": n.service });
    g.append(svg("rect", { x: p.x, y: p.y, width: nw, height: nh, rx: 8, class: "node-box", stroke: serviceColor(n.service) }));
    g.append(svg("text", { x: p.x + 10, y: p.y + 20, class: "node-name", text: n.service }));
    g.append(svg("text", { x: p.x + 10, y: p.y + 37, class: "node-stat", text: `${fmtRate(n.rate_per_s)} · ${fmtPct(n.error_rate)} err` }));
    g.append(svg("text", { x: p.x + 10, y: p.y + 51, class: "node-stat", text: `p50 ${fmtMs(n.p50_ms)} · p95 ${fmtMs(n.p95_ms)}` }));
    g.addEventListener("click", () => location.assign("/?" + linkish({ service: n.service, since: currentFilters().since, from: currentFilters().from, to: currentFilters().to })));
    s.append(g);
  }
  return el("div", { class: "map-wrap" }, s,
    el("p", { class: "muted", text: `${doc.spans_read} spans read${doc.sampled ? " (a sample: rates are over the " + doc.covered_s.toFixed(0) + " s the read spans cover)" : ""} · ${doc.took_ms} ms. Click a service to search its requests.` }));
}

function mapTables(doc) {
  const tr = (cells) => el("tr", {}, ...cells.map((c) => el("td", { text: c })));
  return el("div", { class: "map-tables" },
    el("h3", { text: "Edges (caller → callee)" }),
    el("table", { class: "results", id: "edge-table" },
      el("thead", {}, el("tr", {}, ...["caller", "callee", "requests", "rate", "error rate", "p50", "p95"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...doc.edges.map((e) => tr([e.caller, e.callee, e.requests, fmtRate(e.rate_per_s), fmtPct(e.error_rate), fmtMs(e.p50_ms), fmtMs(e.p95_ms)])))),
    el("h3", { text: "Services" }),
    el("table", { class: "results", id: "service-table" },
      el("thead", {}, el("tr", {}, ...["service", "requests", "rate", "error rate", "p50", "p95", "spans"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...doc.nodes.map((n) => tr([n.service, n.requests, fmtRate(n.rate_per_s), fmtPct(n.error_rate), fmtMs(n.p50_ms), fmtMs(n.p95_ms), n.spans])))));
}

// ---------------------------------------------------------------- router

function setMapLink() {
  const q = new URLSearchParams(location.search).toString();
  if (q && location.pathname === "/") document.getElementById("nav-map").setAttribute("href", "/map?" + linkish({ since: currentFilters().since, from: currentFilters().from, to: currentFilters().to }));
}

function route() {
  const p = location.pathname;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.getAttribute("href") === (p.startsWith("/trace/") ? "" : p));
  setMapLink();
  if (p.startsWith("/trace/")) return tracePage(decodeURIComponent(p.slice("/trace/".length)));
  if (p === "/map") return mapPage();
  return searchPage();
}

route().catch((err) => { showError(app, err); app.dataset.state = "error"; });
