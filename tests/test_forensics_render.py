"""Readability of the reports: metric series get short names that keep what
sets them apart from their siblings (and drop constant labels and instance
ids), the trace's metric table shows those names and limits its rows, and the
HTML wraps long text instead of overflowing the page.

Hand-made data through the in-memory test backend (tests/telemetry_gen.py):
these are renderer tests, the store is exercised elsewhere."""

from __future__ import annotations

import json
import re

import numpy as np

import telemetry_gen as gen
from stagetrace import semconv
from stagetrace.forensics import metricevidence, render, trace_report
from stagetrace.forensics.metricnames import MAX_LEN, SeriesKey, display_name, display_names, limit_series
from stagetrace.forensics.render_html import render_html
from stagetrace.forensics.report import Finding, Report
from stagetrace.forensics.blame import Blame
from stagetrace.forensics.slow import _findings
from stagetrace.model import MetricPoint, MetricSeries, Span

MS = 1_000_000
S = 1_000_000_000
T = "ef" * 16
POOL = "db.client.connection.pool.name"
INSTANCE = "ecfaf5ef-1d1e-4b7a-9a52-0b7c3e1f2d44"


def _pool_labels(shard: int) -> dict:
    return {POOL: f"online-store-shard-{shard}", "http.request.method": "GET", "url.scheme": "http",
            semconv.SERVICE_INSTANCE_ID: INSTANCE}


# --- display names -------------------------------------------------------------------------------


def test_distinguishing_label_kept_constant_labels_and_instance_identity_dropped():
    keys = [SeriesKey("feature-store", "db.client.connection.wait_time", _pool_labels(i)) for i in range(8)]
    names = display_names(keys)
    assert names[7] == "feature-store db.client.connection.wait_time{pool.name=online-store-shard-7}", names[7]
    assert len(set(names)) == 8
    for n in names:
        assert n.startswith("feature-store ")
        assert INSTANCE[:8] not in n and "service.instance.id" not in n
        assert "GET" not in n and "url.scheme" not in n


def test_single_series_has_no_labels_and_service_comes_first():
    labels = {"http.request.method": "GET", "http.response.status_code": 200, "http.route": "/features/{user_id}",
              "network.protocol.version": "1.1", semconv.SERVICE_INSTANCE_ID: INSTANCE, "url.scheme": "http"}
    assert display_name("feature-store", "http.server.request.duration", labels) == \
        "feature-store http.server.request.duration"


def test_status_label_that_differs_is_kept_and_a_redundant_one_left_out():
    ok = {"http.request.method": "POST", "http.response.status_code": 200}
    bad = {"http.request.method": "POST", "http.response.status_code": 500, "error.type": "500"}
    a, b = display_names([SeriesKey("api", "http.server.request.duration", ok),
                          SeriesKey("api", "http.server.request.duration", bad)])
    assert a == "api http.server.request.duration{status_code=200}", a
    assert b == "api http.server.request.duration{status_code=500}", b  # error.type restates the status


def test_siblings_are_per_service_and_metric():
    a, b, c = display_names([SeriesKey("api", "m", {"shard": 1}), SeriesKey("api", "m", {"shard": 7}),
                             SeriesKey("worker", "m", {"shard": 1})])
    assert (a, b, c) == ("api m{shard=1}", "api m{shard=7}", "worker m")


def test_instance_shown_only_when_it_is_all_that_tells_series_apart():
    keys = [SeriesKey("fraud-api", "process.memory.usage", {semconv.SERVICE_INSTANCE_ID: f"{c * 8}-rest"})
            for c in "ab"]
    a, b = display_names(keys)
    assert a == "fraud-api process.memory.usage (1 of 2 instances, aaaaaaaa)", a
    assert b.endswith("(1 of 2 instances, bbbbbbbb)")
    # different labels on different instances: the labels say it, the instance is noise
    keys = [SeriesKey("api", "m", {"shard": s, semconv.SERVICE_INSTANCE_ID: f"inst-{s}"}) for s in (1, 2)]
    assert display_names(keys) == ["api m{shard=1}", "api m{shard=2}"]


def test_long_values_keep_their_tail_and_the_name_is_capped():
    keys = [SeriesKey("feature-store", "pool.wait", {POOL: "x" * 60 + f"-shard-{i}"}) for i in (1, 7)]
    n1, n7 = display_names(keys)
    assert n7.endswith("-shard-7}") and "…" in n7 and n1 != n7
    many = [SeriesKey("svc", "a.very.long.metric.name." * 3, {f"label.{k}": f"value-{k}-{i}" * 4 for k in range(10)})
            for i in range(3)]
    for n in display_names(many):
        assert len(n) <= MAX_LEN, n


def test_limit_series_ranks_by_variation_and_says_how_many_more():
    rows = [{"service": "fs", "name": "wait", "attributes": {POOL: f"shard-{i}"}, "instance": INSTANCE,
             "points": [{"value": 0.0}, {"value": 1.2 if i == 7 else 0.001 * i}]} for i in range(8)]
    out = limit_series(rows, per_metric=3)
    kinds = [k for k, _ in out]
    assert kinds == ["series", "series", "series", "more"]
    assert out[0][1]["display_name"] == "fs wait{pool.name=shard-7}"
    assert out[3][1]["hidden"] == 5


# --- metric evidence and findings -----------------------------------------------------------------


def _pool_series(n_buckets: int = 30) -> tuple[list[MetricSeries], np.ndarray, np.ndarray]:
    e = np.arange(n_buckets + 1, dtype=np.int64) * 10 * S
    rate = np.array([0.02] * 15 + [0.4] * 15)
    rate[::3] += 0.01
    out = []
    for shard in range(8):
        attrs = {POOL: f"online-store-shard-{shard}", "http.request.method": "GET"}
        res = {semconv.SERVICE_NAME: "feature-store", semconv.SERVICE_INSTANCE_ID: INSTANCE}
        vals = [(0.4 + 0.01 * (j % 3) if j >= 15 else 0.002 + 0.0001 * (j % 4)) if shard == 7 else 0.002 + 0.0001 * (j % 5)
                for j in range(n_buckets)]
        pts = [MetricPoint("db.client.connection.wait_time", "gauge", int(e[j] + 5 * S), v, attrs, res, unit="s")
               for j, v in enumerate(vals)]
        out.append(MetricSeries("db.client.connection.wait_time", "gauge", attrs, res, pts, "s"))
    return out, e, rate


def test_metric_finding_summary_uses_the_display_name_and_evidence_keeps_all_labels():
    series, e, rate = _pool_series()
    stats = metricevidence.evidence(series, e, rate, rate > 0.1)
    top = stats[0]
    assert top.significant and top.attributes[POOL] == "online-store-shard-7"
    assert top.display == "feature-store db.client.connection.wait_time{pool.name=online-store-shard-7}"
    ev = top.evidence()
    assert ev["attributes"] == {POOL: "online-store-shard-7", "http.request.method": "GET",
                                semconv.SERVICE_INSTANCE_ID: INSTANCE}
    assert ev["display_name"] == top.display
    f = next(f for f in _findings(Blame([], {}, {}, {}, {}), [], [], stats, None, [], "p95", 0) if f.kind == "metric")
    assert f.summary.startswith("feature-store db.client.connection.wait_time{pool.name=online-store-shard-7} rises"), \
        f.summary
    assert INSTANCE not in f.summary and "GET" not in f.summary and f.metric == "db.client.connection.wait_time"
    for fmt in ("text", "md", "html"):
        rep = Report("slow", "Slow requests", findings=[f], verdict=[f.summary])
        out = render(rep, fmt)
        assert "pool.name=online-store-shard-7" in out and INSTANCE not in out.split("stagetrace-report")[0], fmt


# --- trace: metric table --------------------------------------------------------------------------


def _trace_backend() -> gen.MemoryBackend:
    res = {semconv.SERVICE_NAME: "feature-store", semconv.SERVICE_INSTANCE_ID: INSTANCE}
    spans = [Span(T, "1".rjust(16, "0"), "", "GET /features", "SERVER", 100 * S, 100 * S + 900 * MS, resource=res),
             Span(T, "2".rjust(16, "0"), "1".rjust(16, "0"), "OnlineStore.get", "INTERNAL", 100 * S + 5 * MS,
                  100 * S + 890 * MS, attributes={semconv.ML_STAGE: "feature_fetch"}, resource=res)]
    series = []
    for shard in range(8):
        attrs = {POOL: f"online-store-shard-{shard}", "http.request.method": "GET"}
        pts = [MetricPoint("db.client.connection.wait_time", "gauge", (95 + k) * S,
                           (0.8 + 0.1 * k) if shard == 7 else 0.001 * k, attrs, res, unit="s") for k in range(10)]
        series.append(MetricSeries("db.client.connection.wait_time", "gauge", attrs, res, pts, "s"))
    return gen.MemoryBackend(spans, [], series)


def test_trace_text_shows_the_distinguishing_label_of_each_series_and_limits_rows():
    rep = trace_report(_trace_backend(), T)
    text = render(rep, "text")
    table = text[text.index("Metric points"):]
    assert "feature-store db.client.connection.wait_time{pool.name=online-store-shard-7}" in table, table
    assert INSTANCE[:8] not in table and "http.request.method" not in table
    # the most varying series (shard 7) comes first, the rest are summarised
    rows = [ln for ln in table.splitlines() if "pool.name=" in ln]
    assert "shard-7" in rows[0] and len(rows) == 4, rows
    assert "+4 more feature-store db.client.connection.wait_time series" in table
    md = render(rep, "md")
    assert "{pool.name=online-store-shard-7}" in md and "+4 more" in md
    html = render(rep, "html")
    assert "{pool.name=online-store-shard-7}" in html and "+4 more" in html
    doc = json.loads(render(rep, "json"))
    m7 = [m for m in doc["data"]["metrics"] if m["attributes"][POOL] == "online-store-shard-7"][0]
    assert m7["display_name"].endswith("{pool.name=online-store-shard-7}")
    assert m7["instance"] == INSTANCE and m7["attributes"]["http.request.method"] == "GET"  # full labels kept
    assert len(doc["data"]["metrics"]) == 8  # JSON lists all


# --- HTML wrapping --------------------------------------------------------------------------------


def _css(page: str) -> str:
    return re.search(r"<style>(.*?)</style>", page, re.S).group(1)


def _rules(css: str, selector: str) -> str:
    """Declarations of every rule whose selector list names ``selector``."""
    out = []
    for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        if selector in [s.strip() for s in sel.split(",")]:
            out.append(body)
    return ";".join(out)


def test_html_wraps_long_summaries_and_verdict_and_stays_offline():
    long = "http.server.request.duration{" + ",".join(f"label{i}=value-without-spaces-{i}" for i in range(20)) + "}"
    r = Report("slow", "Slow requests", verdict=[f"1. {long} rises"],
               findings=[Finding("metric", f"{long} rises with the slow-request rate", 0.9, True, "high", {})])
    page = render_html([r])
    css = _css(page)
    for sel in ("td", ".verdict"):
        assert re.search(r"overflow-wrap:\s*anywhere|word-break:\s*break-word", _rules(css, sel)), sel
    assert "max-width:100%" in _rules(css, "table").replace(" ", "")
    assert "table-layout:fixed" in _rules(css, "table.findings").replace(" ", "")
    assert "<table class='findings'>" in page
    assert "max-width:100%" in _rules(css, "svg").replace(" ", "")  # charts shrink instead of overflowing
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "@import" not in css and "url(" not in css
