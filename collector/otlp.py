"""OTLP decoding and validation: bytes (protobuf or OTLP/JSON) -> a checked request.

The receive layer calls :func:`decode` then :func:`validate`; what survives is
written to the write-ahead log as protobuf, whatever the wire format was, so the
store has one input format. Decoding never trusts the payload: anything that is
not a valid message raises :class:`MalformedPayload` (-> HTTP 400 /
``INVALID_ARGUMENT``), and records that parse but break the data model (a trace id
that is not 16 bytes, ...) are dropped one by one and counted, which the receiver
reports as OTLP ``partial_success``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.common.v1 import common_pb2

from stagetrace.config import MAX_TIME_NS

TRACES, LOGS, METRICS = "traces", "logs", "metrics"
SIGNALS = (TRACES, LOGS, METRICS)

REQUEST_TYPES: dict[str, type[Message]] = {
    TRACES: trace_svc.ExportTraceServiceRequest,
    LOGS: logs_svc.ExportLogsServiceRequest,
    METRICS: metrics_svc.ExportMetricsServiceRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    TRACES: trace_svc.ExportTraceServiceResponse,
    LOGS: logs_svc.ExportLogsServiceResponse,
    METRICS: metrics_svc.ExportMetricsServiceResponse,
}

# OTLP/JSON encodes these bytes fields as hex, not base64 (the one deviation from
# the proto3 JSON mapping the spec makes); they never occur as attribute keys.
_HEX_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_MAX_TIME = MAX_TIME_NS  # the store keeps times as int64 nanoseconds (until year 2262)
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_METRIC_DATA_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


class MalformedPayload(ValueError):
    """The body is not a valid OTLP message for the endpoint (a permanent error)."""


def decode(signal: str, body: bytes, *, json_body: bool = False) -> Message:
    """Parse an export request of ``signal`` from protobuf or OTLP/JSON bytes."""
    cls = REQUEST_TYPES[signal]
    if json_body:
        return _decode_json(cls, body)
    msg = cls()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:  # RuntimeError: recursion limit in upb
        raise MalformedPayload(f"invalid protobuf {cls.__name__}: {exc}") from None
    return msg


def _decode_json(cls: type[Message], body: bytes) -> Message:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedPayload(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload("invalid OTLP/JSON: the body must be a JSON object")
    try:
        _hex_ids_to_base64(obj)
        # Unknown fields must be ignored by receivers (OTLP spec, forward compatibility).
        return json_format.ParseDict(obj, cls(), ignore_unknown_fields=True)
    except MalformedPayload:
        raise
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise MalformedPayload(f"invalid OTLP/JSON {cls.__name__}: {exc}") from None


def _hex_ids_to_base64(node: Any, depth: int = 0) -> None:
    if depth > 64:
        raise MalformedPayload("invalid OTLP/JSON: nesting too deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise MalformedPayload(f"invalid OTLP/JSON: {key} {value[:40]!r} is not hex") from None
            elif isinstance(value, (dict, list)):
                _hex_ids_to_base64(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _hex_ids_to_base64(item, depth + 1)


def encode_json(msg: Message) -> bytes:
    """OTLP/JSON for a response (responses carry no ids, so no hex rewriting)."""
    return json_format.MessageToJson(msg, indent=None).encode("utf-8")


@dataclass(slots=True)
class Validation:
    accepted: int
    rejected: int
    message: str = ""
    # the trace ids of the request's spans or log records, read while validating them
    # (for the collector's index of its write-ahead log: collector/tailindex.py); a
    # superset of the kept ones' (a rejected record's id may be among them)
    trace_ids: list[bytes] = field(default_factory=list)


def validate(signal: str, req: Message) -> Validation:
    """Drop records that break the OTLP data model from ``req`` in place; count them."""
    if signal == TRACES:
        return _validate_traces(req)
    if signal == LOGS:
        return _validate_logs(req)
    return _validate_metrics(req)


def _span_problem(sp: Any) -> str | None:
    tid, sid, pid = sp.trace_id, sp.span_id, sp.parent_span_id
    if len(tid) != 16 or tid == _ZERO_TRACE:
        return f"invalid trace_id length {len(tid)} (want 16 non-zero bytes)" if len(tid) != 16 else "all-zero trace_id"
    if len(sid) != 8 or sid == _ZERO_SPAN:
        return f"invalid span_id length {len(sid)} (want 8 non-zero bytes)" if len(sid) != 8 else "all-zero span_id"
    if len(pid) not in (0, 8):
        return f"invalid parent_span_id length {len(pid)} (want 0 or 8 bytes)"
    if sp.start_time_unix_nano > _MAX_TIME or sp.end_time_unix_nano > _MAX_TIME:
        return "timestamp out of range"
    return None


def _validate_traces(req: Any) -> Validation:
    accepted = rejected = 0
    first = ""
    ids: list[bytes] = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            bad = []
            for i, sp in enumerate(ss.spans):
                tid, sid = sp.trace_id, sp.span_id
                ids.append(tid)
                if (len(tid) == 16 and len(sid) == 8 and tid != _ZERO_TRACE and sid != _ZERO_SPAN
                        and len(sp.parent_span_id) in (0, 8)
                        and sp.start_time_unix_nano <= _MAX_TIME and sp.end_time_unix_nano <= _MAX_TIME):
                    continue
                bad.append(i)
                if not first:
                    first = f"span {i} ({sp.name!r}): {_span_problem(sp)}"
            for i in reversed(bad):
                del ss.spans[i]
            accepted += len(ss.spans)
            rejected += len(bad)
    return Validation(accepted, rejected, _summary(rejected, "span", first), ids)


def _validate_logs(req: Any) -> Validation:
    accepted = rejected = 0
    first = ""
    ids: list[bytes] = []
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            bad = []
            for i, lr in enumerate(sl.log_records):
                tid = lr.trace_id
                lt, ls = len(tid), len(lr.span_id)
                if lt:
                    ids.append(tid)
                if (lt in (0, 16) and ls in (0, 8) and lr.time_unix_nano <= _MAX_TIME
                        and lr.observed_time_unix_nano <= _MAX_TIME):
                    continue
                bad.append(i)
                if not first:
                    first = (f"log record {i}: invalid trace_id length {lt} (want 0 or 16 bytes)" if lt not in (0, 16)
                             else f"log record {i}: invalid span_id length {ls} (want 0 or 8 bytes)" if ls not in (0, 8)
                             else f"log record {i}: timestamp out of range")
            for i in reversed(bad):
                del sl.log_records[i]
            accepted += len(sl.log_records)
            rejected += len(bad)
    return Validation(accepted, rejected, _summary(rejected, "log record", first), ids)


def metric_points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    return (kind, getattr(metric, kind).data_points) if kind else (None, ())


def _validate_metrics(req: Any) -> Validation:
    accepted = rejected = 0
    first = ""
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            bad = []
            for i, m in enumerate(sm.metrics):
                kind, points = metric_points(m)
                problem = None
                if not m.name:
                    problem = "metric without a name"
                elif kind is None:
                    problem = f"metric {m.name!r} has no data (gauge/sum/histogram/...)"
                else:
                    for p in points:
                        if p.time_unix_nano > _MAX_TIME or p.start_time_unix_nano > _MAX_TIME:
                            problem = f"metric {m.name!r}: timestamp out of range"
                            break
                        for ex in getattr(p, "exemplars", ()):  # a Summary's points have none
                            if len(ex.trace_id) not in (0, 16) or len(ex.span_id) not in (0, 8):
                                problem = f"metric {m.name!r}: exemplar with invalid trace_id/span_id length"
                                break
                        if problem:
                            break
                if problem is None:
                    accepted += len(points)
                    continue
                bad.append(i)
                rejected += max(1, len(points))
                first = first or problem
            for i in reversed(bad):
                del sm.metrics[i]
    return Validation(accepted, rejected, _summary(rejected, "data point", first))


def _summary(rejected: int, noun: str, first: str) -> str:
    if not rejected:
        return ""
    return f"rejected {rejected} {noun}{'s' if rejected != 1 else ''}; first: {first}"


# --- AnyValue / attributes -> Python (the model's attribute types) -------------

def any_value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}
