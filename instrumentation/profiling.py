"""Input/output profiles at the inference stage (``ml.input.profile``,
``ml.output.profile`` and readable summaries), zero-code.

What is recorded and why is in :mod:`stagetrace.mlprofile` (bins, never values).
Cost is the design constraint (<= 3 % of a 64-row call, <= 5 us for one row,
``benchmarks/instrumentation.py``): the numeric path is a handful of numpy calls on
the whole batch (one bit-shift gives every bin), strings are attributes the SDK
cleans once, and per-row Python loops only run for categorical columns.

Every entry point is called inside ``try`` by the wrapper: a profiling failure is
logged once and the model call is unaffected. This module holds the settings and
imports nothing heavy (instrumenting must not import numpy before the app does);
the capture code is :mod:`.profile_capture`, imported at the first profiled call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from stagetrace import semconv

from . import stages

_logger = logging.getLogger("stagetrace.instrumentation")

def last_prediction_id() -> str | None:
    """The ``ml.prediction.id`` of the last profiled call that returned in this context
    (thread or task): what an app returns to whoever will send the label. A batch's rows
    are this id plus ``-<row>``. The default id is the span's own ``<trace id>-<span id>``,
    so it is not written on the span: readers derive it (``mlprofile.prediction_id``).

    The id text is made only here, when asked (formatting it on every call would cost more
    than the rest of a one-row profile). A prediction made inside a running stage by a task
    or thread started within it counts as that stage's last prediction too."""
    from .wrapping import last_prediction_span  # wrapping imports this module

    span = last_prediction_span()
    if span is None:
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return "%032x-%016x" % (ctx.trace_id, ctx.span_id)


class ProfileSettings:
    """What to profile; built once by the instrumentor from env and config."""

    def __init__(self, *, stages: tuple[str, ...] = (semconv.STAGE_INFERENCE,), features: Any = None,
                 redact: tuple[str, ...] = (), sample_rate: float = 0.0, defer: bool = True) -> None:
        self.stages = frozenset(stages)
        self.default_features: tuple[str, ...] | None = None
        self.features_by_key: dict[str, tuple[str, ...]] = {}
        if isinstance(features, (list, tuple)):
            self.default_features = tuple(str(f) for f in features)
        elif isinstance(features, Mapping):
            for k, v in features.items():
                if isinstance(v, (list, tuple)):
                    self.features_by_key[str(k)] = tuple(str(f) for f in v)
        self.redact = frozenset(redact)
        self.sample_rate = max(0.0, min(1.0, float(sample_rate)))
        # encode in the span export thread when the SDK's own processors allow it (profile_export.py)
        self.defer = bool(defer)

    def configured_names(self, qualname: str, model: str | None) -> tuple[str, ...] | None:
        if self.features_by_key:
            got = stages.by_target(self.features_by_key, qualname, model)
            if got is not None:
                return got
        return self.default_features


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def load_settings(environ: Mapping[str, str] | None = None, table: Mapping[str, Any] | None = None) -> ProfileSettings | None:
    """Settings from ``[tool.stagetrace.profile]`` (``table``) and ``STAGETRACE_PROFILE*``
    (environment wins); None when profiling is switched off."""
    env = os.environ if environ is None else environ
    t = dict(table or {})
    enabled = env.get(semconv.ENV_PROFILE, "").strip().lower()
    if enabled in ("0", "false", "no", "off") or (not enabled and t.get("enabled") is False):
        return None
    stages = t.get("stages", [semconv.STAGE_INFERENCE])
    if isinstance(stages, str):
        stages = _split_list(stages)
    if env.get(semconv.ENV_PROFILE_STAGES):
        stages = _split_list(env[semconv.ENV_PROFILE_STAGES])
    features = t.get("features")
    if env.get(semconv.ENV_PROFILE_FEATURES):
        features = list(_split_list(env[semconv.ENV_PROFILE_FEATURES]))
    redact = t.get("redact", [])
    if isinstance(redact, str):
        redact = _split_list(redact)
    if env.get(semconv.ENV_PROFILE_REDACT):
        redact = _split_list(env[semconv.ENV_PROFILE_REDACT])
    rate: Any = t.get("sample_rate", 0.0)
    if env.get(semconv.ENV_PROFILE_SAMPLE_RATE):
        rate = env[semconv.ENV_PROFILE_SAMPLE_RATE]
    try:
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError
    except (TypeError, ValueError):
        _logger.warning("stagetrace: profile sample rate %r is not a number in [0, 1]; raw samples stay off", rate)
        rate = 0.0
    defer_text = env.get(semconv.ENV_PROFILE_DEFER, "").strip().lower()
    defer = defer_text not in ("0", "false", "no", "off") if defer_text else t.get("defer", True) is not False
    return ProfileSettings(stages=tuple(str(s) for s in stages), features=features,
                           redact=tuple(str(r) for r in redact), sample_rate=rate, defer=defer)
