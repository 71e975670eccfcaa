"""Deferred profiles (instrumentation/profile_export.py): the call snapshots the model's
arrays, the span exporter encodes them. Real SDK processors and real scikit-learn models;
the deferred attributes must equal what the inline capture writes for the same calls."""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stagetrace import mlprofile, semconv
from stagetrace.instrumentation import profile_export, profiling, wrapping
from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor

from ml_apps import export_calls  # noqa: I001 - tests/ helper

PROFILE_KEYS = (semconv.ML_INPUT_FEATURES, semconv.ML_INPUT_PROFILE, semconv.ML_OUTPUT_PROFILE,
                semconv.ML_PREDICTION_SCORE_MEAN, semconv.ML_PREDICTION_CLASS, semconv.ML_PREDICTION_CONFIDENCE_MEAN)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(5)
    X = rng.lognormal(2.0, 1.0, (500, 6))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, (X[:, 0] > 7).astype(int)), X


def _run(processor_factory, profile, calls, sampler=None):
    results, spans = export_calls(processor_factory, profile, calls, sampler)
    return results, [s for s in spans if s.attributes.get(semconv.ML_STAGE) == "inference"]


def _profile(span):
    return {k: span.attributes[k] for k in PROFILE_KEYS if k in span.attributes}


def test_deferred_profiles_equal_inline_ones(model):
    m, X = model
    batches = [X[:1].copy(), X[:64].copy(), X[:300].copy(), X[:5].astype(np.float32), (X[:7] * 10).astype(np.int64)]
    calls = [lambda b=b: m.predict_proba(b) for b in batches] + [lambda b=b: m.predict(b) for b in batches]
    res_d, deferred_spans = _run(BatchSpanProcessor, profiling.ProfileSettings(), calls)
    res_i, inline_spans = _run(BatchSpanProcessor, profiling.ProfileSettings(defer=False), calls)
    assert len(deferred_spans) == len(inline_spans) == len(calls)
    for d, i, a, b in zip(deferred_spans, inline_spans, res_d, res_i):
        assert np.array_equal(a, b)
        assert _profile(d) == _profile(i)
        assert semconv.ML_INPUT_PROFILE in d.attributes and semconv.ML_OUTPUT_PROFILE in d.attributes
    # the deferred path was taken (nothing was pending on the spans when the exporter got them)
    assert wrapping._defer_state[1] is True
    assert not any(profile_export.MARK in vars(s._attributes) for s in deferred_spans)


def test_snapshot_taken_at_call_time_and_result_untouched(model):
    m, X = model
    buf = X[:8].copy()
    expected_codes = mlprofile.bin_codes(buf)
    out: list = []

    def call():
        r = m.predict_proba(buf)
        out.append((r, r.copy()))
        buf[:] = 1e6  # the app reuses its input buffer and rescales its output at once
        r *= 100.0
        return r

    (r,), (span,) = _run(BatchSpanProcessor, profiling.ProfileSettings(), [call])
    assert r is out[0][0]  # the very object the model returned
    prof = mlprofile.decode_input(span.attributes[semconv.ML_INPUT_PROFILE])
    assert np.array_equal(prof.codes, expected_codes)
    outp = mlprofile.decode_output(span.attributes[semconv.ML_OUTPUT_PROFILE])
    assert np.allclose(outp.scores, out[0][1][:, 1], atol=1e-6)


class _ReadsOnEnd(SpanProcessor):
    """A user's processor that reads attributes when the span ends."""

    def __init__(self, exporter):
        self.exporter = exporter
        self.seen: list = []

    def on_end(self, span):
        self.seen.append(dict(span.attributes))
        self.exporter.export((span,))


def test_unknown_processor_keeps_the_capture_inline(model):
    m, X = model
    holder: list = []

    def factory(exporter):
        holder.append(_ReadsOnEnd(exporter))
        return holder[0]

    _, spans = _run(factory, profiling.ProfileSettings(), [lambda: m.predict_proba(X[:3].copy())])
    assert wrapping._defer_state[1] is False
    (seen,) = [a for a in holder[0].seen if a.get(semconv.ML_STAGE) == "inference"]
    assert semconv.ML_INPUT_PROFILE in seen and semconv.ML_OUTPUT_PROFILE in seen


def test_processor_added_later_switches_to_inline(model):
    m, X = model
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    inst = StagetraceInstrumentor()
    inst.instrument(tracer_provider=tp, stages="", libraries=["sklearn"], profile=profiling.ProfileSettings())
    try:
        m.predict_proba(X[:2].copy())
        assert wrapping._defer_state[1] is True
        late = _ReadsOnEnd(InMemorySpanExporter())
        tp.add_span_processor(late)
        m.predict_proba(X[:2].copy())
        assert wrapping._defer_state[1] is False
        (seen,) = [a for a in late.seen if a.get(semconv.ML_STAGE) == "inference"]
        assert semconv.ML_INPUT_PROFILE in seen
    finally:
        inst.uninstrument()
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get(semconv.ML_STAGE) == "inference"]
    assert len(spans) == 2 and all(semconv.ML_INPUT_PROFILE in s.attributes for s in spans)


def test_unsampled_spans_cost_no_profile_and_results_are_unchanged(model):
    m, X = model
    b = X[:4].copy()
    ids: list = []

    def call():
        r = m.predict_proba(b)
        ids.append(profiling.last_prediction_id())
        return r

    (r, _), spans = _run(SimpleSpanProcessor, profiling.ProfileSettings(), [call, call], sampler=ALWAYS_OFF)
    assert spans == [] and np.array_equal(r, m.predict_proba(b))
    assert None not in ids and ids[0] != ids[1]  # the app still gets each call's id


def test_failure_while_resolving_exports_the_span_without_the_profile(model, monkeypatch):
    m, X = model
    from stagetrace.instrumentation import profile_capture

    def boom(*a):
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(profile_capture, "resolve_input", boom)
    (r,), (span,) = _run(BatchSpanProcessor, profiling.ProfileSettings(), [lambda: m.predict_proba(X[:2].copy())])
    assert r.shape == (2, 2) and semconv.ML_INPUT_PROFILE not in span.attributes
    assert span.attributes[semconv.ML_STAGE] == "inference"


def test_defer_switch_in_env_and_config():
    assert profiling.load_settings({}).defer is True
    assert profiling.load_settings({semconv.ENV_PROFILE_DEFER: "false"}).defer is False
    assert profiling.load_settings({}, {"defer": False}).defer is False
    assert profiling.load_settings({semconv.ENV_PROFILE_DEFER: "true"}, {"defer": False}).defer is True


def test_last_prediction_id_follows_each_context(model):
    """``last_prediction_id()`` names the last profiled call that returned in this thread or
    task: nested under a running stage, after it ends, not changed by a call that raised,
    nor by other threads or tasks; the stage slot reads as no stage once a call is done."""
    import asyncio
    import threading

    m, X = model
    b = X[:3].copy()
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(exporter))
    inst = StagetraceInstrumentor()
    inst.instrument(tracer_provider=tp, stages="", libraries=["sklearn"], profile=profiling.ProfileSettings())
    seen: dict = {}

    def handler(x):  # a user stage around the model call (not profiled itself)
        m.predict_proba(x)
        seen["inside"] = profiling.last_prediction_id()
        return "ok"

    handle = wrapping.make_function_wrapper(handler, wrapping.StageSpec("request", "handler"), False)

    def span_id(span):
        return mlprofile.prediction_id(f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")

    try:
        m.predict_proba(b)
        first = profiling.last_prediction_id()
        assert wrapping.current_stage() is None and wrapping.current_model_name() is None
        assert handle(b) == "ok"
        after = profiling.last_prediction_id()
        assert after == seen["inside"] != first  # the nested prediction, kept after the stage ended
        with pytest.raises(ValueError):
            m.predict_proba(np.ones((2, 2)))  # wrong feature count: raises, names no prediction
        assert profiling.last_prediction_id() == after

        def other_thread():
            seen["thread before"] = profiling.last_prediction_id()
            m.predict_proba(b)
            seen["thread"] = profiling.last_prediction_id()

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert seen["thread before"] is None and seen["thread"] not in (None, after)
        assert profiling.last_prediction_id() == after

        async def task(name, pause):
            m.predict_proba(b)
            mine = profiling.last_prediction_id()
            await asyncio.sleep(pause)  # the other task predicts meanwhile
            seen[name] = (mine, profiling.last_prediction_id())

        async def main():
            await asyncio.gather(task("a", 0.05), task("b", 0.0))

        asyncio.run(main())
        for name in ("a", "b"):
            mine, later = seen[name]
            assert mine == later and mine not in (None, after)
        assert seen["a"][0] != seen["b"][0] and profiling.last_prediction_id() == after
        tp.force_flush()
    finally:
        inst.uninstrument()
        tp.shutdown()
    spans = {span_id(s): s for s in exporter.get_finished_spans() if s.attributes.get(semconv.ML_STAGE) == "inference"}
    for pid in (first, after, seen["thread"], seen["a"][0], seen["b"][0]):
        assert pid in spans and semconv.ML_OUTPUT_PROFILE in spans[pid].attributes
