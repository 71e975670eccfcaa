"""SIGTERM must not lose the last telemetry of a worker ("never silent loss").

uvicorn (and gunicorn's uvicorn workers) catch SIGTERM, shut down gracefully,
then re-raise it to the handler found at start-up, SIG_DFL: the process dies
without atexit, and the SDK's batch processors / metric reader never export.
The app (tests/apps/mlapp.py, no tracing code) runs under the real
``opentelemetry-instrument`` with export delays far longer than the test, so
everything the sink receives was flushed on SIGTERM. Set ``flush`` False in the
parameters for the same run without our handler (``STAGETRACE_SIGNAL_FLUSH_TIMEOUT=0``):
it shows the loss and the exit status ours must keep (left out of the suite for
time; the unit tests below show the loss with the SDK alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import types
import urllib.request

import pytest

from otlp_sink import OtlpSink
from stagetrace.instrumentation import shutdown
from test_instrumentation_e2e import free_port, start_app, wait_ready

SERVER = 2
PY = sys.executable

# A process with the three SDK providers, batch/periodic export far in the future,
# console exporters on stdout, and our handler; it signals itself.
CHILD = r"""
import logging, os, signal, sys, time, warnings
warnings.simplefilter("ignore")
from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from stagetrace.instrumentation import shutdown

class Hanging(ConsoleSpanExporter):
    def export(self, spans):
        time.sleep(600)

sig = getattr(signal, sys.argv[1])
tp = TracerProvider()
exporter = Hanging() if sys.argv[2] == "hang" else ConsoleSpanExporter(out=sys.stdout)
tp.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600000))
trace.set_tracer_provider(tp)
lp = LoggerProvider()
lp.add_log_record_processor(BatchLogRecordProcessor(ConsoleLogRecordExporter(out=sys.stdout), schedule_delay_millis=600000))
set_logger_provider(lp)
logging.getLogger().addHandler(LoggingHandler(logger_provider=lp))
mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout), export_interval_millis=600000)])
metrics.set_meter_provider(mp)
if sig == signal.SIGINT:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as gunicorn's UvicornWorker does
print("installed", [signal.Signals(s).name for s in shutdown.install()], flush=True)
with trace.get_tracer("t").start_as_current_span("last-span-before-exit"):
    logging.getLogger("t").warning("last-log-before-exit")
metrics.get_meter("t").create_counter("last_counter_before_exit").add(1)
os.kill(os.getpid(), sig)
time.sleep(30)
print("survived", flush=True)
"""


def _child(signame: str, mode: str = "console", **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    environ.update(env)
    return subprocess.run([PY, "-c", CHILD, signame, mode], env=environ, capture_output=True, text=True, timeout=25)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_flushes_every_signal_type_and_keeps_the_death(signame):
    done = _child(signame)
    assert "installed ['SIGTERM'" in done.stdout and (signame != "SIGINT" or "'SIGINT']" in done.stdout), done.stderr
    assert done.returncode == -getattr(signal, signame), done.stderr  # what SIG_DFL gives
    assert "survived" not in done.stdout
    for name in ("last-span-before-exit", "last-log-before-exit", "last_counter_before_exit"):
        assert name in done.stdout, (name, done.stdout[-2000:])


def test_signal_flush_off_shows_the_loss():
    done = _child("SIGTERM", **{"STAGETRACE_SIGNAL_FLUSH_TIMEOUT": "0"})
    assert "installed []" in done.stdout and done.returncode == -signal.SIGTERM
    assert "last-span-before-exit" not in done.stdout and "last-log-before-exit" not in done.stdout


def test_hanging_exporter_cannot_hold_the_process():
    # The span exporter never returns: the flush is abandoned after the timeout and
    # the process still dies of SIGTERM (the subprocess timeout is only a hang guard).
    done = _child("SIGTERM", "hang", **{"STAGETRACE_SIGNAL_FLUSH_TIMEOUT": "0.5"})
    assert done.returncode == -signal.SIGTERM and "survived" not in done.stdout, done.stderr


def test_install_never_replaces_a_handler_the_app_set():
    def app_handler(signum, frame):
        pass

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, app_handler)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert shutdown.install() == []
        assert signal.getsignal(signal.SIGTERM) is app_handler and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: KeyboardInterrupt runs atexit
        assert shutdown.install() == []
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert shutdown.install() == [signal.SIGTERM] and shutdown.installed(signal.SIGTERM)
        assert shutdown.install() == [signal.SIGTERM]  # idempotent
    finally:
        shutdown.uninstall()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_install_off_main_thread_or_disabled_is_a_no_op(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        result = []
        t = threading.Thread(target=lambda: result.append(shutdown.install()))
        t.start()
        t.join()
        assert result == [[]]
        monkeypatch.setenv("STAGETRACE_SIGNAL_FLUSH_TIMEOUT", "0")
        assert shutdown.install() == [] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        monkeypatch.setenv("STAGETRACE_SIGNAL_FLUSH_TIMEOUT", "not-a-number")
        assert shutdown.flush_timeout() == shutdown.DEFAULT_TIMEOUT_S
    finally:
        shutdown.uninstall()
        signal.signal(signal.SIGTERM, before)


def test_uvicorn_server_patch_installs_then_runs_the_original():
    calls = []

    class Server:
        def capture_signals(self, *args):
            calls.append((args, signal.getsignal(signal.SIGTERM)))
            return "ctx"

    module = types.ModuleType("fake_uvicorn_server")
    module.Server = Server
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what gunicorn's UvicornWorker.init_signals leaves
        shutdown.patch_uvicorn_server(module)
        patched = Server.capture_signals
        shutdown.patch_uvicorn_server(module)  # idempotent
        assert Server.capture_signals is patched
        assert Server().capture_signals(1) == "ctx"
        assert calls == [((1,), shutdown._on_signal)]  # the server saw ours as "the handler before"
    finally:
        shutdown.uninstall()
        signal.signal(signal.SIGTERM, before)
LONG = {  # nothing is exported before exit unless something flushes
    "OTEL_BSP_SCHEDULE_DELAY": "30000",
    "OTEL_BLRP_SCHEDULE_DELAY": "30000",
    "OTEL_METRIC_EXPORT_INTERVAL": "60000",
}
# Exit status after a SIGTERM to the process we started, as without stagetrace
# (observed with the handler disabled, STAGETRACE_SIGNAL_FLUSH_TIMEOUT=0 below):
# uvicorn alone dies of the re-raised signal; uvicorn's supervisor and gunicorn's
# master exit 0 after their workers die of it.
EXPECTED_STATUS = {("uvicorn", 1): -signal.SIGTERM, ("uvicorn", 2): 0, ("gunicorn", 1): 0}


def _get(port: int, path: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.parametrize("server,workers,flush", [
    ("uvicorn", 1, True), ("gunicorn", 1, True), ("uvicorn", 2, True)])
def test_sigterm_flushes_spans_logs_and_metrics(server, workers, flush, tmp_path):
    env = dict(LONG)
    if not flush:
        env["STAGETRACE_SIGNAL_FLUSH_TIMEOUT"] = "0"
    with OtlpSink() as sink, open(tmp_path / "app.out", "w+") as output:
        port = free_port()
        proc = start_app(server, workers, sink, port, env, output=output)
        try:
            wait_ready(proc, port)
            customers, pids = [], set()
            # Fresh connections, until every worker has served one (an idle worker usually
            # wins the accept race, but not always: then at least the ones that served).
            for _ in range(12):
                cid = 7000 + len(customers)
                pids.add(_get(port, f"/score/{cid}")["pid"])
                customers.append(cid)
                if len(pids) == workers and len(customers) >= 2:
                    break
            with sink.store.lock:
                early = len(sink.store.spans) + len(sink.store.logs) + len(sink.store.metrics)
            assert early == 0, "telemetry exported before SIGTERM: the test would prove nothing"
            proc.send_signal(signal.SIGTERM)  # to the server process only, as `kill`/`docker stop` do
            proc.wait(timeout=30)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            output.seek(0)
            print("--- app output (tail) ---\n" + output.read()[-8000:])
            raise
        output.seek(0)
        err = output.read()

        assert proc.returncode == EXPECTED_STATUS[(server, workers)], (proc.returncode, err[-3000:])
        # The process has exited: whatever it flushed was received before its export returned.
        with sink.store.lock:
            spans, logs_, metrics = list(sink.store.spans), list(sink.store.logs), list(sink.store.metrics)
        servers = {s.attributes.get("url.path", s.attributes.get("http.target")): s
                   for s in spans if s.kind == SERVER and s.name.startswith("GET /score")}
        fetched = [lg for lg in logs_ if str(lg.body).startswith("fetched features")]
        if not flush:
            assert not servers and not fetched and not metrics, "expected the loss this fix is for"
            return
        assert "Traceback" not in err, err[-3000:]
        assert set(servers) == {f"/score/{c}" for c in customers}, (sorted(servers), customers)
        assert {s.resource.get("process.pid") for s in servers.values()} == pids
        children: dict[str, list] = {}
        for s in spans:
            children.setdefault(s.parent_span_id, []).append(s)
        for srv in servers.values():
            stages = {s.attributes.get("ml.stage"): s for s in children.get(srv.span_id, [])}
            assert {"feature_fetch", "preprocess", "inference"} <= set(stages), sorted(map(str, stages))
            # the log line written inside the feature_fetch span, with its ids
            cid = srv.attributes.get("url.path", srv.attributes.get("http.target")).rsplit("/", 1)[1]
            mine = [lg for lg in fetched if lg.body == f"fetched features for customer {cid}"]
            assert len(mine) == 1 and mine[0].span_id == stages["feature_fetch"].span_id
            assert mine[0].trace_id == srv.trace_id
        metric_pids = {m.resource.get("process.pid") for m in metrics if m.name == "ml.stage.duration"}
        assert metric_pids == pids
