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
ENV_COLLECTOR_RETENTION = "STAGETRACE_RETENTION"
ENV_COLLECTOR_RETENTION_BYTES = "STAGETRACE_RETENTION_BYTES"
ENV_COLLECTOR_FSYNC = "STAGETRACE_FSYNC"
