"""Forensics defects found by running the real demo, each pinned by a test:

1. equally strong attributes ranked by discovery order (identity attributes
   crowding out ml.model.version, and suppressing the "v2 first seen" change);
2. short windows (under ~80 s) getting no onset and no metric evidence;
3. cumulative histograms resampled as running means (drift -> false correlation);
4. operation-level stage findings without their ``stage``;
5. whole exception paragraphs in one-sentence summaries.

Hand-made model objects where no end-to-end path is needed; the in-process
telemetry generator (tests/telemetry_gen.py) where the whole investigation is.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

import telemetry_gen as gen
from stagetrace import semconv
from stagetrace.forensics import blame, investigate_errors, investigate_slow, metricevidence, render
from stagetrace.forensics.attributes import attribute_priority, compare, describe
from stagetrace.forensics.report import headline
from stagetrace.model import MetricPoint, MetricSeries, Span, SpanEvent, Trace

MS = 1_000_000
S = 1_000_000_000

# The canary's requests carry all of these; identity attributes come first on the
# span, so discovery order alone would rank them above the model version.
CANARY = {semconv.SERVER_ADDRESS: "10.0.0.9", semconv.SERVICE_INSTANCE_ID: "api-canary",
          semconv.SERVICE_VERSION: "1.5.0-rc1", semconv.ML_MODEL_VERSION: "v2"}
STABLE = {semconv.SERVER_ADDRESS: "10.0.0.1", semconv.SERVICE_INSTANCE_ID: "api-0",
          semconv.SERVICE_VERSION: "1.4.2", semconv.ML_MODEL_VERSION: "v1"}


def _trace(i: int, attrs: dict, start_ns: int = 0, dur_ns: int = 10 * MS) -> Trace:
    sp = Span(f"{i + 1:032x}", f"{1:016x}", "", "POST /predict", "SERVER", start_ns, start_ns + dur_ns,
              attributes=dict(attrs), resource={semconv.SERVICE_NAME: "api"})
    return Trace(sp.trace_id, [sp])


# --- 1. ties ---------------------------------------------------------------------------------

def test_tied_attributes_prefer_ml_then_version_over_instance_identity_and_collapse_aliases():
    sel = [_trace(i, CANARY) for i in range(40)]
    base = [_trace(100 + i, CANARY if i % 50 < 9 else STABLE) for i in range(400)]  # 18% canary
    res = compare(sel, base)
    top = res[0]
    assert (top.attribute, top.value, top.significant) == (semconv.ML_MODEL_VERSION, "v2", True), describe(top)
    # one finding for the four perfectly confounded values, naming the others
    assert {k for k, _ in top.aliases} == {semconv.SERVICE_VERSION, semconv.SERVICE_INSTANCE_ID, semconv.SERVER_ADDRESS}
    assert not any(r.attribute in (semconv.SERVICE_INSTANCE_ID, semconv.SERVER_ADDRESS) and r.value in ("api-canary", "10.0.0.9")
                   for r in res)
    # aliases are listed in preference order: the version before the instance identity
    assert top.aliases[0] == (semconv.SERVICE_VERSION, "1.5.0-rc1")
    text = describe(top, "the cluster", "successes")
    assert text.startswith("ml.model.version=v2 (same requests as service.version=1.5.0-rc1") and "100%" in text
    assert top.evidence()["aliases"][0] == {"attribute": semconv.SERVICE_VERSION, "value": "1.5.0-rc1"}
    # deterministic whatever the discovery order
    again = compare(list(reversed(sel)), list(reversed(base)))
    assert [(r.attribute, str(r.value)) for r in again] == [(r.attribute, str(r.value)) for r in res]


def test_tie_break_order_without_identical_partitions():
    """Equal shares, different traces: no aliasing, but the order is ml.* >
    version/deployment > other > instance identity, not discovery order."""
    sel, base = [], []
    keys = [semconv.HOST_NAME, "tenant", semconv.SERVICE_VERSION, semconv.ML_MODEL_VERSION]
    for i in range(40):  # every selection trace has all four "bad" values
        sel.append(_trace(i, {k: "bad" for k in keys}))
    for i in range(400):  # each bad value on a *different* 10% of the baseline
        sel_key = keys[i % 4] if i % 40 < 4 else None
        base.append(_trace(1000 + i, {k: ("bad" if k == sel_key else "ok") for k in keys}))
    res = [r for r in compare(sel, base) if r.value == "bad"]
    assert [r.attribute for r in res] == [semconv.ML_MODEL_VERSION, semconv.SERVICE_VERSION, "tenant", semconv.HOST_NAME]
    assert not any(r.aliases for r in res)
    assert attribute_priority("ml.feature.set") < attribute_priority("deployment.environment.name") \
        < attribute_priority("feature.store.shard") < attribute_priority("service.instance.id")
    assert attribute_priority("net.peer.name") == attribute_priority("process.pid") == attribute_priority("host.name")


def _canary_errors_backend() -> gen.MemoryBackend:
    """120 s of requests; from 60 s a canary (model v2 on its own instance and
    version) takes every 5th request, and half of its requests fail."""
    rnd = random.Random(3)
    spans = []
    for i in range(600):
        t0 = i * 200 * MS
        canary = t0 >= 60 * S and i % 5 == 0
        fail = canary and (i // 5) % 2 == 0
        tid, res = f"{i + 1:032x}", {semconv.SERVICE_NAME: "fraud-api"}
        attrs = dict(CANARY if canary else STABLE)
        root = Span(tid, f"{1:016x}", "", "POST /predict", "SERVER", t0, t0 + 30 * MS, "ERROR" if fail else "OK",
                    attributes={semconv.SERVER_ADDRESS: attrs[semconv.SERVER_ADDRESS],
                                semconv.HTTP_RESPONSE_STATUS_CODE: 500 if fail else 200,
                                "batch": rnd.choice("ab")},
                    resource=res | {semconv.SERVICE_INSTANCE_ID: attrs[semconv.SERVICE_INSTANCE_ID],
                                    semconv.SERVICE_VERSION: attrs[semconv.SERVICE_VERSION]})
        inf = Span(tid, f"{2:016x}", f"{1:016x}", "inference", "INTERNAL", t0 + 5 * MS, t0 + 25 * MS,
                   "ERROR" if fail else "OK",
                   attributes={semconv.ML_STAGE: semconv.STAGE_INFERENCE,
                               semconv.ML_MODEL_VERSION: attrs[semconv.ML_MODEL_VERSION]},
                   resource=root.resource)
        if fail:
            inf.events.append(SpanEvent(semconv.EXCEPTION_EVENT, t0 + 20 * MS,
                                        {semconv.EXCEPTION_TYPE: "KeyError",
                                         semconv.EXCEPTION_MESSAGE: "missing feature 'merchant_risk'"}))
        spans += [root, inf]
    return gen.MemoryBackend(spans, [], [])


def test_errors_name_the_model_version_and_keep_its_first_seen_change():
    rep = investigate_errors(_canary_errors_backend(), start_ns=0, end_ns=120 * S)
    top = rep.findings[0]
    assert top.kind == "error_cluster" and top.significant, top.summary
    assert (top.attribute, top.value) == (semconv.ML_MODEL_VERSION, "v2"), top.summary
    assert "ml.model.version=v2 (same requests as service.version=1.5.0-rc1" in top.summary
    changes = {(f.attribute, f.value) for f in rep.findings if f.kind == "change" and f.significant}
    first_change = next(f for f in rep.findings if f.kind == "change")
    assert (first_change.attribute, first_change.value) == (semconv.ML_MODEL_VERSION, "v2")  # the model first
    assert (semconv.ML_MODEL_VERSION, "v2") in changes, [f.summary for f in rep.findings]
    # the deployment's version is confounded with the model version: its change is kept too
    assert (semconv.SERVICE_VERSION, "1.5.0-rc1") in changes
    doc = json.loads(render(rep, "json"))
    aliases = doc["findings"][0]["evidence"]["attributes"][0]["aliases"]
    assert {a["attribute"] for a in aliases} == {semconv.SERVICE_VERSION, semconv.SERVICE_INSTANCE_ID,
                                                 semconv.SERVER_ADDRESS}


# --- 2. short windows ------------------------------------------------------------------------

def _short(scenario: str):
    """45 s at 20 requests/s, gauges every second (the demo exports every second)."""
    return gen.memory_backend(scenario, minutes=0.75, per_minute=1200, metric_step_s=1, seed=11)


def test_short_window_gets_onset_and_metric_evidence():
    b, res = _short("slow_shard")
    rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert len(rep.data["timeline"]["requests"]) >= 20  # 1-2 s buckets, not 10 s
    assert rep.data["onset"] and rep.data["onset"]["significant"], rep.data["onset"]
    assert abs(rep.data["onset"]["onset_ns"] - res.onset_ns) <= 5 * S
    sig = rep.significant_findings
    assert sig[0].kind == "stage" and sig[0].stage == semconv.STAGE_FEATURE_FETCH, sig[0].summary
    wait = [f for f in sig if f.kind == "metric" and f.metric == semconv.METRIC_DB_CONNECTION_WAIT]
    assert wait and wait[0].evidence["correlation"] > 0, [f.summary for f in rep.findings]
    assert any(f.kind == "change" and f.significant and f.attribute is None for f in sig)  # "slowness began at"


@pytest.mark.parametrize("scenario", ["clean"])
def test_short_clean_window_names_no_cause(scenario):
    b, res = _short(scenario)
    slow = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert len(slow.data["timeline"]["requests"]) >= 20
    assert not slow.significant_findings, [f.summary for f in slow.significant_findings]
    errors = investigate_errors(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert not errors.significant_findings, [f.summary for f in errors.significant_findings]


def test_bucket_width_adapts_to_window_and_request_count():
    from stagetrace.forensics import timeline
    assert timeline.bucket_width(0, 40 * S, n_requests=800) == pytest.approx(1 * S, abs=1)  # 20 per 1 s bucket
    assert timeline.bucket_width(0, 40 * S, n_requests=100) >= 8 * S  # sparse: >= 20 requests per bucket
    assert timeline.bucket_width(0, 5 * S, n_requests=10**6) == timeline.MIN_BUCKET_NS  # never under 1 s
    assert timeline.bucket_width(0, 3600 * S, n_requests=10**6) == 60 * S + 1  # long windows: 60 buckets
    # the demo investigates until 30 s after the load stops: size the buckets on the requests, not the window
    times = np.linspace(0, 18 * S, 377).astype(np.int64)
    assert timeline.analysis_width(0, 48 * S, times) == 1 * S
    assert timeline.analysis_width(0, 3600 * S, times) == 3600 * S // 240 + 1  # at most 240 buckets
    assert timeline.analysis_width(0, 1200 * S, np.linspace(0, 1200 * S, 1200).astype(np.int64)) == 20 * S + 1


# --- 3. cumulative histograms ------------------------------------------------------------------

def _hist(points: list[tuple[int, int, float]], temporality: str, start_ns: int = 0, starts=None) -> MetricSeries:
    pts = []
    for j, (t, count, total) in enumerate(points):
        pts.append(MetricPoint("queue.wait", "histogram", t, total / count if count else 0.0,
                               {}, {semconv.SERVICE_NAME: "api"}, starts[j] if starts else start_ns, "s", True,
                               temporality, count, total, [count], []))
    return MetricSeries("queue.wait", "histogram", {}, {semconv.SERVICE_NAME: "api"}, pts, "s")


def test_cumulative_histogram_with_constant_interval_mean_does_not_correlate():
    """History before the window had a mean of 500 ms; every interval in the
    window has a mean of 100 ms. The running mean drifts down all window long
    and used to correlate (rho ~ -1) with a rising slow rate."""
    rnd = random.Random(5)
    e = np.arange(0, 41, dtype=np.int64) * S
    count, total, pts = 10_000, 10_000 * 0.5, []
    for b in range(40):
        c = rnd.randint(20, 60)
        count, total = count + c, total + c * 0.1
        pts.append((int(e[b] + S // 2), count, total))
    rate = np.linspace(0.01, 0.4, 40)  # slowness that keeps rising
    st = metricevidence.evidence([_hist(pts, "CUMULATIVE", start_ns=-3600 * S)], e, rate, rate > 0.2)
    assert st and not st[0].significant, (st[0].rho, st[0].p_adj)
    assert np.nanmax(np.abs(np.array(st[0].series, dtype=float)[1:] - 0.1)) < 1e-9  # per-interval means
    assert st[0].level_slow == pytest.approx(0.1) and st[0].level_base == pytest.approx(0.1)


def test_cumulative_histogram_that_moves_with_the_rate_still_correlates():
    e = np.arange(0, 41, dtype=np.int64) * S
    rate = np.r_[np.full(20, 0.02), np.full(20, 0.3)] + np.random.default_rng(1).uniform(0, 0.01, 40)
    count, total, pts = 0, 0.0, []
    for b in range(40):
        c = 50
        mean = 0.01 + rate[b]  # the wait follows the slow rate
        count, total = count + c, total + c * mean
        pts.append((int(e[b] + S // 2), count, total))
    st = metricevidence.evidence([_hist(pts, "CUMULATIVE")], e, rate, rate > 0.1)
    assert st[0].significant and st[0].rho > 0.5 and st[0].lag == 0
    assert st[0].level_slow == pytest.approx(0.31, abs=0.02) and st[0].level_base == pytest.approx(0.03, abs=0.02)


def test_histogram_resets_and_delta_points():
    # cumulative, reset (process restart: count goes down, new start time) mid-way
    pts = [(1 * S, 10, 1.0), (2 * S, 20, 2.0), (3 * S, 5, 0.5), (4 * S, 15, 1.5)]
    t, v = metricevidence.point_values(_hist(pts, "CUMULATIVE", starts=[0, 0, int(2.5 * S), int(2.5 * S)]))
    assert t.tolist() == [2 * S, 3 * S, 4 * S] and v == pytest.approx([0.1, 0.1, 0.1])
    # an interval without observations carries no value
    t, v = metricevidence.point_values(_hist([(1 * S, 10, 1.0), (2 * S, 10, 1.0), (3 * S, 20, 3.0)], "CUMULATIVE"))
    assert t.tolist() == [3 * S] and v == pytest.approx([0.2])
    # DELTA points are each interval already
    t, v = metricevidence.point_values(_hist([(1 * S, 10, 1.0), (2 * S, 0, 0.0), (3 * S, 4, 2.0)], "DELTA"))
    assert t.tolist() == [1 * S, 3 * S] and v == pytest.approx([0.1, 0.5])


def test_monotonic_cumulative_sum_is_a_rate_and_a_restart_is_not_a_spike():
    def pt(t, v, start):
        return MetricPoint("req", "sum", t, v, {}, {}, start, "1", True, "CUMULATIVE")
    s = MetricSeries("req", "sum", {}, {}, [pt(1 * S, 100, 0), pt(2 * S, 110, 0), pt(3 * S, 120, 0),
                                            pt(4 * S, 500, int(3.5 * S)), pt(5 * S, 510, int(3.5 * S))])
    t, v = metricevidence.point_values(s)
    assert t.tolist() == [2 * S, 3 * S, 5 * S] and v == pytest.approx([10, 10, 10])


# --- 4. stage of operation-level findings ------------------------------------------------------

def _pipeline(i: int, fetch_ms: int) -> Trace:
    tid, t0 = f"{i + 1:032x}", i * S
    api, feat = {semconv.SERVICE_NAME: "api"}, {semconv.SERVICE_NAME: "features"}
    spans = [
        Span(tid, f"{1:016x}", "", "POST /predict", "SERVER", t0, t0 + (fetch_ms + 30) * MS, resource=api),
        Span(tid, f"{2:016x}", f"{1:016x}", "feature_fetch", "INTERNAL", t0 + 1 * MS, t0 + (fetch_ms + 5) * MS,
             attributes={semconv.ML_STAGE: semconv.STAGE_FEATURE_FETCH}, resource=api),
        Span(tid, f"{3:016x}", f"{2:016x}", "GET", "CLIENT", t0 + 2 * MS, t0 + (fetch_ms + 4) * MS, resource=api),
        Span(tid, f"{4:016x}", f"{3:016x}", "GET /features", "SERVER", t0 + 3 * MS, t0 + (fetch_ms + 3) * MS,
             resource=feat),
        Span(tid, f"{5:016x}", f"{1:016x}", "inference", "INTERNAL", t0 + (fetch_ms + 6) * MS,
             t0 + (fetch_ms + 28) * MS, attributes={semconv.ML_STAGE: semconv.STAGE_INFERENCE}, resource=api),
    ]
    return Trace(tid, spans)


def test_component_findings_carry_their_stage():
    sel = blame.trace_costs([_pipeline(i, 300 + i) for i in range(30)])
    base = blame.trace_costs([_pipeline(100 + i, 10 + i % 5) for i in range(60)])
    comps = {c.service: c for c in blame.blame(sel, base).components}
    assert comps["features"].stage == semconv.STAGE_FEATURE_FETCH and comps["features"].significant
    assert comps["features"].operation == "GET /features"
    assert "api" not in comps or not comps["api"].significant  # the caller only waited


def test_slow_report_has_one_finding_per_component_with_its_stage():
    """A stage finding and the operation finding inside it are one fact: one finding names
    the service, its operation and its stage, and the verdict says it once."""
    b, res = _short("slow_shard")
    rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    comps = [f for f in rep.findings if f.kind == "stage"]
    assert comps[0].service == gen.FEATURES and comps[0].stage == semconv.STAGE_FEATURE_FETCH, comps[0]
    assert len({f.service for f in comps}) == len(comps)  # one per service
    assert all(f.service for f in comps)  # never an empty "other" cause
    text = "\n".join(rep.verdict)
    assert f"1. {gen.FEATURES}" in text and "(stage feature_fetch)" in text, text


# --- 5. one-sentence summaries -----------------------------------------------------------------

SKLEARN_NAN = ("Input X contains NaN.\nHistGradientBoostingClassifier does not accept missing values encoded as NaN "
               "natively. For supervised learning, you might want to consider sklearn.ensemble."
               "HistGradientBoostingClassifier and Regressor which accept missing values encoded as NaNs natively. "
               "Alternatively, it is possible to preprocess the data, for instance by using an imputer transformer in "
               "a pipeline or drop samples with missing values. See https://scikit-learn.org/stable/modules/impute.html "
               "You can find a list of all estimators that handle NaN values at the following page: "
               "https://scikit-learn.org/stable/modules/impute.html#estimators-that-handle-nan-values")


def test_headline():
    assert headline(SKLEARN_NAN) == "Input X contains NaN.…"
    assert headline("x" * 300) == "x" * 119 + "…" and len(headline("x" * 300)) == 120
    assert headline("short message") == "short message"
    assert headline("\n\n  second line first\nthird") == "second line first…"
    assert headline(None) == ""
    assert headline("word " * 40) == ("word " * 23).rstrip() + "…"  # cut on a word boundary


def test_error_summary_is_one_sentence_and_the_full_message_stays_in_evidence():
    spans = []
    for i in range(200):
        tid, t0 = f"{i + 1:032x}", i * 500 * MS
        fail = i >= 100 and i % 4 == 0
        root = Span(tid, f"{1:016x}", "", "POST /predict", "SERVER", t0, t0 + 20 * MS, "ERROR" if fail else "OK",
                    resource={semconv.SERVICE_NAME: "api"})
        inf = Span(tid, f"{2:016x}", f"{1:016x}", "Scorer.score", "INTERNAL", t0 + 2 * MS, t0 + 18 * MS,
                   "ERROR" if fail else "OK", attributes={semconv.ML_STAGE: semconv.STAGE_INFERENCE},
                   resource={semconv.SERVICE_NAME: "api"})
        if fail:
            inf.events.append(SpanEvent(semconv.EXCEPTION_EVENT, t0 + 10 * MS,
                                        {semconv.EXCEPTION_TYPE: "ValueError", semconv.EXCEPTION_MESSAGE: SKLEARN_NAN}))
        spans += [root, inf]
    rep = investigate_errors(gen.MemoryBackend(spans, [], []), start_ns=0, end_ns=100 * S)
    top = rep.findings[0]
    assert top.kind == "error_cluster" and top.significant
    assert top.summary.startswith("ValueError: Input X contains NaN.…: 25 failed requests"), top.summary
    assert "\n" not in top.summary and "scikit-learn.org" not in top.summary and "natively" not in top.summary
    assert top.evidence["message"] == SKLEARN_NAN
    assert any("scikit-learn.org" in fp["template"] for fp in top.evidence["fingerprints"])
    for f in rep.findings:
        assert "\n" not in f.summary and len(f.summary) < 600, f.summary
    # Incident headings are one line too, in every format; HTML keeps the whole name as a tooltip.
    from stagetrace.forensics import render
    for fmt in ("md", "text", "html"):
        heading = next(ln for ln in render(rep, fmt).splitlines() if "Incident E1" in ln)
        visible = heading.split("title=")[0] + heading.split(">", 1)[-1] if fmt == "html" else heading
        assert "Input X contains NaN." in visible and "scikit-learn.org" not in visible, (fmt, heading)


# --- found while checking the demo's clean period: anecdotes are not evidence -----------------

def test_a_template_or_value_in_two_slow_requests_is_not_significant():
    """The demo's clean 5 s: 6 slow requests of 120, 2 of them with a "slow feature
    fetch" line that no fast one has. Fisher + BH call that significant; two
    requests are the healthy tail, not a cause (and must not unlock stage blame)."""
    from stagetrace.forensics import logmining
    from stagetrace.model import LogRecord

    def tr(i, marked):
        t = _trace(i, {"shard": "7" if marked else "0"})
        if marked:
            t.logs.append(LogRecord(0, 0, 13, "WARN", f"slow feature fetch for account {i} from shard 7: 480 ms",
                                    trace_id=t.trace_id, span_id=t.spans[0].span_id,
                                    resource={semconv.SERVICE_NAME: "api"}))
        return t
    sel = [tr(i, i < 2) for i in range(6)]
    base = [tr(100 + i, False) for i in range(114)]
    logs = logmining.over_represented(sel, base)
    assert logs and logs[0].sel_traces == 2 and logs[0].p_adj < 0.01 and not logs[0].significant
    attrs = [a for a in compare(sel, base) if a.attribute == "shard" and a.value == "7"]
    assert attrs and attrs[0].p_adj < 0.01 and not attrs[0].significant
    # the same share over enough requests is evidence
    sel5 = [tr(i, i < 5) for i in range(15)]
    assert logmining.over_represented(sel5, base)[0].significant
    assert [a for a in compare(sel5, base) if a.attribute == "shard" and a.value == "7"][0].significant


def test_a_series_that_only_exists_in_slow_periods_is_not_a_cause():
    """A v2 canary's metrics appear exactly when the trouble starts, so they 'correlate'
    with the slow rate by existing; with no baseline level there is nothing to compare."""
    from stagetrace.forensics import metricevidence
    from stagetrace.model import MetricPoint

    n = 40
    e = np.arange(n + 1, dtype=np.int64) * S
    rate = np.array([0.0] * 20 + [0.1 + 0.02 * i for i in range(20)])
    slow_mask = rate > 0.05

    def gauge(values_by_bucket):
        pts = [MetricPoint("g", "gauge", i * S + S // 2, v) for i, v in values_by_bucket]
        return MetricSeries("g", "gauge", {}, {semconv.SERVICE_NAME: "api"}, pts)

    only_when_slow = gauge([(i, 1.0 + rate[i]) for i in range(20, n)])
    always_there = gauge([(i, 1.0 + rate[i]) for i in range(n)])
    res = metricevidence.evidence([only_when_slow], e, rate, slow_mask, min_points=8)
    assert res and abs(res[0].rho) > 0.9 and math.isnan(res[0].level_base) and not res[0].significant
    res = metricevidence.evidence([always_there], e, rate, slow_mask, min_points=8)
    assert res and res[0].significant
