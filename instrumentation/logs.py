"""Log correlation: trace/span ids, service name and ``ml.stage`` on every LogRecord.

Why a *record factory* rather than a handler or filter: a factory runs when the
record is created, in the caller's context, for every logger — uvicorn's own,
loggers configured before we were loaded, handlers added later by
``dictConfig``. Handlers and filters only see the loggers they are attached to,
which is how the classic "trace_id=0" reports happen (contrib#2346).

Outside a span the id fields are empty strings: formatters that reference them
keep working, and no fake all-zero id ever reaches a log line.

Three pieces are installed by the configurator:

* the record factory (always);
* an OTLP handler on the root logger (when log export is on), which keeps
  itself attached across ``basicConfig``/``dictConfig``/``fileConfig``;
* the JSON formatter on console handlers when ``STAGETRACE_LOG_FORMAT=json``.
  It is also usable directly in ``dictConfig`` as
  ``stagetrace.instrumentation.logs.JsonFormatter``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord as OtelLogRecord
from opentelemetry._logs import get_logger_provider
from opentelemetry.context import get_current

from stagetrace import semconv

from .wrapping import current_model_name, current_stage

_INJECTED = (semconv.LOG_TRACE_ID, semconv.LOG_SPAN_ID, semconv.LOG_TRACE_SAMPLED,
             semconv.LOG_SERVICE_NAME, semconv.LOG_ML_STAGE)


# --- record factory --------------------------------------------------------------
class _FactoryState:
    original: Callable | None = None
    installed: Callable | None = None
    service_name: str | None = None


_factory = _FactoryState()


def service_name() -> str:
    """service.name of the configured tracer provider's resource ('' if none)."""
    if _factory.service_name is None:
        provider = trace_api.get_tracer_provider()
        resource = getattr(provider, "resource", None)
        if resource is None:
            return ""  # not configured yet: don't cache
        _factory.service_name = str(resource.attributes.get(semconv.SERVICE_NAME, ""))
    return _factory.service_name


def correlate(record: logging.LogRecord) -> logging.LogRecord:
    """Set the correlation fields on ``record`` from the current context."""
    ctx = trace_api.get_current_span().get_span_context()
    if ctx.is_valid:
        record.otelTraceID = format(ctx.trace_id, "032x")
        record.otelSpanID = format(ctx.span_id, "016x")
        record.otelTraceSampled = ctx.trace_flags.sampled
    else:
        record.otelTraceID = ""
        record.otelSpanID = ""
        record.otelTraceSampled = False
    record.otelServiceName = service_name()
    record.ml_stage = current_stage() or ""
    return record


def install_record_factory() -> None:
    """Wrap the current LogRecord factory (idempotent)."""
    current = logging.getLogRecordFactory()
    if _factory.installed is not None and current is _factory.installed:
        return
    original = current

    def factory(*args, **kwargs):
        record = original(*args, **kwargs)
        try:
            correlate(record)
        except Exception:  # logging must never fail because of us
            pass
        return record

    _factory.original = original
    _factory.installed = factory
    _factory.service_name = None
    logging.setLogRecordFactory(factory)


def uninstall_record_factory() -> None:
    if _factory.installed is not None and logging.getLogRecordFactory() is _factory.installed:
        logging.setLogRecordFactory(_factory.original)
    _factory.installed = _factory.original = None
    _factory.service_name = None


# --- JSON formatter ---------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, trace_id,
    span_id, service, ml.stage (+ ml.model.name), exception.

    Works without our record factory too (ids are then read at format time), so it
    can be named in any ``dictConfig``.
    """

    def __init__(self, fmt=None, datefmt=None, style="%", validate=True, *, defaults=None, static_fields=None):
        super().__init__(fmt=fmt, datefmt=datefmt)
        self.static_fields = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, semconv.LOG_TRACE_ID):
            try:
                correlate(record)
            except Exception:
                pass
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, object] = {
            "timestamp": ts,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, semconv.LOG_TRACE_ID, "")
        if trace_id:
            out["trace_id"] = trace_id
            out["span_id"] = getattr(record, semconv.LOG_SPAN_ID, "")
        service = getattr(record, semconv.LOG_SERVICE_NAME, "")
        if service:
            out["service"] = service
        stage = getattr(record, semconv.LOG_ML_STAGE, "")
        if stage:
            out[semconv.ML_STAGE] = stage
            model = current_model_name()
            if model:
                out[semconv.ML_MODEL_NAME] = model
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        out.update(self.static_fields)
        return json.dumps(out, default=str, ensure_ascii=False)


# --- OTLP handler ------------------------------------------------------------------
# Standard LogRecord attributes: not exported as OTLP attributes.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"} | set(_INJECTED)

try:
    from opentelemetry.sdk._logs._internal import std_to_otel as _std_to_otel  # type: ignore
except Exception:  # pragma: no cover - SDK layout differs
    _std_to_otel = None


class OtlpLogHandler(logging.Handler):
    """Sends stdlib log records to the global OTel LoggerProvider (and so over OTLP).

    Our own small handler instead of the SDK's deprecated ``LoggingHandler``: it
    exports ``ml.stage`` as an attribute and leaves out the correlation fields
    the record factory adds (trace and span ids travel in the record's context).
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level=level)
        self._loggers: dict[str, object] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("opentelemetry"):
            return  # the SDK's own export errors: exporting them could loop
        try:
            name = record.name
            logger = self._loggers.get(name)
            if logger is None:
                logger = get_logger_provider().get_logger(name)
                if len(self._loggers) < 1024:
                    self._loggers[name] = logger
            attributes: dict[str, object] = {}
            for k, v in vars(record).items():
                if k not in _RESERVED and isinstance(v, (str, bool, int, float)):
                    attributes[k] = v
            stage = getattr(record, semconv.LOG_ML_STAGE, "")
            if stage:
                attributes[semconv.ML_STAGE] = stage
            attributes["code.file.path"] = record.pathname
            attributes["code.function.name"] = record.funcName
            attributes["code.line.number"] = record.lineno
            if record.exc_info and record.exc_info[0] is not None:
                attributes[semconv.EXCEPTION_TYPE] = record.exc_info[0].__name__
                attributes[semconv.EXCEPTION_MESSAGE] = str(record.exc_info[1])
                attributes[semconv.EXCEPTION_STACKTRACE] = "".join(traceback.format_exception(*record.exc_info))
            level = {"WARNING": "WARN", "CRITICAL": "FATAL"}.get(record.levelname, record.levelname)
            kwargs = dict(
                timestamp=int(record.created * 1e9),
                observed_timestamp=time.time_ns(),
                context=get_current(),
                severity_text=level,
                body=record.getMessage(),
                attributes=attributes,
            )
            if _std_to_otel is not None:
                kwargs["severity_number"] = _std_to_otel(record.levelno)
            logger.emit(OtelLogRecord(**kwargs))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Deliberately a no-op. ``dictConfig`` flushes every handler ever created
        (uvicorn calls it at start-up); a blocking OTLP force-flush there stalls the
        app for the exporter's whole retry budget when the collector is down. The
        LoggerProvider flushes its batches itself, and at exit."""


# --- installation into the logging tree ------------------------------------------
class _Install:
    lock = threading.RLock()
    otlp_handler: OtlpLogHandler | None = None
    json_on: bool = False
    json_handler: logging.Handler | None = None  # our stdout handler when the root had none
    patched: dict[str, Callable] = {}


_inst = _Install()

# Loggers whose console handlers get the JSON formatter besides the root's.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn", "gunicorn.error", "gunicorn.access")


def _is_console(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def _apply_json() -> None:
    root = logging.getLogger()
    consoles = [h for h in root.handlers if _is_console(h) and h is not _inst.json_handler]
    if consoles:
        if _inst.json_handler is not None:
            root.removeHandler(_inst.json_handler)
            _inst.json_handler = None
        for h in consoles:
            if not isinstance(h.formatter, JsonFormatter):
                h.setFormatter(JsonFormatter())
    elif _inst.json_handler is None:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(JsonFormatter())
        _inst.json_handler = h
        root.addHandler(h)
    for name in SERVER_LOGGERS:
        for h in logging.getLogger(name).handlers:
            if _is_console(h) and not isinstance(h.formatter, JsonFormatter):
                h.setFormatter(JsonFormatter())


def _reattach() -> None:
    """After a logging config call: put our handlers back, re-apply JSON."""
    root = logging.getLogger()
    if _inst.otlp_handler is not None and _inst.otlp_handler not in root.handlers:
        root.addHandler(_inst.otlp_handler)
    if _inst.json_on:
        _apply_json()


def _patch_config_functions() -> None:
    """Keep our handlers across basicConfig/dictConfig/fileConfig.

    They are taken off the root for the duration of the call (so basicConfig still
    sees an unconfigured root and applies its level) and put back afterwards.
    """
    if _inst.patched:
        return

    def make(original):
        def patched(*args, **kwargs):
            root = logging.getLogger()
            ours = [h for h in (_inst.otlp_handler, _inst.json_handler) if h is not None and h in root.handlers]
            for h in ours:
                root.removeHandler(h)
            if _inst.json_handler is not None and _inst.json_handler in ours:
                _inst.json_handler = None  # recreated by _apply_json if still needed
            try:
                return original(*args, **kwargs)
            finally:
                try:
                    _reattach()
                except Exception:
                    pass

        patched.__wrapped__ = original  # type: ignore[attr-defined]
        return patched

    for mod, name in ((logging, "basicConfig"), (logging.config, "dictConfig"), (logging.config, "fileConfig")):
        original = getattr(mod, name)
        _inst.patched[f"{mod.__name__}.{name}"] = original
        setattr(mod, name, make(original))


def _unpatch_config_functions() -> None:
    for key, original in _inst.patched.items():
        modname, name = key.rsplit(".", 1)
        setattr(sys.modules[modname], name, original)
    _inst.patched = {}


def install(*, otlp: bool, log_format: str | None = None) -> None:
    """Install correlation (+ OTLP export, + JSON console format). Idempotent."""
    with _inst.lock:
        install_record_factory()
        fmt = (log_format if log_format is not None else os.environ.get(semconv.ENV_LOG_FORMAT, "")).strip().lower()
        _inst.json_on = fmt == "json"
        if otlp and _inst.otlp_handler is None:
            _inst.otlp_handler = OtlpLogHandler()
        _patch_config_functions()
        _reattach()


def uninstall() -> None:
    with _inst.lock:
        root = logging.getLogger()
        for h in (_inst.otlp_handler, _inst.json_handler):
            if h is not None and h in root.handlers:
                root.removeHandler(h)
        _inst.otlp_handler = _inst.json_handler = None
        _inst.json_on = False
        _unpatch_config_functions()
        uninstall_record_factory()
