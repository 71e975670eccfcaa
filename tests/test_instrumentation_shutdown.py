"""SIGTERM must not lose the last telemetry of a worker ("never silent loss").

uvicorn (and gunicorn's uvicorn workers) catch SIGTERM, shut down gracefully,
then re-raise it to the handler found at start-up, SIG_DFL: the process dies
without atexit, and the SDK's batch processors / metric reader never export.
The app (tests/apps/mlapp.py, no tracing code) runs under the real
``opentelemetry-instrument`` with export delays far longer than the test, so
everything the sink receives was flushed on SIGTERM. The ``flush off`` case
(``STAGETRACE_SIGNAL_FLUSH_TIMEOUT=0``) is the same run without our handler: it
shows the loss is real, and gives the exit status ours must keep.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from otlp_sink import OtlpSink
from test_instrumentation_e2e import free_port, start_app, wait_ready

SERVER = 2
LONG = {  # nothing is exported before exit unless something flushes
    "OTEL_BSP_SCHEDULE_DELAY": "30000",
    "OTEL_BLRP_SCHEDULE_DELAY": "30000",
    "OTEL_METRIC_EXPORT_INTERVAL": "60000",
}
# Exit status after a SIGTERM to the process we started, as without stagetrace:
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
    ("uvicorn", 1, True), ("uvicorn", 1, False), ("gunicorn", 1, True), ("uvicorn", 2, True)])
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
