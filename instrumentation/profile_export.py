"""Deferred input/output profiles: encoded by the span export thread, not in the call.

Why: in a real call the capture code runs with cold caches (the model has just run), so
even the fast path and the SDK's cleaning of five attributes cost 20-30 us per call,
several times their hot-loop cost (docs/benchmarks.md). Deferred, the call only copies
the model's input and output arrays (one numpy call each) and leaves them on the span;
the exporter, which handles spans in batches with warm caches, computes the very same
attributes (``profile_capture.input_attributes``/``output_attributes``) just before it
exports the span. The exported span is the same as with inline capture.

When: only when every span processor of the tracer exports through an exporter we
wrapped (the SDK's own ``BatchSpanProcessor`` and ``SimpleSpanProcessor``): any other
processor (a user's, the concurrent multi-processor) may read the attributes in
``on_end``, so the capture stays inline there. Only numeric numpy arrays of at most
``MAX_DEFERRED_BYTES`` are deferred (other inputs keep the inline path); memory is
bounded by the span processor's own queue (a queued span holds its copies).

The pending data rides on the span's attribute mapping (shared by the live span and the
``ReadableSpan`` handed to processors), so it is freed with the span: a span the
processor drops never leaks it. Nothing here takes a lock: if two export threads see
the same span, both compute the same values; the marker is removed after the write, so
neither exports the span without them.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from . import deferred
from .wrapping import _DEFER_MAX_BYTES, _MARK

_logger = logging.getLogger("stagetrace.instrumentation")

# MARK: the attribute of the span's BoundedAttributes that holds the snapshots (wrapping._begin's list);
# MAX_DEFERRED_BYTES: per array (256 rows x 16 float64 features); larger ones are captured inline.
# Both live in wrapping.py, which writes them in the call.
MARK, MAX_DEFERRED_BYTES = _MARK, _DEFER_MAX_BYTES

_SDK_EXPORT = "opentelemetry.sdk.trace.export"
_KNOWN = ("BatchSpanProcessor", "SimpleSpanProcessor")


class ProfileResolvingExporter(SpanExporter):
    """Wraps a processor's exporter: fills in deferred profiles, then exports."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans):
        for span in spans:
            attrs = getattr(span, "_attributes", None)
            if attrs is not None and MARK in getattr(attrs, "__dict__", ()):
                resolve(attrs)
        return self._inner.export(spans)

    def shutdown(self, timeout_millis: int | None = None, **kwargs):
        # pass the processor's deadline on only to an exporter that takes one
        if timeout_millis is not None and "timeout_millis" in inspect.getfullargspec(self._inner.shutdown).args:
            kwargs["timeout_millis"] = timeout_millis
        return self._inner.shutdown(**kwargs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self._inner, "force_flush", None)
        return flush(timeout_millis) if flush is not None else True

    def __getattr__(self, name: str) -> Any:  # anything else the processor or a user asks the exporter
        return getattr(self._inner, name)


_reported: list = []


def resolve(attrs: Any) -> None:
    """Compute a span's deferred profile attributes and write them into its (ended,
    immutable) attribute mapping, as the SDK would have stored them."""
    pending = attrs.__dict__.get(MARK)
    if pending is None:
        return
    try:
        from . import profile_capture as pc

        new: dict[str, Any] = {}
        new.update(pc.resolve_input(*pending[:7]))
        if pending[7] is not None:  # the output's bytes, dtype, shape; the model is the input's slot 4
            new.update(pc.resolve_output(pending[7], pending[8], pending[9], pending[4]))
        d, maxlen, max_value_len = attrs._dict, attrs.maxlen, attrs.max_value_len
        for key, value in new.items():
            if isinstance(value, str) and max_value_len is not None:
                value = value[:max_value_len]  # what the SDK's attribute cleaning does
            if maxlen is not None and key not in d and len(d) >= maxlen:
                attrs.dropped += 1
                continue
            d[key] = value
    except Exception:
        if not _reported:
            _reported.append(True)
            deferred.warning(_logger, "stagetrace: internal error in a deferred profile; the span is exported "
                             "without it", exc_info=True)
    finally:
        attrs.__dict__.pop(MARK, None)


def _wrap(processor: Any) -> bool:
    """Wrap the exporter of one of the SDK's own span processors; False for any other."""
    cls = type(processor)
    if cls.__module__ != _SDK_EXPORT or cls.__name__ not in _KNOWN:
        return False  # a subclass or a user's processor may read attributes in on_end
    batch = getattr(processor, "_batch_processor", None)  # BatchSpanProcessor, SDK >= 1.34
    if batch is not None:
        holder, name = batch, "_exporter"
    elif "span_exporter" in processor.__dict__:  # SimpleSpanProcessor, older BatchSpanProcessor
        holder, name = processor, "span_exporter"
    else:
        return False
    exporter = holder.__dict__.get(name)
    if exporter is None:
        return False
    if not isinstance(exporter, ProfileResolvingExporter):
        setattr(holder, name, ProfileResolvingExporter(exporter))
    return True


def wrap_processors(processors: Any) -> bool:
    """True when every processor of ``processors`` (the tracer's tuple) now exports
    through a :class:`ProfileResolvingExporter`, so profiles may be deferred."""
    try:
        if not processors:
            return False
        ok = True
        for p in processors:
            ok = _wrap(p) and ok
        return ok
    except Exception:
        return False
