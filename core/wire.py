"""JSON wire form of the model and query objects, for the collector's query API.

Why not OTLP JSON: a trace answer carries its logs and the store's metric
series too, and both ends are stagetrace, so the model round-trips exactly
(ints stay ints, attribute types are kept). Dataclasses travel as
``{"$type": "Span", ...fields}``; a user dict that happens to have a
``"$type"`` key is wrapped as ``{"$type": "dict", "v": {...}}`` so it can
never be mistaken for one. Only the types below are decoded: the wire names
no code to run.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from .backend import LogQuery, MetricQuery, TraceQuery
from .model import LogRecord, MetricPoint, MetricSeries, Span, SpanEvent, SpanLink, Trace, TraceSummary

_TYPES: dict[str, type] = {c.__name__: c for c in (
    Span, SpanEvent, SpanLink, LogRecord, MetricPoint, MetricSeries, Trace, TraceSummary,
    TraceQuery, LogQuery, MetricQuery)}
_FIELDS: dict[type, tuple[str, ...]] = {c: tuple(f.name for f in fields(c)) for c in _TYPES.values()}
_TAG = "$type"


def encode(x: Any) -> Any:
    """Model/query objects (and lists/dicts of them) -> JSON-able values."""
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        d = {k: encode(v) for k, v in x.items()}
        return {_TAG: "dict", "v": d} if _TAG in d else d
    if isinstance(x, (bytes, bytearray)):
        return {_TAG: "bytes", "v": bytes(x).hex()}
    cls = type(x)
    names = _FIELDS.get(cls)
    if names is None or not is_dataclass(x):
        raise TypeError(f"cannot encode {cls.__name__} for the wire")
    out: dict[str, Any] = {_TAG: cls.__name__}
    for n in names:
        out[n] = encode(getattr(x, n))
    return out


def decode(x: Any) -> Any:
    """The inverse of :func:`encode`. Raises ValueError for an unknown type tag."""
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    tag = x.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in x.items()}
    if tag == "dict":
        return {k: decode(v) for k, v in x["v"].items()}
    if tag == "bytes":
        return bytes.fromhex(x["v"])
    cls = _TYPES.get(tag)
    if cls is None:
        raise ValueError(f"unknown wire type {tag!r}")
    names = _FIELDS[cls]
    return cls(**{n: decode(x[n]) for n in names if n in x})


def dumps(x: Any) -> bytes:
    return json.dumps(encode(x), separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    return decode(json.loads(data))
