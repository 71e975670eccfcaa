"""The one place for attribute, metric and environment-variable names.

OpenTelemetry semantic-convention names are used where they exist; the ``ml.*``
names fill the gap for ML inference and are documented in
``docs/semantic-conventions.md`` (kept in step with this module by a test).
"""

from __future__ import annotations

# --- OpenTelemetry semantic conventions we read or write --------------------
SERVICE_NAME = "service.name"
SERVICE_VERSION = "service.version"
SERVICE_INSTANCE_ID = "service.instance.id"
SERVICE_NAMESPACE = "service.namespace"
DEPLOYMENT_ENVIRONMENT = "deployment.environment.name"
HOST_NAME = "host.name"
HTTP_ROUTE = "http.route"
HTTP_REQUEST_METHOD = "http.request.method"
RPC_METHOD = "rpc.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_FULL = "url.full"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_PORT = "client.port"  # the caller's ephemeral port: a connection, never a segment
PEER_SERVICE = "peer.service"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
EXCEPTION_EVENT = "exception"
ERROR_TYPE = "error.type"
CODE_FUNCTION = "code.function.name"

# --- ML inference (no semantic convention yet; aligned with semconv#3420 and
# OpenInference where they overlap) -------------------------------------------
ML_STAGE = "ml.stage"  # feature_fetch | preprocess | inference | <user stage>
ML_MODEL_NAME = "ml.model.name"
ML_MODEL_VERSION = "ml.model.version"
ML_MODEL_FRAMEWORK = "ml.model.framework"  # sklearn | xgboost | lightgbm | pytorch | onnxruntime | transformers | feast
ML_BATCH_SIZE = "ml.batch.size"
ML_INPUT_SHAPE = "ml.input.shape"
ML_FEATURE_COUNT = "ml.feature.count"
ML_INPUT_VALUE = "ml.input.value"  # opt-in only (payload capture)
ML_OUTPUT_VALUE = "ml.output.value"  # opt-in only (payload capture)
# Input/output profiles of the inference stage (binned, never values; core/mlprofile.py)
ML_PREDICTION_ID = "ml.prediction.id"  # <trace id>-<span id>[-<row>], derived (not written); on a span only when custom
ML_INPUT_FEATURES = "ml.input.features"  # string: feature names in profile order, joined by U+001F
ML_INPUT_PROFILE = "ml.input.profile"  # encoded per-feature bins, missing counts, ranges, category sets
ML_INPUT_SAMPLE = "ml.input.sample"  # opt-in only: JSON of one row, redacted fields replaced
ML_OUTPUT_PROFILE = "ml.output.profile"  # encoded per-row score, predicted class, confidence
ML_PREDICTION_SCORE_MEAN = "ml.prediction.score.mean"
ML_PREDICTION_CONFIDENCE_MEAN = "ml.prediction.confidence.mean"  # mean top-class probability
ML_PREDICTION_CLASS = "ml.prediction.class"  # the predicted class of a one-row call
# Delayed labels: an OTLP log record with event.name = ml.label (docs/semantic-conventions.md)
EVENT_NAME = "event.name"  # OTel semconv (log record attribute; LogRecord.event_name in newer OTLP)
ML_LABEL_EVENT = "ml.label"
ML_LABEL_VALUE = "ml.label.value"  # the true outcome: string, int, bool or double
ML_LABEL_TRACE_ID = "ml.label.trace_id"  # the labelled prediction's trace (also the record's own trace id)
ML_LABEL_TIME = "ml.label.time"  # when the outcome was known, Unix ns (the record's time is when it was received)

STAGE_FEATURE_FETCH = "feature_fetch"
STAGE_PREPROCESS = "preprocess"
STAGE_INFERENCE = "inference"
CORE_STAGES = (STAGE_FEATURE_FETCH, STAGE_PREPROCESS, STAGE_INFERENCE)
STAGE_OTHER = "other"  # forensics bucket for time outside any ML stage

# --- Metrics -----------------------------------------------------------------
METRIC_STAGE_DURATION = "ml.stage.duration"  # histogram, seconds
METRIC_OUTCOME = "outcome"  # attribute on ml.stage.duration: ok | error
OUTCOME_OK = "ok"
OUTCOME_ERROR = "error"
OUTCOME_CANCELLED = "cancelled"  # BaseException that is not an Exception (cancellation, exit)

# --- Scale-out path (collector/otelcol/*.yaml, compose/, docs/scale-out.md) -----
# Tail sampling in the gateway Collector records the deciding policy (errors | slow |
# baseline) and, for the probabilistic baseline share, the adjusted count 1/p.
TAILSAMPLING_POLICY = "tailsampling.policy"
SAMPLING_ADJUSTED_COUNT = "sampling.adjusted_count"
SAMPLING_POLICY_BASELINE = "baseline"
# spanmetrics connector output in Prometheus (names since Collector v0.109)
METRIC_SPANMETRICS_CALLS = "traces_span_metrics_calls_total"
METRIC_SPANMETRICS_DURATION = "traces_span_metrics_duration_seconds"
ENV_TENANT = "STAGETRACE_TENANT"  # X-Scope-OrgID for Tempo/Loki/Mimir
ENV_SLOW_THRESHOLD_MS = "STAGETRACE_SLOW_THRESHOLD_MS"  # Collector tail sampling: slow trace threshold
ENV_BASELINE_SAMPLE_PERCENT = "STAGETRACE_BASELINE_SAMPLE_PERCENT"  # Collector tail sampling: baseline share

# --- Instrumentation scope ------------------------------------------------------
INSTRUMENTATION_SCOPE = "stagetrace.instrumentation"
# OTel semconv metrics the forensics test data and demo emit (read generically by forensics)
METRIC_DB_CONNECTION_WAIT = "db.client.connection.wait_time"  # pool wait, seconds
METRIC_PROCESS_CPU_UTILIZATION = "process.cpu.utilization"
METRIC_PROCESS_MEMORY_USAGE = "process.memory.usage"

# Feature-store partition a lookup hit (no semconv; the name the issues use)
FEATURE_STORE_SHARD = "feature.store.shard"

# --- Log record attributes injected for formatters (logging.LogRecord fields) --
LOG_TRACE_ID = "otelTraceID"  # same field names as opentelemetry-instrumentation-logging
LOG_SPAN_ID = "otelSpanID"
LOG_SERVICE_NAME = "otelServiceName"
LOG_TRACE_SAMPLED = "otelTraceSampled"
LOG_ML_STAGE = "ml_stage"

# --- Environment variables (ours; OTEL_* ones keep their standard meaning) ----
ENV_STAGES = "STAGETRACE_STAGES"
ENV_CONFIG = "STAGETRACE_CONFIG"
ENV_LOG_FORMAT = "STAGETRACE_LOG_FORMAT"  # json | text (default: your own format is left alone)
ENV_LOG_CORRELATION = "STAGETRACE_LOG_CORRELATION"  # true (default) | false: ids on every LogRecord
ENV_CAPTURE_PAYLOADS = "STAGETRACE_CAPTURE_PAYLOADS"  # opt-in: true
ENV_PAYLOAD_HOOK = "STAGETRACE_PAYLOAD_HOOK"  # opt-in: module:function called with inputs/outputs
ENV_PROFILE = "STAGETRACE_PROFILE"  # false: no input/output profiles (default on)
ENV_PROFILE_STAGES = "STAGETRACE_PROFILE_STAGES"  # comma-separated stages to profile (default inference)
ENV_PROFILE_FEATURES = "STAGETRACE_PROFILE_FEATURES"  # comma-separated feature names when the model has none
ENV_PROFILE_REDACT = "STAGETRACE_PROFILE_REDACT"  # comma-separated features never binned nor sampled
ENV_PROFILE_SAMPLE_RATE = "STAGETRACE_PROFILE_SAMPLE_RATE"  # opt-in raw samples: share of calls (default 0)
ENV_PROFILE_DEFER = "STAGETRACE_PROFILE_DEFER"  # false: encode profiles in the call, not in the span export thread
ENV_NO_ACCEL = "STAGETRACE_NO_ACCEL"  # true: the pure-Python call-time snapshots, not the C accelerator (tests)
ENV_DEBUG_REQUESTS = "STAGETRACE_DEBUG_REQUESTS"  # true: per-request DEBUG logs (instrumentation/debuglog.py); off by default
ENV_DEBUG_HEADER = "STAGETRACE_DEBUG_HEADER"  # header and baggage key that asks for them (default stagetrace-debug)
ENV_DEBUG_RATE = "STAGETRACE_DEBUG_RATE"  # admitted debug traces per process: N/s, N/min, N/h (default 10/min)
ENV_MODEL_NAME = "STAGETRACE_MODEL_NAME"  # ml.model.name of the profiled stages' spans (instrumentation/modelnames.py)
ENV_MODEL_VERSION = "STAGETRACE_MODEL_VERSION"  # default ml.model.version when the library has none
ENV_SIGNAL_FLUSH_TIMEOUT = "STAGETRACE_SIGNAL_FLUSH_TIMEOUT"  # seconds to flush telemetry on SIGTERM (default 2; 0 = off)
ENV_DATA_DIR = "STAGETRACE_DATA_DIR"
ENV_BACKEND = "STAGETRACE_BACKEND"  # embedded | grafana
ENV_TEMPO_URL = "STAGETRACE_TEMPO_URL"
ENV_LOKI_URL = "STAGETRACE_LOKI_URL"
ENV_PROMETHEUS_URL = "STAGETRACE_PROMETHEUS_URL"

# `stagetrace collector` flags (each flag has the matching STAGETRACE_* variable)
ENV_COLLECTOR_HOST = "STAGETRACE_HOST"
ENV_COLLECTOR_GRPC_PORT = "STAGETRACE_GRPC_PORT"
ENV_COLLECTOR_HTTP_PORT = "STAGETRACE_HTTP_PORT"
ENV_COLLECTOR_TOKEN = "STAGETRACE_TOKEN"
ENV_COLLECTOR_ALLOW_REMOTE = "STAGETRACE_ALLOW_REMOTE"
ENV_COLLECTOR_MAX_REQUEST_BYTES = "STAGETRACE_MAX_REQUEST_BYTES"
ENV_COLLECTOR_MAX_INFLIGHT = "STAGETRACE_MAX_INFLIGHT"
ENV_COLLECTOR_MAX_BACKLOG_BYTES = "STAGETRACE_MAX_BACKLOG_BYTES"
ENV_COLLECTOR_MAX_LAG = "STAGETRACE_MAX_LAG"
ENV_COLLECTOR_RETENTION = "STAGETRACE_RETENTION"
ENV_COLLECTOR_RETENTION_BYTES = "STAGETRACE_RETENTION_BYTES"
ENV_COLLECTOR_FSYNC = "STAGETRACE_FSYNC"
