"""Unit tests for stagetrace.instrumentation: wrapping, nesting, config, hooks, logs, metrics.

Spans go to the real SDK with an in-memory exporter; every library hook is tested
against the real library (Feast with a local sqlite-backed repo, no network).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stagetrace import semconv
from stagetrace.instrumentation import deferred, logs, stages, wrapping
from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor

ROOT = Path(__file__).resolve().parents[1]


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "unit-svc"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.provider.get_tracer("test")

    def spans(self, stage: str | None = None):
        out = list(self.exporter.get_finished_spans())
        return [s for s in out if stage is None or s.attributes.get(semconv.ML_STAGE) == stage]

    def stage_spans(self):
        return [s for s in self.spans() if semconv.ML_STAGE in s.attributes]

    def durations(self):
        points = []
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == semconv.METRIC_STAGE_DURATION:
                        assert m.unit == "s"
                        points += [(dict(p.attributes), p.count) for p in m.data.data_points]
        return points


@pytest.fixture
def tel():
    t = Telemetry()
    yield t


def instrument(tel: Telemetry, **kw):
    inst = StagetraceInstrumentor()
    inst.instrument(tracer_provider=tel.provider, meter_provider=tel.meter_provider, **kw)
    return inst


@pytest.fixture
def instrumented(tel):
    inst = instrument(tel, stages="")
    yield tel
    inst.uninstrument()


def write_module(tmp_path: Path, name: str, source: str) -> None:
    path = tmp_path / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in list(path.parents)[: name.count(".")]:
        (parent / "__init__.py").touch()
    path.write_text(textwrap.dedent(source))


@pytest.fixture
def modpath(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name, mod in list(sys.modules.items()):  # forget only the modules written by the test
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            sys.modules.pop(name, None)


# --- dotted-path wrapping of every callable kind ----------------------------------
TARGET_SOURCE = '''
import logging
log = logging.getLogger("userapp")

def clean(x):
    log.info("cleaning")
    return [v * 2 for v in x]

class FeatureClient:
    def get(self, key):
        return {"a": 1, "b": 2, "key": key}

    @classmethod
    def build(cls, n):
        return cls.__name__ + str(n)

    @staticmethod
    def normalise(x):
        return x.lower()

    class Inner:
        def deep(self):
            return "deep"

async def score(x):
    await asyncio_sleep0()
    return sum(x)

def rows(n):
    for i in range(n):
        yield i
    return "done"

async def arows(n):
    for i in range(n):
        yield i

async def asyncio_sleep0():
    import asyncio
    await asyncio.sleep(0)
'''

STAGES = ";".join([
    "preprocess=userapp.mod:clean",
    "feature_fetch=userapp.mod:FeatureClient.get",
    "feature_fetch=userapp.mod:FeatureClient.build",
    "preprocess=userapp.mod:FeatureClient.normalise",
    "custom_stage=userapp.mod:FeatureClient.Inner.deep",
    "inference=userapp.mod:score",
    "preprocess=userapp.mod:rows",
    "preprocess=userapp.mod:arows",
])


def test_every_callable_kind_is_wrapped_at_import_not_before(tel, modpath):
    write_module(modpath, "userapp.mod", TARGET_SOURCE)
    inst = instrument(tel, stages=STAGES)
    try:
        assert "userapp.mod" not in sys.modules  # instrumenting imports nothing
        from userapp import mod

        assert mod.clean([1, 2]) == [2, 4]
        client = mod.FeatureClient()
        assert client.get(7) == {"a": 1, "b": 2, "key": 7}
        assert mod.FeatureClient.build(3) == "FeatureClient3"
        assert client.build(4) == "FeatureClient4"
        assert mod.FeatureClient.normalise("X") == "x" and client.normalise("Y") == "y"
        assert mod.FeatureClient.Inner().deep() == "deep"
        assert asyncio.run(mod.score([1, 2, 3])) == 6
        gen = mod.rows(3)
        assert list(gen) == [0, 1, 2]

        async def consume():
            return [i async for i in mod.arows(2)]

        assert asyncio.run(consume()) == [0, 1]

        names = sorted(s.name for s in tel.stage_spans())
        assert names == sorted([
            "preprocess clean", "feature_fetch FeatureClient.get", "feature_fetch FeatureClient.build",
            "feature_fetch FeatureClient.build", "preprocess FeatureClient.normalise",
            "preprocess FeatureClient.normalise", "custom_stage FeatureClient.Inner.deep", "inference score",
            "preprocess rows", "preprocess arows",
        ])
        by_name = {s.name: s for s in tel.stage_spans()}
        assert by_name["preprocess clean"].attributes[semconv.ML_BATCH_SIZE] == 2
        assert by_name["custom_stage FeatureClient.Inner.deep"].attributes[semconv.ML_STAGE] == "custom_stage"
        import inspect

        assert inspect.iscoroutinefunction(mod.score)  # FastAPI must still see a coroutine function
        assert inspect.isgeneratorfunction(mod.rows) and inspect.isasyncgenfunction(mod.arows)
    finally:
        inst.uninstrument()
    from userapp import mod as again

    assert not hasattr(again.clean, "__stagetrace_spec__")  # uninstrument restored originals
    assert not hasattr(again.FeatureClient.__dict__["build"].__func__, "__stagetrace_spec__")


def test_generator_span_is_current_only_inside_the_body(tel, modpath):
    write_module(modpath, "genmod", '''
from opentelemetry import trace
def produce():
    for i in range(2):
        yield trace.get_current_span().get_span_context().span_id
''')
    inst = instrument(tel, stages="preprocess=genmod:produce")
    try:
        import genmod
        from opentelemetry import trace

        with tel.tracer.start_as_current_span("consumer") as consumer:
            ids_inside = []
            for value in genmod.produce():
                ids_inside.append(value)
                # between items the consumer's span is current, not the generator's
                assert trace.get_current_span() is consumer
        (gen_span,) = tel.spans("preprocess")
        assert set(ids_inside) == {gen_span.context.span_id}
        assert gen_span.parent.span_id == consumer.get_span_context().span_id
    finally:
        inst.uninstrument()


# --- exceptions pass through unchanged ------------------------------------------------
class ScoringError(Exception):
    pass


def test_exceptions_pass_through_unchanged_and_are_recorded(tel, modpath):
    write_module(modpath, "failing", '''
def boom(x):
    raise LookupError("missing key " + str(x))

async def aboom():
    raise ValueError("async failure")

def gboom():
    yield 1
    raise KeyError("gen failure")
''')
    inst = instrument(tel, stages="inference=failing:boom;inference=failing:aboom;preprocess=failing:gboom")
    try:
        import failing

        with pytest.raises(LookupError) as info:
            failing.boom(5)
        assert str(info.value) == "missing key 5"
        assert info.value.__cause__ is None and info.value.__context__ is None
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-1] == "boom"  # the original raise site is still the last frame
        with pytest.raises(ValueError, match="async failure"):
            asyncio.run(failing.aboom())
        g = failing.gboom()
        assert next(g) == 1
        with pytest.raises(KeyError):
            next(g)
        spans = {s.name: s for s in tel.stage_spans()}
        for name, etype in (("inference boom", "LookupError"), ("inference aboom", "ValueError"), ("preprocess gboom", "KeyError")):
            span = spans[name]
            assert span.status.status_code is StatusCode.ERROR
            assert span.attributes[semconv.ERROR_TYPE] == etype
            assert [e.name for e in span.events] == ["exception"]
            assert span.events[0].attributes["exception.type"] == etype
        outcomes = {(a[semconv.ML_STAGE], a[semconv.METRIC_OUTCOME]) for a, _ in tel.durations()}
        assert ("inference", "error") in outcomes
    finally:
        inst.uninstrument()


def test_our_internal_failure_never_breaks_the_call(tel):
    calls = []

    def describe_that_fails(instance, args, kwargs):
        raise RuntimeError("bug in stagetrace")

    class Owner:
        def work(self, x):
            calls.append(x)
            return x * 3

    inst = instrument(tel, stages="")
    try:
        wrapping.wrap(Owner, "work", wrapping.StageSpec("inference", "Owner.work", "custom", describe_that_fails))
        assert Owner().work(2) == 6
        assert calls == [2]  # called exactly once

        class BrokenProvider(TracerProvider):
            def get_tracer(self, *a, **k):
                raise RuntimeError("tracer unavailable")

        wrapping.settings.explicit_provider = BrokenProvider()
        wrapping._tracer_cache[0] = None
        with pytest.raises(RuntimeError):  # sanity: the provider really is broken
            wrapping.settings.explicit_provider.get_tracer("x")
        assert Owner().work(3) == 9
        assert calls == [2, 3]
    finally:
        inst.uninstrument()


def test_broken_tracer_does_not_break_the_call():
    class BrokenTracer:
        def start_span(self, *a, **k):
            raise RuntimeError("exporter exploded")

    spec = wrapping.StageSpec("inference", "f")
    assert wrapping._sync_call(spec, BrokenTracer(), lambda x: x + 1, None, (1,), (1,), {}) == 2
    with pytest.raises(ZeroDivisionError):
        wrapping._sync_call(spec, BrokenTracer(), lambda x: 1 / x, None, (0,), (0,), {})


def test_no_sdk_configured_means_no_spans_and_same_results(modpath):
    write_module(modpath, "nosdk_mod", "def f(x):\n    return x * 2\n")
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(modpath)!r})
        from opentelemetry import trace
        from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor
        StagetraceInstrumentor().instrument(stages="preprocess=nosdk_mod:f")
        import nosdk_mod
        assert getattr(nosdk_mod.f, "__stagetrace_spec__", None) is not None, "not wrapped"
        assert nosdk_mod.f(21) == 42
        assert trace._TRACER_PROVIDER is None
        print("ok")
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --- no duplicate spans ---------------------------------------------------------------
def test_user_stage_calling_a_hooked_model_is_one_span_with_model_attributes(tel, modpath):
    from sklearn.linear_model import LogisticRegression

    write_module(modpath, "scorer", '''
class Scorer:
    def __init__(self, model):
        self.model = model
    def score(self, X):
        return self.model.predict_proba(X)[:, 1]
''')
    inst = instrument(tel, stages="inference=scorer:Scorer.score")
    try:
        import scorer

        X = np.random.default_rng(0).random((30, 4))
        model = LogisticRegression().fit(X, X[:, 0] > 0.5)
        tel.exporter.clear()
        scorer.Scorer(model).score(X[:5])
        (span,) = tel.stage_spans()
        assert span.name == "inference Scorer.score"
        assert span.attributes[semconv.ML_MODEL_FRAMEWORK] == "sklearn"
        assert span.attributes[semconv.ML_MODEL_NAME] == "LogisticRegression"
        assert span.attributes[semconv.ML_BATCH_SIZE] == 5
    finally:
        inst.uninstrument()


# --- bad config entries ----------------------------------------------------------------
def test_bad_entries_warn_once_each_and_the_rest_still_works(tel, modpath, caplog):
    write_module(modpath, "goodmod", "def ok(x):\n    return x\n\nclass Klass:\n    pass\n\nLIMIT = 3\n")
    bad = ["nonsense", "preprocess=", "=goodmod:ok", "preprocess=goodmod", "inference=no_such_module_xyz:f",
           "inference=goodmod:missing_attr", "bad stage=goodmod:ok", "preprocess=goodmod:ok.__x__-",
           "inference=goodmod:Klass", "inference=goodmod:LIMIT", "inference=goodmod:Klass.nope"]
    caplog.set_level(logging.WARNING, logger="stagetrace.instrumentation")
    inst = instrument(tel, stages=";".join(bad + ["preprocess=goodmod:ok"]))
    try:
        import goodmod

        assert goodmod.ok(3) == 3
        assert isinstance(goodmod.Klass(), goodmod.Klass) and goodmod.LIMIT == 3  # left alone
        # warnings from the post-import hook are logged off the import path, right after it
        assert deferred.flush()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for entry in bad:
            matching = [w for w in warnings if repr(entry.strip()) in w]
            assert len(matching) == 1, (entry, warnings)
        assert len(warnings) == len(bad)
        assert [s.name for s in tel.stage_spans()] == ["preprocess ok"]
    finally:
        inst.uninstrument()


def test_config_from_pyproject_and_config_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.stagetrace.stages]
        feature_fetch = "app.features:FeatureClient.get"
        preprocess = ["app.prep:clean", "app.prep:scale"]
    '''))
    got = stages.load(environ={}, cwd=tmp_path)
    assert [(t.stage, t.module, t.qualname) for t in got] == [
        ("feature_fetch", "app.features", "FeatureClient.get"), ("preprocess", "app.prep", "clean"), ("preprocess", "app.prep", "scale")]
    cfg = tmp_path / "stagetrace.toml"
    cfg.write_text('[tool.stagetrace]\nstages = ["inference=app.model:Scorer.score", "preprocess=app.prep:clean"]\n')
    env = {"STAGETRACE_CONFIG": str(cfg), "STAGETRACE_STAGES": "preprocess=app.prep:clean;custom=app.x:y"}
    got = stages.load(environ=env, cwd=tmp_path)  # env first, then the config file; pyproject ignored
    assert [(t.stage, t.qualname) for t in got] == [("preprocess", "clean"), ("custom", "y"), ("inference", "Scorer.score")]
    (tmp_path / "top.toml").write_text('stages = "inference=m:f"\n')
    assert [t.module for t in stages.load(environ={"STAGETRACE_CONFIG": str(tmp_path / "top.toml")})] == ["m"]


def test_module_findable_does_not_import(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_module(tmp_path, "pkg_nf.sub", "raise SystemExit('imported!')\n")
    (tmp_path / "pkg_nf" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    assert stages.module_findable("pkg_nf.sub")  # found via the cwd, nothing executed
    assert not stages.module_findable("pkg_nf.nope")
    assert "pkg_nf" not in sys.modules
    # packages mapped by a custom finder (our own editable install maps stagetrace.demo to demo/)
    assert stages.module_findable("stagetrace.demo.model") and not stages.module_findable("stagetrace.nope_xyz")


# --- library hooks ------------------------------------------------------------------------
def _data(n=40, d=4):
    rng = np.random.default_rng(1)
    X = rng.random((n, d)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 1).astype(int)


def test_sklearn_pipeline_one_inference_span_with_nested_preprocess(instrumented):
    tel = instrumented
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _data()
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    assert tel.stage_spans() == []  # fit makes no stage spans (transform outside inference)
    pipe.predict_proba(X[:7])
    spans = tel.stage_spans()
    inference = [s for s in spans if s.attributes[semconv.ML_STAGE] == "inference"]
    pre = [s for s in spans if s.attributes[semconv.ML_STAGE] == "preprocess"]
    assert len(inference) == 1 and len(pre) == 1, [s.name for s in spans]
    assert inference[0].name == "inference Pipeline"
    assert pre[0].name == "preprocess StandardScaler"
    assert pre[0].parent.span_id == inference[0].context.span_id
    a = inference[0].attributes
    assert a[semconv.ML_MODEL_FRAMEWORK] == "sklearn" and a[semconv.ML_BATCH_SIZE] == 7
    assert a[semconv.ML_FEATURE_COUNT] == 4 and tuple(a[semconv.ML_INPUT_SHAPE]) == (7, 4)
    tel.exporter.clear()
    pipe.predict(X[:2])
    pipe.decision_function(X[:2])
    assert [s.name for s in tel.spans("inference")] == ["inference Pipeline", "inference Pipeline"]
    tel.exporter.clear()
    StandardScaler().fit(X).transform(X)  # a transform outside inference: no span
    assert tel.stage_spans() == []


def test_sklearn_estimator_alone(instrumented):
    tel = instrumented
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data()
    clf = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    tel.exporter.clear()
    clf.predict(X[:3])  # predict calls predict_proba internally: still one span
    (span,) = tel.stage_spans()
    assert span.name == "inference RandomForestClassifier"
    assert span.attributes[semconv.CODE_FUNCTION].endswith(".predict")
    points = tel.durations()
    assert any(a[semconv.ML_MODEL_NAME] == "RandomForestClassifier" and a[semconv.METRIC_OUTCOME] == "ok" for a, _ in points)


def test_predictions_inside_a_models_own_fit_are_not_inference(instrumented):
    tel = instrumented
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _data()
    # GradientBoostingClassifier.fit predicts with its init estimator (a DummyClassifier)
    clf = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, y)
    pipe = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=2)).fit(X, y)
    assert tel.stage_spans() == [], [s.name for s in tel.stage_spans()]
    proba = clf.predict_proba(X[:3])
    (span,) = tel.stage_spans()  # serving after the fit still makes its span
    assert span.name == "inference GradientBoostingClassifier"
    tel.exporter.clear()
    pipe.predict(X[:2])
    assert [s.name for s in tel.spans("inference")] == ["inference Pipeline"]
    # the quiet wrapper changes nothing the fit returns or raises
    assert isinstance(clf, GradientBoostingClassifier) and proba.shape == (3, 2)
    with pytest.raises(ValueError):
        GradientBoostingClassifier().fit(X, y[:-1])


def test_xgboost_hook(instrumented):
    tel = instrumented
    import xgboost as xgb

    X, y = _data()
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, y)
    tel.exporter.clear()
    clf.predict_proba(X[:5])
    (span,) = tel.stage_spans()  # XGBClassifier -> Booster.inplace_predict: one span
    assert span.name == "inference XGBClassifier" and span.attributes[semconv.ML_MODEL_FRAMEWORK] == "xgboost"
    assert span.attributes[semconv.ML_BATCH_SIZE] == 5
    tel.exporter.clear()
    clf.get_booster().predict(xgb.DMatrix(X[:6]))
    (span,) = tel.stage_spans()
    assert span.name == "inference Booster" and span.attributes[semconv.ML_BATCH_SIZE] == 6
    assert span.attributes[semconv.ML_FEATURE_COUNT] == 4


def test_lightgbm_hook(instrumented):
    tel = instrumented
    import lightgbm as lgb

    X, y = _data(80)
    clf = lgb.LGBMClassifier(n_estimators=3, min_child_samples=2, verbose=-1).fit(X, y)
    tel.exporter.clear()
    clf.predict(X[:4])
    (span,) = tel.stage_spans()
    assert span.name == "inference LGBMClassifier" and span.attributes[semconv.ML_MODEL_FRAMEWORK] == "lightgbm"
    tel.exporter.clear()
    clf.booster_.predict(X[:3])
    (span,) = tel.stage_spans()
    assert span.name == "inference Booster" and span.attributes[semconv.ML_BATCH_SIZE] == 3


def _one_output(tel):
    """The attributes and decoded output profile of the one stage span exported since the last call."""
    from stagetrace import mlprofile

    (span,) = tel.stage_spans()
    tel.exporter.clear()
    return span.attributes, mlprofile.decode_output(span.attributes[semconv.ML_OUTPUT_PROFILE])


def _check_booster_classes(tel, binary, multi, X, raw_kwargs) -> None:
    """A binary Booster's 1-D output is the positive class's probability (classes 0/1), its
    margins (``raw_kwargs``) name no classes, a 3-class one's columns are classes 0..2."""
    p = binary(X[:4])
    a, out = _one_output(tel)
    assert out.classes == ["0", "1"] and list(out.predicted) == [int(v > 0.5) for v in p]
    assert a[semconv.ML_PREDICTION_SCORE_MEAN] == pytest.approx(float(np.mean(p)), abs=1e-6)
    p1 = binary(X[:1])
    a, out = _one_output(tel)
    assert a[semconv.ML_PREDICTION_CLASS] == ("1" if p1[0] > 0.5 else "0")
    binary(X[:4], **raw_kwargs)  # margins, not probabilities: no classes claimed
    a, out = _one_output(tel)
    assert out.classes == [] and semconv.ML_PREDICTION_CLASS not in a
    pm = multi(X[:5])
    a, out = _one_output(tel)
    assert out.classes == ["0", "1", "2"] and list(out.predicted) == list(pm.argmax(axis=1))


def test_lightgbm_booster_classes_from_its_objective(instrumented):
    tel = instrumented
    import lightgbm as lgb

    X, y = _data(200)
    binary = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(X, y), 5)
    multi = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "min_data_in_leaf": 5},
                      lgb.Dataset(X, (X[:, 0] * 3).astype(int)), 5)
    tel.exporter.clear()
    _check_booster_classes(tel, binary.predict, multi.predict, X, {"raw_score": True})


def test_xgboost_booster_classes_from_its_objective(instrumented):
    """A Booster has no classes_: binary:logistic -> 0/1 (its 1-D output is the positive
    class's probability), multi:softprob -> 0..num_class-1, margins -> no classes."""
    tel = instrumented
    import xgboost as xgb

    X, y = _data(200)
    binary = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(X, label=y), 5)
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
                      xgb.DMatrix(X, label=(X[:, 0] * 3).astype(int)), 5)
    raw = xgb.train({"objective": "binary:logitraw", "max_depth": 2}, xgb.DMatrix(X, label=y), 5)
    tel.exporter.clear()
    _check_booster_classes(tel, binary.inplace_predict, multi.inplace_predict, X, {"predict_type": "margin"})
    raw.inplace_predict(X[:4])  # binary:logitraw: margins too
    a, out = _one_output(tel)
    assert out.classes == [] and semconv.ML_PREDICTION_CLASS not in a


@pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")
def test_predictions_inside_training_loops_are_not_inference(instrumented):
    """Eval sets scored by callbacks and custom metrics during xgb.train / lgb.train /
    fit, and forward passes of a torch training step, make no inference span; serving
    calls afterwards (and a torch model in eval mode or under no_grad) still do."""
    tel = instrumented
    import lightgbm as lgb
    import torch
    import xgboost as xgb

    X, y = _data(200)
    Xv, yv = X[150:], y[150:]
    seen = []

    class XgbScoreEval(xgb.callback.TrainingCallback):  # a user callback predicting on the eval set
        def after_iteration(self, model, epoch, evals_log):
            seen.append(model.inplace_predict(Xv))
            return False

    def xgb_metric(predt, dmat):  # a custom metric: xgboost itself predicts on each eval set for it
        return "err", float(np.mean((predt > 0.5) != dmat.get_label()))

    def xgb_objective(predt, dmat):  # a custom objective: Booster.update predicts with training=True
        p = 1.0 / (1.0 + np.exp(-predt))
        return p - dmat.get_label(), p * (1.0 - p)

    dv = xgb.DMatrix(Xv, label=yv)
    bst = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(X, label=y), 3, evals=[(dv, "v")],
                    custom_metric=xgb_metric, callbacks=[XgbScoreEval()], verbose_eval=False)
    xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=y), 2, obj=xgb_objective, verbose_eval=False)
    xclf = xgb.XGBClassifier(n_estimators=3, max_depth=2, callbacks=[XgbScoreEval()],
                             eval_metric=lambda yt_, yp_: float(np.mean((yp_ > 0.5) != yt_)))  # sklearn-style
    xclf.fit(X, y, eval_set=[(Xv, yv)], verbose=False)
    lbst = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(X, y), 3,
                     valid_sets=[lgb.Dataset(Xv, yv)], callbacks=[lambda env: seen.append(env.model.predict(Xv))])
    lclf = lgb.LGBMClassifier(n_estimators=3, min_child_samples=5, verbose=-1)
    lclf.fit(X, y, eval_set=[(Xv, yv)], callbacks=[lambda env: seen.append(env.model.predict(Xv))])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    xt, yt = torch.tensor(X), torch.tensor(y, dtype=torch.float32)[:, None]
    for _ in range(3):  # a training step: train mode, gradients on, no eval()
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt), yt)
        loss.backward()
        opt.step()
    assert len(seen) == 3 + 3 + 3 + 3
    assert tel.stage_spans() == [], [s.name for s in tel.stage_spans()]

    bst.inplace_predict(Xv)
    xclf.predict_proba(Xv)
    lbst.predict(Xv)
    lclf.predict_proba(Xv)
    with torch.no_grad():  # train mode, but no gradients: serving
        net(xt[:2])
    net.eval()
    net(xt[:2])  # eval mode with gradients on: serving
    names = [s.name for s in tel.stage_spans()]
    assert names == ["inference Booster", "inference XGBClassifier", "inference Booster", "inference LGBMClassifier",
                     "inference Sequential", "inference Sequential"], names
    # the quiet wrappers change nothing a training function returns or raises
    assert isinstance(bst, xgb.Booster) and isinstance(lbst, lgb.Booster) and float(loss.detach()) > 0
    with pytest.raises(xgb.core.XGBoostError):
        xgb.train({"objective": "no-such-objective"}, xgb.DMatrix(X, label=y), 1)


def test_torch_top_level_module_only(instrumented):
    tel = instrumented
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.lin(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(Block(), Block())
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.blocks(x))

    net = Net().eval()
    with torch.no_grad():
        out = net(torch.zeros(3, 4))
    assert out.shape == (3, 1)
    (span,) = tel.stage_spans()  # 7 module calls, one span
    assert span.name == "inference Net" and span.attributes[semconv.ML_MODEL_FRAMEWORK] == "pytorch"
    assert tuple(span.attributes[semconv.ML_INPUT_SHAPE]) == (3, 4)


def test_onnxruntime_hook(instrumented, tmp_path):
    tel = instrumented
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X, y = _data()
    onx = to_onnx(LogisticRegression().fit(X, y), X[:1])
    path = tmp_path / "fraud.onnx"
    path.write_bytes(onx.SerializeToString())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tel.exporter.clear()
    sess.run(None, {sess.get_inputs()[0].name: X[:6]})
    (span,) = tel.stage_spans()
    assert span.name == "inference fraud.onnx" and span.attributes[semconv.ML_MODEL_FRAMEWORK] == "onnxruntime"
    assert span.attributes[semconv.ML_BATCH_SIZE] == 6


@pytest.mark.parametrize("from_file", [True, False])
def test_onnxruntime_classifier_without_zipmap_names_the_models_classes(instrumented, tmp_path, from_file):
    tel = instrumented
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from stagetrace import mlprofile

    X, y = _data(80)
    cases = {"strings": np.where(y == 1, "legit", "fraud"), "ints": np.where(y == 1, 7, 3),
             "three": np.array(["a", "b", "c"])[(X[:, 0] * 3).astype(int)]}
    for name, labels in cases.items():
        clf = LogisticRegression().fit(X, labels)
        onx = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}})  # label + probability matrix outputs
        if from_file:
            path = tmp_path / f"{name}.onnx"
            path.write_bytes(onx.SerializeToString())
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        tel.exporter.clear()
        got_labels, _ = sess.run(None, {sess.get_inputs()[0].name: X[:5]})
        (span,) = tel.stage_spans()
        out = mlprofile.decode_output(span.attributes[semconv.ML_OUTPUT_PROFILE])
        assert out.classes == [str(c) for c in clf.classes_], name
        assert [out.classes[i] for i in out.predicted] == [str(v) for v in got_labels], name
        tel.exporter.clear()
        one, _ = sess.run(None, {sess.get_inputs()[0].name: X[:1]})
        (span,) = tel.stage_spans()
        assert span.attributes[semconv.ML_PREDICTION_CLASS] == str(one[0]), name


def _tiny_text_pipeline():
    """A randomly initialised BERT and a WordLevel tokenizer built locally: no hub access."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, pipeline

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "card", "fraud"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.name_or_path = "tiny-tokenizer"
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=32, num_labels=2)
    cfg._name_or_path = "tiny-bert"
    model = BertForSequenceClassification(cfg).eval()
    return fast, pipeline("text-classification", model=model, tokenizer=fast, device=-1)


def test_transformers_pipeline_and_tokenizer(instrumented):
    tel = instrumented
    tok, clf = _tiny_text_pipeline()
    tel.exporter.clear()
    out = clf(["good card", "bad fraud"])
    assert len(out) == 2
    spans = tel.stage_spans()
    inference = [s for s in spans if s.attributes[semconv.ML_STAGE] == "inference"]
    pre = [s for s in spans if s.attributes[semconv.ML_STAGE] == "preprocess"]
    assert len(inference) == 1, [s.name for s in spans]  # the BERT forward (torch) adds no span
    assert inference[0].name == "inference tiny-bert" and inference[0].attributes[semconv.ML_BATCH_SIZE] == 2
    assert pre and all(p.parent.span_id == inference[0].context.span_id for p in pre)
    assert all(p.attributes[semconv.ML_MODEL_FRAMEWORK] == "transformers" for p in pre)
    tel.exporter.clear()
    tok(["good", "bad card"])
    (span,) = tel.stage_spans()
    assert span.name == "preprocess tiny-tokenizer" and span.attributes[semconv.ML_BATCH_SIZE] == 2


def test_transformers_pipeline_profiles_every_output_shape(instrumented):
    """One text (a one-item list), a batch, and top_k=None (all labels per text, sorted):
    each call's output profile has the model's id2label classes and, per text, the top
    label and its score; the pipeline's return value is the one it returned."""
    from stagetrace import mlprofile

    tel = instrumented
    _, clf = _tiny_text_pipeline()
    for texts, kw in ((["good card", "bad fraud card"], {}), ("fraud", {}), (["good", "bad card"], {"top_k": None})):
        tel.exporter.clear()
        out = clf(texts, **kw)
        (span,) = [s for s in tel.stage_spans() if s.attributes[semconv.ML_STAGE] == "inference"]
        items = out if isinstance(texts, list) else out[:1]
        top = [x[0] if isinstance(x, list) else x for x in items]
        assert all(isinstance(x, dict) and {"label", "score"} <= set(x) for x in top), out  # unchanged shape
        prof = mlprofile.decode_output(span.attributes[semconv.ML_OUTPUT_PROFILE])
        assert prof.classes == ["LABEL_0", "LABEL_1"] and prof.rows == len(top), (kw, prof)
        assert [prof.classes[k] for k in prof.predicted.tolist()] == [x["label"] for x in top]
        np.testing.assert_allclose(prof.confidence, [x["score"] for x in top], rtol=1e-5)
        np.testing.assert_allclose(prof.scores, [x["score"] if x["label"] == "LABEL_1" else 1 - x["score"] for x in top],
                                   rtol=1e-5)
        inp = mlprofile.decode_input(span.attributes[semconv.ML_INPUT_PROFILE])
        words = [texts] if isinstance(texts, str) else texts
        assert mlprofile.parse_feature_list(span.attributes[semconv.ML_INPUT_FEATURES]) == ["text.length", "text.words"]
        for i, t in enumerate(words):
            for j, v in enumerate((len(t), len(t.split()))):
                lo, hi = mlprofile.bin_edges(int(inp.codes[i, j]))
                assert lo <= v <= hi


def test_feast_hook(tel, tmp_path, monkeypatch):
    """The real Feast: a local repo (sqlite online store, file registry), no network."""
    monkeypatch.setenv("FEAST_USAGE", "False")
    from datetime import datetime, timedelta, timezone

    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32

    (tmp_path / "feature_store.yaml").write_text(
        f"project: fraud\nregistry: {tmp_path}/registry.db\nprovider: local\n"
        f"online_store:\n  type: sqlite\n  path: {tmp_path}/online.db\nentity_key_serialization_version: 3\n")
    rows = pd.DataFrame({"card_id": [1, 2, 3], "amount_7d": [10.0, 20.0, 30.0], "country_risk": [0.1, 0.2, 0.3],
                         "event_timestamp": [datetime.now(timezone.utc)] * 3})
    rows.to_parquet(tmp_path / "cards.parquet")
    store = FeatureStore(repo_path=str(tmp_path))
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
    view = FeatureView(name="card_stats", entities=[card], ttl=timedelta(days=1), online=True,
                       schema=[Field(name="amount_7d", dtype=Float32), Field(name="country_risk", dtype=Float32)],
                       source=FileSource(path=str(tmp_path / "cards.parquet"), timestamp_field="event_timestamp"))
    store.apply([card, view])
    store.write_to_online_store("card_stats", rows)
    inst = instrument(tel, stages="")
    try:
        out = store.get_online_features(features=["card_stats:amount_7d", "card_stats:country_risk"],
                                        entity_rows=[{"card_id": 1}, {"card_id": 2}]).to_dict()
        assert out["amount_7d"] == [10.0, 20.0]
        (span,) = tel.stage_spans()
        assert span.name == "feature_fetch FeatureStore.get_online_features"
        assert span.attributes[semconv.ML_MODEL_FRAMEWORK] == "feast"
        assert span.attributes[semconv.ML_FEATURE_COUNT] == 2 and span.attributes[semconv.ML_BATCH_SIZE] == 2
        assert "amount_7d" not in str(dict(span.attributes))  # feature names/values are not recorded
    finally:
        inst.uninstrument()


def test_uninstrument_removes_every_library_wrapper(tel, caplog):
    import feast.feature_store  # noqa: F401 - every hooked library loaded, so every hook runs
    import lightgbm  # noqa: F401
    import onnxruntime  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.tree  # noqa: F401 - has a Cython Tree.predict that cannot be patched
    import torch
    import transformers.pipelines  # noqa: F401
    import xgboost  # noqa: F401
    from sklearn.linear_model import _base

    caplog.set_level(logging.DEBUG, logger="stagetrace")
    inst = instrument(tel, stages="")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # every hook ran cleanly
    assert hasattr(_base.LinearClassifierMixin.__dict__["predict"], "__stagetrace_spec__")
    assert hasattr(torch.nn.Module.__dict__["__call__"], "__stagetrace_spec__")
    inst.uninstrument()
    assert not hasattr(_base.LinearClassifierMixin.__dict__["predict"], "__stagetrace_spec__")
    assert not hasattr(torch.nn.Module.__dict__["__call__"], "__stagetrace_spec__")
    assert not wrapping._wrapped


# --- payloads ------------------------------------------------------------------------------
def test_payloads_not_recorded_by_default_and_opt_in_hook(tel, modpath):
    write_module(modpath, "paymod", "def score(x):\n    return {'p': 0.9}\n")
    inst = instrument(tel, stages="inference=paymod:score")
    try:
        import paymod

        paymod.score({"card_number": "4111-secret"})
        (span,) = tel.stage_spans()
        assert "4111-secret" not in json.dumps({k: str(v) for k, v in span.attributes.items()})
    finally:
        inst.uninstrument()
    sys.modules.pop("paymod")
    tel.exporter.clear()
    seen = []
    inst = instrument(tel, stages="inference=paymod:score",
                      payload_hook=lambda span, stage, args, kwargs, result: seen.append((stage, args, result)))
    try:
        import paymod

        paymod.score({"amount": 3})
        assert seen == [("inference", ({"amount": 3},), {"p": 0.9})]
    finally:
        inst.uninstrument()


# --- log correlation ----------------------------------------------------------------------
def test_logging_configured_before_instrumentation_gets_ids(tel, modpath):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s trace=%(otelTraceID)s span=%(otelSpanID)s stage=%(ml_stage)s svc=%(otelServiceName)s"))
    log = logging.getLogger("userapp")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    write_module(modpath, "userapp.mod", TARGET_SOURCE)
    inst = instrument(tel, stages="preprocess=userapp.mod:clean")
    try:
        from userapp import mod

        mod.clean([1])
        log.info("outside")
        (span,) = tel.spans("preprocess")
        lines = stream.getvalue().splitlines()
        ctx = span.get_span_context()
        assert lines[0] == f"cleaning trace={ctx.trace_id:032x} span={ctx.span_id:016x} stage=preprocess svc={logs.service_name()}"
        assert lines[1].startswith("outside trace= span= stage= svc=")  # no fake ids outside spans
    finally:
        inst.uninstrument()
        log.removeHandler(handler)


def test_json_formatter_fields_and_dictconfig(tel):
    stream = io.StringIO()
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "stagetrace.instrumentation.logs.JsonFormatter"}},
        "handlers": {"s": {"class": "logging.StreamHandler", "stream": stream, "formatter": "json"}},
        "loggers": {"jsonapp": {"handlers": ["s"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("jsonapp")
    logs.install_record_factory()
    try:
        with tel.tracer.start_as_current_span("req") as span:
            try:
                raise ValueError("bad input")
            except ValueError:
                log.exception("scoring failed")
        log.warning("no span here")
        first, second = [json.loads(x) for x in stream.getvalue().splitlines()]
        ctx = span.get_span_context()
        assert first["trace_id"] == f"{ctx.trace_id:032x}" and first["span_id"] == f"{ctx.span_id:016x}"
        assert first["level"] == "ERROR" and first["logger"] == "jsonapp" and first["message"] == "scoring failed"
        assert "ValueError: bad input" in first["exception"] and first["timestamp"].endswith("Z")
        assert "trace_id" not in second and "span_id" not in second
    finally:
        logs.uninstall_record_factory()
        logging.getLogger("jsonapp").handlers.clear()


def test_json_mode_reformats_uvicorn_loggers_after_dictconfig(tel):
    import uvicorn.config

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.install(otlp=False, log_format="json")
        logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what uvicorn does at start-up
        for name in ("uvicorn.error", "uvicorn.access"):
            handlers = logging.getLogger(name).handlers or logging.getLogger("uvicorn").handlers
            assert handlers and all(isinstance(h.formatter, logs.JsonFormatter) for h in handlers)
        assert any(isinstance(h.formatter, logs.JsonFormatter) for h in root.handlers)
    finally:
        logs.uninstall()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()


def test_docs_list_every_ml_name_and_every_default():
    doc = (ROOT / "docs" / "semantic-conventions.md").read_text()
    names = [v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str) and v.startswith("ml.")]
    assert names and [n for n in names if f"`{n}`" not in doc] == []
    from stagetrace.instrumentation.distro import DEFAULTS

    guide = (ROOT / "docs" / "instrumentation.md").read_text()
    assert [k for k, v in DEFAULTS.items() if f"`{k}`" not in guide or f"`{v}`" not in guide] == []


def test_dictconfig_never_blocks_on_otlp_flush(monkeypatch):
    """uvicorn's dictConfig flushes every handler ever created; with the collector down a
    blocking OTLP force-flush there used to stall start-up for the exporter's retry budget."""

    class Provider:
        def get_logger(self, *a, **k):
            raise AssertionError("not used")

        def force_flush(self, *a, **k):
            raise AssertionError("flush must not reach the provider")

    monkeypatch.setattr(logs, "get_logger_provider", lambda: Provider())
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        logs.install(otlp=True, log_format="text")
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        assert logs._inst.otlp_handler in root.handlers  # kept across dictConfig
    finally:
        logs.uninstall()
        root.handlers[:] = saved


PROBE = """
import json, logging, os, signal, sys
from opentelemetry import trace
from stagetrace.instrumentation import importhook, logs, shutdown
print(json.dumps({
    "env": {k: os.environ.get(k) for k in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER",
                                            "OTEL_EXPORTER_OTLP_PROTOCOL", "STAGETRACE_LOG_CORRELATION")},
    "hooks_active": importhook._finder in sys.meta_path,
    "factory": logs._factory.installed is not None and logging.getLogRecordFactory() is not logging.LogRecord,
    "otlp_handler": logs._inst.otlp_handler in logging.getLogger().handlers,
    "instance_id": trace.get_tracer_provider().resource.attributes.get("service.instance.id"),
    "ml_imported": [m for m in ("sklearn", "torch", "xgboost", "lightgbm", "onnxruntime", "transformers", "feast",
                                "numpy") if m in sys.modules],
    "prewarmed": all(m in sys.modules for m in ("netrc", "shlex")),
    "sigterm_flush": shutdown.installed(signal.SIGTERM),
}))
"""


def _probe(**env_extra):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    # other instrumentors off: they only add start-up time here
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "probe",
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi,requests,logging", **env_extra})
    exe = Path(sys.executable).parent / "opentelemetry-instrument"
    out = subprocess.run([str(exe), sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_distro_defaults_user_overrides_and_disable_switch():
    got = _probe(OTEL_LOGS_EXPORTER="none", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert got["env"] == {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "STAGETRACE_LOG_CORRELATION": "true"}
    assert got["hooks_active"] and got["factory"] and got["instance_id"]
    assert got["ml_imported"] == []  # hooks wait for the app's own imports
    assert got["prewarmed"]  # no lazy import left for an export thread to be in when gunicorn forks
    assert not got["otlp_handler"]  # the user turned log export off (on by default: see the e2e test)
    assert got["sigterm_flush"]  # SIGTERM was SIG_DFL: our flushing handler is on it (test_instrumentation_shutdown.py)
    off = _probe(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="stagetrace,fastapi,requests,logging")
    assert not off["hooks_active"]


def test_stage_duration_exemplar_points_at_the_stage_span(tel, modpath):
    write_module(modpath, "exmod", "def fetch(key):\n    return {'k': key}\n")
    inst = instrument(tel, stages="feature_fetch=exmod:fetch")
    try:
        import exmod

        exmod.fetch("c1")
        (span,) = tel.spans("feature_fetch")
        data = tel.reader.get_metrics_data()
        points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                  if m.name == semconv.METRIC_STAGE_DURATION for p in m.data.data_points]
        (point,) = points
        assert point.attributes[semconv.ML_STAGE] == "feature_fetch" and point.attributes["outcome"] == "ok"
        assert any(e.span_id == span.context.span_id and e.trace_id == span.context.trace_id for e in point.exemplars)
    finally:
        inst.uninstrument()


def test_generator_closed_early_and_thrown_into(tel, modpath):
    write_module(modpath, "genmod2", '''
def stream(n):
    try:
        for i in range(n):
            try:
                yield i
            except ValueError:
                yield -1
    finally:
        pass
''')
    inst = instrument(tel, stages="preprocess=genmod2:stream")
    try:
        import genmod2

        g = genmod2.stream(10)
        assert next(g) == 0
        assert g.throw(ValueError("skip")) == -1  # throw() reaches the wrapped generator
        assert next(g) == 1
        g.close()  # consumer stops early: span ends, no error
        (span,) = tel.spans("preprocess")
        assert span.end_time is not None and span.status.status_code is not StatusCode.ERROR
    finally:
        inst.uninstrument()


def test_payload_capture_env_opt_in_and_model_version_default(tel, modpath, monkeypatch):
    write_module(modpath, "envmod", "def score(x):\n    return {'p': 0.25}\n\ndef hook(span, stage, args, kwargs, result):\n    span.set_attribute('custom.seen', stage)\n")
    monkeypatch.setenv("STAGETRACE_CAPTURE_PAYLOADS", "true")
    monkeypatch.setenv("STAGETRACE_MODEL_VERSION", "2026-11-01")
    inst = instrument(tel, stages="inference=envmod:score")
    try:
        import envmod

        envmod.score(["x" * 5000])
        (span,) = tel.stage_spans()
        assert span.attributes[semconv.ML_OUTPUT_VALUE] == "{'p': 0.25}"
        assert 0 < len(span.attributes[semconv.ML_INPUT_VALUE]) <= 1024  # bounded
        assert span.attributes[semconv.ML_MODEL_VERSION] == "2026-11-01"
        assert any(a.get(semconv.ML_MODEL_VERSION) == "2026-11-01" for a, _ in tel.durations())
    finally:
        inst.uninstrument()
    tel.exporter.clear()
    monkeypatch.delenv("STAGETRACE_CAPTURE_PAYLOADS")
    monkeypatch.setenv("STAGETRACE_PAYLOAD_HOOK", "envmod:hook")
    inst = instrument(tel, stages="inference=envmod:score")
    try:
        import envmod

        envmod.score([1])
        (span,) = tel.stage_spans()
        assert span.attributes["custom.seen"] == "inference" and semconv.ML_INPUT_VALUE not in span.attributes
    finally:
        inst.uninstrument()


def test_reloaded_module_is_wrapped_again(tel, modpath):
    import importlib

    write_module(modpath, "reloadmod", "def f(x):\n    return x + 1\n")
    inst = instrument(tel, stages="preprocess=reloadmod:f")
    try:
        import reloadmod

        assert reloadmod.__spec__.loader.__class__.__name__ != "_HookLoader"  # the real loader is put back
        importlib.reload(reloadmod)
        assert reloadmod.f(1) == 2
        assert [s.name for s in tel.stage_spans()] == ["preprocess f"]
    finally:
        inst.uninstrument()
    assert not hasattr(reloadmod.f, "__stagetrace_spec__")
