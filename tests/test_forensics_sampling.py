"""Forensics on tail-sampled data: weighting by ``sampling.adjusted_count``.

Behind the gateway Collector (collector/otelcol/otelcol-gateway.yaml) the store
holds every failing trace, every slow trace and only p % of the rest, and the
rest carries ``sampling.adjusted_count = 100 / p``. tests/telemetry_gen.py with
``tail_sampling=`` stores exactly that (real SDK, real OTLP/gRPC into a
``stagetrace collector`` subprocess) and keeps the whole population's truth, so
each test compares what forensics estimates from the stored 10-20 % with what
really happened, and checks that the unweighted numbers would have been off.

The Collector's tail_sampling processor itself is not run here (no otelcol
binary in CI); the generator applies the same policies (errors -> slow ->
probabilistic on the trace id) and the same attributes as the gateway's
``transform/sampling`` step.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import telemetry_gen as gen
from stagetrace.forensics.report import SCHEMA_VERSION
from stagetrace import semconv
from stagetrace.model import Span, Trace
from stagetrace.forensics import investigate_errors, investigate_slow, render
from stagetrace.forensics import attributes, stats, timeline
from stagetrace.forensics.slow import parse_threshold
from stagetrace.forensics.window import adjusted_count, entry_spans, sampling_weights

MIN = 60_000_000_000
ORDER = ["clean", "slow_shard", "v2_errors"]
# The gateway's policies with a slow threshold above the natural p95 (~40 ms here), so
# the p95 falls in the probabilistically sampled region: the hard case for a quantile.
SAMPLING = gen.TailSampling(slow_ms=100, percent=10)
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "forensics" / "report.schema.json").read_text())
CAUSE_KINDS = ("stage", "attribute", "log", "metric", "error_cluster")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend
    data = tmp_path_factory.mktemp("sampled-store")
    now = time.time_ns()
    results = {}
    with start_collector(data) as c:
        for i, name in enumerate(ORDER):
            end = now - (len(ORDER) - 1 - i) * 25 * MIN
            results[name] = gen.generate(name, gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), end_ns=end,
                                         tail_sampling=SAMPLING)
        backend = EmbeddedBackend(c.data_dir)
        yield {"backend": backend, "results": results}
        backend.close()


def _entries(store, name):
    r = store["results"][name]
    return entry_spans(store["backend"], service=None, route=None, start_ns=r.start_ns, end_ns=r.end_ns)


def _valid(report):
    doc = json.loads(render(report, "json"))
    jsonschema.validate(doc, SCHEMA)
    assert doc["schema_version"] == SCHEMA_VERSION
    return doc


def _close(est, truth, rel):
    return abs(est - truth) <= rel * truth


# --- through OTLP and the collector ----------------------------------------------------------

def test_store_holds_what_the_gateway_keeps(store):
    for name in ORDER:
        r = store["results"][name]
        entries = _entries(store, name)
        assert {s.trace_id for s in entries} == set(r.kept), name
        assert len(r.kept) < 0.3 * r.requests  # really sampled
        for s in entries:
            policy = r.kept[s.trace_id]
            assert s.attributes[semconv.TAILSAMPLING_POLICY] == policy
            assert adjusted_count(s) == (10.0 if policy == semconv.SAMPLING_POLICY_BASELINE else 1.0)


@pytest.mark.parametrize("name", ["clean", "v2_errors"])
def test_weighted_p95_is_the_population_p95(store, name):
    r = store["results"][name]
    truth = float(np.percentile(r.durations_ns, 95))
    rep = investigate_slow(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns, threshold="p95")
    doc = _valid(rep)
    assert _close(doc["data"]["threshold_ns"], truth, 0.15), (doc["data"]["threshold_ns"], truth)
    assert doc["data"]["sampling"]["weighted"] is True
    # what an unweighted analysis of the same stored requests says: far into the tail
    dur = np.array([s.duration_ns for s in _entries(store, name)])
    unweighted, _ = parse_threshold("p95", dur)
    assert unweighted > 2 * truth, (unweighted, truth)
    # and the slow share it implies is ~5 % of requests served, not a third of those stored
    c = doc["data"]["counts"]
    assert 0.03 <= c["estimated_slow"] / c["estimated_requests"] <= 0.08, c
    assert c["slow"] / c["requests"] > 0.15, c
    assert _close(c["estimated_requests"], r.requests, 0.2), (c, r.requests)
    assert any("Tail-sampled data" in n for n in doc["notes"])
    assert all(f["evidence"].get("sampling_weighted") is True for f in doc["findings"])


def test_weighted_error_rate_and_v2_cause(store):
    r = store["results"]["v2_errors"]
    truth = len(r.error_trace_ids) / r.requests
    rep = investigate_errors(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns)
    doc = _valid(rep)
    c = doc["data"]["counts"]
    est = c.get("estimated_failed_requests", c["failed_requests"]) / c.get("estimated_requests", c["requests"])
    assert _close(est, truth, 0.25), (est, truth)
    raw = c["failed_requests"] / c["requests"]
    assert raw > 3 * truth, (raw, truth)  # what the stored traces say unweighted
    top = doc["findings"][0]
    assert top["kind"] == "error_cluster" and top["significant"], top
    assert top["attribute"] == semconv.ML_MODEL_VERSION and str(top["value"]) == "v2", top
    assert top["evidence"]["sampling_weighted"] is True
    v2_failed = sum(1 for t in r.error_trace_ids if t in set(r.faulty_trace_ids))
    assert _close(top["evidence"]["error_rate"], v2_failed / r.requests, 0.3), (top["evidence"]["error_rate"], v2_failed)
    # the version share among successes is re-weighted, not the share among stored successes
    attr = top["evidence"]["attributes"][0]
    assert attr["sampling_weighted"] is True and attr["baseline_share"] < 0.1
    assert "re-weighted for tail sampling" in doc["verdict"][0]


def test_injected_slow_shard_still_named_first(store):
    r = store["results"]["slow_shard"]
    rep = investigate_slow(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns)
    doc = _valid(rep)
    top = doc["findings"][0]
    assert top["significant"]
    assert top["stage"] == semconv.STAGE_FEATURE_FETCH or (
        top["attribute"] == semconv.FEATURE_STORE_SHARD and str(top["value"]) == "7"), top
    sig = [f for f in doc["findings"] if f["significant"]]
    shard = [f for f in sig if f["kind"] == "attribute" and f["attribute"] == semconv.FEATURE_STORE_SHARD]
    assert shard and str(shard[0]["value"]) == "7"
    assert any(f["kind"] == "log" and "cache miss" in (f["template"] or "") for f in sig)
    # the sampler's own bookkeeping is never offered as a cause
    assert not any(f["attribute"] in (semconv.TAILSAMPLING_POLICY, semconv.SAMPLING_ADJUSTED_COUNT)
                   for f in doc["findings"])


def test_clean_sampled_run_names_no_cause(store):
    r = store["results"]["clean"]
    slow = _valid(investigate_slow(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns))
    errors = _valid(investigate_errors(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns))
    assert not [f for f in slow["findings"] if f["significant"] and f["kind"] in CAUSE_KINDS], slow["findings"][:3]
    assert slow["verdict"][0].startswith("No significant difference")
    assert not [f for f in errors["findings"] if f["significant"]], errors["findings"][:2]


# --- helpers -----------------------------------------------------------------------------------

def test_weighted_quantile_is_the_quantile_of_the_replicated_sample():
    rnd = np.random.default_rng(3)
    for _ in range(50):
        v = rnd.lognormal(3, 1, size=rnd.integers(1, 60))
        w = rnd.integers(1, 12, size=v.size)
        for q in (1, 50, 90, 95, 99.9):
            want = np.percentile(np.repeat(v, w), q, method="inverted_cdf")
            got = stats.weighted_quantile(v, q, w) if not stats.is_uniform(w) else want
            assert got == pytest.approx(want), (v, w, q)
    v = [5.0, 1.0, 3.0, 2.0]
    # uniform weights (and none) are numpy's default percentile: unsampled results unchanged
    assert stats.weighted_quantile(v, 95) == stats.weighted_quantile(v, 95, [10] * 4) == np.percentile(v, 95)
    assert stats.weighted_quantile([1.0, 2.0, 3.0, 100.0], 50, [10, 10, 10, 1]) == 2.0
    assert math.isnan(stats.weighted_quantile([], 95))


def test_effective_n_and_weighted_share_test():
    assert stats.effective_n([1] * 40) == pytest.approx(40)
    assert stats.effective_n([10] * 40) == pytest.approx(40)  # scaling weights adds no information
    assert stats.effective_n([1, 10]) == pytest.approx(121 / 101)
    # equal weights: exactly the unweighted test
    assert stats.weighted_share_test(30 / 50, 50, 10 / 200, 200) == stats.share_test(30, 50, 10, 200)
    # a few heavy traces carry less evidence than their weight suggests
    w = [1.0] * 20 + [10.0] * 20
    assert stats.effective_n(w) < 40
    assert stats.weighted_share_test(0.6, stats.effective_n(w), 0.05, 200) > stats.share_test(24, 40, 10, 200)


def test_adjusted_count_reading():
    def span(**attrs):
        return Span("a" * 32, "b" * 16, "", "r", "SERVER", 0, 1, attributes=attrs)
    key = semconv.SAMPLING_ADJUSTED_COUNT
    assert adjusted_count(span()) == 1.0
    assert adjusted_count(span(**{key: 10.0})) == 10.0
    assert adjusted_count(span(**{key: "4"})) == 4.0
    for bad in ("x", 0, 0.5, -3, float("nan"), float("inf"), [1, 2]):
        assert adjusted_count(span(**{key: bad})) == 1.0, bad
    assert sampling_weights([span(), span()]) == {}  # unsampled: no weighting at all


def _trace(tid: str, **attrs) -> Trace:
    return Trace(tid, [Span(tid, "c" * 16, "", "POST /predict", "SERVER", 0, 10, attributes=attrs,
                            resource={semconv.SERVICE_NAME: "api"})])


def test_weighted_attribute_shares_equal_replicated_traces():
    rnd = random.Random(5)
    sel, base, rep_base, weights = [], [], [], {}
    for i in range(60):
        sel.append(_trace(f"s{i:031d}", shard=str(7 if i % 4 else rnd.randrange(8)), batch=rnd.randint(1, 300)))
    for i in range(120):
        w = 10 if i % 3 else 1
        shard, batch = str(rnd.randrange(8)), rnd.randint(1, 100 if w == 10 else 300)
        tid = f"b{i:031d}"
        base.append(_trace(tid, shard=shard, batch=batch))
        weights[tid] = float(w)
        rep_base += [_trace(f"{tid[:-3]}{k:03d}" if k else tid, shard=shard, batch=batch) for k in range(w)]
    weighted = {(a.attribute, str(a.value)): a for a in attributes.compare(sel, base, weights=weights)}
    replicated = {(a.attribute, str(a.value)): a for a in attributes.compare(sel, rep_base)}
    s7 = weighted[("shard", "7")]
    assert s7.base_share == pytest.approx(replicated[("shard", "7")].base_share)
    assert s7.sel_share == pytest.approx(replicated[("shard", "7")].sel_share)
    assert s7.base_n == 120 and s7.evidence()["sampling_weighted"] is True  # counts stay the stored ones
    # the test sees the effective size, not the 840 replicated traces: never more confident
    assert s7.p >= replicated[("shard", "7")].p
    num = next(a for a in weighted.values() if a.attribute == "batch")
    rnum = next(a for a in replicated.values() if a.attribute == "batch")
    assert num.ks_d == pytest.approx(rnum.ks_d) and num.base_median == pytest.approx(rnum.base_median, abs=1)
    # no weights, or all weights 1: the unweighted result
    plain = attributes.compare(sel, base)
    ones = attributes.compare(sel, base, weights={t.trace_id: 1.0 for t in base})
    for a, b in zip(sorted(plain, key=lambda x: (x.attribute, str(x.value))),
                    sorted(ones, key=lambda x: (x.attribute, str(x.value)))):
        assert (a.attribute, a.value, a.sel_share, a.base_share) == (b.attribute, b.value, b.sel_share, b.base_share)
        if not a.numeric:
            assert a.p == b.p
        else:
            assert a.ks_d == pytest.approx(b.ks_d)


def test_onset_rates_are_weighted_test_stays_on_stored_counts():
    e = np.arange(0, 21) * 10
    # stored: slow 30 % before, 60 % after; fast ones weigh 10 -> real 4.1 % and 13 %
    k = np.array([3] * 10 + [6] * 10)
    n = np.array([10] * 20)
    kw, nw = k.astype(float), k + 10.0 * (n - k)
    plain = timeline.detect_onset(k, n, e)
    w = timeline.detect_onset(k, n, e, weighted=(kw, nw))
    assert plain.index == w.index and plain.p == w.p
    assert w.rate_before == pytest.approx(3 / 73) and w.rate_after == pytest.approx(6 / 46)
    assert plain.rate_before == pytest.approx(0.3)
