"""Input/output profiles and labels, end to end.

Real scikit-learn, XGBoost and PyTorch models (and LightGBM, ONNX Runtime, transformers)
run in an app with no tracing code under
the real ``opentelemetry-instrument``, exporting to a real ``stagetrace collector``;
the profiles are read back from its store and checked against the values the app
scored. Labels go through ``POST /stagetrace/v1/labels`` and are read back too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from stagetrace import mlprofile, semconv
from stagetrace.backend import LogQuery, TraceQuery
from stagetrace.collector import labels as labels_mod
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend

from ml_apps import inference_spans as _inference_spans  # noqa: I001 - tests/ helper
from ml_apps import run_instrumented as _run_instrumented

APP = Path(__file__).parent / "apps" / "mlprofile_app.py"
MORE_APP = Path(__file__).parent / "apps" / "mlprofile_more_app.py"


def _post(url: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/x-ndjson"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
def test_profiles_from_real_models_under_opentelemetry_instrument(tmp_path):
    out = tmp_path / "scored.json"
    with start_collector(tmp_path / "data", token="s3cret") as c:
        _run_instrumented(APP, [str(out)], c, tmp_path, STAGETRACE_MODEL_VERSION="v7")
        scored = json.loads(out.read_text())
        spans = _inference_spans(c.data_dir, len(scored["calls"]) + 1)
        # the default prediction id is the span's own trace and span id: not written, derived
        assert not any(semconv.ML_PREDICTION_ID in s.attributes for s in spans)
        by_pid = {mlprofile.prediction_id(s.trace_id, s.span_id): s for s in spans}
        for call in scored["calls"]:
            pid = call["prediction_id"]
            assert pid and pid in by_pid, (call["framework"], pid, sorted(map(str, by_pid)))
            span = by_pid[pid]
            a = span.attributes
            assert a[semconv.ML_MODEL_FRAMEWORK] == call["framework"]
            assert mlprofile.parse_feature_list(a[semconv.ML_INPUT_FEATURES]) == call["features"]
            prof = mlprofile.decode_input(a[semconv.ML_INPUT_PROFILE])
            x = np.array(call["inputs"])
            assert prof is not None and prof.rows == len(x) and prof.kinds == "n" * x.shape[1]
            # every value lies in the bin recorded for it, and no value is recorded
            for i in range(len(x)):
                for j in range(x.shape[1]):
                    lo, hi = mlprofile.bin_edges(int(prof.codes[i, j]))
                    assert lo <= x[i, j] <= hi, (call["framework"], i, j, x[i, j], lo, hi)
            assert not any(str(round(v, 6)) in a[semconv.ML_INPUT_PROFILE] for v in x.ravel()[:20])
            outp = mlprofile.decode_output(a[semconv.ML_OUTPUT_PROFILE])
            assert outp is not None and outp.rows == len(x)
            np.testing.assert_allclose(outp.scores, np.array(call["outputs"]), rtol=1e-4, atol=1e-5)
            assert a[semconv.ML_PREDICTION_SCORE_MEAN] == pytest.approx(float(np.mean(call["outputs"])), rel=1e-4)
            assert pid == mlprofile.prediction_id(span.trace_id, span.span_id)
            assert a[semconv.ML_MODEL_VERSION] == "v7"
        # the NaN row of the first batch was counted (the model saw a filled frame)
        first = mlprofile.decode_input(by_pid[scored["calls"][0]["prediction_id"]].attributes[semconv.ML_INPUT_PROFILE])
        assert first.missing.tolist() == [0, 0, 0, 0]  # what the model saw had no NaN
        # the call that raised on NaN: an ERROR span whose input profile says device_age_days was missing
        failed = [s for s in spans if s.is_error]
        assert len(failed) == 1
        fp = mlprofile.decode_input(failed[0].attributes[semconv.ML_INPUT_PROFILE])
        names = mlprofile.parse_feature_list(failed[0].attributes[semconv.ML_INPUT_FEATURES])
        assert fp.missing[names.index("f3")] == 8 and fp.missing.sum() == 8
        assert semconv.ML_OUTPUT_PROFILE not in failed[0].attributes

        # labels for two of those predictions, one by prediction id (a batch row), one by trace id
        url = c.http_endpoint + labels_mod.PATH
        p0 = scored["calls"][0]["prediction_id"] + "-3"
        t1 = by_pid[scored["calls"][1]["prediction_id"]].trace_id
        body = (json.dumps({"prediction_id": p0, "label": 1, "time": "2026-12-07T10:00:00Z"}) + "\n"
                + json.dumps({"trace_id": t1, "label": False}) + "\n" + "not json\n"
                + json.dumps({"label": 1}) + "\n").encode()
        assert _post(url, body)[0] == 401  # same bearer-token rule as the OTLP paths
        status, doc = _post(url, body, "s3cret")
        assert status == 200 and doc["accepted"] == 2 and doc["rejected"] == 2, doc
        assert doc["errors"][0].startswith("line 3:") and "prediction_id" in doc["errors"][1]
        status, doc = _post(url, b"nonsense\n", "s3cret")
        assert status == 400 and doc["accepted"] == 0
        # over the size bound: refused from the header alone, before the body is read
        import http.client
        host, port = c.http_endpoint.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("POST", labels_mod.PATH)
        conn.putheader("Content-Length", str(labels_mod.MAX_LABEL_BYTES + 1))
        conn.putheader("Authorization", "Bearer s3cret")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and "over the limit" in json.loads(resp.read())["error"]
        conn.close()
        with EmbeddedBackend(c.data_dir) as be:
            got = be.find_logs(LogQuery(attributes={semconv.EVENT_NAME: semconv.ML_LABEL_EVENT}, limit=None))
        by = {r.attributes.get(semconv.ML_PREDICTION_ID) or r.attributes.get(semconv.ML_LABEL_TRACE_ID): r for r in got}
        assert by[p0].attributes[semconv.ML_LABEL_VALUE] == 1 and by[p0].trace_id == p0.split("-")[0]
        import datetime as dt
        assert by[p0].time_ns == int(dt.datetime(2026, 12, 7, 10, tzinfo=dt.timezone.utc).timestamp()) * 10**9
        assert by[t1].attributes[semconv.ML_LABEL_VALUE] is False and by[t1].trace_id == t1
    # durable: the labels are still there after the collector stopped and a new one reads the store
    with EmbeddedBackend(tmp_path / "data") as be:
        assert len(be.find_logs(LogQuery(attributes={semconv.EVENT_NAME: semconv.ML_LABEL_EVENT}, limit=None))) == 2


def _check_bins(prof, x: np.ndarray, where) -> None:
    """Every numeric value lies in the bin recorded for it, a missing one is recorded
    missing, and the batch min/max bins hold the column's min/max."""
    for j in range(x.shape[1]):
        col = x[:, j]
        for i, v in enumerate(col):
            if np.isnan(v):
                assert mlprofile.is_missing(prof.codes[i:i + 1, j])[0], (where, i, j)
            else:
                lo, hi = mlprofile.bin_edges(int(prof.codes[i, j]))
                assert lo <= v <= hi, (where, i, j, v, lo, hi)
        ok = col[~np.isnan(col)]
        assert mlprofile.bin_edges(int(prof.lo[j]))[0] <= ok.min() <= mlprofile.bin_edges(int(prof.lo[j]))[1], where
        assert mlprofile.bin_edges(int(prof.hi[j]))[0] <= ok.max() <= mlprofile.bin_edges(int(prof.hi[j]))[1], where


@pytest.mark.slow
def test_profiles_from_lightgbm_onnxruntime_and_transformers(tmp_path):
    """LightGBM (a Booster and LGBMClassifier: names from the booster / the model), ONNX
    Runtime (a matrix input named by config keyed by the model file; one input per column,
    named by the inputs; ZipMap and plain probability outputs) and a transformers text
    pipeline (a 2-layer BERT built from a config; texts profiled as their length in
    characters and words, the output as the model's id2label classes)."""
    out = tmp_path / "scored.json"
    cfg = tmp_path / "stagetrace.toml"
    cfg.write_text('[profile.features]\n"fraud.onnx" = ["amount", "hour", "merchant_risk"]\n')
    with start_collector(tmp_path / "data", token="s3cret") as c:
        _run_instrumented(MORE_APP, [str(out), str(tmp_path)], c, tmp_path, STAGETRACE_CONFIG=str(cfg))
        scored = json.loads(out.read_text())
        spans = _inference_spans(c.data_dir, len(scored["calls"]))
    by_pid = {mlprofile.prediction_id(s.trace_id, s.span_id): s for s in spans}
    assert [c["framework"] for c in scored["calls"]] == ["lightgbm"] * 2 + ["onnxruntime"] * 2 + ["transformers"] * 2
    for n, call in enumerate(scored["calls"]):
        where = (n, call["framework"])
        assert call["prediction_id"] in by_pid, where
        a = by_pid[call["prediction_id"]].attributes
        assert a[semconv.ML_MODEL_FRAMEWORK] == call["framework"] and not by_pid[call["prediction_id"]].is_error
        assert mlprofile.parse_feature_list(a.get(semconv.ML_INPUT_FEATURES)) == call["features"], where
        prof = mlprofile.decode_input(a.get(semconv.ML_INPUT_PROFILE))
        rows = call["inputs"]
        assert prof is not None and prof.rows == len(rows) and prof.kinds == call["kinds"], where
        x = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
        numeric = [j for j, k in enumerate(call["kinds"]) if k == "n"]
        _check_bins(prof, x[:, numeric], where)
        expected_missing = [int(np.isnan(x[:, j]).sum()) if k == "n" else 0 for j, k in enumerate(call["kinds"])]
        assert prof.missing.tolist() == expected_missing, where
        if call["distinct"]:
            assert [int(prof.distinct[j]) if k == "c" else 0 for j, k in enumerate(call["kinds"])] == call["distinct"]
        outp = mlprofile.decode_output(a.get(semconv.ML_OUTPUT_PROFILE))
        assert outp is not None and outp.rows == len(rows), where
        want = np.array(call["scores"], dtype=float)
        np.testing.assert_allclose(outp.scores, want, rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=str(where))
        if call["labels"] is not None:  # class counts: the predicted class of every row
            got = [outp.classes[k] for k in outp.predicted.tolist()]
            assert got == call["labels"], where
        assert a[semconv.ML_PREDICTION_SCORE_MEAN] == pytest.approx(float(np.nanmean(want)), rel=1e-4), where
    lgbm, onnx_matrix, text = scored["calls"][0], scored["calls"][2], scored["calls"][4]
    assert mlprofile.decode_input(by_pid[lgbm["prediction_id"]].attributes[semconv.ML_INPUT_PROFILE]).missing.tolist() \
        == [3, 0, 1]  # the NaNs the app put in (LightGBM scores them)
    assert mlprofile.decode_input(by_pid[onnx_matrix["prediction_id"]].attributes[semconv.ML_INPUT_PROFILE]) \
        .missing.tolist() == [0, 2, 0]
    # the text classifier's classes are the model's labels, in id order, and both were predicted
    assert mlprofile.decode_output(by_pid[text["prediction_id"]].attributes[semconv.ML_OUTPUT_PROFILE]).classes \
        == ["legit", "fraud"] and set(text["labels"]) == {"legit", "fraud"}


@pytest.mark.slow
def test_model_names_from_env_config_and_resource_under_opentelemetry_instrument(tmp_path):
    """``STAGETRACE_MODEL_NAME`` names the process's model (over ``ml.model.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``, which names it when the variable is unset),
    ``[tool.stagetrace.model.stages]`` names single models and user stages, and
    ``investigate drift --model NAME`` selects the spans by that name."""
    from stagetrace.forensics import drift

    apps = Path(__file__).parent / "apps"
    cfg = tmp_path / "stagetrace.toml"
    cfg.write_text('[model.stages]\nLogisticRegression = { name = "fraud-lr", version = "lr-3" }\n'
                   '"modelname_stages:score" = "fraud-user"\n')
    common = {"STAGETRACE_CONFIG": str(cfg), "PYTHONPATH": str(apps), "STAGETRACE_STAGES": "inference=modelname_stages:score",
              "OTEL_RESOURCE_ATTRIBUTES": "ml.model.name=from-resource,ml.model.version=r9"}
    with start_collector(tmp_path / "data", token="s3cret") as c:
        _run_instrumented(apps / "modelname_app.py", [str(tmp_path / "one.json")], c, tmp_path,
                          STAGETRACE_MODEL_NAME="fraud-scorer", **common)
        _run_instrumented(apps / "modelname_app.py", [str(tmp_path / "two.json")], c, tmp_path,
                          OTEL_SERVICE_NAME="scorer-2", STAGETRACE_MODEL_VERSION="v5", **common)
        spans = _inference_spans(c.data_dir, 6)
        with EmbeddedBackend(c.data_dir) as be:
            pre = [s for s in be.find_spans(TraceQuery(limit=None)) if s.attributes.get(semconv.ML_STAGE) == "preprocess"]
            selected = drift.inference_spans(be, "fraud-scorer", None, None, None)
    by_pid = {mlprofile.prediction_id(s.trace_id, s.span_id): s for s in spans}

    def named(run: str, call: str) -> tuple:
        s = by_pid[json.loads((tmp_path / run).read_text())[call]]
        return s.name, s.attributes.get(semconv.ML_MODEL_NAME), s.attributes.get(semconv.ML_MODEL_VERSION)

    assert named("one.json", "pipeline") == ("inference fraud-scorer", "fraud-scorer", "r9")
    assert named("one.json", "lr") == ("inference fraud-lr", "fraud-lr", "lr-3")
    assert named("one.json", "user") == ("inference fraud-user", "fraud-user", "r9")
    assert named("two.json", "pipeline") == ("inference from-resource", "from-resource", "v5")
    assert named("two.json", "lr") == ("inference fraud-lr", "fraud-lr", "lr-3")
    # a stage that is not profiled keeps the library's name (the scaler inside the pipeline)
    assert pre and {s.attributes[semconv.ML_MODEL_NAME] for s in pre} == {"StandardScaler"}
    assert [s.attributes[semconv.ML_MODEL_NAME] for s in selected] == ["fraud-scorer"], [(s.name, s.service_name, dict(s.attributes)) for s in selected]
    assert selected[0].service_name == "scorer"


def test_model_name_settings_precedence_and_bad_values(caplog):
    from stagetrace.instrumentation import deferred, modelnames

    res = {semconv.ML_MODEL_NAME: "res-name", semconv.ML_MODEL_VERSION: "res-v"}
    table = {"name": "toml-name", "version": "toml-v", "stages": {"app.m:Scorer.score": {"name": "u", "version": "u1"},
                                                                   "LGBMClassifier": "gbm"}}
    n = modelnames.load({semconv.ENV_MODEL_NAME: "env-name"}, table, res)
    assert n.resolve("inference", "LGBMClassifier.predict", "LGBMClassifier", None) == ("gbm", "toml-v")
    assert n.resolve("inference", "Scorer.score", None, None) == ("u", "u1")
    assert n.resolve("inference", "Booster.predict", "Booster", "meta-v") == ("env-name", "meta-v")  # library version kept
    assert n.resolve("preprocess", "StandardScaler.transform", "StandardScaler", None) == ("StandardScaler", "toml-v")
    assert modelnames.load({}, {"name": "toml-name"}, res).resolve("inference", "x", "X", None) == ("toml-name", "res-v")
    assert modelnames.load({}, None, res).resolve("inference", "x", "X", None) == ("res-name", "res-v")
    assert modelnames.load({}, None, {}) is None  # nothing set: the wrapper does nothing extra
    caplog.set_level("WARNING", logger="stagetrace.instrumentation")
    bad = modelnames.load({}, {"name": ["x"], "stages": {"A": {"name": 3, "colour": "red"}, "B": ""}}, {})
    deferred.flush()
    assert bad is not None and bad.resolve("inference", "A.f", "A", None) == ("3", None)
    assert bad.resolve("inference", "B.f", "B", None) == ("B", None)
    text = caplog.text
    assert "[tool.stagetrace.model] name" in text and "colour" in text and "[tool.stagetrace.model.stages] B" in text
    assert modelnames.load({}, "not a table", {}) is None and "it must be a table" in caplog.text


@pytest.mark.slow
def test_user_stage_functions_are_profiled_by_configuration(tmp_path):
    """Plain functions named in ``STAGETRACE_STAGES`` (no model library inside) get the
    same profiles under ``opentelemetry-instrument``: request dicts (names from the keys,
    a categorical feature, missing values) and a bare array whose feature names come from
    ``[tool.stagetrace.profile.features]`` keyed by the stage target; the scores they
    return are the output profile."""
    apps = Path(__file__).parent / "apps"
    cfg = tmp_path / "stagetrace.toml"
    cfg.write_text('[profile.features]\n"userstage_rules:score_matrix" = ["amount", "device_age_days"]\n')
    out = tmp_path / "scored.json"
    with start_collector(tmp_path / "data", token="s3cret") as c:
        _run_instrumented(apps / "userstage_app.py", [str(out)], c, tmp_path, PYTHONPATH=str(apps),
                          STAGETRACE_CONFIG=str(cfg),
                          STAGETRACE_STAGES="inference=userstage_rules:score;inference=userstage_rules:score_matrix")
        spans = _inference_spans(c.data_dir, 2)
    scored = json.loads(out.read_text())
    by_pid = {mlprofile.prediction_id(s.trace_id, s.span_id): s for s in spans}
    assert len(spans) == 2
    dicts = by_pid[scored["dicts"]["prediction_id"]].attributes
    assert mlprofile.parse_feature_list(dicts[semconv.ML_INPUT_FEATURES]) == ["amount", "country", "device_age_days"]
    prof = mlprofile.decode_input(dicts[semconv.ML_INPUT_PROFILE])
    assert prof.rows == 4 and prof.kinds == "ncn"
    assert prof.missing.tolist() == [0, 0, 2] and int(prof.distinct[1]) == 3  # FR, BR, DE
    x = np.array([[np.nan if v is None else v for v in r] for r in scored["dicts"]["inputs"]], dtype=float)
    _check_bins(type(prof)(prof.rows, "nn", prof.codes[:, [0, 2]], prof.missing[[0, 2]], prof.lo[[0, 2]],
                           prof.hi[[0, 2]], prof.distinct[[0, 2]]), x, "dicts")
    outp = mlprofile.decode_output(dicts[semconv.ML_OUTPUT_PROFILE])
    np.testing.assert_allclose(outp.scores, scored["dicts"]["scores"], rtol=1e-5)
    matrix = by_pid[scored["matrix"]["prediction_id"]].attributes
    assert mlprofile.parse_feature_list(matrix[semconv.ML_INPUT_FEATURES]) == ["amount", "device_age_days"]
    prof = mlprofile.decode_input(matrix[semconv.ML_INPUT_PROFILE])
    assert prof.rows == 3 and prof.kinds == "nn" and prof.missing.tolist() == [0, 1]
    _check_bins(prof, np.array(scored["matrix"]["inputs"], dtype=float), "matrix")
    np.testing.assert_allclose(mlprofile.decode_output(matrix[semconv.ML_OUTPUT_PROFILE]).scores,
                               scored["matrix"]["scores"], rtol=1e-5)
    assert matrix[semconv.ML_PREDICTION_SCORE_MEAN] == pytest.approx(float(np.mean(scored["matrix"]["scores"])))
