"""Per-request debug logging: DEBUG logs for one request's trace, in every service it reaches.

A request that arrives with the header ``stagetrace-debug: 1`` (the name is
``STAGETRACE_DEBUG_HEADER``), or with that entry in its W3C baggage, is *admitted* by
a per-process rate limit and then carries the baggage entry ``stagetrace-debug=1``
in its context. While that context is current, ``logger.debug(...)`` (any level down
to DEBUG) is enabled on every logger, whatever its level; the records get the trace
and span ids like any other and go to the OTLP log handler. The W3C baggage
propagator carries the entry to the next service (``requests``/``httpx`` clients
instrumented by OpenTelemetry inject it), which admits it again under its own limit.

Two small pieces, installed by the configurator only when ``STAGETRACE_DEBUG_REQUESTS``
is on (off by default):

* :class:`DebugPropagator`, appended to the global propagator (after tracecontext and
  baggage, so it sees the remote trace id and the incoming baggage): turns the header
  into the baggage entry when admitted, and *removes* a refused entry, so a refused
  request is refused in every service downstream too, and a client cannot bypass the
  limit by sending the baggage itself. Its ``inject`` does nothing: the baggage
  propagator sends the entry on.
* a level override: ``logging.Logger.isEnabledFor`` answers True for DEBUG and above
  when the current context carries the entry. It reads one context value and takes
  no lock (a logging call may run inside an import, see ``deferred.py``); the
  override is only consulted when a logger would have said no, and never for the
  ``opentelemetry`` loggers (their export errors must not loop) nor under
  ``logging.disable``.

Rate limit: a token bucket per process, ``STAGETRACE_DEBUG_RATE`` (default 10/min,
a burst of up to that many): one token per *trace*, decisions remembered per trace id
(a fan-out or a retry of an admitted trace in the same service stays admitted). A
request with no incoming trace (the edge: no ``traceparent``) costs one token.
Without a lock, two threads admitting at the same instant may let one extra through.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import baggage as baggage_api
from opentelemetry import propagate
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, TextMapPropagator, default_getter, default_setter

from stagetrace import semconv

DEFAULT_KEY = "stagetrace-debug"
DEFAULT_RATE = "10/min"
_TRUE = ("1", "true", "yes", "on")
_PERIODS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$")
_MAX_REMEMBERED = 4096  # trace ids whose decision is kept (admitted or refused)


class DebugSettings:
    """What the configurator reads from ``STAGETRACE_DEBUG_*``."""

    def __init__(self, key: str = DEFAULT_KEY, per_second: float = 10 / 60.0, burst: float = 10.0) -> None:
        self.key = key.strip().lower()
        self.per_second = per_second
        self.burst = max(1.0, burst)


def parse_rate(text: str) -> tuple[float, float]:
    """``10/min`` -> (tokens per second, burst). A plain number is per minute."""
    m = _RATE_RE.match(text.strip().lower())
    if not m or (m.group(2) and m.group(2) not in _PERIODS):
        raise ValueError(f"invalid {semconv.ENV_DEBUG_RATE} {text!r}: use N/s, N/min or N/h, e.g. 10/min")
    n = float(m.group(1))
    return n / _PERIODS[m.group(2) or "min"], n


def load_settings(environ: Mapping[str, str] | None = None) -> DebugSettings | None:
    """Settings from the environment; None (the default) when per-request debug is off.
    Raises ValueError on a bad rate or key (the configurator warns and leaves it off)."""
    env = os.environ if environ is None else environ
    if env.get(semconv.ENV_DEBUG_REQUESTS, "").strip().lower() not in _TRUE:
        return None
    key = env.get(semconv.ENV_DEBUG_HEADER, "").strip() or DEFAULT_KEY
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", key):  # a header name that is also a baggage key
        raise ValueError(f"invalid {semconv.ENV_DEBUG_HEADER} {key!r}: use a header name such as {DEFAULT_KEY}")
    per_second, burst = parse_rate(env.get(semconv.ENV_DEBUG_RATE, "").strip() or DEFAULT_RATE)
    return DebugSettings(key, per_second, burst)


class RateLimiter:
    """Token bucket; one decision per trace id, remembered. No lock (see module doc)."""

    def __init__(self, per_second: float, burst: float, clock=time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.last = clock()
        self.decided: dict[int, bool] = {}
        self.admitted = 0
        self.refused = 0

    def admit(self, trace_id: int) -> bool:
        if trace_id:
            known = self.decided.get(trace_id)
            if known is not None:
                return known
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_second)
        self.last = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
            self.admitted += 1
        else:
            self.refused += 1
        if trace_id:
            if len(self.decided) >= _MAX_REMEMBERED:
                try:
                    del self.decided[next(iter(self.decided))]  # the oldest decision
                except (KeyError, RuntimeError, StopIteration):
                    pass
            self.decided[trace_id] = ok
        return ok


class DebugPropagator(TextMapPropagator):
    """Header or baggage entry -> admitted baggage entry (or none); see the module doc."""

    def __init__(self, settings: DebugSettings, limiter: RateLimiter | None = None) -> None:
        self.key = settings.key
        self.limiter = limiter or RateLimiter(settings.per_second, settings.burst)

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        ctx = context if context is not None else Context()
        try:
            values = getter.get(carrier, self.key)
            asked = bool(values) and str(values[0]).strip().lower() in _TRUE
            carried = baggage_api.get_baggage(self.key, ctx)
            if not asked and carried is None:
                return ctx
            if not asked and str(carried).strip().lower() not in _TRUE:
                return baggage_api.remove_baggage(self.key, ctx)
            trace_id = trace_api.get_current_span(ctx).get_span_context().trace_id  # the remote parent's, if any
            if self.limiter.admit(trace_id):
                return baggage_api.set_baggage(self.key, "1", ctx)
            return baggage_api.remove_baggage(self.key, ctx)
        except Exception:  # a propagator must never fail the request
            return ctx

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        """Nothing: the W3C baggage propagator sends the entry on."""

    @property
    def fields(self) -> set[str]:
        return {self.key}


def debug_active(key: str = DEFAULT_KEY) -> bool:
    """Whether the current context carries the admitted debug entry."""
    return baggage_api.get_baggage(key) == "1"


class _State:
    settings: DebugSettings | None = None
    propagator: DebugPropagator | None = None
    previous_textmap: Any = None
    original_is_enabled: Any = None


_state = _State()


def _make_is_enabled_for(original, key: str):
    get_baggage = baggage_api.get_baggage
    debug = logging.DEBUG

    def isEnabledFor(self, level):  # noqa: N802 - the logging API's name
        if original(self, level):
            return True
        try:
            if level < debug or self.disabled or self.manager.disable >= level:
                return False
            if get_baggage(key) != "1":
                return False
            return not self.name.startswith("opentelemetry")
        except Exception:
            return False

    isEnabledFor.__wrapped__ = original  # type: ignore[attr-defined]
    return isEnabledFor


def install(settings: DebugSettings) -> DebugPropagator:
    """Append the propagator to the global one and install the level override (idempotent)."""
    if _state.propagator is not None:
        uninstall()
    prop = DebugPropagator(settings)
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([previous, prop]))
    _state.previous_textmap = previous
    _state.original_is_enabled = logging.Logger.isEnabledFor
    logging.Logger.isEnabledFor = _make_is_enabled_for(_state.original_is_enabled, settings.key)
    _state.settings, _state.propagator = settings, prop
    return prop


def uninstall() -> None:
    if _state.propagator is None:
        return
    if _state.original_is_enabled is not None:
        logging.Logger.isEnabledFor = _state.original_is_enabled
    if _state.previous_textmap is not None:
        propagate.set_global_textmap(_state.previous_textmap)
    _state.settings = _state.propagator = _state.previous_textmap = _state.original_is_enabled = None
