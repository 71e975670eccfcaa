"""``POST /stagetrace/v1/labels``: delayed ground truth, as JSON lines.

Each line is one label::

    {"prediction_id": "<trace id>-<span id>[-<row>]", "label": 1, "time": "2026-12-07T10:00:00Z"}
    {"trace_id": "<32 hex>", "label": "fraud", "time": 1765101600}

``label`` (or ``value``) is a string, number or boolean; ``time`` (optional, when the
outcome became known) is ISO 8601 or Unix s/ms/ns; ``model`` (optional) names the
model. A line is turned into the OTLP log record of the ``ml.label`` convention
(docs/semantic-conventions.md) and the batch is stored through the same path as an
OTLP/HTTP logs export: validated, appended to the write-ahead log before the reply,
cut into blocks. So labels are as durable as every other signal, and labels sent as
OTLP logs by any SDK are read the same way.
"""

from __future__ import annotations

import json
import time
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from stagetrace import mlprofile, semconv
from stagetrace.config import parse_time_ns
from stagetrace.errors import UserError

PATH = "/stagetrace/v1/labels"
MAX_LABEL_BYTES = 4 << 20  # per request: a label is ~150 bytes, so ~25k labels
MAX_ERRORS_REPORTED = 10
LABEL_SERVICE = "stagetrace-labels"  # service.name of the records (labels come from no service of ours)


class LabelError(ValueError):
    """One line that is not a label."""


def _any_value(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def _kv(key: str, v: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=_any_value(v))


def label_record(obj: Any, now_ns: int) -> logs_pb2.LogRecord:
    """The ``ml.label`` log record for one parsed line; raises LabelError."""
    if not isinstance(obj, dict):
        raise LabelError("expected a JSON object")
    value = obj.get("label", obj.get("value"))
    if value is None or isinstance(value, (dict, list)):
        raise LabelError("'label' must be a string, number or boolean")
    if isinstance(value, float) and value != value:
        raise LabelError("'label' is NaN")
    pid = obj.get("prediction_id")
    tid = obj.get("trace_id")
    if pid is None and tid is None:
        raise LabelError("needs 'prediction_id' or 'trace_id'")
    rec = logs_pb2.LogRecord(observed_time_unix_nano=now_ns, severity_number=9, severity_text="INFO",
                             event_name=semconv.ML_LABEL_EVENT)
    attrs = [_kv(semconv.EVENT_NAME, semconv.ML_LABEL_EVENT), _kv(semconv.ML_LABEL_VALUE, value)]
    trace_hex, span_hex = None, None
    if pid is not None:
        if not isinstance(pid, str) or not pid.strip() or len(pid) > 256:
            raise LabelError("'prediction_id' must be a non-empty string (at most 256 characters)")
        attrs.append(_kv(semconv.ML_PREDICTION_ID, pid.strip()))
        parts = mlprofile.split_prediction_id(pid)
        if parts is not None:
            trace_hex, span_hex = parts[0], parts[1]
    if tid is not None:
        t = str(tid).strip().lower()
        if len(t) != 32 or any(c not in "0123456789abcdef" for c in t) or t == "0" * 32:
            raise LabelError("'trace_id' must be 32 hex digits")
        trace_hex = t
        attrs.append(_kv(semconv.ML_LABEL_TRACE_ID, t))
    if trace_hex is not None:
        rec.trace_id = bytes.fromhex(trace_hex)  # the trace view shows the label with its request
        if span_hex is not None and span_hex != "0" * 16:
            rec.span_id = bytes.fromhex(span_hex)
    when = obj.get("time")
    if when is None:
        t_ns = now_ns
    else:
        try:
            t_ns = parse_time_ns(str(when), "time")
        except UserError as exc:
            raise LabelError(str(exc)) from None
    rec.time_unix_nano = t_ns
    attrs.append(_kv(semconv.ML_LABEL_TIME, t_ns))
    model = obj.get("model")
    if model is not None:
        attrs.append(_kv(semconv.ML_MODEL_NAME, str(model)))
    rec.body.string_value = f"label {value!r} for {pid or trace_hex}"
    rec.attributes.extend(attrs)
    return rec


def parse_lines(body: bytes, now_ns: int | None = None) -> tuple[bytes | None, int, int, list[str]]:
    """(ExportLogsServiceRequest bytes or None, labels accepted, lines rejected, first errors)."""
    now_ns = now_ns or time.time_ns()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, 0, 0, ["body is not UTF-8"]
    records, errors, bad = [], [], 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(label_record(json.loads(line), now_ns))
        except (LabelError, json.JSONDecodeError) as exc:
            bad += 1
            if len(errors) < MAX_ERRORS_REPORTED:
                errors.append(f"line {i}: {exc}")
    if bad > len(errors):
        errors.append(f"... and {bad - len(errors)} more bad line(s)")
    if not records:
        return None, 0, bad, errors or ["no labels in the body"]
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(_kv(semconv.SERVICE_NAME, LABEL_SERVICE))
    sl = rl.scope_logs.add()
    sl.scope.name = "stagetrace.labels"
    sl.log_records.extend(records)
    return req.SerializeToString(), len(records), bad, errors
