"""The ``ml.stage.duration`` histogram (seconds), one observation per stage span.

The instrument is created lazily from the global meter provider the first time a
stage ends, so importing this module never touches the SDK, and the attribute
dict for each (stage, model, version, outcome) is built once and reused: the
histogram record is on the hot path of every wrapped call.
"""

from __future__ import annotations

from opentelemetry import metrics as metrics_api

from stagetrace import semconv

# Bucket bounds for stage latencies: 0.5 ms .. 10 s (the SDK default tops out
# at 10 000, meant for milliseconds, which would put every stage in one bucket).
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _State:
    provider = None
    histogram = None
    explicit_provider = None  # meter_provider kwarg of instrument()


_state = _State()
_attr_cache: dict[tuple, dict] = {}


def _histogram():
    provider = _state.explicit_provider or metrics_api.get_meter_provider()
    if provider is _state.provider and _state.histogram is not None:
        return _state.histogram
    meter = provider.get_meter(semconv.INSTRUMENTATION_SCOPE)
    try:
        hist = meter.create_histogram(
            semconv.METRIC_STAGE_DURATION,
            unit="s",
            description="Duration of one ML stage (feature_fetch, preprocess, inference, ...)",
            explicit_bucket_boundaries_advisory=list(BUCKETS_S),
        )
    except TypeError:  # API older than the advisory parameter
        hist = meter.create_histogram(semconv.METRIC_STAGE_DURATION, unit="s")
    _state.provider, _state.histogram = provider, hist
    return hist


def record(seconds: float, stage_attrs: dict, outcome: str) -> None:
    """Record one stage duration; ``stage_attrs`` holds stage, model name/version."""
    key = (tuple(stage_attrs.items()), outcome)
    attrs = _attr_cache.get(key)
    if attrs is None:
        if len(_attr_cache) > 4096:  # bounded: model names come from user code
            _attr_cache.clear()
        attrs = dict(stage_attrs)
        attrs[semconv.METRIC_OUTCOME] = outcome
        _attr_cache[key] = attrs
    _histogram().record(seconds, attrs)


def reset() -> None:
    _state.provider = None
    _state.histogram = None
    _attr_cache.clear()
