"""StagetraceDistro: our defaults for plain ``opentelemetry-instrument``.

Every default is ``os.environ.setdefault``: a standard ``OTEL_*`` variable the
user set always wins. The table of defaults is in docs/instrumentation.md and
is checked against ``DEFAULTS`` by a test.
"""

from __future__ import annotations

import os

from opentelemetry.instrumentation.distro import BaseDistro

from stagetrace import semconv

DEFAULTS: dict[str, str] = {
    # OTLP export of all three signals.
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "otlp",
    # http/protobuf is the spec's default protocol and, unlike a gRPC channel,
    # survives gunicorn's fork of pre-configured workers.
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    # Our configurator installs the one OTLP log handler; this keeps
    # opentelemetry-instrumentation-logging (if installed) from adding a second one.
    "OTEL_PYTHON_LOG_AUTO_INSTRUMENTATION": "false",
    # Trace/span ids, service name and ml.stage on every LogRecord.
    semconv.ENV_LOG_CORRELATION: "true",
}


class StagetraceDistro(BaseDistro):
    """Sets defaults only; the configurator builds the SDK from the resulting env."""

    def _configure(self, **kwargs) -> None:
        for name, value in DEFAULTS.items():
            os.environ.setdefault(name, value)
