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
    histogram = None
    explicit_provider = None  # meter_provider kwarg of instrument()


_state = _State()
_attr_cache: dict[tuple, dict[str, dict]] = {}


def _histogram():
    # Cached for good: from the global (proxy) provider it is a proxy instrument
    # that starts delegating as soon as an SDK is installed.
    hist = _state.histogram
    if hist is not None:
        return hist
    provider = _state.explicit_provider or metrics_api.get_meter_provider()
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
    _state.histogram = hist
    return hist


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


def record(seconds: float, per_outcome: dict[str, dict], outcome: str, context=None) -> None:
    """Record one stage duration with the attributes for ``outcome``.

    ``context`` is the stage span's context, so exemplars (when the SDK's exemplar
    filter keeps them) point at the stage span that took this long.
    """
    _histogram().record(seconds, per_outcome[outcome], context=context)


def reset() -> None:
    _state.histogram = None
    _attr_cache.clear()
