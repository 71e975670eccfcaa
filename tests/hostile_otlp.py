"""Hostile telemetry as OTLP/protobuf requests, for end-to-end tests through the real
collector and the real CLI (tests/test_cli_hostile.py).

Built with the official opentelemetry-proto messages rather than the SDK because the SDK
cannot make most of these on purpose: cycles in parent ids, a span that ends before it
starts, a log trace id of the wrong length, timestamps at the epoch or past 2262. Every
request is what a buggy or clock-skewed exporter could really send.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from stagetrace.collector.labels import _kv as kv  # the label endpoint's Python value -> AnyValue

S = 1_000_000_000
MS = 1_000_000
UNSET, OK, ERROR = 0, 1, 2
SERVER, INTERNAL, CLIENT = 2, 1, 3
# names no exporter should send but some do: control characters, a right-to-left
# override, an ANSI escape, NUL, combining marks, a noncharacter, astral emoji
ODD_MODEL = "fraud\x1b[31m\u202eledom"  # a model name with an ANSI escape and a right-to-left override
ODD_NAMES = ["GET /\u202epredict", "op\x00nul", "\x1b[31mred\x1b[0m", "e\u0301\u0301\u0301", "\uffff",
             "\U0001f525 fire", "line\nbreak", "tab\there", ""]


def _value(v) -> common_pb2.AnyValue:
    """Arrays, maps and bytes too (the label endpoint's encoder has no need of them)."""
    if isinstance(v, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_value(x) for x in v]))
    if isinstance(v, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=_kvs(v)))
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    return kv("", v).value


def _kvs(d: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_value(v)) for k, v in d.items()]


def _scoped(resources, scopes: str, items: list, resource_of):
    """(scope message, its items): one resource per distinct ``resource_of(item)`` (a
    tuple of attribute pairs, service.name first), in first-seen order."""
    groups: dict = {}
    for x in items:
        res = resource_of(x)
        groups.setdefault(repr(res), (res, []))[1].append(x)  # repr: resource values may be lists
    for res, group in groups.values():
        r = resources.add(resource=resource_pb2.Resource(attributes=_kvs(dict(res))))
        yield getattr(r, scopes).add(), group


@dataclass
class HSpan:
    """One span as a hostile exporter may send it; ids are ints (0 = absent)."""
    trace: int
    span: int
    parent: int = 0
    service: str = "api"
    name: str = "POST /predict"
    kind: int = SERVER
    start_ns: int = 0
    end_ns: int = 0
    status: int = UNSET
    message: str = ""
    attrs: dict = field(default_factory=dict)
    resource: dict = field(default_factory=dict)
    events: list = field(default_factory=list)  # (name, time_ns, attributes)


@dataclass
class HLog:
    time_ns: int
    body: str
    severity: int = 17
    trace_id: bytes = b""  # raw: wrong lengths allowed
    span_id: bytes = b""
    service: str = "api"
    attrs: dict = field(default_factory=dict)


@dataclass
class HPoint:
    name: str
    time_ns: int
    value: float
    service: str = "api"
    histogram: bool = False
    kind: str = ""  # "summary" | "exponential": the point types a Prometheus bridge or a .NET SDK sends


def trace_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def traces_request(spans: list[HSpan]) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    for ss, group in _scoped(req.resource_spans, "scope_spans", spans,
                             lambda s: (("service.name", s.service), *sorted(s.resource.items()))):
        for s in group:
            sp = ss.spans.add(trace_id=trace_id(s.trace), span_id=span_id(s.span),
                              parent_span_id=span_id(s.parent) if s.parent else b"", name=s.name, kind=s.kind,
                              start_time_unix_nano=s.start_ns, end_time_unix_nano=s.end_ns,
                              attributes=_kvs(s.attrs))
            for name, t, attrs in s.events:
                sp.events.add(name=name, time_unix_nano=t, attributes=_kvs(attrs))
            sp.status.code = s.status
            if s.message:
                sp.status.message = s.message
    return req.SerializeToString()


def logs_request(logs: list[HLog]) -> bytes:
    req = logs_service_pb2.ExportLogsServiceRequest()
    for sl, group in _scoped(req.resource_logs, "scope_logs", logs, lambda lg: (("service.name", lg.service),)):
        for lg in group:
            sl.log_records.add(time_unix_nano=lg.time_ns, observed_time_unix_nano=lg.time_ns,
                               severity_number=lg.severity, body=_value(lg.body), trace_id=lg.trace_id,
                               span_id=lg.span_id, attributes=_kvs(lg.attrs))
    return req.SerializeToString()


def metrics_request(points: list[HPoint]) -> bytes:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    for sm, group in _scoped(req.resource_metrics, "scope_metrics", points, lambda p: (("service.name", p.service),)):
        for p in group:
            m = sm.metrics.add(name=p.name, unit="1")
            if p.kind == "summary":
                q = m.summary.data_points.add(time_unix_nano=p.time_ns, count=1, sum=p.value)
                q.quantile_values.add(quantile=float("nan"), value=p.value)
            elif p.kind == "exponential":
                # a scale outside OTLP's [-10, 20] and an offset at the int32 edge
                e = m.exponential_histogram.data_points.add(time_unix_nano=p.time_ns, count=5, sum=p.value,
                                                            scale=[-20, 20, 0][p.time_ns // S % 3], zero_count=2)
                e.positive.offset = -2**31 if p.time_ns // S % 2 else 2**31 - 3
                e.positive.bucket_counts.extend([1, 2])
                m.exponential_histogram.aggregation_temporality = 2
            elif p.histogram:
                dp = m.histogram.data_points.add(time_unix_nano=p.time_ns, start_time_unix_nano=max(0, p.time_ns - S),
                                                 count=3, sum=p.value, explicit_bounds=[0.1, 1.0],
                                                 bucket_counts=[1, 1, 1])
                m.histogram.aggregation_temporality = 2
                if not math.isnan(p.value):
                    dp.min = p.value
            else:
                m.gauge.data_points.add(time_unix_nano=p.time_ns, as_double=p.value)
    return req.SerializeToString()


def post(base_url: str, path: str, body: bytes) -> int:
    """POST one OTLP/protobuf body; the HTTP status (200, or 400/413 when refused)."""
    req = urllib.request.Request(base_url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def send(base_url: str, spans=(), logs=(), points=()) -> tuple[int, int, int]:
    return (post(base_url, "/v1/traces", traces_request(list(spans))) if spans else 0,
            post(base_url, "/v1/logs", logs_request(list(logs))) if logs else 0,
            post(base_url, "/v1/metrics", metrics_request(list(points))) if points else 0)


# ---- the named hostile cases: each a small set of traces at ``t0`` ----------------------

def _request(tid: int, t0: int, dur_ns: int, **kw) -> list[HSpan]:
    """A normal two-span request: api SERVER -> model INTERNAL."""
    root = HSpan(tid, tid * 16 + 1, 0, "api", "POST /predict", SERVER, t0, t0 + dur_ns,
                 attrs={"http.route": "/predict"}, **kw)
    child = HSpan(tid, tid * 16 + 2, root.span, "model", "inference", INTERNAL, t0 + dur_ns // 10,
                  t0 + dur_ns * 9 // 10, attrs={"ml.stage": "inference"})
    return [root, child]


def case(name: str, base: int, t0: int, n: int = 30) -> tuple[list[HSpan], list[HLog], list[HPoint]]:
    """Spans, logs and metric points of one hostile case; trace numbers from ``base``."""
    spans: list[HSpan] = []
    logs: list[HLog] = []
    points: list[HPoint] = []
    for i in range(n):
        tid = base + i
        t = t0 + i * S
        dur = 50 * MS + (i % 5) * MS
        if name == "missing_parents":
            spans += [HSpan(tid, tid * 16 + 1, tid * 16 + 9, "api", "POST /predict", SERVER, t, t + dur)]
        elif name == "parent_cycle":
            a, b = tid * 16 + 1, tid * 16 + 2
            spans += [HSpan(tid, a, b, "api", "POST /predict", SERVER, t, t + dur),
                      HSpan(tid, b, a, "model", "inference", INTERNAL, t, t + dur // 2)]
        elif name == "self_parent":
            spans += [HSpan(tid, tid * 16 + 1, tid * 16 + 1, "api", "POST /predict", SERVER, t, t + dur)]
        elif name == "skewed_clocks":
            sp = _request(tid, t, dur)
            sp[1].start_ns = t - 3600 * S  # a child that starts an hour before its parent
            sp[1].end_ns = t + 3 * 365 * 86400 * S  # ... and ends years later
            spans += sp
        elif name == "zero_negative":
            sp = _request(tid, t, 0 if i % 2 else dur)
            if i % 3 == 0:
                sp[0].end_ns = sp[0].start_ns - 5 * MS  # ends before it starts
            spans += sp
        elif name == "error_no_message":
            spans += _request(tid, t, dur, status=ERROR)
        elif name == "shared_trace_id":
            # the same trace id from two unrelated services with different resources
            spans += _request(tid, t, dur)
            spans += [HSpan(tid, tid * 16 + 5, 0, "billing", "POST /charge", SERVER, t + S // 2, t + S,
                            resource={"host.name": f"other-{i}", "service.version": "9"})]
        elif name == "lonely_service":
            spans += _request(tid, t, dur)
            if i == 0:
                spans += [HSpan(tid + 10**6, 7, 0, "lonely", "GET /health", SERVER, t, t + MS)]
        elif name == "huge_attribute":
            sp = _request(tid, t, dur)
            if i < 2:
                sp[0].attrs["blob"] = "x" * 2_000_000
            spans += sp
        elif name == "odd_unicode":
            sp = _request(tid, t, dur, status=ERROR if i % 3 == 0 else UNSET)
            odd = ODD_NAMES[i % len(ODD_NAMES)]
            sp[0].name = odd
            sp[0].attrs["http.route"] = odd
            sp[1].service = "svc-" + odd
            if i % 3 == 0:  # the failing request's exception says it too
                sp[1].status = ERROR
                sp[1].events = [("exception", t, {"exception.type": "Err" + odd, "exception.message": odd})]
            spans += sp
            logs.append(HLog(t, odd * 3, 17, trace_id(tid), span_id(sp[0].span)))
        elif name == "bad_logs":
            spans += _request(tid, t, dur, status=ERROR if i % 4 == 0 else UNSET)
            logs += [HLog(t, "no trace id here", 17),
                     HLog(t, "short trace id", 17, b"\x01\x02\x03", b"\x01"),
                     HLog(t, "trace id of nowhere", 17, trace_id(10**9 + tid), span_id(99)),
                     HLog(t, "all zero", 17, bytes(16), bytes(8))]
        elif name == "nan_metrics":
            spans += _request(tid, t, dur)
            for v in (float("nan"), float("inf"), float("-inf"), 1e308):
                points += [HPoint("process.cpu.utilization", t, v), HPoint("ml.queue.depth", t, v, histogram=True),
                           HPoint("http.server.request.duration", t, v, kind="exponential")]
            # a cumulative summary whose sum is infinite at every point: inf - inf between them
            points.append(HPoint("process.memory.usage", t, float("inf"), kind="summary"))
        elif name == "logs_only":  # trace-linked ERROR logs whose spans never arrived
            logs.append(HLog(t, f"payment failed for order {i}", 17, trace_id(tid), span_id(tid * 16 + 1)))
        elif name == "some_rootless":  # rooted requests, and every third trace without its root
            sp = _request(tid, t, dur, status=ERROR if i % 5 == 1 else UNSET)
            spans += sp if i % 3 else [HSpan(tid, tid * 16 + 2, tid * 16 + 9, "model", "inference", INTERNAL, t,
                                             t + dur, ERROR)]
        elif name == "only_errors":
            spans += _request(tid, t, dur, status=ERROR, message="boom")
        elif name == "same_latency":
            spans += _request(tid, t, 50 * MS)
        elif name == "one_slow":
            spans += _request(tid, t, 50 * MS if i != n // 2 else 5 * S)
        elif name == "no_status":
            spans += _request(tid, t, dur)
        elif name == "typed_values":
            # attribute values of every OTLP type where strings are expected, and an
            # exception event whose type, message and stack trace are not strings
            odd = [["1", "2"], {"major": 1}, b"\xff\x00", float("nan"), -2**63, True][i % 6]
            sp = _request(tid, t, dur if i % 5 else 20 * dur, status=ERROR if i % 3 == 0 else UNSET)
            for key in ("http.route", "service.version", "ml.model.version", "host.name", "error.type",
                        "peer.service", "http.response.status_code", "tenant"):
                sp[0].attrs[key] = odd
            sp[1].resource = {"service.version": odd, "service.instance.id": [odd, odd]}
            if i % 3 == 0:  # the failing span's own exception
                sp[1].status = ERROR
                sp[1].events = [("exception", t, {"exception.type": odd, "exception.message": [odd],
                                                  "exception.stacktrace": odd})]
            spans += sp
        elif name in ("ml_garbage", "ml_odd_names"):
            model = "model" if name == "ml_garbage" else ODD_MODEL
            sp = _request(tid, t, dur)
            sp[1].attrs.update(_ml_garbage(i) | {"ml.model.name": model})
            if name == "ml_odd_names":
                sp[1].attrs["ml.input.features"] = "amo\x1b[31munt\x1f\u202ecountry"
            spans += sp
            logs.append(HLog(t + S, "", 9, trace_id(tid), attrs={
                "event.name": "ml.label", "ml.model.name": model, "ml.label.trace_id": f"{tid:032x}",
                "ml.label.value": [1, 0, "yes", 7.5][i % 4],
                "ml.label.time": [float("nan"), float("inf"), t + S, "not a time"][i % 4]}))
        else:
            raise ValueError(f"unknown case {name!r}")
    return spans, logs, points


def _ml_garbage(i: int) -> dict:
    """Model-profile attributes a broken capture could send: infinite and out-of-range
    scores, class indexes past the class list, row counts that are negative or huge."""
    import numpy as np

    from stagetrace import mlprofile
    k = 1 + i % 3
    out = mlprofile.OutputProfile([k, -5, 10**12][i % 3], [["0", "1"], [], ["a", "b", "c"]][i % 3],
                                  np.array([[float("inf"), -float("inf"), 0.7, 5.0][(i + j) % 4] for j in range(k)],
                                           np.float32),
                                  np.array([[0, 5, -3, 32767][(i + j) % 4] for j in range(k)], np.int16),
                                  np.array([float("inf"), 0.5, float("nan")][:k], np.float32))
    codes = np.array([[(i * 7 + j) % 40 - 2, 32767][j % 2] for j in range(k * 2)], np.int16).reshape(k, 2)
    return {"ml.model.name": "model", "ml.input.features": "amount\x1fcountry",
            "ml.input.profile": mlprofile.encode_input([k, 0, -1][i % 3], "nc", codes),
            "ml.output.profile": out.encode()}


CASES = ["missing_parents", "parent_cycle", "self_parent", "skewed_clocks", "zero_negative", "error_no_message",
         "shared_trace_id", "lonely_service", "huge_attribute", "odd_unicode", "bad_logs", "nan_metrics",
         "only_errors", "same_latency", "one_slow", "no_status", "ml_garbage", "typed_values", "logs_only",
         "some_rootless", "ml_odd_names"]


def replace_random_node(doc, rnd, value, max_steps: int = 8) -> None:
    """Walk down a JSON tree (``rnd`` picks the way) and put ``value`` in place of the node
    reached: one node of a real document of another type or shape."""
    node = doc
    for _ in range(rnd.randint(1, max_steps)):
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        k = rnd.choice(keys)
        if isinstance(node[k], (dict, list)) and rnd.random() < 0.8:
            node = node[k]
        else:
            node[k] = value
            break
