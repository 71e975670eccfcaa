"""Opt-in raw samples (``ml.input.sample``) and the redaction list (issue 18, privacy).

Real scikit-learn models called through the sklearn hook, real SDK span processors and
the SDK's own in-memory exporter; every assertion is on the exported spans, never on
the capture code's internals. The settings come from the ``STAGETRACE_PROFILE_*``
variables through ``profiling.load_settings``, as the instrumentor reads them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from stagetrace import mlprofile, semconv
from stagetrace.instrumentation import profiling, wrapping

from ml_apps import export_calls  # noqa: I001 - tests/ helper

NAMES = ["amount", "ssn", "merchant_risk"]
# values no bin, hash or float formatting can produce by chance: if one shows up on a span,
# it was recorded
SSN = 987654321.0
EMAIL = "alice.secret@example.com"


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.lognormal(3.0, 1.0, 400), rng.integers(10**8, 10**9 - 1, 400).astype(float),
                         rng.beta(2, 8, 400)])
    y = (X[:, 2] > 0.2).astype(int)
    frame_model = LogisticRegression(max_iter=500).fit(pd.DataFrame(X, columns=NAMES), y)  # feature_names_in_
    rows = [{"amount": float(a), "email": f"user{i}@example.com", "country": str(c)}
            for i, (a, c) in enumerate(zip(X[:, 0], rng.choice(["FR", "DE", "BR"], 400)))]
    dict_model = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=500)).fit(rows, y)
    return frame_model, dict_model, X


def _calls(models):
    """One call of each input kind the capture handles differently: a small ndarray
    (deferred to the export thread by default), a DataFrame, a list of dicts with text."""
    frame_model, dict_model, X = models
    arr = X[:3].copy()
    arr[0, 1] = SSN
    frame = pd.DataFrame(arr, columns=NAMES)
    rows = [{"amount": 12.5, "email": EMAIL, "country": "FR"}, {"amount": 3.0, "email": "bob@example.com", "country": "DE"}]
    return [
        ("ndarray", lambda: frame_model.predict_proba(arr), arr[0].tolist()),
        ("frame", lambda: frame_model.predict_proba(frame), arr[0].tolist()),
        ("dicts", lambda: dict_model.predict_proba(rows), rows[0]),
    ]


def _export(settings, calls, processor=BatchSpanProcessor):
    """(results, exported spans) of ``calls`` made under the sklearn hook."""
    return export_calls(processor, settings, calls)


def _spans(env: dict[str, str], models, processor=BatchSpanProcessor):
    calls = _calls(models)
    results, spans = _export(profiling.load_settings(env), [call for _, call, _ in calls], processor)
    inference = [s for s in spans if s.attributes.get(semconv.ML_STAGE) == "inference"]
    assert len(inference) == len(calls), [s.name for s in spans]
    # the calls' own results are what the models return without instrumentation
    for (kind, call, _), got in zip(calls, results):
        assert np.array_equal(got, call()), kind
    return {kind: s for (kind, _, _), s in zip(calls, inference)}, spans


def _all_text(spans) -> str:
    """Every attribute value of every exported span, and the decoded profiles' codes."""
    return json.dumps([{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.attributes.items()} for s in spans],
                      default=str)


def test_no_raw_values_by_default(models):
    by_kind, spans = _spans({}, models)
    for kind, span in by_kind.items():
        assert semconv.ML_INPUT_PROFILE in span.attributes, kind  # profiled...
        assert semconv.ML_INPUT_SAMPLE not in span.attributes, kind  # ...but no sample
    text = _all_text(spans)
    assert "987654321" not in text and EMAIL not in text
    assert "12.5" not in text


@pytest.mark.parametrize("processor", [BatchSpanProcessor, SimpleSpanProcessor])
@pytest.mark.parametrize("defer", ["true", "false"])
def test_samples_when_opted_in_with_redacted_fields_replaced(models, processor, defer):
    env = {semconv.ENV_PROFILE_SAMPLE_RATE: "1", semconv.ENV_PROFILE_REDACT: "ssn,email",
           semconv.ENV_PROFILE_DEFER: defer}
    by_kind, spans = _spans(env, models, processor)
    calls = {kind: first for kind, _, first in _calls(models)}
    for kind, span in by_kind.items():
        sample = json.loads(span.attributes[semconv.ML_INPUT_SAMPLE])
        first = calls[kind]
        if kind == "dicts":
            assert sample == {"amount": 12.5, "email": "<redacted>", "country": "FR"}, sample
        else:
            assert sample == {"amount": first[0], "ssn": "<redacted>", "merchant_risk": first[2]}, (kind, sample)
        # the profile keeps the redacted feature only as missing-or-not (kind r, code 0)
        prof = mlprofile.decode_input(span.attributes[semconv.ML_INPUT_PROFILE])
        names = mlprofile.parse_feature_list(span.attributes[semconv.ML_INPUT_FEATURES])
        red = names.index("email" if kind == "dicts" else "ssn")
        assert prof.kinds[red] == "r" and set(prof.codes[:, red].tolist()) == {0}, (kind, prof.kinds)
        assert prof.kinds.count("r") == 1, (kind, prof.kinds)
    # a redacted value appears nowhere on any exported span (inference and preprocess)
    text = _all_text(spans)
    assert "987654321" not in text and EMAIL not in text
    assert "alice.secret" not in text


def test_sample_rate_zero_and_a_bad_rate_record_nothing(models, caplog):
    for rate in ("0", "lots", "2"):
        by_kind, _ = _spans({semconv.ENV_PROFILE_SAMPLE_RATE: rate}, models)
        assert not any(semconv.ML_INPUT_SAMPLE in s.attributes for s in by_kind.values()), rate
    assert "raw samples stay off" in caplog.text


def test_config_table_opts_in_and_env_redaction_wins(models):
    """``[tool.stagetrace.profile] sample_rate``/``redact`` opt in; the variable replaces
    the table's redaction list (environment wins, as for every setting)."""
    settings = profiling.load_settings({semconv.ENV_PROFILE_REDACT: "amount"}, {"sample_rate": 1.0, "redact": ["ssn"]})
    assert settings.sample_rate == 1.0 and settings.redact == frozenset({"amount"})
    frame_model, _, X = models
    _, spans = _export(settings, [lambda: frame_model.predict_proba(X[:2])])
    (span,) = [s for s in spans if s.attributes.get(semconv.ML_STAGE) == "inference"]
    sample = json.loads(span.attributes[semconv.ML_INPUT_SAMPLE])
    assert sample["amount"] == "<redacted>" and sample["ssn"] == X[0, 1]
    assert wrapping.settings.profile is None  # uninstrumented
