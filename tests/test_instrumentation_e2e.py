"""End to end: an app with no tracing code, run under the real ``opentelemetry-instrument``.

The app (tests/apps/mlapp.py) runs as a subprocess, exports OTLP/HTTP (our
distro's default protocol) to an in-test receiver (tests/otlp_sink.py); this
test process sends requests with the instrumented ``requests`` library and
exports its client spans to the same receiver over OTLP/gRPC.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otlp_sink import OtlpSink

APP_DIR = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent
STAGES = "feature_fetch=mlapp:FeatureClient.get;preprocess=mlapp:preprocess;inference=mlapp:Scorer.score"
BAD_ENTRIES = ("preprocess=no_such_module_e2e:clean", "inference=mlapp:NoSuchScorer.score")
SERVER, CLIENT = 2, 3  # OTLP span kinds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(server: str, workers: int, sink: OtlpSink, port: int,
              extra_env: dict[str, str] | None = None, output=None) -> subprocess.Popen:
    """Start the app; its stdout/stderr go to pipes, or both to the file ``output``
    (a test that does not read while the app runs must not let a pipe fill up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "OTEL_SERVICE_NAME": "fraud-api",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
        # two bad entries: each gives one warning naming it, and the app still starts
        "STAGETRACE_STAGES": STAGES + ";" + ";".join(BAD_ENTRIES),
        "STAGETRACE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",  # thread stacks on SIGABRT, used when the test fails
    })
    env.update(extra_env or {})
    if server == "uvicorn":
        cmd = ["opentelemetry-instrument", "uvicorn", "mlapp:app", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--no-access-log",
               # uvicorn's supervisor SIGKILLs a worker that misses a 5 s health ping; on a starved
               # 2-core machine a worker importing sklearn can, and requests then time out.
               "--timeout-worker-healthcheck", "60"]
    else:
        cmd = ["opentelemetry-instrument", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", str(workers),
               "-b", f"127.0.0.1:{port}", "mlapp:app"]
    return subprocess.Popen([str(BIN / cmd[0])] + cmd[1:], cwd=APP_DIR, env=env,
                            stdout=output or subprocess.PIPE, stderr=subprocess.STDOUT if output else subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited early ({proc.returncode}; its output is printed below)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"app did not become ready in {timeout:.0f} s (its output is printed below)")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def stop(proc: subprocess.Popen, dump_stacks: bool = False) -> tuple[str, str]:
    """Stop the app's process group; with dump_stacks, first make every process print
    all its thread stacks (faulthandler on SIGABRT) so a failure shows where they were."""
    import signal

    if dump_stacks:
        for pid in _group_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGABRT)
            except OSError:
                pass
        time.sleep(1)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return out, err


@pytest.mark.slow
@pytest.mark.parametrize("server,workers", [("uvicorn", 1), ("uvicorn", 2), ("gunicorn", 2)])
def test_zero_code_stage_spans_logs_and_workers(server, workers):
    with OtlpSink() as sink:
        port = free_port()
        proc = start_app(server, workers, sink, port)
        client_tp = TracerProvider(resource=Resource.create({"service.name": "e2e-client"}))
        client_tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sink.grpc_endpoint, insecure=True)))
        RequestsInstrumentor().instrument(tracer_provider=client_tp)
        failed = True
        try:
            wait_ready(proc, port)
            pids: set[int] = set()
            customers = []
            # A fresh connection per request, until every worker has answered (a worker
            # still starting up under load simply has not accepted yet).
            deadline = time.monotonic() + 90
            while len(customers) < 3 or len(pids) < workers:
                assert time.monotonic() < deadline, f"requests reached {len(pids)} of {workers} workers"
                cid = 1000 + len(customers)
                r = requests.get(f"http://127.0.0.1:{port}/score/{cid}", headers={"Connection": "close"}, timeout=30)
                assert r.status_code == 200, r.text
                pids.add(r.json()["pid"])
                customers.append(cid)
            r = requests.get(f"http://127.0.0.1:{port}/raw/5", timeout=30)
            assert r.status_code == 200
            client_tp.force_flush()

            def complete(store):
                servers = [s for s in store.spans if s.kind == SERVER and s.name.startswith("GET /score")]
                fetched = [lg for lg in store.logs if str(lg.body).startswith("fetched features")]
                raw = [s for s in store.spans if s.name == "inference Pipeline"]
                return len(servers) >= len(customers) and len(fetched) >= len(customers) and raw and any(
                    m.name == "ml.stage.duration" for m in store.metrics)

            assert sink.wait_for(complete, timeout=30), "telemetry did not arrive"
            failed = False
        finally:
            RequestsInstrumentor().uninstrument()
            client_tp.shutdown()
            out, err = stop(proc, dump_stacks=failed)
            if failed:
                print("--- app stdout (tail) ---\n" + out[-3000:])
                print("--- app stderr (tail) ---\n" + err[-12000:])

        spans, logs_ = list(sink.store.spans), list(sink.store.logs)
        by_id = {s.span_id: s for s in spans}
        children: dict[str, list] = {}
        for s in spans:
            children.setdefault(s.parent_span_id, []).append(s)
        json_lines = []
        for line in out.splitlines():
            try:
                json_lines.append(json.loads(line))
            except ValueError:
                pass

        clients = [s for s in spans if s.kind == CLIENT and "/score/" in str(s.attributes.get("url.full", s.attributes.get("http.url")))]
        assert len(clients) == len(customers) and all(c.via == "grpc" for c in clients)
        instance_ids = set()
        for client in clients:
            assert client.resource["service.name"] == "e2e-client"
            (srv,) = [s for s in children.get(client.span_id, []) if s.kind == SERVER]
            assert srv.trace_id == client.trace_id and srv.via == "http"
            assert srv.resource["service.name"] == "fraud-api"
            instance_ids.add(srv.resource["service.instance.id"])
            stage = {s.attributes["ml.stage"]: s for s in children.get(srv.span_id, []) if "ml.stage" in s.attributes}
            assert set(stage) == {"feature_fetch", "preprocess", "inference"}, [s.name for s in children.get(srv.span_id, [])]
            assert all(s.trace_id == client.trace_id for s in stage.values())
            assert stage["feature_fetch"].name == "feature_fetch FeatureClient.get"
            assert stage["preprocess"].attributes["ml.feature.count"] == 3
            inf = stage["inference"]
            assert inf.name == "inference Scorer.score"
            # the sklearn Pipeline call inside Scorer.score: no second inference span, model attrs on this one
            assert inf.attributes["ml.model.framework"] == "sklearn" and inf.attributes["ml.model.name"] == "Pipeline"
            assert inf.attributes["ml.batch.size"] == 1 and inf.attributes["ml.feature.count"] == 3
            assert list(inf.attributes["ml.input.shape"]) == [1, 3]
            nested = children.get(inf.span_id, [])
            assert [s.name for s in nested] == ["preprocess StandardScaler"]
            # OTLP logs written in each stage carry that stage's ids; so do the stdout JSON lines
            for st, prefix in (("feature_fetch", "fetched features"), ("preprocess", "preprocessed"), ("inference", "scoring")):
                span = stage[st]
                mine = [lg for lg in logs_ if str(lg.body).startswith(prefix) and lg.span_id == span.span_id]
                assert len(mine) == 1, (st, [(lg.body, lg.span_id) for lg in logs_ if str(lg.body).startswith(prefix)])
                assert mine[0].trace_id == span.trace_id and mine[0].attributes.get("ml.stage") == st
                lines = [j for j in json_lines if j.get("message", "").startswith(prefix) and j.get("span_id") == span.span_id]
                assert len(lines) == 1, (st, prefix)
                assert lines[0]["trace_id"] == span.trace_id and lines[0]["ml.stage"] == st
                assert lines[0]["service"] == "fraud-api" and lines[0]["logger"] == "mlapp"
        assert len(instance_ids) == workers, f"expected {workers} distinct service.instance.id, got {instance_ids}"
        srv_pids = {s.resource.get("process.pid") for s in spans if s.kind == SERVER and s.name.startswith("GET /score")}
        assert srv_pids == pids  # every worker that served a request exported its spans

        raw = [s for s in spans if s.name == "inference Pipeline"]
        assert raw and by_id[raw[0].parent_span_id].kind == SERVER  # library hook alone, directly under the server span
        assert raw[0].attributes["ml.model.framework"] == "sklearn"
        assert not [s for s in spans if s.name.startswith("inference LogisticRegression")]  # no per-layer duplicates

        metric = [m for m in sink.store.metrics if m.name == "ml.stage.duration"]
        assert metric and all(m.unit == "s" for m in metric)
        assert {"feature_fetch", "preprocess", "inference"} <= {m.attributes["ml.stage"] for m in metric}
        assert all(m.attributes["outcome"] == "ok" for m in metric)
        assert "Traceback" not in err, err[-3000:]
        warnings = [j["message"] for j in json_lines if j.get("logger") == "stagetrace.instrumentation"]
        for entry in BAD_ENTRIES:  # one per entry per process (workers each load the config)
            n = len([w for w in warnings if repr(entry) in w])
            assert n == 1 if workers == 1 else n >= 1, warnings
        assert not [w for w in warnings if "circular import" in w]
