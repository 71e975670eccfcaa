"""Run a test app under the real ``opentelemetry-instrument``, exporting to a real
``stagetrace collector``, and read its inference spans back from the store; or make
calls in this process under the sklearn hook with a real SDK span processor and the
SDK's in-memory exporter (shared by the issue 18 tests that run real models)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from stagetrace import semconv
from stagetrace.backend import TraceQuery
from stagetrace.collector.query import EmbeddedBackend

BIN = Path(sys.executable).parent


def inference_spans(data_dir: Path, want: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        with EmbeddedBackend(data_dir) as be:
            spans = [s for s in be.find_spans(TraceQuery(limit=None)) if s.attributes.get(semconv.ML_STAGE) == "inference"]
        if len(spans) >= want or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def run_instrumented(app: Path, args: list[str], collector, cwd: Path, **env_vars: str) -> None:
    """``opentelemetry-instrument python app args...`` exporting to ``collector``, with no
    OTEL_/STAGETRACE_ variable of the test run leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "OTEL_SERVICE_NAME": "scorer",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
                "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cret", "OTEL_METRICS_EXPORTER": "none"})
    env.update(env_vars)
    run = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, str(app), *args], env=env,
                         capture_output=True, text=True, timeout=300, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "internal error" not in run.stderr, run.stderr[-3000:]  # a profile failure is logged, not raised




def export_calls(processor_factory, profile, calls, sampler=None):
    """(results, every exported span) of ``calls`` made under the sklearn hook, with
    ``profile`` settings, through ``processor_factory(exporter)``; uninstrumented after."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor

    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    tp.add_span_processor(processor_factory(exporter))
    inst = StagetraceInstrumentor()
    inst.instrument(tracer_provider=tp, stages="", libraries=["sklearn"], profile=profile)
    try:
        results = [call() for call in calls]
        tp.force_flush()
    finally:
        inst.uninstrument()
        tp.shutdown()
    return results, exporter.get_finished_spans()
