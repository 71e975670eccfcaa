"""The ``ml.stage.duration`` histogram (seconds), one observation per stage span.

Nothing here touches the SDK at import; the attribute dict for each (stage,
model, version, outcome) is built once and reused. The record is on the hot path
of every wrapped call, so there are two ways to record it:

* **Pre-aggregated (the fast path).** With an SDK ``MeterProvider`` in its default
  shape (no Views, default meter configurator, a built-in exemplar filter, every
  reader on the default histogram aggregation), we keep the explicit-bucket
  counts, sum, min, max and the last exemplar per bucket ourselves, per reader
  (where the SDK's ``Histogram.record`` costs 15-40 us here; docs/benchmarks.md).
  The call itself only appends ``(value, attributes, span)`` to a bounded
  queue (a deque append is atomic, so no lock in the call); the queue is folded
  into the counts in batches, at each collect or once it holds ``_DRAIN_AT``
  records, whichever comes first. Batches are cheaper per value than one update
  per call, and the exemplar filter reads the span's context then, not in the
  call. Each reader's collect callback is wrapped so the SDK's
  own collect -> ``_receive_metrics`` -> exporter pipeline (periodic export,
  ``force_flush``, shutdown) carries one more ``Metric`` in our instrumentation
  scope, with the reader's temporality. Same buckets (``bisect_left``: a value
  equal to a bound lands in the bucket it bounds), same exemplar rules
  (``OTEL_METRICS_EXEMPLAR_FILTER``; last measurement per bucket, since that
  reader's previous collect), same cardinality limit and overflow point.
* **The SDK's ``Histogram.record`` (the fallback).** Anything else, or anything
  unexpected while setting up (an SDK whose internals differ), uses the SDK
  instrument exactly as before. One debug line says which path is active.

A forked child (gunicorn worker) starts with empty aggregation state, so it never
re-exports its master's counts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from bisect import bisect_left
from collections import Counter, deque
from itertools import repeat
from operator import itemgetter
from time import time_ns

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api

from stagetrace import semconv

from . import deferred

_logger = logging.getLogger("stagetrace.instrumentation")

# Bucket bounds for stage latencies: 0.5 ms .. 10 s (the SDK default tops out
# at 10 000, meant for milliseconds, which would put every stage in one bucket).
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DESCRIPTION = "Duration of one ML stage (feature_fetch, preprocess, inference, ...)"

_INF = math.inf
_INVALID_SPAN = trace_api.INVALID_SPAN
_NBUCKETS = len(BUCKETS_S) + 1
_OVERFLOW_ATTRIBUTES = {"otel.metric.overflow": True}  # the SDK's overflow point
_DEFAULT_CARDINALITY_LIMIT = 2000  # the SDK's default, per reader
# Records queued before the recording thread folds them in itself (between collects).
# Bounds the queue's memory, and the one call that pays for a batch (~0.1 ms).
_DRAIN_AT = 256
_VALUE_OF, _ATTRS_OF = itemgetter(0), itemgetter(1)  # of a queued (value, attributes, span)
# Exemplar filter modes.
_EX_OFF, _EX_TRACE_BASED, _EX_ALWAYS = 0, 1, 2


class _State:
    histogram = None  # the SDK instrument: the fallback path, decided for good
    proxy_histogram = None  # before any SDK is installed (records are dropped, as before)
    fast = None  # _Aggregator: the pre-aggregated path, decided for good
    explicit_provider = None  # meter_provider kwarg of instrument()
    path = None  # "pre-aggregated" | "sdk" (tests, debug)


_state = _State()
_decide_lock = threading.Lock()
_attr_cache: dict[tuple, dict[str, dict]] = {}


def attributes_for(stage: str, model: str | None, version: str | None) -> dict[str, dict]:
    """Attribute dicts per outcome for one (stage, model, version), built once."""
    key = (stage, model, version)
    per_outcome = _attr_cache.get(key)
    if per_outcome is None:
        base = {semconv.ML_STAGE: stage}
        if model:
            base[semconv.ML_MODEL_NAME] = model
        if version:
            base[semconv.ML_MODEL_VERSION] = version
        per_outcome = {o: {**base, semconv.METRIC_OUTCOME: o}
                       for o in (semconv.OUTCOME_OK, semconv.OUTCOME_ERROR, semconv.OUTCOME_CANCELLED)}
        if len(_attr_cache) < 4096:  # bounded: model names come from user code
            _attr_cache[key] = per_outcome
    return per_outcome


def record(seconds: float, per_outcome: dict[str, dict], outcome: str, context=None, span=None) -> None:
    """Record one stage duration with the attributes for ``outcome``.

    ``context`` is the stage span's context (``span`` the span itself, saving a
    lookup), so exemplars, when the exemplar filter keeps them, point at the stage
    span that took this long.
    """
    agg = _state.fast
    if agg is not None:  # the hot path, written out here (one Python frame fewer per call)
        if span is None:  # resolved here: the queue may be folded on another thread
            span = trace_api.get_current_span(context)
        # The span, not the context: it is alive anyway (in the span processor's queue), while
        # keeping each call's context alive would give the cyclic GC more to walk.
        queue = agg.pending
        queue.append((seconds, per_outcome[outcome], span))
        if len(queue) >= _DRAIN_AT:
            agg.drain()
        return
    hist = _state.histogram
    if hist is not None:
        hist.record(seconds, per_outcome[outcome], context=context)
        return
    _record_undecided(seconds, per_outcome, outcome, context, span)


def reset() -> None:
    """Forget the instrument, the attribute cache and our reader hooks (instrument/uninstrument).

    Aggregated data not yet collected is dropped with the hooks."""
    with _decide_lock:
        agg, _state.fast = _state.fast, None
        _state.histogram = None
        _state.proxy_histogram = None
        _state.path = None
        _attr_cache.clear()
    if agg is not None:
        agg.uninstall()


# --- choosing the path -----------------------------------------------------------
def _record_undecided(seconds: float, per_outcome: dict[str, dict], outcome: str, context, span) -> None:
    provider = _state.explicit_provider or metrics_api.get_meter_provider()
    if _is_proxy(provider):
        # No SDK yet: the proxy instrument (drops until one is set); decide once it is.
        hist = _state.proxy_histogram
        if hist is None:
            hist = _state.proxy_histogram = _sdk_histogram(provider)
        hist.record(seconds, per_outcome[outcome], context=context)
        return
    with _decide_lock:
        if _state.fast is None and _state.histogram is None:
            _decide(provider)
    if _state.fast is not None or _state.histogram is not None:  # decided for good: no recursion
        record(seconds, per_outcome, outcome, context, span)


def _is_proxy(provider) -> bool:
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - API without the proxy
        return False
    return isinstance(provider, _ProxyMeterProvider)


def _sdk_histogram(provider):
    meter = provider.get_meter(semconv.INSTRUMENTATION_SCOPE)
    try:
        return meter.create_histogram(
            semconv.METRIC_STAGE_DURATION,
            unit="s",
            description=DESCRIPTION,
            explicit_bucket_boundaries_advisory=list(BUCKETS_S),
        )
    except TypeError:  # API older than the advisory parameter
        return meter.create_histogram(semconv.METRIC_STAGE_DURATION, unit="s", description=DESCRIPTION)


def _decide(provider) -> None:
    """Called once under ``_decide_lock`` with a real (non-proxy) provider."""
    try:
        reason = _fast_path_blocker(provider)
    except Exception as exc:  # SDK internals not as expected
        reason = f"SDK internals differ ({type(exc).__name__}: {exc})"
    if reason is None:
        agg = None
        try:
            agg = _Aggregator(provider)
            agg.install()
            _register_fork_hook()
        except Exception as exc:
            if agg is not None:
                agg.uninstall()
            reason = f"hooking the metric readers failed ({type(exc).__name__}: {exc})"
        else:
            _state.fast = agg
            _state.path = "pre-aggregated"
            # deferred: the first stage call may run inside an import (module-level warm-up)
            deferred.debug(_logger, "stagetrace: ml.stage.duration is pre-aggregated in process and exported "
                           "through the SDK's %d metric reader(s)", len(agg.readers))
            return
    _state.histogram = _sdk_histogram(provider)
    _state.path = "sdk"
    deferred.debug(_logger, "stagetrace: ml.stage.duration is recorded with the SDK's Histogram.record: %s", reason)


def _fast_path_blocker(provider) -> str | None:
    """Why the pre-aggregated path cannot reproduce what the SDK would export, or None."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics._internal import _default_meter_configurator  # noqa: F401
    except ImportError as exc:
        return f"no OpenTelemetry SDK with the expected internals ({exc})"
    if not isinstance(provider, SdkMeterProvider):
        return f"{type(provider).__name__} is not the SDK's MeterProvider"
    if provider._disabled or provider._shutdown:  # noqa: SLF001
        return "the MeterProvider is disabled or shut down"
    if provider._sdk_config.views:  # noqa: SLF001
        return "the MeterProvider has Views"
    if provider._meter_configurator is not _default_meter_configurator:  # noqa: SLF001
        return "the MeterProvider has a meter configurator"
    if _exemplar_mode(provider._sdk_config.exemplar_filter) is None:  # noqa: SLF001
        return f"custom exemplar filter {type(provider._sdk_config.exemplar_filter).__name__}"  # noqa: SLF001
    for reader in _readers_of(provider):
        problem = _reader_blocker(reader)
        if problem:
            return problem
    return None


def _readers_of(provider) -> list:
    # Includes readers added with add_metric_reader (the provider's _metric_readers does not).
    return list(provider._measurement_consumer._reader_storages)  # noqa: SLF001


def _reader_blocker(reader) -> str | None:
    from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality
    from opentelemetry.sdk.metrics.view import DefaultAggregation

    aggregation = reader._instrument_class_aggregation[_Histogram]  # noqa: SLF001
    if type(aggregation) is not DefaultAggregation:
        return f"{type(reader).__name__} prefers {type(aggregation).__name__} for histograms"
    if reader._instrument_class_temporality[_Histogram] not in (  # noqa: SLF001
            AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA):
        return f"{type(reader).__name__} has an unknown temporality"
    if not callable(reader._collect):  # noqa: SLF001
        return f"{type(reader).__name__} has no collect callback"
    return None


def _exemplar_mode(exemplar_filter) -> int | None:
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, AlwaysOnExemplarFilter, TraceBasedExemplarFilter

    return {TraceBasedExemplarFilter: _EX_TRACE_BASED, AlwaysOnExemplarFilter: _EX_ALWAYS,
            AlwaysOffExemplarFilter: _EX_OFF}.get(type(exemplar_filter))


# --- the pre-aggregated path -------------------------------------------------------
class _Series:
    """One attribute set: counts since a reader's previous collect (or, for a
    cumulative reader's totals, since the start)."""

    __slots__ = ("attrs", "counts", "sum", "min", "max", "exemplars", "start")

    def __init__(self, attrs: dict, start: int) -> None:
        self.attrs = attrs
        self.counts = [0] * _NBUCKETS
        self.sum = 0
        self.min = _INF
        self.max = -_INF
        self.exemplars = [None] * _NBUCKETS  # per bucket: (value, time_ns, SpanContext | None)
        self.start = start


class _ReaderState:
    __slots__ = ("reader", "orig", "hook", "delta", "temporality", "limit", "cells", "totals", "seen",
                 "last_collect", "collect_lock")

    def __init__(self, reader) -> None:
        from opentelemetry.sdk.metrics._internal.instrument import _Histogram
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        self.reader = reader
        self.orig = None
        self.hook = None
        self.temporality = reader._instrument_class_temporality[_Histogram]  # noqa: SLF001
        self.delta = self.temporality is AggregationTemporality.DELTA
        limit = getattr(reader, "_instrument_class_cardinality_limit", {}).get(_Histogram)
        self.limit = limit if isinstance(limit, int) and limit > 0 else _DEFAULT_CARDINALITY_LIMIT
        self.clear()

    def clear(self) -> None:
        self.cells: dict[int, _Series] = {}  # since the previous collect, keyed by id(attrs)
        self.totals: dict[int, _Series] = {}  # cumulative readers only
        self.seen: set[int] = set()  # attribute sets counted against the cardinality limit
        self.last_collect: int | None = None
        # A reader may be collected from two threads at once (force_flush beside its ticker).
        self.collect_lock = threading.Lock()

    def new_cell(self, key: int, attrs: dict) -> _Series:
        """First value of an attribute set since the previous collect (lock held)."""
        if key not in self.seen:
            if len(self.seen) >= self.limit:
                key, attrs = id(_OVERFLOW_ATTRIBUTES), _OVERFLOW_ATTRIBUTES
                cell = self.cells.get(key)
                if cell is not None:
                    return cell
            else:
                self.seen.add(key)
        # The cell keeps ``attrs`` alive, so its id is not reused while it is a key.
        cell = self.cells[key] = _Series(attrs, time_ns())
        return cell


class _Aggregator:
    def __init__(self, provider) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider = provider
        self.lock = threading.Lock()
        self.exemplar_mode = _exemplar_mode(provider._sdk_config.exemplar_filter)  # noqa: SLF001
        self.scope = InstrumentationScope(semconv.INSTRUMENTATION_SCOPE)  # what get_meter(name) creates
        self.readers: tuple[_ReaderState, ...] = ()
        # measurements not yet folded in: (value, attributes, span), oldest first
        self.pending: deque = deque()
        self.provider_patched = False
        self.warned = False

    def drain(self) -> None:
        """Fold the queued measurements into every reader's cells (any thread).

        Under the lock, so two drains (a collect and a recording thread that found
        the queue full) never fold the same record twice; appends go on meanwhile.
        Written for batches: C-level passes (``map``, ``Counter``, ``sum``) over the
        values of one attribute set, instead of one Python-level update per value."""
        with self.lock:
            queue = self.pending
            n = len(queue)
            if not n:
                return
            pop = queue.popleft
            items = [pop() for _ in range(n)]
            keys = list(map(id, map(_ATTRS_OF, items)))
            if keys.count(keys[0]) == n:  # one attribute set, the usual batch
                groups = {keys[0]: items}
            else:
                groups = {}
                for key, item in zip(keys, items):
                    g = groups.get(key)
                    if g is None:
                        groups[key] = [item]
                    else:
                        g.append(item)
            for key, batch in groups.items():
                self._fold(key, batch)

    def _fold(self, key: int, items: list) -> None:
        """One attribute set's batch into every reader's cell for it (lock held)."""
        values = list(map(_VALUE_OF, items))
        total, low = sum(values), min(values)
        if not (low >= 0.0 and total < _INF):  # NaN, infinite or negative among them (rare)
            items = [it for it in items if 0.0 <= it[0] < _INF]  # the SDK drops those values
            if not items:
                return
            values = list(map(_VALUE_OF, items))
            total, low = sum(values), min(values)
        high = max(values)
        attrs = items[0][1]
        index = list(map(bisect_left, repeat(BUCKETS_S), values))
        buckets = Counter(index)
        exemplars = self._exemplars(items, index) if self.exemplar_mode else ()
        for r in self.readers:
            c = r.cells.get(key)
            if c is None:
                c = r.new_cell(key, attrs)
            counts = c.counts
            for i, k in buckets.items():
                counts[i] += k
            c.sum += total
            if low < c.min:
                c.min = low
            if high > c.max:
                c.max = high
            for i, ex in exemplars:
                c.exemplars[i] = ex

    def _exemplars(self, items: list, index: list) -> list:
        """Per bucket, the last measurement the exemplar filter keeps: ``[(bucket, exemplar)]``.

        ``index`` holds each item's bucket. The last item of each bucket is kept unless the
        filter drops it (trace-based: an unsampled span); only then is that bucket scanned back."""
        always = self.exemplar_mode == _EX_ALWAYS
        found = []
        for i, last in dict(zip(index, range(len(index)))).items():  # bucket -> its last item
            for k in range(last, -1, -1):
                if index[k] != i:
                    continue
                value, _attrs, span = items[k]
                if span is _INVALID_SPAN:
                    if always:
                        found.append((i, (value, time_ns(), None)))
                        break
                    continue
                sc = span.get_span_context()
                if always or sc.trace_flags & 1:
                    # the span ended right before the record: its end time is the measurement's
                    found.append((i, (value, getattr(span, "end_time", None) or time_ns(), sc)))
                    break
        return found

    # --- collection, on the reader's thread ---
    def points(self, r: _ReaderState) -> list:
        from opentelemetry.sdk.metrics import Exemplar
        from opentelemetry.sdk.metrics.export import HistogramDataPoint

        self.drain()
        now = time_ns()
        with self.lock:
            cells, r.cells = r.cells, {}
            previous = r.last_collect
            if cells or previous is not None:  # as the SDK: from the first value on
                r.last_collect = now
            if r.delta:
                r.seen = set()
        out = []

        def exemplars(cell):
            if cell is None:
                return []
            return [Exemplar({}, e[0], e[1], *((e[2].span_id, e[2].trace_id) if e[2] is not None else (None, None)))
                    for e in cell.exemplars if e is not None]

        if r.delta:
            for c in cells.values():
                out.append(HistogramDataPoint(
                    attributes=c.attrs, exemplars=exemplars(c),
                    start_time_unix_nano=previous if previous is not None else c.start, time_unix_nano=now,
                    count=sum(c.counts), sum=c.sum, bucket_counts=tuple(c.counts), explicit_bounds=BUCKETS_S,
                    min=c.min, max=c.max))
            return out
        totals = r.totals
        for key, c in cells.items():
            t = totals.get(key)
            if t is None:
                t = totals[key] = _Series(c.attrs, c.start)
            t.counts = [a + b for a, b in zip(t.counts, c.counts)]
            t.sum += c.sum
            t.min = min(t.min, c.min)
            t.max = max(t.max, c.max)
        for key, t in totals.items():
            out.append(HistogramDataPoint(
                attributes=t.attrs, exemplars=exemplars(cells.get(key)),
                start_time_unix_nano=t.start, time_unix_nano=now,
                count=sum(t.counts), sum=t.sum, bucket_counts=tuple(t.counts), explicit_bounds=BUCKETS_S,
                min=t.min, max=t.max))
        return out

    def inject(self, r: _ReaderState, data):
        """``data`` (what the SDK collected for this reader, maybe None) plus our metric."""
        from opentelemetry.sdk.metrics.export import Histogram, Metric, MetricsData, ResourceMetrics, ScopeMetrics

        with r.collect_lock:
            points = self.points(r)
        if not points:
            return data
        metric = Metric(name=semconv.METRIC_STAGE_DURATION, description=DESCRIPTION, unit="s",
                        data=Histogram(data_points=points, aggregation_temporality=r.temporality))
        if data is None or not data.resource_metrics:
            resource = self.provider._sdk_config.resource  # noqa: SLF001
            return MetricsData(resource_metrics=[ResourceMetrics(
                resource=resource, schema_url=resource.schema_url,
                scope_metrics=[ScopeMetrics(scope=self.scope, metrics=[metric], schema_url=self.scope.schema_url)])])
        first, *rest = data.resource_metrics
        scopes, placed = [], False
        for sm in first.scope_metrics:
            if not placed and sm.scope == self.scope:
                sm = ScopeMetrics(scope=sm.scope, metrics=[*sm.metrics, metric], schema_url=sm.schema_url)
                placed = True
            scopes.append(sm)
        if not placed:
            scopes.append(ScopeMetrics(scope=self.scope, metrics=[metric], schema_url=self.scope.schema_url))
        first = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
        return MetricsData(resource_metrics=[first, *rest])

    # --- hooks on the provider's readers ---
    def install(self) -> None:
        for reader in _readers_of(self.provider):
            self._hook(reader)
        self._patch_provider()

    def _hook(self, reader) -> _ReaderState:
        r = _ReaderState(reader)
        orig = reader._collect  # noqa: SLF001 - the provider's collect callback for this reader
        agg = self

        def collect(metric_reader, timeout_millis: float = 10_000, **kwargs):
            data = orig(metric_reader, timeout_millis=timeout_millis, **kwargs)
            try:
                return agg.inject(r, data)
            except Exception:
                agg._warn_once("collecting ml.stage.duration failed; this export lacks it")
                return data

        r.orig, r.hook = orig, collect
        reader._collect = collect  # noqa: SLF001
        self.drain()  # what was measured before this reader existed is not its to export
        with self.lock:
            self.readers = (*self.readers, r)
        return r

    def _patch_provider(self) -> None:
        # Readers added later get the hook too; an incompatible one gets a warning.
        provider, agg = self.provider, self
        orig_add, orig_remove = provider.add_metric_reader, provider.remove_metric_reader

        def add_metric_reader(metric_reader):
            orig_add(metric_reader)
            try:
                if agg.provider_patched and not any(r.reader is metric_reader for r in agg.readers):
                    problem = _reader_blocker(metric_reader)
                    if problem:
                        agg._warn_once(f"{problem}, added after the first stage call: it gets no ml.stage.duration")
                    else:
                        agg._hook(metric_reader)
            except Exception:
                agg._warn_once("hooking an added metric reader failed: it gets no ml.stage.duration")

        def remove_metric_reader(metric_reader):
            try:
                with agg.lock:
                    agg.readers = tuple(r for r in agg.readers if r.reader is not metric_reader)
            finally:
                orig_remove(metric_reader)

        provider.add_metric_reader = add_metric_reader
        provider.remove_metric_reader = remove_metric_reader
        self.provider_patched = True

    def uninstall(self) -> None:
        for r in self.readers:
            try:
                if r.reader._collect is r.hook:  # noqa: SLF001
                    r.reader._collect = r.orig  # noqa: SLF001
            except Exception:
                pass
        with self.lock:
            self.readers = ()
        if self.provider_patched:
            self.provider_patched = False
            for name in ("add_metric_reader", "remove_metric_reader"):
                self.provider.__dict__.pop(name, None)

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # may have been held by another thread at fork time
        self.pending = deque()
        for r in self.readers:
            r.clear()

    def _warn_once(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            deferred.warning(_logger, "stagetrace: %s", message, exc_info=True)


class _Fork:
    registered = False


def _reinit_decide_lock_in_child() -> None:
    # Another thread of the parent may have been deciding at fork time: it does not exist
    # here, and the child's first stage call would wait for its lock forever. What that
    # thread left half done is harmless: an unpublished aggregator's reader hooks add
    # nothing (it never records), and the child decides again.
    global _decide_lock
    _decide_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_decide_lock_in_child)


def _after_fork_in_child() -> None:
    # A worker forked from a master that recorded stages must not export the master's counts.
    agg = _state.fast
    if agg is not None:
        try:
            agg.after_fork_in_child()
        except Exception:
            pass


def _register_fork_hook() -> None:
    if not _Fork.registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _Fork.registered = True
