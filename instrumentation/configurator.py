"""StagetraceConfigurator: the SDK set-up plus log correlation, per worker process.

* Providers, exporters, resource: the standard ``_OTelSDKConfigurator`` path,
  so every ``OTEL_*`` variable keeps its standard meaning.
* Log correlation (record factory), the OTLP log handler and the optional JSON
  console format: ``stagetrace.instrumentation.logs``.
* One ``service.instance.id`` per worker process. ``uvicorn --workers`` spawns
  fresh interpreters, which run this configurator again and get a fresh id.
  gunicorn forks workers from an already configured master: the SDK (>= 1.39)
  refreshes the id and its export threads after fork; on older SDKs our
  ``register_at_fork`` hook does it, so each worker is its own instance either way.
* Per-request DEBUG logs, when ``STAGETRACE_DEBUG_REQUESTS`` is on:
  ``stagetrace.instrumentation.debuglog``.
* Flush on SIGTERM: ``stagetrace.instrumentation.shutdown`` (uvicorn and its
  gunicorn workers end with a SIG_DFL re-raise that skips atexit).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.resources import Resource

from stagetrace import semconv

from . import debuglog, deferred, logs, shutdown

_logger = logging.getLogger("stagetrace.instrumentation")


# Modules the OTLP/HTTP exporter imports lazily on its first request (requests'
# netrc lookup). Imported here, in the main thread, so an export thread of a
# gunicorn master is never half-way through an import when a worker is forked:
# a worker importing the same module would wait forever on a lock whose owner
# does not exist in the child.
_LAZY_EXPORT_IMPORTS = ("netrc", "shlex")


def _prewarm_exporter_imports() -> None:
    import importlib

    for name in _LAZY_EXPORT_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def _truthy(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _logs_exported() -> bool:
    names = os.environ.get("OTEL_LOGS_EXPORTER", "").strip().lower()
    return bool(names) and names != "none"


def _someone_else_exports_logs() -> bool:
    """The user chose another OTLP log handler: the SDK's or the logging instrumentation's."""
    if _truthy("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"):
        return True
    if _truthy("OTEL_PYTHON_LOG_AUTO_INSTRUMENTATION"):
        disabled = [x.strip() for x in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")]
        return "logging" not in disabled and importlib.util.find_spec("opentelemetry.instrumentation.logging") is not None
    return False


def _instance_id(provider) -> str | None:
    resource = getattr(provider, "resource", None)
    return None if resource is None else resource.attributes.get(semconv.SERVICE_INSTANCE_ID)


class _ForkGuard:
    parent_id: str | None = None
    registered = False


def _after_fork_in_child() -> None:
    """Give a forked worker its own service.instance.id if the SDK has not already.

    A fork handler: no import (the parent's other threads may have held import locks
    at fork time, and they do not exist here) and no logging call (deferred)."""
    try:
        tracer_provider = trace_api.get_tracer_provider()
        if _ForkGuard.parent_id is None or _instance_id(tracer_provider) != _ForkGuard.parent_id:
            return  # the SDK already refreshed it
        fresh = Resource({semconv.SERVICE_INSTANCE_ID: str(uuid.uuid4())})
        for provider in (tracer_provider, metrics_api.get_meter_provider(), get_logger_provider()):
            update = getattr(provider, "_update_resource", None)
            if callable(update):
                update(fresh)
            elif getattr(provider, "_resource", None) is not None:
                provider._resource = provider._resource.merge(fresh)
        _ForkGuard.parent_id = _instance_id(tracer_provider)
    except Exception:
        deferred.debug(_logger, "stagetrace: could not refresh service.instance.id after fork", exc_info=True,
                       defer=True)


class StagetraceConfigurator(_OTelSDKConfigurator):
    """The standard SDK configuration, plus stagetrace's log correlation."""

    def _configure(self, **kwargs) -> None:
        # The SDK's own (deprecated) log handler only if the user asked for it by name.
        if "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED" not in os.environ:
            kwargs.setdefault("setup_logging_handler", False)
        resource_attributes = dict(kwargs.pop("resource_attributes", None) or {})
        if semconv.SERVICE_INSTANCE_ID not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            # Older SDKs have no service.instance.id detector; newer ones replace this per process.
            resource_attributes.setdefault(semconv.SERVICE_INSTANCE_ID, str(uuid.uuid4()))
        _prewarm_exporter_imports()
        super()._configure(resource_attributes=resource_attributes, **kwargs)

        try:
            if _truthy(semconv.ENV_LOG_CORRELATION, "true"):
                logs.install(otlp=_logs_exported() and not _someone_else_exports_logs())
        except Exception:
            deferred.warning(_logger, "stagetrace: log correlation could not be installed", exc_info=True)

        # Per-request DEBUG logs (off unless STAGETRACE_DEBUG_REQUESTS is on).
        try:
            debug_settings = debuglog.load_settings()
            if debug_settings is not None:
                debuglog.install(debug_settings)
        except Exception:
            deferred.warning(_logger, "stagetrace: per-request debug logging is off", exc_info=True)

        # Flush on SIGTERM where the process would otherwise die without atexit
        # (uvicorn re-raises the signal to SIG_DFL after its graceful shutdown).
        try:
            shutdown.setup()
        except Exception:
            deferred.warning(_logger, "stagetrace: flush-on-SIGTERM could not be installed", exc_info=True)

        _ForkGuard.parent_id = _instance_id(trace_api.get_tracer_provider())
        if hasattr(os, "register_at_fork") and not _ForkGuard.registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _ForkGuard.registered = True
