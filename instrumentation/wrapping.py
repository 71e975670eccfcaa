"""The one stage-span wrapper every hook and every configured target goes through.

Design points, each one a promise in the issue:

* **One logical call, one span.** A contextvar holds the innermost active stage.
  A call whose stage equals it (Pipeline.predict -> estimator.predict, a Module
  calling sub-modules, a user ``inference`` function calling ``model.predict``)
  gets no span of its own; it only fills model attributes the outer span lacks.
* **Never hurts the app.** Our own failures are caught and logged once; the
  wrapped callable is called exactly once and its result or exception is passed
  through untouched (``raise`` re-raises the very same object and traceback).
* **Near-zero cost without an SDK.** Before anything else the wrapper reads the
  global tracer-provider slot; while it is unset (or a no-op provider) the call
  goes straight through.
* **Every callable kind.** Functions, methods, class/static methods, coroutines,
  generators and async generators; generator spans cover the whole iteration and
  the span is made current only while the generator body runs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
import types
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode

from stagetrace import semconv

from . import deferred, metrics

_logger = logging.getLogger("stagetrace.instrumentation")

Describe = Callable[[Any, tuple, dict], Mapping[str, Any]]
PayloadHook = Callable[..., None]


@dataclass(frozen=True)
class StageSpec:
    """What a wrapped callable means: its stage, and how to describe a call."""

    stage: str
    qualname: str
    framework: str | None = None
    # Returns ml.* attributes for a call (model name, shapes). Never values.
    describe: Describe | None = None
    # Only create a span when the innermost active stage is this one
    # (sklearn ``transform`` is preprocess only inside a Pipeline's inference).
    only_inside: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The model input among the call's arguments (self excluded), for the input
    # profile; default: the first positional argument.
    model_input: Callable[[tuple, dict], Any] | None = None
    # True when a call's output is not what the model's classes describe (LightGBM
    # ``raw_score=True``): its output profile then names no classes.
    raw_output: Callable[[tuple, dict], bool] | None = None
    # A model's own training (``fit``): no span, and no stage span for any call inside it
    # (GradientBoostingClassifier.fit predicts with its init estimator; that is not serving).
    quiet: bool = False
    # True when this call is part of training, decided per call (a torch Module in train mode
    # with gradients on, XGBoost's ``predict(training=True)``): run quietly, as ``quiet``.
    # Synchronous callables only.
    training: Callable[[Any, tuple, dict], bool] | None = None

    @functools.cached_property
    def base_attributes(self) -> dict[str, Any]:
        """Attributes every span of this target carries (built once)."""
        attrs: dict[str, Any] = {semconv.ML_STAGE: self.stage}
        if self.framework:
            # Library hooks: the span is named for the model, so say which method ran.
            attrs[semconv.CODE_FUNCTION] = self.qualname
            attrs[semconv.ML_MODEL_FRAMEWORK] = self.framework
        attrs.update(self.extra)
        return attrs

    @functools.cached_property
    def default_name(self) -> str:
        return f"{self.stage} {self.qualname}"


class _Frame:
    """The innermost active stage in this context, or (``stage`` None) the last one that made a
    prediction: what :func:`last_prediction_span` reads.

    Why the last prediction lives here and not in a context variable of its own: setting one
    more context variable per call cost about a quarter of a one-row profile (its own write,
    and every later context-variable read missing its cache; docs/benchmarks.md). A frame
    is set in the context variable anyway; a call that made a prediction at the top of its
    context just stays there, done, instead of restoring the empty slot: no context-variable
    write on the way out at all.
    """

    __slots__ = ("stage", "span", "has_model", "profiled", "up", "last", "inherited")

    def __init__(self, stage: str | None, span, has_model: bool, profiled: Any = False, up: _Frame | None = None,
                 last=None) -> None:
        self.stage = stage
        self.span = span
        self.has_model = has_model
        self.profiled = profiled  # ml.input.profile is on the span (True) or pending on it (_begin's snapshot list)
        self.up = up  # the frame this one runs in (a running stage, a done frame, or None)
        # the span of the last profiled call that returned in this context, and its value when
        # this frame began (a nested call's prediction changes ``last``: see _Active.exit)
        self.last = self.inherited = up.last if up is not None else last


_current: ContextVar[_Frame | None] = ContextVar("stagetrace_stage", default=None)
# The frame of a quiet call (a model's fit): no stage of its own, and no span under it.
_QUIET = _Frame(None, None, True, True)  # type: ignore[arg-type]


def current_stage() -> str | None:
    """The innermost active ML stage, for log correlation."""
    frame = _current.get()
    return frame.stage if frame is not None else None


def last_prediction_span():
    """The span of the last profiled call that returned in this context (thread or task),
    or None (see :func:`.profiling.last_prediction_id`)."""
    frame = _current.get()
    return frame.last if frame is not None else None


def current_model_name() -> str | None:
    frame = _current.get()
    if frame is None or frame.stage is None:
        return None
    try:
        return frame.span.attributes.get(semconv.ML_MODEL_NAME)  # SDK span
    except Exception:
        return None


# --- configuration set by the instrumentor ------------------------------------
class _Settings:
    explicit_provider = None  # tracer_provider kwarg of instrument(); None = global
    payload_hook: PayloadHook | None = None
    naming = None  # modelnames.ModelNaming: the user's model names and versions, or None
    profile = None  # profiling.ProfileSettings, or None when input/output profiles are off


settings = _Settings()

_tracer_cache: list = [None, None]  # [provider, tracer]


def _tracer_or_none():
    """The tracer to use, or None when tracing is not configured (the fast path)."""
    provider = settings.explicit_provider or trace_api._TRACER_PROVIDER  # noqa: SLF001 - cheapest check there is
    if provider is None or provider.__class__ is NoOpTracerProvider:
        return None
    if _tracer_cache[0] is provider:
        return _tracer_cache[1]
    try:
        tracer = provider.get_tracer(semconv.INSTRUMENTATION_SCOPE, _version())
    except Exception:
        _internal_error("get_tracer", StageSpec("-", "tracer provider"))
        return None
    _tracer_cache[0] = provider
    _tracer_cache[1] = tracer
    return tracer


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("stagetrace")
    except Exception:
        return "0"


_reported: set[str] = set()


def _internal_error(where: str, spec: StageSpec) -> None:
    """Log our own failure once per target, never raise."""
    key = f"{where}:{spec.qualname}"
    if key in _reported:
        return
    _reported.add(key)
    # deferred: a wrapped call may run inside an import (a model warmed up at module level)
    deferred.warning(_logger, "stagetrace: internal error in %s for %s; the call itself is unaffected", where,
                     spec.qualname, exc_info=True)


# --- input description (shapes and counts, never values) ----------------------
def describe_input(x: Any) -> dict[str, Any]:
    """``ml.batch.size``, ``ml.input.shape``, ``ml.feature.count`` for a model input."""
    attrs: dict[str, Any] = {}
    if x is None:
        return attrs
    shape = getattr(x, "shape", None)
    if shape is not None and not callable(shape):
        try:
            dims = [int(d) if d is not None else -1 for d in tuple(shape)]
        except Exception:
            dims = None
        if dims:
            attrs[semconv.ML_INPUT_SHAPE] = dims
            attrs[semconv.ML_BATCH_SIZE] = dims[0]
            if len(dims) == 2:
                attrs[semconv.ML_FEATURE_COUNT] = dims[1]
        return attrs
    if isinstance(x, (str, bytes)):
        attrs[semconv.ML_BATCH_SIZE] = 1
    elif isinstance(x, Mapping):
        attrs[semconv.ML_BATCH_SIZE] = 1
        attrs[semconv.ML_FEATURE_COUNT] = len(x)
    elif isinstance(x, (list, tuple)):
        attrs[semconv.ML_BATCH_SIZE] = len(x)
        first = x[0] if x else None
        if isinstance(first, Mapping) or (isinstance(first, (list, tuple)) and not isinstance(first, str)):
            attrs[semconv.ML_FEATURE_COUNT] = len(first)
    return attrs


def first_arg(args: tuple, kwargs: dict, *names: str) -> Any:
    if args:
        return args[0]
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return None


# --- span lifecycle ------------------------------------------------------------
class _Active:
    """One open stage span."""

    __slots__ = ("span", "ctx", "frame", "t0", "metric_attrs", "tokens", "instance")

    def __init__(self, span, frame: _Frame, metric_attrs: dict, instance=None) -> None:
        self.span = span
        self.instance = instance
        self.ctx = trace_api.set_span_in_context(span)
        self.frame = frame
        self.metric_attrs = metric_attrs
        self.t0 = time.perf_counter()
        self.tokens = None

    def enter(self) -> None:
        self.tokens = (context_api.attach(self.ctx), _current.set(self.frame))

    def exit(self, returned: bool = False, final: bool = True) -> None:
        """Leave the call's context. ``returned``: the call returned (a profiled call is then
        the context's last prediction); ``final``: it will not be entered again (a generator
        is entered at every item)."""
        tokens, self.tokens = self.tokens, None
        if tokens is None:
            return
        frame = self.frame
        if returned and frame.profiled:
            frame.last = self.span
        if frame.last is frame.inherited:
            _current.reset(tokens[1])
        else:  # a prediction was made in this call: the context remembers it
            up = frame.up
            if up is not None and up.stage is not None:
                up.last = frame.last  # inside a running stage: it hands it on when it ends
                _current.reset(tokens[1])
            elif final and _current.get() is frame:
                frame.stage = None  # at the top: this frame stays, done, as the context's value
                frame.up = None  # (no chain of done frames)
            else:  # a generator between items: the consumer sees no stage, only the prediction
                _current.set(_Frame(None, None, True, False, None, frame.last))
        context_api.detach(tokens[0])


def _model_input(spec: StageSpec, args: tuple, kwargs: dict) -> Any:
    if spec.model_input is not None:
        return spec.model_input(args, kwargs)
    if args:
        return args[0]
    return first_arg(args, kwargs, "X", "data", "x", "input", "inputs")


_capture: list = []  # [profile_capture module], imported at the first profiled call (it imports numpy)


def _capture_module():
    if not _capture:
        from . import profile_capture
        _capture.append(profile_capture)
    return _capture[0]


def _profile_input(spec: StageSpec, instance, args, kwargs, model: str | None) -> dict[str, Any]:
    try:
        return _capture_module().input_attributes(settings.profile, _model_input(spec, args, kwargs), instance,
                                          spec.qualname, model)
    except Exception:
        _internal_error("input profile", spec)
        return {}


# Deferred profiles (profile_export.py, which imports the SDK: loaded on first use): the
# snapshots ride on the span's attribute mapping under _MARK; arrays up to _DEFER_MAX_BYTES
# (256 rows x 16 float64 features) are deferred, larger ones captured inline.
_MARK = "_stagetrace_profile"
_DEFER_MAX_BYTES = 32768
_defer_state: list = [None, False]  # [the tracer's span-processor tuple, whether profiles may be deferred]


def _nothing_deferred(pending: Any, result: Any, max_bytes: int) -> bool:
    return False  # before the first deferred call no input was deferred (profiles inline)


# snapshot.pending_input / pending_output (the C accelerator or the Python functions),
# bound at the first deferred call, once numpy is loaded
_pending_input: Callable | None = None
_pending_output: Callable = _nothing_deferred
_UNSAMPLED = "unsampled"  # _Frame.profiled of a deferrable call whose span records nothing


def _defer_recheck(procs) -> None:
    """Whether every span processor in ``procs`` exports through our resolving exporter
    (asked again whenever the provider's processor tuple changes)."""
    global _pending_input, _pending_output
    try:
        from . import profile_export
        ok = profile_export.wrap_processors(procs)
        if _pending_input is None:
            from . import snapshot
            snapshot.configure(_capture_module().np)
            _pending_input, _pending_output = snapshot.pending_input, snapshot.pending_output
    except Exception:
        ok = False
    _defer_state[0], _defer_state[1] = procs, ok


def _begin(tracer, spec: StageSpec, instance, args, kwargs) -> _Active | None:
    """Open a span for this call, or return None if the call is nested/not applicable."""
    parent = _current.get()
    if parent is not None and (parent.stage == spec.stage or parent is _QUIET):
        if parent is _QUIET:  # inside a model's own fit
            return None
        if not parent.has_model and spec.describe is not None:
            _enrich(parent, spec, instance, args, kwargs)
        if not parent.profiled and spec.framework and settings.profile is not None \
                and spec.stage in settings.profile.stages:
            # the outer (user) stage's own argument was not a model input: the model's is
            pattrs = _profile_input(spec, instance, args, kwargs, None)
            if pattrs:
                parent.profiled = True
                try:
                    parent.span.set_attributes(pattrs)
                except Exception:
                    _internal_error("input profile", spec)
        return None
    if spec.only_inside is not None and (parent is None or parent.stage != spec.only_inside):
        return None
    attrs = dict(spec.base_attributes)
    if spec.describe is not None:
        try:
            attrs.update(spec.describe(instance, args, kwargs))
        except Exception:
            _internal_error("describe", spec)
    elif args:
        first = args[0]
        if first is not None and not isinstance(first, (int, float, bool)):
            try:
                attrs.update(describe_input(first))
            except Exception:
                _internal_error("describe", spec)
    model = attrs.get(semconv.ML_MODEL_NAME)
    has_model = model is not None  # what the library said (a nested hook fills in the rest)
    version = attrs.get(semconv.ML_MODEL_VERSION)
    if settings.naming is not None:
        model, version = _named(spec.stage, spec.qualname, model, version, attrs)
    profiled: Any = False
    pending = None
    prof = settings.profile
    out_owner = instance  # whose classes describe the output
    if prof is not None and spec.stage in prof.stages:
        if spec.raw_output is not None and spec.raw_output(args, kwargs):
            out_owner = None  # (captured inline: rare, and the deferred output takes the input's owner)
        elif prof.defer:
            # the snapshot of a small numeric input, deferred to the export thread; written out
            # here, not in a function: right after the model ran, every extra frame and code
            # object the call touches costs (docs/benchmarks.md)
            try:
                procs = tracer.span_processor._span_processors  # SDK tracer; the tuple is replaced on add
                if procs is not _defer_state[0]:
                    _defer_recheck(procs)
                if _defer_state[1]:
                    x = args[0] if args and spec.model_input is None else _model_input(spec, args, kwargs)
                    # a copy (the app may reuse its buffer once the call returns) of a small numeric
                    # array, in one flat list: slots 0-6 the input (resolve_input's arguments), 7-9 the output
                    pending = _pending_input(x, _DEFER_MAX_BYTES, prof, instance, spec.qualname, model)
            except AttributeError:
                pass  # not the SDK's tracer: inline
            except Exception:
                _internal_error("input profile", spec)
        if pending is None:
            pattrs = _profile_input(spec, instance, args, kwargs, model)
            if pattrs:
                attrs.update(pattrs)  # set with the others: one attribute-cleaning pass
                profiled = True
    span = tracer.start_span(f"{spec.stage} {model}" if model else spec.default_name, kind=SpanKind.INTERNAL, attributes=attrs)
    if pending is not None:
        # encoded by the exporter (profile_export.py); an unsampled span records nothing, and
        # last_prediction_id() still names this call
        target = getattr(span, "_attributes", None)
        if target is not None:
            profiled = pending
            # a plain attribute (the name is a constant): cheaper than materialising __dict__
            target._stagetrace_profile = profiled
        else:
            profiled = _UNSAMPLED
    metric_attrs = metrics.attributes_for(spec.stage, model, version)
    return _Active(span, _Frame(spec.stage, span, has_model, profiled, parent), metric_attrs, out_owner)


def _named(stage: str, qualname: str, model: str | None, version: str | None, attrs: dict) -> tuple:
    """The user's model name and version (modelnames.py) written into ``attrs``."""
    model, version = settings.naming.resolve(stage, qualname, model, version)
    if model is not None:
        attrs[semconv.ML_MODEL_NAME] = model
    if version is not None:
        attrs[semconv.ML_MODEL_VERSION] = version
    return model, version


def _enrich(parent: _Frame, spec: StageSpec, instance, args, kwargs) -> None:
    """A nested same-stage call (e.g. sklearn under a user ``inference`` stage):
    give the one outer span the model attributes it lacks instead of a new span."""
    parent.has_model = True
    try:
        span = parent.span
        existing = getattr(span, "attributes", None) or {}
        attrs = dict(spec.describe(instance, args, kwargs)) if spec.describe else {}
        if settings.naming is not None:  # a name the user gave the inner model (or the process's)
            _named(parent.stage, spec.qualname, attrs.get(semconv.ML_MODEL_NAME), attrs.get(semconv.ML_MODEL_VERSION),
                   attrs)
        if spec.framework:
            attrs.setdefault(semconv.ML_MODEL_FRAMEWORK, spec.framework)
        for k, v in attrs.items():
            if k not in existing and v is not None:
                span.set_attribute(k, v)
    except Exception:
        _internal_error("enrich", spec)


def _end(active: _Active, spec: StageSpec, exc: BaseException | None, args, kwargs, result=None) -> None:
    try:
        span = active.span
        outcome = semconv.OUTCOME_OK
        if exc is not None:
            if isinstance(exc, Exception):
                outcome = semconv.OUTCOME_ERROR
                span.record_exception(exc)
                span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            else:
                outcome = semconv.OUTCOME_CANCELLED
        else:
            pending = active.frame.profiled
            if pending:
                try:
                    # deferred input: defer the output too (a snapshot, as for the input)
                    if not _pending_output(pending, result, _DEFER_MAX_BYTES):
                        _profile_output(active, spec, result)
                except Exception:
                    _internal_error("output profile", spec)
            if settings.payload_hook is not None:
                try:
                    settings.payload_hook(span, spec.stage, args, kwargs, result)
                except Exception:
                    _internal_error("payload hook", spec)
        elapsed = time.perf_counter() - active.t0
        span.end()
        metrics.record(elapsed, active.metric_attrs, outcome, active.ctx, span)
    except Exception:
        _internal_error("end", spec)


def _profile_output(active: _Active, spec: StageSpec, result) -> None:
    """Prediction summary of a profiled call that returned, captured in the call (its
    ``ml.prediction.id`` is remembered for ``last_prediction_id()``); the deferred case is
    written out in ``_end``."""
    try:
        pending = active.frame.profiled
        if pending is _UNSAMPLED:
            return
        capture = _capture[0] if _capture else _capture_module()
        # ml.prediction.id is the span's own <trace id>-<span id>: derived by readers, not written
        # (the call is remembered for last_prediction_id() by _Active.exit, whatever happens here)
        attrs = capture.output_attributes(result, active.instance)
        if attrs:
            active.span.set_attributes(attrs)
    except Exception:
        _internal_error("output profile", spec)


# --- the wrappers for each callable kind --------------------------------------
# Plain closures, not wrapt proxies: a wrapt FunctionWrapper costs ~1.5 us per
# call even with its C extension, more than the whole no-SDK budget. Each
# wrapper reads the provider slot inline before anything else.
_trace_mod = trace_api
_NOOP = NoOpTracerProvider


def _exit_quietly(active: _Active, spec: StageSpec, returned: bool = False, final: bool = True) -> None:
    try:
        active.exit(returned, final)
    except Exception:
        _internal_error("context detach", spec)


def _safe_begin(tracer, spec, instance, args, kwargs) -> _Active | None:
    try:
        return _begin(tracer, spec, instance, args, kwargs)
    except Exception:
        _internal_error("begin", spec)
        return None


def _safe_enter(active: _Active | None, spec: StageSpec) -> None:
    if active is not None:
        try:
            active.enter()
        except Exception:
            _internal_error("context attach", spec)


def _in_training(spec: StageSpec, instance, args, kwargs) -> bool:
    try:
        return bool(spec.training(instance, args, kwargs))  # type: ignore[misc]
    except Exception:
        _internal_error("training check", spec)
        return False


def _sync_call(spec: StageSpec, tracer, fn, instance, dargs, args, kwargs):
    # _safe_begin, _safe_enter and _exit_quietly written out: the most common path, and each
    # Python frame is a measurable share of a span's cost (issue 2's ratio; docs/benchmarks.md)
    if spec.training is not None and _in_training(spec, instance, dargs, kwargs):
        return _call_quietly(fn, args, kwargs)
    try:
        active = _begin(tracer, spec, instance, dargs, kwargs)
    except Exception:
        _internal_error("begin", spec)
        active = None
    if active is None:
        return fn(*args, **kwargs)
    try:
        active.enter()
    except Exception:
        _internal_error("context attach", spec)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        _exit_quietly(active, spec)
        _end(active, spec, exc, dargs, kwargs)
        raise
    try:
        active.exit(True, True)
    except Exception:
        _internal_error("context detach", spec)
    _end(active, spec, None, dargs, kwargs, result)
    return result


async def _async_call(spec: StageSpec, tracer, fn, instance, dargs, args, kwargs):
    active = _safe_begin(tracer, spec, instance, dargs, kwargs)
    if active is None:
        return await fn(*args, **kwargs)
    _safe_enter(active, spec)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        _exit_quietly(active, spec)
        _end(active, spec, exc, dargs, kwargs)
        raise
    _exit_quietly(active, spec, True)
    _end(active, spec, None, dargs, kwargs, result)
    return result


def _gen_call(spec: StageSpec, fn, instance, dargs, args, kwargs):
    """Drive the wrapped generator: the span starts at the first next() and ends when
    iteration ends; it is current only while the generator body runs, never in the
    consumer between items."""
    gen = fn(*args, **kwargs)
    tracer = _tracer_or_none()
    if tracer is None:
        return (yield from gen)
    active = _safe_begin(tracer, spec, instance, dargs, kwargs)
    if active is None:
        return (yield from gen)
    send_value, throw_exc = None, None
    while True:
        _safe_enter(active, spec)
        try:
            if throw_exc is not None:
                exc, throw_exc = throw_exc, None
                value = gen.throw(exc)
            else:
                value = gen.send(send_value)
        except StopIteration as stop:
            _exit_quietly(active, spec, True)
            _end(active, spec, None, dargs, kwargs, stop.value)
            return stop.value
        except BaseException as exc:
            _exit_quietly(active, spec)
            _end(active, spec, exc, dargs, kwargs)
            raise
        _exit_quietly(active, spec, final=False)
        try:
            send_value = yield value
        except GeneratorExit:
            try:
                gen.close()
            finally:
                _end(active, spec, None, dargs, kwargs)
            raise
        except BaseException as exc:
            throw_exc = exc


def _make_asyncgen(spec: StageSpec, fn, is_method: bool):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        agen = fn(*args, **kwargs)
        tracer = _tracer_or_none()
        instance, dargs = (args[0], args[1:]) if is_method and args else (None, args)
        active = _safe_begin(tracer, spec, instance, dargs, kwargs) if tracer is not None else None
        send_value, throw_exc = None, None
        while True:
            _safe_enter(active, spec)
            try:
                if throw_exc is not None:
                    exc, throw_exc = throw_exc, None
                    value = await agen.athrow(exc)
                else:
                    value = await agen.asend(send_value)
            except StopAsyncIteration:
                if active is not None:
                    _exit_quietly(active, spec, True)
                    _end(active, spec, None, dargs, kwargs)
                return
            except BaseException as exc:
                if active is not None:
                    _exit_quietly(active, spec)
                    _end(active, spec, exc, dargs, kwargs)
                raise
            if active is not None:
                _exit_quietly(active, spec, final=False)
            try:
                send_value = yield value
            except GeneratorExit:
                try:
                    await agen.aclose()
                finally:
                    if active is not None:
                        _end(active, spec, None, dargs, kwargs)
                raise
            except BaseException as exc:
                throw_exc = exc

    return wrapper


def _kind(fn: Any) -> str:
    if inspect.isasyncgenfunction(fn):
        return "asyncgen"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "gen"
    return "sync"


def make_function_wrapper(fn: Callable, spec: StageSpec, is_method: bool) -> Callable:
    """A wrapper with ``fn``'s kind (so ``inspect``/FastAPI still see a coroutine or
    generator function) and metadata. ``is_method``: the first argument is self/cls."""
    kind = _kind(fn)
    settings_ = settings
    tm = _trace_mod

    if spec.quiet:
        wrapper = _make_quiet(fn)
    elif kind == "sync":
        if is_method:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                provider = settings_.explicit_provider or tm._TRACER_PROVIDER
                if provider is None or provider.__class__ is _NOOP:
                    return fn(*args, **kwargs)
                tracer = _tracer_or_none()
                return _sync_call(spec, tracer, fn, args[0] if args else None, args[1:], args, kwargs)
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                provider = settings_.explicit_provider or tm._TRACER_PROVIDER
                if provider is None or provider.__class__ is _NOOP:
                    return fn(*args, **kwargs)
                tracer = _tracer_or_none()
                return _sync_call(spec, tracer, fn, None, args, args, kwargs)
    elif kind == "async":
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            tracer = _tracer_or_none()
            if tracer is None:
                return await fn(*args, **kwargs)
            instance, dargs = (args[0], args[1:]) if is_method and args else (None, args)
            return await _async_call(spec, tracer, fn, instance, dargs, args, kwargs)
    elif kind == "gen":
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            instance, dargs = (args[0], args[1:]) if is_method and args else (None, args)
            return (yield from _gen_call(spec, fn, instance, dargs, args, kwargs))
    else:
        wrapper = _make_asyncgen(spec, fn, is_method)
    wrapper.__stagetrace_spec__ = spec  # type: ignore[attr-defined]
    return wrapper


def _make_quiet(fn: Callable) -> Callable:
    """A wrapper that makes no span and lets no stage span start inside the call (only
    synchronous functions are wrapped this way: ``wrap`` refuses the others)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _call_quietly(fn, args, kwargs)
    return wrapper


def _call_quietly(fn: Callable, args: tuple, kwargs: dict):
    """``fn(*args, **kwargs)`` with no stage span inside it (training, not serving)."""
    token = _current.set(_QUIET)
    try:
        return fn(*args, **kwargs)
    finally:
        _current.reset(token)


class _WrappedDescriptor:
    """For method descriptors that are not plain functions (e.g. sklearn's
    ``available_if``): bind through the original descriptor, so ``hasattr`` keeps
    its meaning, then wrap the bound callable."""

    def __init__(self, raw: Any, spec: StageSpec) -> None:
        self.__wrapped__ = raw
        self._spec = spec
        self._kind = _kind(_underlying(raw))
        for attr in ("__doc__", "__name__", "__qualname__", "__module__"):
            try:
                setattr(self, attr, getattr(raw, attr))
            except AttributeError:
                pass

    def __get__(self, obj, objtype=None):
        bound = self.__wrapped__.__get__(obj, objtype)
        if obj is None or self._kind != "sync":
            return make_function_wrapper(bound, self._spec, False) if self._kind != "sync" else bound
        return functools.partial(_bound_sync, self._spec, bound, obj)

    def __set_name__(self, owner, name):
        set_name = getattr(self.__wrapped__, "__set_name__", None)
        if set_name is not None:
            set_name(owner, name)


def _bound_sync(spec: StageSpec, bound, obj, *args, **kwargs):
    provider = settings.explicit_provider or _trace_mod._TRACER_PROVIDER
    if provider is None or provider.__class__ is _NOOP:
        return bound(*args, **kwargs)
    return _sync_call(spec, _tracer_or_none(), bound, obj, args, args, kwargs)


def _underlying(obj: Any) -> Any:
    """The plain function behind a class/static method or a descriptor."""
    for attr in ("__func__", "fn", "func"):
        inner = getattr(obj, attr, None)
        if inner is not None and callable(inner):
            return inner
    return obj


# --- wrap / unwrap registry ------------------------------------------------------
_wrapped: dict[tuple[int, str], tuple[Any, str, Any]] = {}


def is_wrapped(owner: Any, attr: str) -> bool:
    return (id(owner), attr) in _wrapped


def wrap(owner: Any, attr: str, spec: StageSpec) -> bool:
    """Replace ``owner.attr`` (a class or module attribute) by its stage wrapper; idempotent.

    Returns False (and changes nothing) if the attribute is not something we can wrap.
    """
    key = (id(owner), attr)
    entry = _wrapped.get(key)
    if entry is not None and entry[0] is owner and getattr(owner, "__dict__", {}).get(attr) is entry[3]:
        return True  # already ours (a reload re-executes the module and replaces it: wrap again)
    in_dict = attr in getattr(owner, "__dict__", {})
    raw = owner.__dict__[attr] if in_dict else getattr(owner, attr)
    is_class = isinstance(owner, type)
    if isinstance(raw, type):
        return False
    if getattr(raw, "__stagetrace_spec__", None) is not None:
        return True  # a re-export of a function we wrapped where it is defined (xgboost.train)
    if spec.quiet and not (isinstance(raw, types.FunctionType) and _kind(raw) == "sync"):
        return False  # quiet wrappers are for plain training methods only  # replacing a class by a function would break isinstance(); name a method
    if isinstance(raw, staticmethod):
        new: Any = staticmethod(make_function_wrapper(raw.__func__, spec, False))
    elif isinstance(raw, classmethod):
        new = classmethod(make_function_wrapper(raw.__func__, spec, True))
    elif isinstance(raw, types.FunctionType):
        new = make_function_wrapper(raw, spec, is_class)
    elif is_class and hasattr(type(raw), "__get__") and not isinstance(raw, types.BuiltinFunctionType):
        new = _WrappedDescriptor(raw, spec)
    elif callable(raw):  # builtins, bound methods, callable objects at module level
        new = make_function_wrapper(raw, spec, False)
    else:
        return False
    try:
        setattr(owner, attr, new)
    except (TypeError, AttributeError):
        return False  # an extension type (e.g. sklearn's Cython Tree) cannot be patched
    # Inherited attributes are restored by deleting our override.
    _wrapped[key] = (owner, attr, raw if in_dict else _INHERITED, new)
    return True


_INHERITED = object()


def wrap_quiet(owner: Any, names: tuple[str, ...], prefix: str, framework: str) -> None:
    """Wrap each of ``owner``'s own ``names`` (training functions: ``fit``, ``train``) quietly:
    no span, and no stage span for the predictions made inside (eval sets, callbacks)."""
    for name in names:
        if name in getattr(owner, "__dict__", {}):
            wrap(owner, name, StageSpec(semconv.STAGE_INFERENCE, f"{prefix}.{name}", framework, quiet=True))


def unwrap_all() -> None:
    """Restore every original callable we replaced."""
    for owner, attr, original, ours in list(_wrapped.values()):
        try:
            if getattr(owner, "__dict__", {}).get(attr) is not ours:
                continue  # replaced since (module reloaded): leave the newer object alone
            if original is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        except Exception:
            _logger.debug("stagetrace: could not unwrap %r.%s", owner, attr, exc_info=True)
    _wrapped.clear()
    _tracer_cache[0] = _tracer_cache[1] = None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
