"""Forensics acceptance tests, through the real path.

tests/telemetry_gen.py emits telemetry with the real OTel SDK over OTLP (gRPC,
and HTTP for one scenario) into a `stagetrace collector` subprocess; forensics
reads it back through EmbeddedBackend (the query interface) and the CLI.
Each scenario lives in its own 20-minute window of one store, oldest first:
clean, slow_shard (a), v2_errors (b), cpu_burn (c), edge_latency.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest

import telemetry_gen as gen
from stagetrace import semconv
from stagetrace.forensics import investigate_errors, investigate_slow, render, trace_report

MIN = 60_000_000_000
ORDER = ["clean", "slow_shard", "v2_errors", "cpu_burn", "edge_latency"]
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "forensics" / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend
    data = tmp_path_factory.mktemp("forensics-store")
    import time
    now = time.time_ns()
    results = {}
    with start_collector(data) as c:
        for i, name in enumerate(ORDER):
            end = now - (len(ORDER) - 1 - i) * 25 * MIN
            ex = (gen.OtlpExporters(http_endpoint=c.http_endpoint) if name == "edge_latency"
                  else gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint))
            results[name] = gen.generate(name, ex, end_ns=end)
        backend = EmbeddedBackend(c.data_dir)
        yield {"backend": backend, "results": results, "data_dir": c.data_dir}
        backend.close()


def _slow(store, name, **kw):
    r = store["results"][name]
    return investigate_slow(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns, **kw)


def _errors(store, name):
    r = store["results"][name]
    return investigate_errors(store["backend"], start_ns=r.start_ns, end_ns=r.end_ns)


def _valid(report_or_reports):
    doc = json.loads(render(report_or_reports, "json"))
    jsonschema.validate(doc, SCHEMA)
    return doc


def test_everything_emitted_is_queryable(store):
    r = store["results"]["slow_shard"]
    got = store["backend"].get_traces(r.all_trace_ids[:50])
    assert len(got) == 50
    assert all(len(t.spans) >= 5 and t.logs for t in got.values())


def test_a_slow_feature_fetch_on_shard_7(store):
    rep = _slow(store, "slow_shard")
    doc = _valid(rep)
    top = doc["findings"][0]
    assert top["significant"]
    assert top["stage"] == semconv.STAGE_FEATURE_FETCH or (
        top["attribute"] == semconv.FEATURE_STORE_SHARD and str(top["value"]) == "7"), top
    sig = [f for f in doc["findings"] if f["significant"]]
    assert any(f["kind"] == "attribute" and f["attribute"] == semconv.FEATURE_STORE_SHARD and str(f["value"]) == "7"
               for f in sig)
    assert any(f["kind"] == "log" and "cache miss" in f["template"] for f in sig)
    assert any(f["kind"] == "metric" and f["metric"] == semconv.METRIC_DB_CONNECTION_WAIT for f in sig)
    assert any(f["kind"] == "change" for f in sig)  # the onset
    # the slow examples really are the injected ones
    assert set(rep.data["example_trace_ids"]) <= set(store["results"]["slow_shard"].faulty_trace_ids)
    assert any("(stage feature_fetch) explains" in v for v in rep.verdict), rep.verdict


def test_b_v2_exceptions_cluster(store):
    rep = _errors(store, "v2_errors")
    doc = _valid(rep)
    top = doc["findings"][0]
    assert top["kind"] == "error_cluster" and top["significant"]
    assert top["attribute"] == semconv.ML_MODEL_VERSION and top["value"] == "v2", top
    # origin is the inference span; the API span failed because of it
    assert (top["service"], top["operation"], top["stage"]) == ("fraud-api", "inference", semconv.STAGE_INFERENCE)
    assert any(p["operation"] == "POST /predict" for p in top["evidence"]["propagated"])
    assert "KeyError" in top["summary"]
    assert any(f["kind"] == "log" and "missing feature" in (f["template"] or "") for f in doc["findings"])
    cluster = rep.data["clusters"][0]
    assert set(cluster["example_trace_ids"]) <= set(store["results"]["v2_errors"].error_trace_ids)
    assert cluster["failed_requests"] >= 20
    # the background feature-store timeouts are a separate, non-significant incident
    others = [f for f in doc["findings"][1:] if f["kind"] == "error_cluster"]
    assert all(not f["significant"] for f in others)


def test_c_preprocess_cpu_burn(store):
    doc = _valid(_slow(store, "cpu_burn"))
    top = doc["findings"][0]
    assert top["significant"]
    assert top["stage"] == semconv.STAGE_PREPROCESS or top["attribute"] == semconv.ML_BATCH_SIZE, top
    sig = [f for f in doc["findings"] if f["significant"]]
    assert any(f["kind"] == "attribute" and f["attribute"] == semconv.ML_BATCH_SIZE for f in sig)
    assert any(f["kind"] == "metric" and f["metric"] == semconv.METRIC_PROCESS_CPU_UTILIZATION for f in sig)


def test_edge_latency_blamed_on_callee_side_not_caller_self_time(store):
    rep = _slow(store, "edge_latency")
    _valid(rep)
    where = [f for f in rep.findings if f.kind == "stage"]
    # one finding for the component: the callee, its time on the calls into it
    assert where[0].significant and where[0].evidence["where"] == "calls in", where[0]
    assert where[0].edge == {"caller": "fraud-api", "callee": "feature-service"}
    assert where[0].service == "feature-service"
    assert not any(f.service == "fraud-api" and f.significant for f in where), [f.summary for f in where]
    assert not any(f.significant and f.evidence["level"] == "operation" and f.service == "fraud-api" for f in where)


def test_clean_run_has_no_significant_finding(store):
    slow = _slow(store, "clean")
    errors = _errors(store, "clean")
    _valid([slow, errors])
    assert [f.summary for f in slow.findings if f.significant] == []
    assert [f.summary for f in errors.findings if f.significant] == []
    assert slow.verdict[0].startswith("No significant difference")
    assert errors.data["counts"]["failed_requests"] > 0  # background errors exist, and are not called a cause


def test_absolute_threshold_and_route_filter(store):
    rep = _slow(store, "slow_shard", threshold="250ms", route="/predict")
    assert rep.data["threshold_ns"] == 250_000_000
    assert rep.findings[0].significant
    # a service called by others: its SERVER spans are the requests, its subtree is analysed
    callee = _slow(store, "slow_shard", service="feature-service")
    assert callee.data["counts"]["requests"] == store["results"]["slow_shard"].requests
    assert callee.findings[0].significant and callee.findings[0].stage == semconv.STAGE_FEATURE_FETCH
    assert not any(f.service == "fraud-api" for f in callee.findings if f.kind == "stage")
    none = _slow(store, "slow_shard", route="/nope")
    assert none.findings == [] and "No requests matched" in none.verdict[0]


def _cli(*args, data_dir):
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120)


def _iso(ns):
    import datetime as dt
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat()


def test_cli_investigate_slow_and_errors(store, tmp_path):
    r = store["results"]["slow_shard"]
    p = _cli("investigate", "slow", "--from", _iso(r.start_ns), "--until", _iso(r.end_ns), "--format", "json",
             data_dir=store["data_dir"])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["kind"] == "slow" and doc["findings"][0]["significant"]
    assert p.stderr == ""  # piped: no progress bar
    r = store["results"]["v2_errors"]
    out = tmp_path / "errors.md"
    p = _cli("investigate", "errors", "--from", _iso(r.start_ns), "--until", _iso(r.end_ns), "--format", "md",
             "--output", str(out), data_dir=store["data_dir"])
    assert p.returncode == 0, p.stderr
    md = out.read_text()
    assert "## Findings" in md and "ml.model.version=v2" in md and "KeyError" in md
    p = _cli("investigate", "slow", "--since", "forever", data_dir=store["data_dir"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "invalid duration" in p.stderr


def test_cli_trace_every_format(store, tmp_path):
    tid = store["results"]["v2_errors"].error_trace_ids[-1]
    p = _cli("trace", tid, data_dir=store["data_dir"])
    assert p.returncode == 0, p.stderr
    assert "★ POST /predict" in p.stdout and "inference" in p.stdout and "KeyError" in p.stdout
    assert "ERROR inference failed for user" in p.stdout  # log line under its span
    for fmt in ("md", "json", "html"):
        out = tmp_path / f"t.{fmt}"
        p = _cli("trace", tid, "--format", fmt, "-o", str(out), data_dir=store["data_dir"])
        assert p.returncode == 0, p.stderr
        text = out.read_text()
        assert tid in text
    doc = json.loads((tmp_path / "t.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    spans = doc["data"]["spans"]
    assert spans[0]["name"] == "POST /predict" and spans[0]["critical"]
    inf = next(s for s in spans if s["name"] == "inference")
    assert inf["status"] == "ERROR" and inf["events"][0]["exception_type"] == "KeyError"
    assert any(lg["severity_number"] >= 17 and lg["marked"] for lg in inf["logs"])
    assert {m["name"] for m in doc["data"]["metrics"]} >= {semconv.METRIC_PROCESS_CPU_UTILIZATION}
    assert sum(x["self_ms"] for x in doc["data"]["stage_self_time"]) == pytest.approx(doc["data"]["duration_ms"], rel=1e-6)
    for bad in ("xyz", "0" * 32, "ab" * 16):
        p = _cli("trace", bad, data_dir=store["data_dir"])
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("stagetrace: error:"), p.stderr


class _Charts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.charts, self.external, self.sections = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and "data-chart" in a:
            self.charts.append(a["data-chart"])
        if tag in ("script", "img", "link", "iframe") and (a.get("src") or a.get("href")):
            self.external.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("data-kind"))


def test_html_is_self_contained_with_every_chart(store, tmp_path):
    b = store["backend"]
    slow = _slow(store, "slow_shard")
    errors = _errors(store, "v2_errors")
    t1 = trace_report(b, slow.data["example_trace_ids"][0])
    t2 = trace_report(b, store["results"]["v2_errors"].error_trace_ids[0])
    page = render([slow, errors, t1, t2], "html")
    p = _Charts()
    p.feed(page)
    assert p.sections == ["slow", "errors", "trace", "trace"]
    for chart in ("latency-histogram", "stage-breakdown", "timeline", "waterfall"):
        assert chart in p.charts, chart
    assert p.charts.count("waterfall") == 2 and p.charts.count("timeline") == 2
    assert p.external == [] and "http://" not in page.replace('xmlns=\'http://www.w3.org/2000/svg\'', "")
    embedded = page.split("id='stagetrace-report'>")[1].split("</script>")[0]
    jsonschema.validate(json.loads(embedded), SCHEMA)
    # the text and markdown renderings say the same thing
    assert slow.findings[0].summary in render(slow, "md")
    assert "feature_fetch" in render([slow, t1], "text")
