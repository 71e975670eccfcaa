"""The pre-aggregated ``ml.stage.duration`` path against the SDK's own histogram.

Each equivalence test feeds the same values, outcomes and span contexts to our
fast path and to a plain SDK histogram with the same bounds, each under its own
MeterProvider and reader, and compares what the readers receive.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Histogram,
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from stagetrace import semconv
from stagetrace.instrumentation import metrics

NAME = semconv.METRIC_STAGE_DURATION


@pytest.fixture(autouse=True)
def clean_state():
    metrics._state.explicit_provider = None
    metrics.reset()
    yield
    metrics._state.explicit_provider = None
    metrics.reset()


def use(provider):
    metrics._state.explicit_provider = provider
    metrics.reset()


def span(n: int, sampled: bool):
    sc = SpanContext(trace_id=0x1000 + n, span_id=0x2000 + n, is_remote=False,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))
    s = NonRecordingSpan(sc)
    return s, trace.set_span_in_context(s)


# Values on every side of the bounds, exact bounds included (0.001 and 5.0 are bounds).
VALUES = [0.0, 0.0004, 0.0005, 0.001, 0.0011, 0.003, 0.003, 0.02, 0.2, 0.7, 1.0, 3.0, 5.0, 9.0, 10.0, 11.5, 0.04]
SERIES = [("inference", "fraud", "v1", "ok"), ("inference", "fraud", "v1", "error"),
          ("preprocess", None, None, "ok"), ("feature_fetch", "fraud", None, "cancelled")]


def feed(hist, values, start: int = 0) -> None:
    """Record through our path and, if given, through an SDK histogram with the same inputs."""
    for n, v in enumerate(values, start):
        stage, model, version, outcome = SERIES[n % len(SERIES)]
        per_outcome = metrics.attributes_for(stage, model, version)
        s, ctx = span(n, sampled=n % 3 != 0)
        metrics.record(v, per_outcome, outcome, ctx, s)
        if hist is not None:
            hist.record(v, per_outcome[outcome], context=ctx)


def sdk_pair(temporality=AggregationTemporality.CUMULATIVE, exemplar_filter=None):
    """(our provider + reader, the SDK's histogram + reader)."""
    pref = {Histogram: temporality}
    ours = InMemoryMetricReader(preferred_temporality=pref)
    ref = InMemoryMetricReader(preferred_temporality=pref)
    ours_provider = MeterProvider(metric_readers=[ours], exemplar_filter=exemplar_filter)
    ref_provider = MeterProvider(metric_readers=[ref], exemplar_filter=exemplar_filter)
    hist = ref_provider.get_meter("reference").create_histogram(
        NAME, unit="s", explicit_bucket_boundaries_advisory=list(metrics.BUCKETS_S))
    use(ours_provider)
    return ours, ref, hist


def stage_metrics(data):
    found = [m for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics for m in sm.metrics
             if m.name == NAME]
    assert len(found) <= 1
    return found[0] if found else None


def by_attrs(metric):
    return {frozenset(p.attributes.items()): p for p in metric.data.data_points} if metric else {}


def assert_same(ours_data, ref_data):
    ours_m, ref_m = stage_metrics(ours_data), stage_metrics(ref_data)
    if ref_m is None:
        assert ours_m is None
        return {}
    assert isinstance(ours_m.data, HistogramData)
    assert ours_m.unit == "s" and ours_m.description == metrics.DESCRIPTION
    assert ours_m.data.aggregation_temporality == ref_m.data.aggregation_temporality
    ours_p, ref_p = by_attrs(ours_m), by_attrs(ref_m)
    assert ours_p.keys() == ref_p.keys()
    for key, r in ref_p.items():
        o = ours_p[key]
        assert tuple(o.explicit_bounds) == tuple(r.explicit_bounds) == metrics.BUCKETS_S
        assert tuple(o.bucket_counts) == tuple(r.bucket_counts), dict(key)
        assert o.count == r.count
        assert o.sum == pytest.approx(r.sum)
        assert (o.min, o.max) == (r.min, r.max)
        assert [(e.value, e.span_id, e.trace_id, e.filtered_attributes or {}) for e in o.exemplars] == \
            [(e.value, e.span_id, e.trace_id, e.filtered_attributes or {}) for e in r.exemplars], dict(key)
        assert o.start_time_unix_nano <= o.time_unix_nano
    return ours_p


@pytest.mark.parametrize("exemplar_filter", [None, AlwaysOnExemplarFilter(), AlwaysOffExemplarFilter()],
                         ids=["trace_based", "always_on", "always_off"])
def test_cumulative_equals_the_sdk_histogram(exemplar_filter):
    ours, ref, hist = sdk_pair(exemplar_filter=exemplar_filter)
    feed(hist, VALUES)
    assert metrics._state.path == "pre-aggregated"
    first = assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    assert sum(p.count for p in first.values()) == len(VALUES)
    if exemplar_filter is None:  # trace-based: exemplars only from sampled spans (n % 3 != 0)
        ids = {e.span_id for p in first.values() for e in p.exemplars}
        assert ids and all((i - 0x2000) % 3 != 0 for i in ids)
    # Second interval: totals keep growing from the same start; exemplars are the new ones only.
    feed(hist, VALUES[:5], start=100)
    second = assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    for key, p in second.items():
        assert p.start_time_unix_nano == first[key].start_time_unix_nano
        assert all(e.span_id >= 0x2000 + 100 for e in p.exemplars)
    # Nothing new: cumulative points are still reported, without exemplars.
    third = assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    assert third.keys() == second.keys() and not any(p.exemplars for p in third.values())


def test_delta_equals_the_sdk_histogram():
    ours, ref, hist = sdk_pair(AggregationTemporality.DELTA)
    feed(hist, VALUES)
    first_data = ours.get_metrics_data()
    first = assert_same(first_data, ref.get_metrics_data())
    assert stage_metrics(first_data).data.aggregation_temporality is AggregationTemporality.DELTA
    collected_at = {p.time_unix_nano for p in first.values()}
    assert len(collected_at) == 1
    feed(hist, VALUES[:3], start=50)  # only some series get new values
    second = assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    assert 0 < len(second) < len(first)
    assert sum(p.count for p in second.values()) == 3
    assert {p.start_time_unix_nano for p in second.values()} == collected_at
    # Nothing new: no points at all (and no empty metric), as the SDK.
    assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    assert stage_metrics(ours.get_metrics_data()) is None


def test_joins_the_sdks_scope_metrics_and_other_scopes_stay():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    use(provider)
    provider.get_meter(semconv.INSTRUMENTATION_SCOPE).create_counter("stagetrace.other").add(1)
    provider.get_meter("someone.else").create_counter("their.counter").add(2)
    feed(None, VALUES[:4])
    data = reader.get_metrics_data()
    (rm,) = data.resource_metrics
    assert rm.resource is provider._sdk_config.resource
    ours = [sm for sm in rm.scope_metrics if sm.scope.name == semconv.INSTRUMENTATION_SCOPE]
    assert len(ours) == 1 and {m.name for m in ours[0].metrics} == {"stagetrace.other", NAME}
    assert any(m.name == "their.counter" for sm in rm.scope_metrics for m in sm.metrics)


def test_only_our_metric_when_the_sdk_collected_nothing():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    use(provider)
    assert reader.get_metrics_data() is None
    feed(None, VALUES[:2])
    data = reader.get_metrics_data()
    (rm,) = data.resource_metrics
    (sm,) = rm.scope_metrics
    assert sm.scope.name == semconv.INSTRUMENTATION_SCOPE and [m.name for m in sm.metrics] == [NAME]


class ListExporter(MetricExporter):
    def __init__(self):
        super().__init__()
        self.batches = []

    def export(self, metrics_data, timeout_millis=10_000, **kw):
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kw):
        pass


def count_in(batches):
    return sum(p.count for b in batches if (m := stage_metrics(b)) for p in m.data.data_points)


def test_force_flush_and_shutdown_export_through_the_periodic_reader():
    exporter = ListExporter()
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, 60_000)])
    use(provider)
    feed(None, VALUES[:3])
    provider.force_flush()  # what the SIGTERM handler calls
    assert count_in(exporter.batches[-1:]) == 3
    feed(None, VALUES[:2])
    provider.shutdown()  # the reader's last collect
    assert count_in(exporter.batches[-1:]) == 5  # cumulative


def test_a_reader_added_later_is_hooked_too():
    first = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first])
    use(provider)
    feed(None, VALUES[:2])
    late = InMemoryMetricReader()
    provider.add_metric_reader(late)
    feed(None, VALUES[:3])
    assert count_in([first.get_metrics_data()]) == 5
    assert count_in([late.get_metrics_data()]) == 3


@pytest.mark.parametrize("kind", ["view", "exponential", "meter_configurator"])
def test_fallback_to_the_sdk_record_and_data_still_arrives(kind, caplog):
    caplog.set_level("DEBUG", logger="stagetrace.instrumentation")
    if kind == "view":
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], views=[View(instrument_name="something.else")])
    elif kind == "exponential":
        reader = InMemoryMetricReader(preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()})
        provider = MeterProvider(metric_readers=[reader])
    else:
        from opentelemetry.sdk.metrics._internal import _MeterConfig

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], _meter_configurator=lambda scope: _MeterConfig.default())
    use(provider)
    feed(None, VALUES)
    assert metrics._state.path == "sdk"
    assert "recorded with the SDK's Histogram.record" in caplog.text
    metric = stage_metrics(reader.get_metrics_data())
    assert sum(p.count for p in metric.data.data_points) == len(VALUES)
    if kind == "exponential":
        assert isinstance(metric.data, ExponentialHistogram)
    else:
        assert tuple(metric.data.data_points[0].explicit_bounds) == metrics.BUCKETS_S


def test_not_an_sdk_provider_falls_back_and_never_raises():
    from opentelemetry.metrics import NoOpMeterProvider

    use(NoOpMeterProvider())
    feed(None, VALUES[:3])
    assert metrics._state.path == "sdk"


def test_a_failure_while_collecting_loses_only_our_metric(monkeypatch, caplog):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    use(provider)
    provider.get_meter("x").create_counter("c").add(1)
    feed(None, VALUES[:2])

    def boom(*a):
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics._state.fast, "points", boom)
    data = reader.get_metrics_data()
    assert stage_metrics(data) is None
    assert any(m.name == "c" for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
    assert "collecting ml.stage.duration failed" in caplog.text


def test_reset_unhooks_the_readers():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    use(provider)
    feed(None, VALUES[:2])
    assert reader._collect is not provider._measurement_consumer.collect
    metrics.reset()
    assert reader._collect == provider._measurement_consumer.collect
    assert "add_metric_reader" not in provider.__dict__
    assert reader.get_metrics_data() is None


def test_cardinality_limit_overflow_point():
    reader = InMemoryMetricReader(cardinality_limits={Histogram: 3})
    provider = MeterProvider(metric_readers=[reader])
    use(provider)
    for n in range(5):
        metrics.record(0.01, metrics.attributes_for("inference", f"m{n}", None), "ok")
    points = by_attrs(stage_metrics(reader.get_metrics_data()))
    assert len(points) == 4
    assert points[frozenset({"otel.metric.overflow": True}.items())].count == 2


def test_after_fork_hook_clears_the_state():
    reader = InMemoryMetricReader()
    use(MeterProvider(metric_readers=[reader]))
    feed(None, VALUES[:4])
    metrics._after_fork_in_child()
    assert reader.get_metrics_data() is None
    feed(None, VALUES[:1])
    assert count_in([reader.get_metrics_data()]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_reexport_the_parents_counts():
    reader = InMemoryMetricReader()
    use(MeterProvider(metric_readers=[reader]))
    feed(None, VALUES[:4])
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: one value of its own, then report what its reader gets
        try:
            os.close(rfd)
            feed(None, VALUES[:1])
            os.write(wfd, json.dumps({"count": count_in([reader.get_metrics_data()])}).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        child = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    assert child == {"count": 1}
    assert count_in([reader.get_metrics_data()]) == 4  # the parent's own state is untouched


def test_invalid_values_are_dropped_like_the_sdk():
    ours, ref, hist = sdk_pair()
    feed(hist, [0.01, -1.0, math.inf, math.nan, 0.02])
    points = assert_same(ours.get_metrics_data(), ref.get_metrics_data())
    assert sum(p.count for p in points.values()) == 2


def test_queued_records_are_folded_in_without_a_collect_and_the_queue_stays_bounded():
    ours, ref, hist = sdk_pair()
    values = [VALUES[n % len(VALUES)] for n in range(metrics._DRAIN_AT * 5 + 7)]
    feed(hist, values)
    assert len(metrics._state.fast.pending) < metrics._DRAIN_AT  # folded in by the recording thread
    assert_same(ours.get_metrics_data(), ref.get_metrics_data())


def test_concurrent_records_and_collects_lose_and_double_count_nothing():
    import threading

    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    use(MeterProvider(metric_readers=[reader]))
    per_outcome = metrics.attributes_for("inference", "fraud", "v1")
    threads, per_thread = 4, 3000
    done = threading.Event()
    batches = []

    def collect():
        while not done.is_set():
            batches.append(reader.get_metrics_data())

    def work(k):
        for n in range(per_thread):
            metrics.record(0.001 * (k + 1), per_outcome, "ok")

    collector = threading.Thread(target=collect)
    collector.start()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    collector.join()
    batches.append(reader.get_metrics_data())
    assert count_in(batches) == threads * per_thread
    total = sum(p.sum for b in batches if (m := stage_metrics(b)) for p in m.data.data_points)
    assert total == pytest.approx(sum(0.001 * (k + 1) * per_thread for k in range(threads)))
