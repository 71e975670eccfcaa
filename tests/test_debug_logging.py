"""Per-request debug logging (instrumentation/debuglog.py).

End to end: two services with no tracing code (tests/apps/debugapp.py), each under the
real ``opentelemetry-instrument`` with uvicorn, the edge calling the other with
``requests``; their OTLP logs go to an in-test receiver. Plus in-process checks of the
rate limiter, the propagator and the level override.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from opentelemetry import baggage, context, propagate
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otlp_sink import OtlpSink
from stagetrace import semconv
from stagetrace.instrumentation import debuglog
from test_instrumentation_e2e import free_port, stop, wait_ready

APP_DIR = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent


def _start(name: str, port: int, sink: OtlpSink, env_extra: dict[str, str], log_file) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_", "DEBUGAPP_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "OTEL_SERVICE_NAME": name,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "none",
        "DEBUGAPP_NAME": name,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(env_extra)
    cmd = [str(BIN / "opentelemetry-instrument"), "uvicorn", "debugapp:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log"]
    return subprocess.Popen(cmd, cwd=APP_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _run_two_services(tmp_path: Path, debug_env: dict[str, str], send) -> tuple[list, dict]:
    """Start downstream and edge with ``debug_env``, call ``send(edge_url)``, return the
    sink's logs once every INFO line of the requests has arrived."""
    with OtlpSink() as sink:
        back_port, front_port = free_port(), free_port()
        procs = []
        failed = True
        try:
            with open(tmp_path / "back.log", "w") as back_log, open(tmp_path / "front.log", "w") as front_log:
                procs.append(_start("back", back_port, sink, debug_env, back_log))
                procs.append(_start("front", front_port, sink,
                                    {**debug_env, "DEBUGAPP_DOWNSTREAM": f"http://127.0.0.1:{back_port}"}, front_log))
                wait_ready(procs[0], back_port)
                wait_ready(procs[1], front_port)
                items = send(f"http://127.0.0.1:{front_port}")

                def arrived(store):
                    infos = [lg for lg in store.logs if str(lg.body).startswith("handled item")]
                    return len(infos) >= 2 * len(items)

                assert sink.wait_for(arrived, timeout=30), "the INFO logs did not arrive"
                time.sleep(0.5)  # DEBUG lines are emitted before the INFO ones; let a last batch land
                failed = False
        finally:
            for p in procs:
                stop(p, dump_stacks=failed)
            if failed:
                for f in ("back.log", "front.log"):
                    if (tmp_path / f).exists():
                        print(f"--- {f} ---\n" + (tmp_path / f).read_text()[-4000:])
        return list(sink.store.logs), items


def _by_item(logs: list) -> dict[tuple[int, str], dict]:
    """(item, service) -> {'trace': trace id of its INFO line, 'debug': [its DEBUG records]}."""
    out: dict[tuple[int, str], dict] = {}
    for lg in logs:
        body = str(lg.body)
        svc = lg.resource.get("service.name")
        if body.startswith("handled item"):
            item = int(body.split()[2])
            out.setdefault((item, svc), {"debug": []})["trace"] = lg.trace_id
    for lg in logs:
        body = str(lg.body)
        if body.startswith("debug detail from"):
            item = int(body.split()[-1])
            out.setdefault((item, lg.resource.get("service.name")), {"debug": []})["debug"].append(lg)
    return out


@pytest.mark.slow
def test_debug_header_turns_on_debug_logs_for_that_trace_in_both_services_rate_limited(tmp_path):
    header = {"stagetrace-debug": "1"}

    def send(edge: str) -> dict[int, bool]:
        asked = {}
        for item, debug in ((1, False), (2, True), (3, False), (4, True), (5, True), (6, True), (7, True)):
            r = requests.get(f"{edge}/call/{item}", headers=header if debug else {}, timeout=30)
            assert r.status_code == 200, r.text
            asked[item] = debug
        return asked

    # a burst of 3 debug traces, then one per hour: requests 2, 4, 5 are admitted, 6 and 7 refused
    logs, asked = _run_two_services(tmp_path, {semconv.ENV_DEBUG_REQUESTS: "true", semconv.ENV_DEBUG_RATE: "3/h"}, send)
    found = _by_item(logs)
    admitted = {2, 4, 5}
    for item in asked:
        front, back = found[(item, "front")], found[(item, "back")]
        assert front["trace"] and front["trace"] == back["trace"], "one trace across both services"
        for svc, rec in (("front", front), ("back", back)):
            if item in admitted:
                assert len(rec["debug"]) == 1, (item, svc)
                (d,) = rec["debug"]
                assert d.severity == "DEBUG" and d.trace_id == rec["trace"], (item, svc)
                assert d.span_id and d.span_id != "0" * 16
            else:
                assert rec["debug"] == [], f"item {item} ({'refused' if asked[item] else 'no header'}) got DEBUG in {svc}"
    # nothing else was turned to DEBUG: every DEBUG record belongs to an admitted request's trace
    admitted_traces = {found[(i, "front")]["trace"] for i in admitted}
    assert {lg.trace_id for lg in logs if lg.severity == "DEBUG"} == admitted_traces


@pytest.mark.slow
def test_debug_header_does_nothing_unless_configured(tmp_path):
    def send(edge: str) -> dict[int, bool]:
        for item in (11, 12):
            r = requests.get(f"{edge}/call/{item}", headers={"stagetrace-debug": "1", "baggage": "stagetrace-debug=1"},
                             timeout=30)
            assert r.status_code == 200 and r.json()["debug_enabled"] is False
        return {11: True, 12: True}

    logs, _ = _run_two_services(tmp_path, {}, send)
    assert [lg for lg in logs if lg.severity == "DEBUG" or str(lg.body).startswith("debug detail")] == []
    assert len([lg for lg in logs if str(lg.body).startswith("handled item")]) == 4


# --- in process -------------------------------------------------------------------------

def test_settings_off_by_default_and_parsed():
    assert debuglog.load_settings({}) is None
    assert debuglog.load_settings({semconv.ENV_DEBUG_REQUESTS: "false"}) is None
    s = debuglog.load_settings({semconv.ENV_DEBUG_REQUESTS: "1"})
    assert s.key == "stagetrace-debug" and s.burst == 10 and abs(s.per_second - 10 / 60) < 1e-9
    s = debuglog.load_settings({semconv.ENV_DEBUG_REQUESTS: "true", semconv.ENV_DEBUG_HEADER: "X-Debug-Me",
                                semconv.ENV_DEBUG_RATE: "2/s"})
    assert s.key == "x-debug-me" and s.per_second == 2 and s.burst == 2
    for bad in ("fast", "3/week", "-1/s"):
        with pytest.raises(ValueError):
            debuglog.load_settings({semconv.ENV_DEBUG_REQUESTS: "true", semconv.ENV_DEBUG_RATE: bad})
    with pytest.raises(ValueError):
        debuglog.load_settings({semconv.ENV_DEBUG_REQUESTS: "true", semconv.ENV_DEBUG_HEADER: "bad header"})


def test_rate_limiter_tokens_refill_and_decisions_per_trace():
    now = [0.0]
    rl = debuglog.RateLimiter(per_second=0.5, burst=2, clock=lambda: now[0])
    assert rl.admit(1) and rl.admit(2)
    assert not rl.admit(3)
    assert rl.admit(1) and not rl.admit(3)  # remembered either way, no token spent
    now[0] = 1.9
    assert not rl.admit(4)  # 0.95 token
    now[0] = 4.0  # 0.95 + 2.1 s x 0.5/s, capped at the burst of 2
    assert rl.admit(5) and rl.admit(6) and not rl.admit(7)
    now[0] = 6.0
    assert rl.admit(0) and not rl.admit(0)  # no trace id (the edge): one token per request, nothing remembered
    assert rl.admitted == 5 and 0 not in rl.decided


def _remote(trace_id: int):
    return set_span_in_context(NonRecordingSpan(SpanContext(trace_id, 7, True, TraceFlags(1))))


def test_propagator_admits_refuses_and_strips_refused_baggage():
    prop = debuglog.DebugPropagator(debuglog.DebugSettings(per_second=0.0, burst=1))
    key = prop.key
    ctx = prop.extract({"stagetrace-debug": "1"}, _remote(11))
    assert baggage.get_baggage(key, ctx) == "1"
    # a second trace is over the limit: the incoming baggage entry is removed, so nothing
    # downstream sees it either
    refused = prop.extract({}, baggage.set_baggage(key, "1", _remote(12)))
    assert baggage.get_baggage(key, refused) is None
    # the admitted trace again (another call of it reaching this service): still admitted
    assert baggage.get_baggage(key, prop.extract({}, baggage.set_baggage(key, "1", _remote(11)))) == "1"
    assert baggage.get_baggage(key, prop.extract({"stagetrace-debug": "0"}, _remote(13))) is None
    other = baggage.set_baggage("tenant", "t3", _remote(14))
    assert prop.extract({}, other) is other  # no header, no entry: untouched


def test_level_override_only_in_a_debug_context(caplog):
    settings = debuglog.DebugSettings(per_second=100, burst=100)
    debuglog.install(settings)
    try:
        log = logging.getLogger("stagetrace.test.debuglog")
        log.setLevel(logging.INFO)
        assert not log.isEnabledFor(logging.DEBUG)
        token = context.attach(propagate.extract({"stagetrace-debug": "1", "traceparent":
                                                  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}))
        try:
            assert log.isEnabledFor(logging.DEBUG) and not log.isEnabledFor(5)
            assert not logging.getLogger("opentelemetry.sdk.test").isEnabledFor(logging.DEBUG)
            with caplog.at_level(logging.DEBUG, logger="stagetrace.test.debuglog"):
                log.setLevel(logging.INFO)  # at_level lowered it; the override must do the work
                log.debug("only for this request")
            assert [r.getMessage() for r in caplog.records if r.name == log.name] == ["only for this request"]
            logging.disable(logging.DEBUG)
            try:
                assert not log.isEnabledFor(logging.DEBUG)
            finally:
                logging.disable(logging.NOTSET)
        finally:
            context.detach(token)
        assert not log.isEnabledFor(logging.DEBUG)
        # the W3C baggage propagator carries the entry on to the next service
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=baggage.set_baggage("stagetrace-debug", "1"))
        assert "stagetrace-debug=1" in carrier.get("baggage", "")
    finally:
        debuglog.uninstall()
    assert logging.Logger.isEnabledFor is not None and not hasattr(logging.Logger.isEnabledFor, "__wrapped__")
