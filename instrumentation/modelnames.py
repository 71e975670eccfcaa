"""The ``ml.model.name`` and ``ml.model.version`` a stage span records, when the user names them.

Why: the hooks only know what the library knows: a class name (``LGBMClassifier``), a
file name (``fraud.onnx``), a hub id. That tells spans apart, but it is not the model's
identity: two models of the same class share it, and a retrain saved under another file
name changes it. ``investigate drift --model NAME``, ``investigate quality --model NAME``
and the watch rules select spans by that name, so it must be the one the team uses and
stay the same across releases. Where it comes from, first found wins:

1. per stage: ``[tool.stagetrace.model.stages]`` (app ``pyproject.toml`` or the
   ``STAGETRACE_CONFIG`` file), keyed by a stage target (``module:qualname`` or the
   qualname) or by the name the library gives (``LGBMClassifier``, ``fraud.onnx``);
   a value is the name, or a table ``{name = ..., version = ...}``;
2. for the process, on the spans of the profiled stages (``STAGETRACE_PROFILE_STAGES``,
   default ``inference``: the spans drift and quality read; a tokenizer's or a scaler's
   ``preprocess`` span keeps its own name): ``STAGETRACE_MODEL_NAME``, else
   ``[tool.stagetrace.model] name``, else ``ml.model.name`` in the SDK resource
   (``OTEL_RESOURCE_ATTRIBUTES``). The specific variable wins over the generic resource
   list, as ``OTEL_SERVICE_NAME`` wins over ``service.name`` in it;
3. the library's name.

The version is a fill-in, as before: the per-stage entry, else the library's (ONNX
metadata), else ``STAGETRACE_MODEL_VERSION``, else ``[tool.stagetrace.model] version``,
else ``ml.model.version`` in the resource, on every stage span.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from stagetrace import semconv

from . import deferred, stages

_logger = logging.getLogger("stagetrace.instrumentation")

_CACHE_MAX = 256


class ModelNaming:
    """The user's model names and versions; built once by the instrumentor."""

    def __init__(self, *, name: str | None = None, version: str | None = None,
                 named_stages: frozenset[str] = frozenset({semconv.STAGE_INFERENCE}),
                 by_target: Mapping[str, tuple[str | None, str | None]] | None = None) -> None:
        self.name = name
        self.version = version
        self.named_stages = frozenset(named_stages)
        self.by_target = dict(by_target or {})
        self._cache: dict[tuple, tuple[str | None, str | None]] = {}

    def resolve(self, stage: str, qualname: str, name: str | None, version: str | None
                ) -> tuple[str | None, str | None]:
        """(name, version) for a span of ``stage`` from target ``qualname`` whose library
        said (``name``, ``version``). Cached: called once per span."""
        key = (stage, qualname, name, version)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        own = stages.by_target(self.by_target, qualname, name) if self.by_target else None
        new_name = new_version = None
        if own is not None:
            new_name, new_version = own
        if new_name is None:
            new_name = self.name if self.name is not None and stage in self.named_stages else name
        if new_version is None:
            new_version = version if version is not None else self.version
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        got = self._cache[key] = (new_name, new_version)
        return got


def _text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    _warn(where, f"expected a non-empty string, got {value!r}")
    return None


def _warn(where: str, why: str) -> None:
    deferred.warning(_logger, "stagetrace: ignoring %s: %s", where, why)


def _per_target(table: Any) -> dict[str, tuple[str | None, str | None]]:
    where = "[tool.stagetrace.model.stages]"
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        _warn(where, "it must be a table")
        return {}
    out: dict[str, tuple[str | None, str | None]] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            entry = (_text(value.get("name"), f"{where} {key}.name"), _text(value.get("version"), f"{where} {key}.version"))
            unknown = set(value) - {"name", "version"}
            if unknown:
                _warn(f"{where} {key}", f"unknown keys {sorted(unknown)} (name, version)")
        else:
            entry = (_text(value, f"{where} {key}"), None)
        if entry != (None, None):
            out[str(key)] = entry
    return out


def resource_attributes(provider: Any = None) -> Mapping[str, Any]:
    """The SDK resource's attributes: the tracer provider's if it has one (so a resource
    built in code counts), else what the SDK would build from ``OTEL_RESOURCE_ATTRIBUTES``."""
    resource = getattr(provider, "resource", None)
    attrs = getattr(resource, "attributes", None)
    if isinstance(attrs, Mapping):
        return attrs
    if not os.environ.get("OTEL_RESOURCE_ATTRIBUTES"):
        return {}
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector

        return OTELResourceDetector().detect().attributes
    except Exception:  # API-only install: no SDK resource
        return {}


def load(environ: Mapping[str, str] | None = None, table: Any = None, resource: Mapping[str, Any] | None = None,
         named_stages: frozenset[str] = frozenset({semconv.STAGE_INFERENCE})) -> ModelNaming | None:
    """Settings from ``STAGETRACE_MODEL_NAME``/``_VERSION``, ``[tool.stagetrace.model]``
    (``table``) and the resource; None when none of them names anything."""
    env = os.environ if environ is None else environ
    if table is not None and not isinstance(table, Mapping):
        _warn("[tool.stagetrace.model]", "it must be a table")
        table = None
    t = table or {}
    res = resource or {}
    name = (_text(env.get(semconv.ENV_MODEL_NAME) or None, semconv.ENV_MODEL_NAME)
            or _text(t.get("name"), "[tool.stagetrace.model] name")
            or _text(res.get(semconv.ML_MODEL_NAME), f"{semconv.ML_MODEL_NAME} in the resource"))
    version = (_text(env.get(semconv.ENV_MODEL_VERSION) or None, semconv.ENV_MODEL_VERSION)
               or _text(t.get("version"), "[tool.stagetrace.model] version")
               or _text(res.get(semconv.ML_MODEL_VERSION), f"{semconv.ML_MODEL_VERSION} in the resource"))
    by_target = _per_target(t.get("stages"))
    if name is None and version is None and not by_target:
        return None
    return ModelNaming(name=name, version=version, named_stages=named_stages, by_target=by_target)
