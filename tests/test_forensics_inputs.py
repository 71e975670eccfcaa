"""The model's inputs as evidence in `investigate slow` (issue 18 part 3).

tests/telemetry_gen.py's ``slow_inputs`` scenario: after the onset, predictions whose rows
lack ``merchant_risk`` take a slow imputation path. Every inference span carries the
input profile made by the instrumentation's own capture code. The report must name the
missing feature, and a clean run with the same profiles must name nothing.
"""

from __future__ import annotations

import telemetry_gen as gen
from stagetrace import semconv
from stagetrace.forensics import investigate_errors, investigate_slow


def _input_findings(report):
    return [f for f in report.findings if f.attribute == semconv.ML_INPUT_FEATURES]


def test_slow_predictions_explained_by_a_missing_feature():
    backend, res = gen.memory_backend("slow_inputs", minutes=20, per_minute=60)
    r = investigate_slow(backend, start_ns=res.start_ns, end_ns=res.end_ns)
    found = [f for f in _input_findings(r) if f.significant]
    assert found and found[0].value == "merchant_risk", [f.summary for f in r.findings[:8]]
    assert "merchant_risk missing in" in found[0].summary and "of slow" in found[0].summary
    assert found[0].service == gen.API
    x = found[0].evidence["input_profile"]
    assert x["missing_failing"] > 0.9 and x["missing_normal"] < 0.5, x
    # the inference stage is what got slower, and the input finding ranks among the top
    top = [f for f in r.findings if f.significant][:4]
    assert found[0] in top, [f.summary for f in top]
    assert any(f.kind == "stage" and f.stage == semconv.STAGE_INFERENCE for f in top), [f.summary for f in top]


def test_clean_run_with_profiles_names_no_input():
    backend, res = gen.memory_backend("clean", minutes=20, per_minute=60, profiles=True)
    r = investigate_slow(backend, start_ns=res.start_ns, end_ns=res.end_ns)
    assert not r.significant_findings, [f.summary for f in r.significant_findings]
    assert not any(f.significant for f in _input_findings(r))


def test_failing_predictions_explained_by_a_missing_feature():
    """``v2_errors`` with profiles: the v2 canary raises on rows without merchant_risk
    (the demo's model-errors fault). `investigate errors` must name the missing feature
    among its top three significant findings, with the missing shares of both sides."""
    backend, res = gen.memory_backend("v2_errors", minutes=20, per_minute=60, profiles=True)
    r = investigate_errors(backend, start_ns=res.start_ns, end_ns=res.end_ns)
    sig = [f for f in r.findings if f.significant]
    found = [f for f in _input_findings(r) if f.significant]
    assert found and found[0].value == "merchant_risk", [f.summary for f in sig[:6]]
    assert found[0] in sig[:3], [f.summary for f in sig[:3]]
    assert "merchant_risk missing in 100% of failing" in found[0].summary, found[0].summary
    x = found[0].evidence["input_profile"]
    assert x["missing_failing"] == 1.0 and x["missing_normal"] < 0.5, x
    assert not any(f.value in ("amount", "device_age_days") for f in found), [f.summary for f in found]


def test_failures_the_inputs_do_not_explain_name_no_input():
    """The same canary failures, but the profiles' missing values drawn apart from the
    cause: the errors are still found, no input is named."""
    backend, res = gen.memory_backend("v2_errors", minutes=20, per_minute=60, profiles=True, unrelated_inputs=True)
    r = investigate_errors(backend, start_ns=res.start_ns, end_ns=res.end_ns)
    assert r.findings and r.findings[0].kind == "error_cluster" and r.findings[0].significant
    # (the test above, same scenario and seed, shows the inputs are compared on this path; here
    # every failing call still misses a feature in a third of cases, whole batches at a time)
    assert not any(f.significant for f in _input_findings(r)), [f.summary for f in _input_findings(r)]
