"""StagetraceInstrumentor: library hooks + configured user-code stages.

Nothing is imported or wrapped at instrument time. Each library hook and each
``STAGETRACE_STAGES`` target registers a post-import hook; the wrapping happens
the moment the app imports the module, and ``uninstrument()`` removes every
wrapper and pending hook.
"""

from __future__ import annotations

import email.parser  # noqa: F401 - importlib.metadata.version() imports it lazily (see below)
import importlib
import importlib.metadata
import logging
import os
import reprlib
from collections.abc import Collection
from types import ModuleType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
# Imported here, not in _version_ok (nor lazily by importlib.metadata): that runs in a
# post-import hook, under the import lock of the library being imported (deferred.py).
from packaging.specifiers import SpecifierSet

from stagetrace import semconv

from . import (deferred, hook_feast, hook_lightgbm, hook_onnxruntime, hook_sklearn, hook_torch,
               hook_transformers, hook_xgboost, importhook, logs, metrics, modelnames, profiling, stages, wrapping)
from .package import _hooked_libraries, _instruments

_logger = logging.getLogger("stagetrace.instrumentation")

HOOKS = (hook_sklearn, hook_xgboost, hook_lightgbm, hook_torch, hook_onnxruntime, hook_transformers, hook_feast)

_PAYLOAD_LIMIT = 1024


def capture_payload(span, stage: str, args: tuple, kwargs: dict, result: Any) -> None:
    """The opt-in payload hook behind ``STAGETRACE_CAPTURE_PAYLOADS=true``:
    a bounded repr of the first input and of the result."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = _PAYLOAD_LIMIT
    r.maxlist = r.maxtuple = r.maxdict = 16
    first = args[0] if args else (next(iter(kwargs.values())) if kwargs else None)
    span.set_attribute(semconv.ML_INPUT_VALUE, r.repr(first)[:_PAYLOAD_LIMIT])
    span.set_attribute(semconv.ML_OUTPUT_VALUE, r.repr(result)[:_PAYLOAD_LIMIT])


def _load_payload_hook(spec: str):
    mod, _, attr = spec.partition(":")
    fn = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn


def _version_ok(dist: str) -> bool:
    """Called from a post-import hook: reads the installed metadata, logs only through
    :mod:`.deferred`."""
    spec = _hooked_libraries.get(dist)
    if not spec:
        return True
    try:
        try:
            v = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return True  # vendored / renamed install: try anyway, wrapping is defensive
        if SpecifierSet(spec).contains(v, prereleases=True):
            return True
        deferred.warning(_logger, "stagetrace: %s %s is outside the supported range %s; its hook is off", dist, v, spec)
        return False
    except Exception:
        return True


def _library_callback(hook):
    state = {"checked": None}

    def callback(module: ModuleType) -> None:
        if state["checked"] is None:
            state["checked"] = _version_ok(hook.DIST)
        if state["checked"]:
            hook.on_import(module)

    return callback


def _stage_callback(target: stages.StageTarget):
    # Runs under the module's import lock: stages._warn defers its warning (deferred.py).
    def callback(module: ModuleType) -> None:
        try:
            owner, attr = stages.resolve(module, target.qualname)
        except AttributeError as exc:
            stages._warn(target.entry, target.source, f"{exc}")
            return
        if not wrapping.wrap(owner, attr, wrapping.StageSpec(target.stage, target.qualname)):
            stages._warn(target.entry, target.source, f"{target.qualname} is not a function or method")

    return callback


class StagetraceInstrumentor(BaseInstrumentor):
    """Spans for feature_fetch / preprocess / inference, from library hooks and config.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``meter_provider``,
    ``stages`` (a ``STAGETRACE_STAGES``-style string, replaces the env/config
    sources), ``payload_hook`` (callable ``(span, stage, args, kwargs, result)``,
    opt-in payload capture), ``profile`` (a ``profiling.ProfileSettings``, or False:
    no input/output profiles; default from ``STAGETRACE_PROFILE*`` and
    ``[tool.stagetrace.profile]``), ``libraries`` (iterable of hook names such as
    ``"sklearn"``; default all).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        wrapping.settings.explicit_provider = kwargs.get("tracer_provider")
        metrics._state.explicit_provider = kwargs.get("meter_provider")
        metrics.reset()
        wrapping.settings.payload_hook = self._payload_hook(kwargs.get("payload_hook"))
        table = self._tool_table()
        wrapping.settings.profile = self._profile_settings(kwargs.get("profile"), table)
        wrapping.settings.naming = self._model_naming(table, wrapping.settings.profile)
        logs.install_record_factory()

        wanted = kwargs.get("libraries")
        for hook in HOOKS:
            if wanted is not None and hook.FRAMEWORK not in wanted and hook.DIST not in wanted:
                continue
            cb = _library_callback(hook)
            for name, submodules in hook.WATCH:
                importhook.when_imported(name, cb, submodules=submodules)

        targets = stages.parse_list(kwargs["stages"], "stages=") if "stages" in kwargs else stages.load()
        for target in targets:
            if not stages.module_findable(target.module):
                stages._warn(target.entry, target.source,
                             f"module {target.module!r} not found (it will still be wrapped if it is imported later)")
            importhook.when_imported(target.module, _stage_callback(target))

    @staticmethod
    def _tool_table() -> dict:
        try:
            return stages.tool_table()
        except Exception:
            _logger.warning("stagetrace: cannot read [tool.stagetrace]; using the defaults", exc_info=True)
            return {}

    @staticmethod
    def _model_naming(table: dict, profile):
        """Model names/versions from env, ``[tool.stagetrace.model]`` and the resource (modelnames.py)."""
        try:
            provider = wrapping.settings.explicit_provider or trace_api.get_tracer_provider()
            named = profile.stages if profile is not None else frozenset({semconv.STAGE_INFERENCE})
            return modelnames.load(table=table.get("model"), resource=modelnames.resource_attributes(provider),
                                   named_stages=named)
        except Exception:
            _logger.warning("stagetrace: cannot read the model name settings; library names are used", exc_info=True)
            return None

    @staticmethod
    def _profile_settings(explicit, tool: dict):
        """``profile=`` (a ProfileSettings, or False for off), else env + ``[tool.stagetrace.profile]``."""
        if explicit is False:
            return None
        if explicit is not None:
            return explicit
        try:
            table = tool.get("profile")
            if table is not None and not isinstance(table, dict):
                _logger.warning("stagetrace: [tool.stagetrace.profile] must be a table; using the defaults")
                table = None
            return profiling.load_settings(table=table)
        except Exception:
            _logger.warning("stagetrace: cannot read the profile settings; input/output profiles are off", exc_info=True)
            return None

    @staticmethod
    def _payload_hook(explicit):
        if explicit is not None:
            return explicit
        spec = os.environ.get(semconv.ENV_PAYLOAD_HOOK, "").strip()
        if spec:
            try:
                return _load_payload_hook(spec)
            except Exception as exc:
                deferred.warning(_logger, "stagetrace: %s=%s cannot be loaded (%s); payloads are not captured",
                                 semconv.ENV_PAYLOAD_HOOK, spec, exc)
                return None
        if wrapping.env_flag(semconv.ENV_CAPTURE_PAYLOADS):
            return capture_payload
        return None

    def _uninstrument(self, **kwargs: Any) -> None:
        importhook.clear()
        wrapping.unwrap_all()
        wrapping.settings.explicit_provider = None
        wrapping.settings.payload_hook = None
        wrapping.settings.profile = None
        wrapping.settings.naming = None
        metrics._state.explicit_provider = None
        metrics.reset()
        logs.uninstall_record_factory()
