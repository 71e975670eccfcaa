"""``investigate quality`` (issue 18): delayed labels joined to predictions.

Synthetic labelled streams with known answers go through the real capture code and a
real scikit-learn model (benchmarks/quality.py); the end-to-end test runs a real model
in two client processes under the real ``opentelemetry-instrument``, exporting to a real
``stagetrace collector``, sends the labels through ``POST /stagetrace/v1/labels`` and
reads the report back from the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import quality as bench  # noqa: E402  (benchmarks/quality.py: the labelled-stream generator)

from stagetrace import mlprofile, semconv  # noqa: E402
from stagetrace.forensics import quality as q  # noqa: E402
from stagetrace.forensics.report import to_json  # noqa: E402
from stagetrace.model import LogRecord, Span  # noqa: E402

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "forensics" / "report.schema.json").read_text())
APP = Path(__file__).parent / "apps" / "quality_app.py"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model():
    return bench.fit_model(3)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    return bench.reference(model, np.random.default_rng(4), tmp_path_factory.mktemp("ref") / "ref.json")


# --- metrics ------------------------------------------------------------------------

def test_auc_matches_scikit_learn_with_ties_and_none_without_both_classes():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1), 1)  # many ties
    assert q.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    p[::7] = np.nan  # unknown scores are left out
    ok = ~np.isnan(p)
    assert q.auc(y, p) == pytest.approx(roc_auc_score(y[ok], p[ok]), abs=1e-12)
    assert q.auc(np.ones(10, dtype=int), rng.random(10)) is None


def test_accuracy_precision_recall_match_scikit_learn():
    from sklearn.metrics import accuracy_score, precision_score, recall_score
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.35 + rng.random(400) * 0.65, 0, 1)
    yhat = (p > 0.5).astype(int)
    items = [q.Labelled(None, 0, i, int(a), int(b), float(c)) for i, (a, b, c) in enumerate(zip(yhat, y, p))]
    got = q.metrics(items, binary=True)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert got["precision"] == pytest.approx(precision_score(y, yhat))
    assert got["recall"] == pytest.approx(recall_score(y, yhat))
    assert got["errors"] == int((y != yhat).sum()) and got["labelled"] == 400
    assert got["positive_rate"] == pytest.approx(y.mean()) and got["mean_score"] == pytest.approx(p.mean())
    # nothing predicted positive, no positive label: undefined, not zero
    none = q.metrics([q.Labelled(None, 0, 0, 0, 0, 0.1)], binary=True)
    assert none["precision"] is None and none["recall"] is None


def test_calibration_table_and_ece():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.95, 0.91, 0.15, 0.12, 0.11, 0.5])
    table, ece = q.calibration(y, p)
    assert [(b["bin"], b["predictions"]) for b in table] == [("[0.1, 0.2)", 3), ("[0.5, 0.6)", 1), ("[0.9, 1.0)", 2)]
    want = 3 / 6 * abs(np.mean([0.15, 0.12, 0.11]) - 2 / 3) + 1 / 6 * 0.5 + 2 / 6 * abs(0.93 - 0.5)
    assert ece == pytest.approx(want)


@pytest.mark.parametrize("value,classes,want", [
    (1, ["0", "1"], 1), (0, ["0", "1"], 0), (True, ["0", "1"], 1), (False, ["0", "1"], 0), (1.0, ["0", "1"], 1),
    ("true", ["False", "True"], 1), (True, ["False", "True"], 1), ("fraud", ["legit", "fraud"], 1),
    ("cat", ["cat", "dog", "eel"], 0), ("owl", ["cat", "dog", "eel"], None), (2, ["0", "1"], None),
    ("yes", ["legit", "fraud"], None)])
def test_label_values_map_to_the_models_classes(value, classes, want):
    assert q._class_index(value, classes) == want


# --- joining --------------------------------------------------------------------------

def _span(i: int, scores, model_name="m", pid=None) -> Span:
    from stagetrace.instrumentation.profile_capture import output_attributes

    class Binary:
        classes_ = np.array([0, 1])
    proba = np.column_stack([1 - np.asarray(scores), np.asarray(scores)])
    attrs = {semconv.ML_STAGE: "inference", semconv.ML_MODEL_NAME: model_name,
             semconv.ML_INPUT_PROFILE: mlprofile.encode_input(len(scores), "n", np.zeros((len(scores), 1), np.int16))}
    attrs.update(output_attributes(proba, Binary()))
    if pid:
        attrs[semconv.ML_PREDICTION_ID] = pid
    return Span(trace_id=f"{i:032x}", span_id=f"{i:016x}", parent_span_id="", name=f"inference {model_name}",
                kind="INTERNAL", start_ns=i * 1000, end_ns=i * 1000 + 1, attributes=attrs)


def _label(value, t=0, **ids) -> LogRecord:
    attrs = {semconv.EVENT_NAME: semconv.ML_LABEL_EVENT, semconv.ML_LABEL_VALUE: value}
    trace_id = ""
    if "pid" in ids:
        attrs[semconv.ML_PREDICTION_ID] = ids["pid"]
    if "trace" in ids:
        attrs[semconv.ML_LABEL_TRACE_ID] = trace_id = ids["trace"]
    if "model" in ids:
        attrs[semconv.ML_MODEL_NAME] = ids["model"]
    return LogRecord(time_ns=t, observed_time_ns=t, severity_number=9, severity_text="INFO", body="", attributes=attrs,
                     trace_id=trace_id)


def test_join_by_prediction_id_row_trace_and_custom_id():
    one, batch, custom, other = _span(1, [0.9]), _span(2, [0.2, 0.7, 0.4]), _span(3, [0.1], pid="order-77"), _span(4, [.5])
    labels = [
        _label(1, pid=mlprofile.prediction_id(one.trace_id, one.span_id)),  # default id
        _label(0, t=1, pid=mlprofile.prediction_id(batch.trace_id, batch.span_id, 1)),  # row 1 of a batch: wrong
        _label(1, t=5, pid=mlprofile.prediction_id(batch.trace_id, batch.span_id, 1)),  # relabelled later: right
        _label(0, trace=batch.trace_id),  # a trace id cannot say which row of a batch
        _label(1, pid="order-77"),  # a custom id recorded on the span
        _label(1, trace=f"{99:032x}"),  # no such prediction
        _label("maybe", pid=mlprofile.prediction_id(other.trace_id, other.span_id, 0)),  # not a class
        _label(1, pid="x", model="other"),  # another model's
    ]
    items, counts = q.join([one, batch, custom, other], labels, "m")
    got = {(x.span.span_id, x.row): (x.label, x.predicted, round(x.score, 3)) for x in items}
    assert got == {(one.span_id, 0): (1, 1, 0.9), (batch.span_id, 1): (1, 1, 0.7), (custom.span_id, 0): (1, 0, 0.1)}
    assert counts == {"labels": 7, "other_model": 1, "ambiguous": 1, "unmatched": 1, "relabelled": 1,
                      "unknown_value": 1, "joined": 3}
    # the trace id of a one-row prediction is enough
    items, _ = q.join([one], [_label(True, trace=one.trace_id)], "m")
    assert [(x.label, x.correct) for x in items] == [(1, True)]
    # --positive: the user's positive class becomes index 1
    items, _ = q.join([one], [_label(1, trace=one.trace_id)], "m", positive="0")
    assert [(x.label, x.predicted, round(x.score, 3)) for x in items] == [(0, 0, 0.1)]


def test_label_time_read_back_from_loki_as_text_orders_relabels():
    """Loki returns every attribute as a string (the shape of the real sample
    tests/data/samples/loki/loki_query_range_by_trace_categorized.json, categorized encoding): ml.label.time must
    still say which of two labels of one prediction is the later one, not the entry's time."""
    from stagetrace.forensics.grafana import parse_loki_streams

    one = _span(1, [0.9])
    pid = mlprofile.prediction_id(one.trace_id, one.span_id)
    base = 1795556800000000000

    def entry(entry_ns: int, value: str, label_time: str) -> list:
        return [str(entry_ns), "", {"structuredMetadata": {
            "event_name": "ml.label", "ml_label_value": value, "ml_label_time": label_time, "ml_prediction_id": pid,
            "severity_number": "9", "severity_text": "INFO", "observed_timestamp": str(entry_ns)}}]
    # the corrected label (1, known at base + 2 s) reached Loki first; the stale one (0, known
    # at base + 1 s, given as ISO 8601 text) was sent again later
    doc = {"status": "success", "data": {"resultType": "streams", "encodingFlags": ["categorize-labels"], "result": [
        {"stream": {"service_name": "labels"}, "values": [
            entry(base + 10 * 10**9, "1", str(base + 2 * 10**9)),
            entry(base + 20 * 10**9, "0", "2026-11-24T21:46:41Z")]}]}}
    labels = parse_loki_streams(doc)
    assert all(isinstance(r.attributes[semconv.ML_LABEL_TIME], str) for r in labels)
    items, counts = q.join([one], labels, "m")
    assert counts["relabelled"] == 1
    assert [(x.label, x.correct) for x in items] == [(1, True)]


# --- labelled streams with known answers ------------------------------------------------

def test_unit_change_drop_onset_segment_and_linked_drift(model, reference):
    rep = bench.run_case(model, np.random.default_rng(11), "unit", 12, reference)
    on = rep.data["onset"]
    assert on is not None and abs(on["bucket"] - 12) <= 1, on
    assert on["accuracy_before"] - on["accuracy_after"] > 0.08
    top = rep.findings[0]
    assert top.kind == "quality" and (top.attribute, top.value) == ("client.version", "2.0"), top.summary
    segs = [f for f in rep.findings if f.kind == "attribute"]
    assert (segs[0].attribute, segs[0].value) == ("client.version", "2.0")
    assert segs[0].evidence["accuracy_inside"] < 0.6 < 0.75 < segs[0].evidence["accuracy_outside"]
    feat = [f for f in rep.findings if f.kind == "feature"]
    assert feat[0].evidence["feature"] == "amount" and feat[0].evidence["drift"] is not None
    assert "the same feature drifted in this window" in feat[0].summary
    assert "client.version=2.0" in rep.verdict[0] and "amount" in rep.verdict[1]
    per = {(r["attribute"], r["value"]): r for r in rep.data["by_segment"]}
    assert rep.data["by_segment"][0]["attribute"] == "client.version"  # the attribute whose accuracy varies most
    assert per[("client.version", "2.0")]["accuracy"] < per[("client.version", "1.0")]["accuracy"] - 0.05
    assert {("tenant", t) for t in bench.TENANTS} <= set(per)
    doc = json.loads(to_json([rep]))
    jsonschema.validate(doc, SCHEMA)
    assert doc["data"]["join"]["joined"] == doc["data"]["overall"]["labelled"] > 3000


def test_concept_change_without_input_drift_names_the_tenant(model, reference):
    rep = bench.run_case(model, np.random.default_rng(12), "concept", 8, reference)
    on = rep.data["onset"]
    assert on is not None and abs(on["bucket"] - 8) <= 1, on
    assert (rep.findings[0].attribute, rep.findings[0].value) == ("tenant", "t3")
    assert rep.data["segments"][0]["attribute"] == "tenant" and rep.data["segments"][0]["value"] == "t3"
    assert not rep.data.get("drift")  # nothing about the inputs changed


def test_clean_stream_reports_no_drop(model, reference):
    rep = bench.run_case(model, np.random.default_rng(13), "clean", 0, reference)
    assert rep.data["onset"] is None and not [f for f in rep.findings if f.kind == "quality"]
    assert rep.verdict[0].startswith("No significant quality drop")
    assert 0.7 < rep.data["overall"]["accuracy"] < 0.9 and rep.data["overall"]["auc"] > 0.75
    assert rep.data["calibration"]["ece"] < 0.05  # a logistic model on its own distribution is calibrated


def _cells(cells: dict[tuple[str, str], tuple[int, int]]) -> tuple[list, dict]:
    """Labelled predictions with exact counts: (client, version) -> (predictions, wrong ones)."""
    import random

    items, seg = [], {}
    for (client, version), (n, wrong) in cells.items():
        for i in range(n):
            k = len(items) + 1
            span = Span(f"{k:032x}", f"{k:016x}", "", "inference m", "INTERNAL", k, k + 1)
            items.append(q.Labelled(span=span, row=0, t_ns=k, predicted=int(i < wrong), label=0, score=0.5))
            seg[(span.trace_id, span.span_id)] = {"user_agent.original": client, semconv.ML_MODEL_VERSION: version}
    random.Random(0).shuffle(items)
    return items, seg


def test_segment_explained_by_another_comes_after_it():
    """The demo's confound (benchmarks/demo_canary_confound.py): a client sending amounts in
    cents hurts the v1 model far more than the v2 canary, so in a short window v1's excess
    errors can outrank the client's. The client is worse under both versions; v1 is no worse
    than v2 outside that client: the client is named first, v1 after it, explained by it.
    Controls: a version that is worse everywhere is not demoted, nor are two causes that
    each hold without the other."""
    confounded = {("pos", "v1"): (200, 170), ("pos", "v2"): (50, 12), ("web", "v1"): (600, 90), ("web", "v2"): (150, 12)}
    items, seg = _cells(confounded)
    got = [(f["attribute"], f["value"], f.get("explained_by")) for f in q._segments(items, seg, None)]
    assert got == [("user_agent.original", "pos", None), (semconv.ML_MODEL_VERSION, "v1", "user_agent.original=pos")]
    # v1 worse for every client, clients alike: the version is the cause, nothing explains it away
    items, seg = _cells({("pos", "v1"): (200, 80), ("pos", "v2"): (200, 20), ("web", "v1"): (600, 240),
                         ("web", "v2"): (600, 60)})
    got = [(f["attribute"], f["value"], f.get("explained_by")) for f in q._segments(items, seg, None)]
    assert got == [(semconv.ML_MODEL_VERSION, "v1", None)]
    # two independent causes: each holds without the other, neither is explained by the other
    items, seg = _cells({("pos", "v1"): (200, 150), ("pos", "v2"): (200, 80), ("web", "v1"): (600, 240),
                         ("web", "v2"): (600, 60)})
    found = q._segments(items, seg, None)
    assert {(f["attribute"], f["value"]) for f in found} == {("user_agent.original", "pos"),
                                                              (semconv.ML_MODEL_VERSION, "v1")}
    assert not any(f.get("explained_by") for f in found)


# --- the CLI ----------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=180)


def test_cli_bad_input_is_one_line_and_empty_store_is_a_report(tmp_path):
    data = str(tmp_path / "data")
    for args, msg in ((("--interval", "0s"), "--interval must be positive"),
                      (("--since", "1h", "--interval", "1ms"), "--interval is too small"),
                      (("--reference", str(tmp_path / "nope.json")), "no reference profile at"),
                      (("--since", "banana"), "")):
        r = _cli("investigate", "quality", "--model", "m", "--data-dir", data, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert msg in r.stderr
    r = _cli("investigate", "quality", "--model", "m", "--since", "5m", "--data-dir", data, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["kind"] == "quality" and "No profiled inference spans of model 'm'" in doc["verdict"][0]


# --- end to end: real model, real opentelemetry-instrument, real collector -------------------------

@pytest.mark.slow
def test_quality_end_to_end_real_model_labels_through_the_collector(tmp_path):
    from stagetrace.collector import labels as labels_mod
    from stagetrace.collector.process import start_collector

    go = tmp_path / "go"
    with start_collector(tmp_path / "data") as c:
        procs, outs = [], []
        for client, cents in (("1.0", "0"), ("2.0", "1")):
            out = tmp_path / f"client-{client}.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
            env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "OTEL_SERVICE_NAME": "scorer",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": c.http_endpoint, "OTEL_METRICS_EXPORTER": "none",
                        "OTEL_LOGS_EXPORTER": "none", "OTEL_RESOURCE_ATTRIBUTES": f"client.version={client}",
                        "STAGETRACE_MODEL_VERSION": "v3"})
            procs.append(subprocess.Popen([str(BIN / "opentelemetry-instrument"), sys.executable, str(APP), str(out),
                                           str(go), cents], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
            outs.append(out)
        deadline = time.monotonic() + 180
        while not all(Path(str(o) + ".ready").exists() for o in outs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.1)
        start = time.time() + 0.5
        go.write_text(repr(start))
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
        scored = [row for o in outs for row in json.loads(o.read_text())]
        assert all(r["prediction_id"] for r in scored) and len(scored) > 400
        body = "".join(json.dumps({"prediction_id": r["prediction_id"], "label": r["label"]}) + "\n"
                       for r in scored).encode()
        req = urllib.request.Request(c.http_endpoint + labels_mod.PATH, data=body, method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["accepted"] == len(scored)
        frm, until = int(start - 1), int(start + 7)
        deadline = time.monotonic() + 60
        while True:  # the collector may still be writing the spans the apps exported at exit
            r = _cli("investigate", "quality", "--model", "LogisticRegression", "--from", str(frm), "--until",
                     str(until), "--interval", "0.5s", "--format", "json", "--data-dir", str(c.data_dir))
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            if doc["data"].get("join", {}).get("joined", 0) >= len(scored) or time.monotonic() > deadline:
                break
            time.sleep(1)
    jsonschema.validate(doc, SCHEMA)
    assert doc["data"]["join"]["joined"] == len(scored), doc["data"]["join"]
    on = doc["data"]["onset"]
    switch = start + 3.0  # quality_app.PHASE
    assert on is not None and abs(on["onset_ns"] / 1e9 - switch) <= 0.5 + 1e-6, (on, switch)
    top = doc["findings"][0]
    assert top["kind"] == "quality" and (top["attribute"], top["value"]) == ("client.version", "2.0"), top["summary"]
    feats = [f for f in doc["findings"] if f["kind"] == "feature"]
    assert feats and feats[0]["evidence"]["feature"] == "amount", [f["summary"] for f in feats]
    assert [v["version"] for v in doc["data"]["versions"]] == ["v3"]
    for fmt in ("text", "md", "html"):
        r = _cli("investigate", "quality", "--model", "LogisticRegression", "--from", str(frm), "--until", str(until),
                 "--interval", "0.5s", "--format", fmt, "--data-dir", str(tmp_path / "data"))
        assert r.returncode == 0 and "Quality over time" in r.stdout, r.stderr


def test_calibration_per_version_and_segment(model):
    """A canary that ranks as well as v1 but scores too high (its logit shifted by +2) is
    told apart by calibration, per version and per client, in the data and in the tables
    every renderer draws; the calibrated version and client are not. Through the real
    capture code (benchmarks/quality.py's stream) and a real scikit-learn model."""
    import copy

    canary = copy.deepcopy(model)
    canary.intercept_ = canary.intercept_ + 2.0
    spans, logs = bench.stream(model, np.random.default_rng(21), "clean", canary=canary)
    rep = q.investigate_quality(bench.Memory(spans, logs), model="fraud", version=None, start_ns=bench.T0,
                                end_ns=bench.T0 + bench.BUCKETS * bench.BUCKET, interval_ns=bench.BUCKET)
    v = {x["version"]: x for x in rep.data["versions"]}
    assert v["v1"]["ece"] < 0.05 and abs(v["v1"]["calibration_gap"]) < 0.03, v["v1"]
    assert v["v2"]["ece"] > 0.15 and v["v2"]["calibration_gap"] > 0.15, v["v2"]
    seg = {(r["attribute"], r["value"]): r for r in rep.data["by_segment"]}
    assert seg[("client.version", "2.0")]["ece"] > 0.15 and seg[("client.version", "1.0")]["ece"] < 0.05, seg
    table = next(t for t in rep.data["tables"] if t["title"] == "Per model version")
    ece_col = table["columns"].index("ECE")
    assert {r[0]: float(r[ece_col]) for r in table["rows"]} == pytest.approx(
        {"v1": v["v1"]["ece"], "v2": v["v2"]["ece"]}, abs=1e-3)
