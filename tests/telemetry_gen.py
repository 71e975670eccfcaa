"""Realistic synthetic telemetry for the forensics tests, emitted with the real
OpenTelemetry SDK (spans, logs, metrics) over OTLP into a collector.

Two services: ``fraud-api`` (two instances) serves ``POST /predict`` with
feature_fetch -> preprocess -> inference stages; feature_fetch calls the
downstream ``feature-service`` over HTTP (CLIENT -> SERVER spans). Every stage
logs through the OTel logs SDK with the active trace/span ids, and both services
report gauges (CPU, memory, connection-pool wait).

Spans and logs carry explicit timestamps, so 20 minutes of history take a few
seconds to emit. Metric points with explicit timestamps cannot be made through
the metrics API, so they are built as the SDK's own ``MetricsData`` and handed
to the real OTLP metric exporter.

The history is healthy by design: lognormal stage latencies, a natural tail
(GC pauses in inference), a background rate of cache misses and of feature
store timeouts. At ``onset`` one injected cause begins:

- ``slow_shard``   (a) feature lookups on ``feature.store.shard=7`` take
  300-700 ms more, with "cache miss" warnings and a rising pool-wait gauge;
- ``v2_errors``    (b) model v2 (20% canary from onset) raises KeyError on inputs
  with a missing feature; the error propagates to the API span (HTTP 500);
- ``cpu_burn``     (c) preprocess burns CPU on large batches (>= 64 rows);
- ``edge_latency`` requests to the feature service queue 150-400 ms on the
  caller->callee edge (client span long, server span short);
- ``clean``        nothing.

Everything is seeded, trace and span ids included, so a scenario always
produces the same data.

``tail_sampling=TailSampling(...)`` stores only what the gateway Collector
(collector/otelcol/otelcol-gateway.yaml) would keep: every trace with an error
span, every trace lasting at least ``slow_ms``, and ``percent`` % of the rest
(decided on the trace id), with the span attributes its ``transform/sampling``
step sets (``tailsampling.policy`` on kept spans, ``sampling.adjusted_count =
100 / percent`` on the probabilistic share). Logs and metrics are not sampled,
as in the gateway. The whole population's truth stays in the GenResult.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry._logs import LogRecord as ApiLogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics.export import (Gauge, Metric, MetricsData, NumberDataPoint,
                                              ResourceMetrics, ScopeMetrics)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

from stagetrace import semconv as sc

SCENARIOS = ("clean", "slow_shard", "v2_errors", "cpu_burn", "edge_latency", "slow_inputs")
MS = 1_000_000
API, FEATURES = "fraud-api", "feature-service"
SLOW_SHARD = 7


class SeededIds(IdGenerator):
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def generate_span_id(self) -> int:
        return self.rnd.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rnd.getrandbits(128) or 1


@dataclass
class GenResult:
    scenario: str
    start_ns: int
    end_ns: int
    onset_ns: int
    requests: int = 0
    spans: int = 0
    logs: int = 0
    metric_points: int = 0
    faulty_trace_ids: list[str] = field(default_factory=list)
    error_trace_ids: list[str] = field(default_factory=list)
    all_trace_ids: list[str] = field(default_factory=list)
    durations_ns: list[int] = field(default_factory=list)  # root span duration, aligned with all_trace_ids
    kept: dict[str, str] = field(default_factory=dict)  # tail sampling only: trace id -> deciding policy


@dataclass
class TailSampling:
    """The gateway Collector's tail_sampling policies (errors -> slow -> baseline)."""

    slow_ms: float = 500.0
    percent: float = 10.0


class _TailSampler:
    """Buffers each trace's finished spans (across the services' providers) until its
    root ends (last, in this generator), then decides like the Collector's
    tail_sampling processor and forwards the kept spans to their exporters."""

    def __init__(self, cfg: TailSampling, res: "GenResult") -> None:
        self.cfg, self.res = cfg, res
        self.pending: dict[int, list] = {}

    def wrap(self, inner: SpanProcessor) -> SpanProcessor:
        sampler = self

        class _P(SpanProcessor):
            def on_start(self, span, parent_context=None):
                inner.on_start(span, parent_context)

            def on_end(self, span):
                sampler.on_end(span, inner)

            def shutdown(self):
                inner.shutdown()

            def force_flush(self, timeout_millis: int = 30000):
                return inner.force_flush(timeout_millis)
        return _P()

    def on_end(self, span: ReadableSpan, inner: SpanProcessor) -> None:
        tid = span.context.trace_id
        self.pending.setdefault(tid, []).append((span, inner))
        if span.parent is None:
            self._decide(tid)

    def _decide(self, tid: int) -> None:
        spans = self.pending.pop(tid)
        start = min(s.start_time for s, _ in spans)
        end = max(s.end_time for s, _ in spans)
        attrs: dict = {}
        if any(s.status.status_code == StatusCode.ERROR for s, _ in spans):
            policy = "errors"
        elif end - start >= self.cfg.slow_ms * MS:
            policy = "slow"
        elif (tid >> 64) % 1_000_000 < self.cfg.percent * 10_000:  # probabilistic, on the trace id
            policy = sc.SAMPLING_POLICY_BASELINE
            attrs[sc.SAMPLING_ADJUSTED_COUNT] = 100.0 / self.cfg.percent
        else:
            return
        self.res.kept[_hex(tid, 32)] = policy
        attrs[sc.TAILSAMPLING_POLICY] = policy
        for s, inner in spans:
            inner.on_end(ReadableSpan(
                name=s.name, context=s.context, parent=s.parent, resource=s.resource,
                attributes={**dict(s.attributes or {}), **attrs}, events=s.events, links=s.links, kind=s.kind,
                status=s.status, start_time=s.start_time, end_time=s.end_time,
                instrumentation_scope=s.instrumentation_scope))


class _Service:
    """Providers for one service instance (own resource), exporting via the given factories."""

    def __init__(self, name: str, instance: str, version: str, ids: IdGenerator, exporters,
                 sampler: _TailSampler | None = None) -> None:
        self.resource = Resource.create({sc.SERVICE_NAME: name, sc.SERVICE_VERSION: version,
                                         sc.SERVICE_INSTANCE_ID: instance, sc.HOST_NAME: f"host-{instance}",
                                         sc.DEPLOYMENT_ENVIRONMENT: "test"})
        self.tp = TracerProvider(resource=self.resource, id_generator=ids)
        bsp = BatchSpanProcessor(exporters.span(), max_queue_size=200_000,
                                 max_export_batch_size=2000, schedule_delay_millis=200)
        self.tp.add_span_processor(sampler.wrap(bsp) if sampler else bsp)
        self.lp = LoggerProvider(resource=self.resource)
        self.lp.add_log_record_processor(BatchLogRecordProcessor(exporters.log(), max_queue_size=200_000,
                                                                 max_export_batch_size=2000, schedule_delay_millis=200))
        self.tracer = self.tp.get_tracer("stagetrace.tests.telemetry_gen", "1.0")
        self.logger = self.lp.get_logger("stagetrace.tests.telemetry_gen")
        self.name = name

    def flush(self) -> None:
        self.tp.force_flush(30_000)
        self.lp.force_flush(30_000)

    def shutdown(self) -> None:
        self.tp.shutdown()
        self.lp.shutdown()


class OtlpExporters:
    """Real OTLP exporters: gRPC (``grpc_endpoint`` host:port) or HTTP (``http_endpoint`` base URL)."""

    def __init__(self, grpc_endpoint: str | None = None, http_endpoint: str | None = None) -> None:
        self.grpc, self.http = grpc_endpoint, http_endpoint

    def span(self):
        if self.grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            return OTLPSpanExporter(endpoint=self.grpc, insecure=True)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=f"{self.http}/v1/traces")

    def log(self):
        if self.grpc:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            return OTLPLogExporter(endpoint=self.grpc, insecure=True)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        return OTLPLogExporter(endpoint=f"{self.http}/v1/logs")

    def metric(self):
        if self.grpc:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            return OTLPMetricExporter(endpoint=self.grpc, insecure=True)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter(endpoint=f"{self.http}/v1/metrics")


def _ctx(span):
    return trace.set_span_in_context(span)


def _hex(i: int, width: int) -> str:
    return format(i, f"0{width}x")


def generate(scenario: str, exporters, *, minutes: float = 20, per_minute: int = 60,
             onset_fraction: float = 0.5, seed: int = 7, end_ns: int | None = None,
             tail_sampling: TailSampling | None = None, metric_step_s: int = 10,
             profiles: bool = False, unrelated_inputs: bool = False) -> GenResult:
    """Emit ``minutes`` of history ending at ``end_ns`` (default: now); with
    ``tail_sampling``, store only the spans the gateway Collector would keep; with
    ``profiles`` (always under ``slow_inputs``), inference spans carry the model's input
    profile, made by the real capture code; with ``unrelated_inputs`` the profile's missing
    feature is drawn apart from the one the fault depends on (a control: the same fault,
    inputs that do not explain it)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    rnd = random.Random(f"{scenario}:{seed}")
    ids = SeededIds(random.Random(seed * 7919 + SCENARIOS.index(scenario)))
    end_ns = end_ns or time.time_ns()
    start_ns = end_ns - int(minutes * 60e9)
    onset_ns = start_ns + int((end_ns - start_ns) * onset_fraction)
    res = GenResult(scenario, start_ns, end_ns, onset_ns)
    sampler = _TailSampler(tail_sampling, res) if tail_sampling else None
    api = [_Service(API, f"api-{i}", "1.4.2", ids, exporters, sampler) for i in range(2)]
    feat = _Service(FEATURES, "features-0", "2.0.1", ids, exporters, sampler)
    n = int(minutes * per_minute)
    res.requests = n
    for i in range(n):
        t = start_ns + int((i + rnd.random()) * (end_ns - start_ns - 3e9) / n)
        _request(rnd, scenario, t, t >= onset_ns, api[i % 2], feat, res,
                 profiles or scenario == "slow_inputs", unrelated_inputs)
    for s in (*api, feat):
        s.flush()
    res.metric_points = _metrics(rnd, scenario, exporters, api, feat, start_ns, end_ns, onset_ns, metric_step_s)
    for s in (*api, feat):
        s.shutdown()
    return res


def _lognormal(rnd: random.Random, median_ms: float, sigma: float = 0.35) -> int:
    return int(median_ms * math.exp(rnd.gauss(0, sigma)) * MS)


_PROFILE_SETTINGS = None


def _input_profile(rnd, batch: int, missing: bool) -> dict:
    """The inference span's input profile of a batch (amount, merchant_risk, device_age_days),
    through the instrumentation's own capture code; merchant_risk absent when ``missing``."""
    global _PROFILE_SETTINGS
    import numpy as np
    from stagetrace.instrumentation import profiling
    from stagetrace.instrumentation.profile_capture import input_attributes

    if _PROFILE_SETTINGS is None:
        _PROFILE_SETTINGS = profiling.ProfileSettings(features=["amount", "merchant_risk", "device_age_days"])
    x = np.array([[rnd.lognormvariate(3.5, 0.8), rnd.random(), rnd.randint(0, 900)] for _ in range(batch)], dtype=float)
    if missing:
        x[:, 1] = np.nan
    return input_attributes(_PROFILE_SETTINGS, x, None, "score", "fraud-gbm")


def _log(svc: _Service, span, t: int, sev: SeverityNumber, body: str, res: GenResult, **attrs) -> None:
    sc_ = span.get_span_context()
    svc.logger.emit(ApiLogRecord(timestamp=t, observed_timestamp=t, trace_id=sc_.trace_id, span_id=sc_.span_id,
                                 trace_flags=sc_.trace_flags, severity_number=sev, severity_text=sev.name.rstrip("0123456789"),
                                 body=body, attributes=attrs or None))
    res.logs += 1


def _exc_event(span, exc_type: str, message: str, frames: list[str], t: int) -> None:
    stack = "Traceback (most recent call last):\n" + "".join(
        f'  File "{f.split(":")[0]}", line {10 + k * 7}, in {f.split(":")[1]}\n' for k, f in enumerate(frames)
    ) + f"{exc_type}: {message}\n"
    span.add_event(sc.EXCEPTION_EVENT, {sc.EXCEPTION_TYPE: exc_type, sc.EXCEPTION_MESSAGE: message,
                                        sc.EXCEPTION_STACKTRACE: stack}, timestamp=t)


def _request(rnd, scenario, t0, faulty, api: _Service, feat: _Service, res: GenResult,
             profiles: bool = False, unrelated_inputs: bool = False) -> None:
    user = f"u{rnd.randrange(100000)}"
    shard = rnd.randrange(8)
    batch = rnd.randint(64, 256) if rnd.random() < 0.12 else rnd.randint(1, 32)
    version = "v1"
    if scenario == "v2_errors" and faulty and rnd.random() < 0.2:
        version = "v2"
    missing_feature = rnd.random() < 0.35
    injected = False
    error = None  # (type, message) raised somewhere in the request
    tr = api.tracer
    root = tr.start_span("POST /predict", kind=SpanKind.SERVER, start_time=t0, attributes={
        sc.HTTP_ROUTE: "/predict", sc.HTTP_REQUEST_METHOD: "POST", sc.ML_MODEL_NAME: "fraud-gbm"})
    res.spans += 1
    tid = _hex(root.get_span_context().trace_id, 32)
    res.all_trace_ids.append(tid)
    _log(api, root, t0 + 200_000, SeverityNumber.INFO, f"received prediction request for user {user}", res)
    cur = t0 + _lognormal(rnd, 0.6)

    # --- feature_fetch -> feature-service -------------------------------------------------
    ff = tr.start_span("feature_fetch", context=_ctx(root), start_time=cur, attributes={
        sc.ML_STAGE: sc.STAGE_FEATURE_FETCH, sc.FEATURE_STORE_SHARD: shard})
    client = tr.start_span("GET", context=_ctx(ff), kind=SpanKind.CLIENT, start_time=cur + 100_000, attributes={
        sc.HTTP_REQUEST_METHOD: "GET", sc.SERVER_ADDRESS: FEATURES, sc.SERVER_PORT: 8001})
    edge_in = _lognormal(rnd, 0.8, 0.3)
    if scenario == "edge_latency" and faulty and rnd.random() < 0.3:
        edge_in += rnd.randint(150, 400) * MS  # queued in the callee's accept backlog
        injected = True
    s_start = cur + 100_000 + edge_in
    server = feat.tracer.start_span("GET /features/{entity_id}", context=_ctx(client), kind=SpanKind.SERVER,
                                    start_time=s_start, attributes={sc.HTTP_ROUTE: "/features/{entity_id}",
                                                                     sc.HTTP_REQUEST_METHOD: "GET"})
    look_start = s_start + 150_000
    lookup = feat.tracer.start_span("feature_store.lookup", context=_ctx(server), start_time=look_start,
                                    attributes={sc.FEATURE_STORE_SHARD: shard})
    d = _lognormal(rnd, 7)
    miss = rnd.random() < 0.03
    if scenario == "slow_shard" and faulty and shard == SLOW_SHARD:
        d += rnd.randint(300, 700) * MS
        miss = True
        injected = True
    timeout = rnd.random() < 0.004
    if miss:
        _log(feat, lookup, look_start + 300_000, SeverityNumber.WARN, f"cache miss for user {user} on shard {shard}", res)
    if timeout:
        d = 50 * MS
        _exc_event(lookup, "TimeoutError", "feature store timeout after 50 ms",
                   ["features/store.py:lookup", "features/pool.py:acquire"], look_start + d)
        lookup.set_status(Status(StatusCode.ERROR, "TimeoutError: feature store timeout after 50 ms"))
        _log(feat, lookup, look_start + d, SeverityNumber.ERROR, f"feature lookup timed out for user {user} after 50 ms", res)
        error = ("TimeoutError", "feature store timeout")
    else:
        _log(feat, lookup, look_start + d - 100_000, SeverityNumber.DEBUG, f"fetched 24 features for user {user}", res)
    lookup.end(look_start + d)
    s_end = look_start + d + 200_000
    if error:
        server.set_status(Status(StatusCode.ERROR))
        server.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 504)
    else:
        server.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
    server.end(s_end)
    c_end = s_end + _lognormal(rnd, 0.8, 0.3)
    client.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 504 if error else 200)
    if error:
        client.set_status(Status(StatusCode.ERROR))
    client.end(c_end)
    cur = c_end + 100_000
    if error:
        ff.set_status(Status(StatusCode.ERROR, "feature store timeout"))
    ff.end(cur)
    res.spans += 4

    if not error:
        # --- preprocess ----------------------------------------------------------------------
        pp = tr.start_span("preprocess", context=_ctx(root), start_time=cur, attributes={
            sc.ML_STAGE: sc.STAGE_PREPROCESS, sc.ML_BATCH_SIZE: batch})
        d = _lognormal(rnd, 2 + 0.01 * batch)
        if scenario == "cpu_burn" and faulty and batch >= 64:
            d += batch * 3 * MS
            injected = True
            _log(api, pp, cur + 500_000, SeverityNumber.WARN,
                 f"batch of {batch} rows exceeds vectorized limit, falling back to row-wise transform", res)
        _log(api, pp, cur + d - 100_000, SeverityNumber.INFO, f"preprocessed batch of {batch} rows", res)
        pp.end(cur + d)
        cur += d + 50_000
        # --- inference -----------------------------------------------------------------------
        inf = tr.start_span("inference", context=_ctx(root), start_time=cur, attributes={
            sc.ML_STAGE: sc.STAGE_INFERENCE, sc.ML_MODEL_NAME: "fraud-gbm", sc.ML_MODEL_VERSION: version,
            sc.ML_MODEL_FRAMEWORK: "sklearn", sc.ML_BATCH_SIZE: batch})
        d = _lognormal(rnd, 12)
        if rnd.random() < 0.03:
            d += rnd.randint(60, 250) * MS  # natural tail: GC pause, no log line
        if profiles:
            shown = rnd.random() < 0.35 if unrelated_inputs else missing_feature
            inf.set_attributes(_input_profile(rnd, batch, shown))
        if scenario == "slow_inputs" and faulty and missing_feature:
            d += rnd.randint(150, 400) * MS  # the new imputer's slow path for rows without merchant_risk
            injected = True
        if version == "v2" and missing_feature:
            d = _lognormal(rnd, 3)
            msg = "missing feature 'merchant_risk'"
            _exc_event(inf, "KeyError", msg, ["fraud/model.py:predict", "fraud/features.py:vectorize",
                                              "fraud/features.py:get_feature"], cur + d)
            inf.set_status(Status(StatusCode.ERROR, f"KeyError: {msg}"))
            _log(api, inf, cur + d, SeverityNumber.ERROR,
                 f"inference failed for user {user}: KeyError {msg}", res,
                 **{sc.EXCEPTION_TYPE: "KeyError", sc.EXCEPTION_MESSAGE: msg})
            error = ("KeyError", msg)
            injected = True
        else:
            _log(api, inf, cur + d - 100_000, SeverityNumber.INFO,
                 f"scored {batch} rows with model {version} in {d // MS} ms", res)
        inf.end(cur + d)
        cur += d + 50_000
        res.spans += 2
    end = cur + _lognormal(rnd, 0.4)
    root.set_attribute(sc.ML_MODEL_VERSION, version)
    if error:
        # The API span fails because a child failed: an HTTP 500/504 with the re-raised exception.
        status = 500 if error[0] == "KeyError" else 504
        _exc_event(root, error[0], error[1] if error[0] == "KeyError" else "feature store timeout after 50 ms",
                   ["starlette/routing.py:handle", "fraud/api.py:predict"], end - 100_000)
        root.set_status(Status(StatusCode.ERROR, f"{error[0]}"))
        root.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
        _log(api, root, end - 50_000, SeverityNumber.ERROR, f"POST /predict {status} for user {user}", res)
        res.error_trace_ids.append(tid)
    else:
        root.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
        _log(api, root, end - 50_000, SeverityNumber.INFO, f"POST /predict 200 in {(end - t0) // MS} ms", res)
    root.end(end)
    res.durations_ns.append(end - t0)
    if injected:
        res.faulty_trace_ids.append(tid)


def _metrics(rnd, scenario, exporters, api, feat, start_ns, end_ns, onset_ns, step_s: int = 10) -> int:
    """Gauges every ``step_s`` seconds for each instance, exported as real OTLP."""
    by_resource: dict[int, tuple[Resource, list[Metric]]] = {}
    points = 0
    ticks = list(range(start_ns, end_ns, step_s * 1_000_000_000))
    span = max(1, end_ns - onset_ns)
    for svc in (*api, feat):
        cpu, mem, wait = [], [], []
        for t in ticks:
            after = t >= onset_ns
            c = 0.32 + rnd.gauss(0, 0.03)
            if scenario == "cpu_burn" and after and svc.name == API:
                c += 0.4 + rnd.gauss(0, 0.05)
            cpu.append(NumberDataPoint({}, start_ns, t, max(0.0, c)))
            mem.append(NumberDataPoint({}, start_ns, t, 3.1e8 + rnd.gauss(0, 5e6)))
            if svc.name == FEATURES:
                w = 0.002 + abs(rnd.gauss(0, 0.0005))
                if scenario == "slow_shard" and after:
                    w += 0.4 * (t - onset_ns) / span + 0.05
                wait.append(NumberDataPoint({"pool.name": "feature-store"}, start_ns, t, w))
        ms = [Metric(sc.METRIC_PROCESS_CPU_UTILIZATION, "CPU utilization", "1", Gauge(cpu)),
              Metric(sc.METRIC_PROCESS_MEMORY_USAGE, "resident memory", "By", Gauge(mem))]
        if wait:
            ms.append(Metric(sc.METRIC_DB_CONNECTION_WAIT, "connection pool wait", "s", Gauge(wait)))
        points += sum(len(m.data.data_points) for m in ms)
        by_resource[id(svc)] = (svc.resource, ms)
    data = MetricsData([ResourceMetrics(r, [ScopeMetrics(InstrumentationScope("stagetrace.tests.telemetry_gen"), ms, "")], "")
                        for r, ms in by_resource.values()])
    exp = exporters.metric()
    result = exp.export(data)
    exp.shutdown()
    if getattr(result, "name", "SUCCESS") != "SUCCESS":
        raise RuntimeError(f"metric export failed: {result}")
    return points


# --- In-process path, for fast algorithm tests only ------------------------------------------
# The acceptance tests go through OTLP and the collector subprocess; these helpers let
# analysis unit tests run on the same data without one. MemoryBackend is a plain,
# unindexed implementation of the Backend protocol over SDK output.

class MemoryExporters:
    def __init__(self) -> None:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()
        self.metrics: list[MetricsData] = []

    def span(self):
        return _NoShutdown(self.spans)

    def log(self):
        return _NoShutdown(self.logs)

    def metric(self):
        outer = self

        class _M:
            def export(self, data):
                outer.metrics.append(data)
                from opentelemetry.sdk.metrics.export import MetricExportResult
                return MetricExportResult.SUCCESS

            def shutdown(self):
                pass
        return _M()

    def backend(self):
        return MemoryBackend.from_sdk(self.spans.get_finished_spans(), self.logs.get_finished_logs(), self.metrics)


class _NoShutdown:
    def __init__(self, inner):
        self.inner = inner

    def export(self, batch):
        return self.inner.export(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self):
        pass


class MemoryBackend:
    name = "memory"

    def __init__(self, spans, logs, series) -> None:
        from collections import defaultdict
        self.spans, self.logs, self.series = spans, logs, series
        self.by_trace = defaultdict(list)
        for s in spans:
            self.by_trace[s.trace_id].append(s)
        self.logs_by_trace = defaultdict(list)
        for r in logs:
            if r.trace_id:
                self.logs_by_trace[r.trace_id].append(r)

    @classmethod
    def from_sdk(cls, sdk_spans, sdk_logs, metrics_data):
        from stagetrace.model import LogRecord, MetricPoint, MetricSeries, Span, SpanEvent
        kinds = {SpanKind.INTERNAL: "INTERNAL", SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT",
                 SpanKind.PRODUCER: "PRODUCER", SpanKind.CONSUMER: "CONSUMER"}
        spans = [Span(_hex(s.context.trace_id, 32), _hex(s.context.span_id, 16),
                      _hex(s.parent.span_id, 16) if s.parent else "", s.name, kinds[s.kind], s.start_time, s.end_time,
                      s.status.status_code.name, s.status.description or "", dict(s.attributes or {}),
                      [SpanEvent(e.name, e.timestamp, dict(e.attributes or {})) for e in s.events], [],
                      dict(s.resource.attributes)) for s in sdk_spans]
        logs = []
        for rl in sdk_logs:
            lr = rl.log_record
            logs.append(LogRecord(lr.timestamp, lr.observed_timestamp, int(lr.severity_number.value),
                                  lr.severity_text or "", lr.body, dict(lr.attributes or {}),
                                  _hex(lr.trace_id, 32) if lr.trace_id else "", _hex(lr.span_id, 16) if lr.span_id else "",
                                  dict(rl.resource.attributes)))
        series = []
        for md in metrics_data:
            for rm in md.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        groups: dict = {}
                        for p in m.data.data_points:
                            key = tuple(sorted(dict(p.attributes).items()))
                            groups.setdefault(key, []).append(MetricPoint(m.name, "gauge", p.time_unix_nano, float(p.value),
                                                                          dict(p.attributes), dict(rm.resource.attributes),
                                                                          p.start_time_unix_nano, m.unit or ""))
                        for key, pts in groups.items():
                            series.append(MetricSeries(m.name, "gauge", dict(key), dict(rm.resource.attributes),
                                                       sorted(pts, key=lambda p: p.time_ns), m.unit or ""))
        logs.sort(key=lambda r: r.time_ns)
        spans.sort(key=lambda s: s.start_ns)
        return cls(spans, logs, series)

    # -- Backend protocol --
    def get_trace(self, trace_id, *, start_ns=None, end_ns=None):
        return self.get_traces([trace_id]).get(trace_id)

    def get_traces(self, trace_ids, *, start_ns=None, end_ns=None, with_logs=True):
        from stagetrace.model import Trace
        return {t: Trace(t, list(self.by_trace[t]), list(self.logs_by_trace[t]) if with_logs else [])
                for t in trace_ids if t in self.by_trace}

    def _match(self, s, q, ids):
        if q.root_only and s.parent_span_id:
            return False
        if q.kind and s.kind != q.kind.upper():
            return False
        if q.service and s.service_name != q.service:
            return False
        if q.span_name and s.name != q.span_name:
            return False
        if q.status and s.status_code.lower() != q.status:
            return False
        if q.min_duration_ns is not None and s.duration_ns < q.min_duration_ns:
            return False
        if q.max_duration_ns is not None and s.duration_ns > q.max_duration_ns:
            return False
        if q.start_ns is not None and s.start_ns < q.start_ns:
            return False
        if q.end_ns is not None and s.start_ns >= q.end_ns:
            return False
        for k, v in q.attributes.items():
            if s.attributes.get(k, s.resource.get(k)) != v:
                return False
        return True

    def find_spans(self, q):
        out = [s for s in self.spans if self._match(s, q, None)]
        return out if q.limit is None else out[: q.limit]

    def search_traces(self, q):
        from stagetrace.model import TraceSummary
        hits = {}
        for s in self.spans:
            if self._match(s, q, None):
                hits.setdefault(s.trace_id, s)
        out = []
        for tid in hits:
            spans = self.by_trace[tid]
            root = next((s for s in spans if not s.parent_span_id), spans[0])
            out.append(TraceSummary(tid, root.service_name, root.name, root.start_ns, root.duration_ns, len(spans),
                                    any(s.is_error for s in spans), dict(root.attributes)))
        out.sort(key=lambda t: -t.start_ns)
        return out if q.limit is None else out[: q.limit]

    def find_logs(self, q):
        out = []
        src = [r for t in q.trace_ids for r in self.logs_by_trace.get(t, [])] if q.trace_ids is not None else self.logs
        for r in src:
            if q.start_ns is not None and r.time_ns < q.start_ns:
                continue
            if q.end_ns is not None and r.time_ns >= q.end_ns:
                continue
            if q.min_severity is not None and r.severity_number < q.min_severity:
                continue
            if q.service and r.service_name != q.service:
                continue
            out.append(r)
        out.sort(key=lambda r: r.time_ns)
        return out if q.limit is None else out[: q.limit]

    def metric_series(self, q):
        from stagetrace.model import MetricSeries
        out = []
        for s in self.series:
            if q.name and s.name != q.name:
                continue
            if q.service and s.service_name != q.service:
                continue
            pts = [p for p in s.points if (q.start_ns is None or p.time_ns >= q.start_ns)
                   and (q.end_ns is None or p.time_ns < q.end_ns)]
            if pts:
                out.append(MetricSeries(s.name, s.kind, s.attributes, s.resource, pts, s.unit))
        return out

    def metric_names(self, *, start_ns=None, end_ns=None, service=None):
        return sorted({s.name for s in self.series})

    def close(self):
        pass


def memory_backend(scenario: str, **kw) -> tuple[MemoryBackend, GenResult]:
    ex = MemoryExporters()
    res = generate(scenario, ex, **kw)
    return ex.backend(), res
