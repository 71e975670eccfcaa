"""`stagetrace watch` against real telemetry in the embedded store, delivering to a real
Alertmanager and to a plain HTTP receiver for the Slack format.

The store (tests/watch_data.py) holds four incident shapes an hour apart, emitted with
the real OTel SDK over OTLP into a `stagetrace collector` subprocess. The watch runs on
scaled-down burn-rate windows (the SRE workbook's tiers divided by 12), and its clock
steps through the generated history every 30 s, so each test replays minutes of an
incident in a second or two. Nothing is mocked except the one unreachable backend
(a backend factory that raises, since making a real one fail on cue is not possible).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alertmanager_server import start_alertmanager
from stagetrace import semconv
from stagetrace.errors import BackendError, UserError
from stagetrace.incidents.notify import AlertmanagerTarget, JsonlTarget, SlackTarget, WebhookTarget
from stagetrace.incidents.rules import load_config, parse_config
from stagetrace.incidents.state import SilenceStore
from stagetrace.incidents.watch import Watcher
from watch_data import MIN, incident_store  # noqa: F401 - the session fixture

STEP = 30_000_000_000
pytestmark = pytest.mark.slow


def _watcher(store, tmp: Path, targets=(), investigate=True, backend=None, **kw) -> Watcher:
    from stagetrace.collector.query import EmbeddedBackend
    cfg = load_config(store["rules"])
    return Watcher(cfg, state_dir=tmp / "state", out_dir=tmp / "out",
                   open_backend=backend or (lambda: EmbeddedBackend(store["data_dir"])),
                   targets=list(targets), investigate=investigate, **kw)


def _replay(w: Watcher, seg, start_min: float = 3, until_ns: int | None = None, from_ns: int | None = None):
    """Step the watch through a segment; returns the notifications [(t, event, alert)]."""
    assert w.targets, "without a target nothing is sent, and every 'no alert' assertion would pass"
    out = []
    t = from_ns if from_ns is not None else seg.start_ns + int(start_min * MIN)
    end = until_ns if until_ns is not None else seg.end_ns
    while t <= end:
        for ev, a in w.step(t):
            out.append((t, ev, json.loads(json.dumps(a, default=str))))
        t += STEP
    return out


def _fired(events, name):
    return [(t, a) for t, ev, a in events if ev == "firing" and a["labels"]["alertname"] == name]


def _cause_is_shard_7(ann: dict) -> bool:
    return (ann.get("cause_stage") == semconv.STAGE_FEATURE_FETCH
            or (ann.get("cause_attribute") == semconv.FEATURE_STORE_SHARD and ann.get("cause_value") == "7"))


def test_fast_burn_pages_within_the_window_with_its_cause_then_resolves(incident_store, tmp_path):
    seg = incident_store["segments"]["burn"]
    _, onset, fault_end = seg.phase(1)
    jl = tmp_path / "alerts.jsonl"
    w = _watcher(incident_store, tmp_path, [JsonlTarget(jl)])
    events = _replay(w, seg)
    pages = _fired(events, "predict-latency")
    assert pages, [(ev, a["labels"]) for _, ev, a in events]
    t, a = pages[0]
    assert a["labels"] == {"alertname": "predict-latency", "severity": "page", "service": "fraud-api",
                           "route": "/predict", "slo": "latency"}
    assert onset < t <= onset + 5 * MIN, (t - onset) / MIN  # within the fast tier's long window
    ann = a["annotations"]
    assert _cause_is_shard_7(ann), json.dumps(ann, indent=1)
    assert ann["cause"] and ann["report"].endswith("report.html")
    for fmt in ("html", "md", "json"):
        assert Path(a["report_files"][fmt]).is_file()
    rep = json.loads(Path(a["report_files"]["json"]).read_text())
    assert rep["kind"] == "slow" and rep["findings"][0]["significant"]
    assert set(rep["data"]["example_trace_ids"]) <= set(seg.result.faulty_trace_ids)
    # resolves once the burn stops, and only once
    resolved = [(t, x) for t, ev, x in events if ev == "resolved" and x["labels"]["alertname"] == "predict-latency"]
    assert len(resolved) == 1 and fault_end < resolved[0][0] <= fault_end + 5 * MIN
    assert len(pages) == 1
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert [x["event"] for x in lines if x["labels"]["alertname"] == "predict-latency"] == ["firing", "resolved"]
    # nothing paged before the onset
    assert all(t >= onset for t, ev, a in events if ev == "firing" and a["labels"]["severity"] == "page")


def test_causes_run_off_the_evaluation_loop_and_the_page_waits_for_its_cause(incident_store, tmp_path, monkeypatch):
    """The investigation (real, over the real store) is held on a gate: the evaluation goes on
    meanwhile, the page is not sent without its cause, and goes out with it once it arrives."""
    import threading

    from stagetrace.incidents import cause as cause_mod

    seg = incident_store["segments"]["burn"]
    real, gate, started, stalled = cause_mod.investigate, threading.Event(), threading.Event(), []

    def gated(*a, **kw):
        started.set()
        if not gate.wait(120):  # a loop that ran the investigation itself would stop here
            stalled.append(True)
        return real(*a, **kw)
    monkeypatch.setattr(cause_mod, "investigate", gated)
    jl = tmp_path / "alerts.jsonl"
    w = _watcher(incident_store, tmp_path, [JsonlTarget(jl)], background_causes=True)

    def pages(sent):
        return [a for ev, a in sent if ev == "firing" and a["labels"]["alertname"] == "predict-latency"]
    t = seg.start_ns + 3 * MIN
    while t <= seg.end_ns and not started.is_set():
        assert pages(w.step(t)) == []
        t += STEP
    assert started.is_set() and not stalled  # the page fired, and step() returned while its cause ran
    # the next evaluation (30 s later, within CAUSE_WAIT_NS) while the investigation waits: held back
    assert pages(w.step(t)) == [] and not stalled
    assert not jl.exists() or "predict-latency" not in jl.read_text()
    gate.set()
    assert w.cause_ready.wait(120)
    sent = pages(w.deliver_causes(t))
    assert len(sent) == 1 and _cause_is_shard_7(sent[0]["annotations"]), sent
    assert not stalled and w.state["causes_pending"] == 0
    w.close()


def test_a_one_minute_blip_does_not_page(incident_store, tmp_path):
    seg = incident_store["segments"]["blip"]
    _, blip, blip_end = seg.phase(1)
    w = _watcher(incident_store, tmp_path, [JsonlTarget(tmp_path / "alerts.jsonl")], investigate=False)
    events = _replay(w, seg)
    assert not _fired(events, "predict-latency"), [(ev, a["labels"]) for _, ev, a in events]
    # the blip is real: a single short window saw it burning past the fast tier's factor
    from stagetrace.incidents.series import SeriesKey
    key = SeriesKey("route", "fraud-api", "/predict")
    tier = w.cfg.burn_windows[0]
    win = w.agg.window(key, blip_end - tier.short_ns, blip_end)
    assert win.slower_than(250e6) / win.total / 0.005 > tier.factor


def test_restart_neither_resends_nor_forgets(incident_store, tmp_path):
    seg = incident_store["segments"]["burn"]
    _, onset, fault_end = seg.phase(1)
    jl = tmp_path / "alerts.jsonl"
    w1 = _watcher(incident_store, tmp_path, [JsonlTarget(jl)], investigate=False)
    ev1 = _replay(w1, seg, until_ns=onset + 4 * MIN)
    assert _fired(ev1, "predict-latency")
    w1.close()
    # a new process on the same data dir: same firing alert, no second notification
    w2 = _watcher(incident_store, tmp_path, [JsonlTarget(jl)], investigate=False)
    assert any(a["labels"]["alertname"] == "predict-latency" and a["state"] == "firing"
               for a in w2.state["alerts"].values())
    ev2 = _replay(w2, seg, from_ns=onset + 4 * MIN + STEP)
    assert not _fired(ev2, "predict-latency")
    assert [ev for _, ev, a in ev2 if a["labels"]["alertname"] == "predict-latency"] == ["resolved"]
    sent = [json.loads(x)["event"] for x in jl.read_text().splitlines()
            if json.loads(x)["labels"]["alertname"] == "predict-latency"]
    assert sent == ["firing", "resolved"]


def test_a_silence_holds_until_it_expires(incident_store, tmp_path):
    seg = incident_store["segments"]["burn"]
    _, onset, _ = seg.phase(1)
    jl = tmp_path / "alerts.jsonl"
    sil = SilenceStore(tmp_path / "state").add({"alertname": "predict-*"}, seg.start_ns, seg.end_ns + 60 * MIN,
                                               "planned shard migration")
    w = _watcher(incident_store, tmp_path, [JsonlTarget(jl)], investigate=False)
    ev = _replay(w, seg, until_ns=onset + 4 * MIN)
    assert not _fired(ev, "predict-latency")
    firing = [a for a in w.state["alerts"].values() if a["labels"]["alertname"] == "predict-latency"]
    assert firing and firing[0]["state"] == "firing" and firing[0]["silenced_by"] == sil.id
    assert not jl.exists() or "predict-latency" not in jl.read_text()
    SilenceStore(tmp_path / "state").expire(sil.id, onset + 4 * MIN + 1)
    ev = _replay(w, seg, from_ns=onset + 4 * MIN + STEP, until_ns=onset + 5 * MIN)
    assert _fired(ev, "predict-latency")


def test_error_rules_new_fingerprint_and_version_change_carry_the_cause(incident_store, tmp_path):
    seg = incident_store["segments"]["errors"]
    _, onset, _ = seg.phase(1)
    w = _watcher(incident_store, tmp_path, [JsonlTarget(tmp_path / "alerts.jsonl")])
    events = _replay(w, seg)
    assert all(t >= onset for t, ev, a in events if ev == "firing"), \
        [(ev, a["labels"]) for t, ev, a in events if t < onset]
    err = _fired(events, "predict-errors")
    assert err and err[0][0] <= onset + 5 * MIN, [((t - onset) / MIN, ev, a["labels"]["alertname"], a["annotations"].get("burn_rate")) for t, ev, a in events]
    ann = err[0][1]["annotations"]
    assert (ann.get("cause_attribute"), ann.get("cause_value")) == (semconv.ML_MODEL_VERSION, "v2") \
        or ann.get("cause_stage") == semconv.STAGE_INFERENCE, ann
    assert ann["example_trace_id"] in seg.result.error_trace_ids
    new = _fired(events, "new-error")
    assert len(new) == 1, [a["annotations"].get("template") for _, a in new]  # one incident, not one per fingerprint
    assert new[0][1]["annotations"]["exception_type"] == "KeyError"
    # it stays one alert while the templates settle: no flapping resolve/re-fire
    assert not [t for t, ev, a in events if ev == "resolved" and a["labels"]["alertname"] == "new-error"
                and t < new[0][0] + 4 * MIN], [((t - onset) / MIN, ev, a["labels"], a["annotations"].get("fingerprints"))
                                               for t, ev, a in events if a["labels"]["alertname"] == "new-error"]
    ver = _fired(events, "version-regression")
    assert ver and ver[0][1]["labels"]["version_attribute"] == semconv.ML_MODEL_VERSION
    assert ver[0][1]["labels"]["version"] == "v2"


class _Receiver:
    """A plain HTTP server that keeps every JSON body POSTed to it (a stand-in for Slack's
    endpoint, which cannot be reached from here)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.bodies.append((self.path, json.loads(self.rfile.read(n))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_delivery_to_a_real_alertmanager_and_a_slack_webhook(incident_store, tmp_path):
    seg = incident_store["segments"]["recent"]  # ends now: Alertmanager keeps it active
    am = start_alertmanager()
    rx = _Receiver()
    try:
        w = _watcher(incident_store, tmp_path)
        w.targets = [AlertmanagerTarget(am.url, w.hold_ns), SlackTarget(rx.url + "/slack"),
                     WebhookTarget(rx.url + "/am-webhook", w.hold_ns)]
        events = _replay(w, seg, start_min=7)
        assert _fired(events, "predict-latency")
        got = [a for a in am.alerts() if a["labels"].get("alertname") == "predict-latency"]
        assert len(got) == 1, am.alerts()
        a = got[0]
        assert a["status"]["state"] == "active"
        assert {k: a["labels"][k] for k in ("severity", "service", "route")} == \
            {"severity": "page", "service": "fraud-api", "route": "/predict"}
        assert _cause_is_shard_7(a["annotations"]) and a["annotations"]["root_cause"]
        assert Path(a["annotations"]["report"]).is_file()
        assert a["generatorURL"].startswith("file://")
        slack = [b for p, b in rx.bodies if p == "/slack"]
        assert slack and "FIRING" in slack[0]["text"] and "predict-latency" in slack[0]["text"]
        assert a["annotations"]["root_cause"] in slack[0]["text"]
        assert a["annotations"]["report"] in slack[0]["text"]
        hook = [b for p, b in rx.bodies if p == "/am-webhook"]
        assert hook[0]["version"] == "4" and hook[0]["status"] == "firing"
        assert hook[0]["alerts"][0]["labels"]["alertname"] == "predict-latency"
    finally:
        rx.close()
        am.stop()


def test_unreachable_backend_raises_the_telemetry_alert(incident_store, tmp_path):
    seg = incident_store["segments"]["errors"]
    jl = tmp_path / "alerts.jsonl"

    def down():
        raise BackendError("cannot reach the collector at 127.0.0.1:1")
    w = _watcher(incident_store, tmp_path, [JsonlTarget(jl)], investigate=False, backend=down)
    w.step(seg.start_ns + 3 * MIN)
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert lines[-1]["event"] == "firing" and lines[-1]["labels"]["alertname"] == "WatchCannotReadTelemetry"
    from stagetrace.collector.query import EmbeddedBackend
    w.open_backend = lambda: EmbeddedBackend(incident_store["data_dir"])
    w.step(seg.start_ns + 3 * MIN + STEP)
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert lines[-1]["event"] == "resolved" and lines[-1]["labels"]["alertname"] == "WatchCannotReadTelemetry"


def test_rules_defaults_and_bad_input():
    cfg = parse_config({})
    assert {r.kind for r in cfg.rules} == {"latency", "errors", "new_error", "version_change"}
    assert [w.factor for w in cfg.burn_windows] == [14.4, 6.0, 3.0, 1.0]
    for bad, word in (({"rules": [{"kind": "latency", "threshold": "fast"}]}, "threshold"),
                      ({"burn_windows": [{"long": "5m", "short": "1h", "factor": 2}]}, "short <= long"),
                      ({"rules": [{"kind": "nope"}]}, "kind"), ({"intervall": "1s"}, "intervall")):
        with pytest.raises(UserError, match=word):
            parse_config(bad)


def test_cli_silences_and_a_bad_rules_file(tmp_path):
    cli = [sys.executable, "-m", "stagetrace.cli"]
    r = subprocess.run(cli + ["watch", "silence", "add", "alertname=route-errors", "--for", "1h", "--comment", "deploy",
                              "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.split()[1]
    r = subprocess.run(cli + ["watch", "silence", "list", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.startswith(f"active  {sid}") and "alertname=route-errors" in r.stdout
    r = subprocess.run(cli + ["watch", "silence", "expire", sid, "--data-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not SilenceStore(tmp_path).all()[0].active(10**19)
    bad = tmp_path / "rules.toml"
    bad.write_text("[[rules]]\nkind = 'latency'\nobjective = 'high'\n")
    r = subprocess.run(cli + ["watch", "--rules", str(bad), "--once", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_pyproject_table_and_the_cli_once(incident_store, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.stagetrace.watch]\ninterval = '7s'\n"
                                             "[[tool.stagetrace.watch.rules]]\nname = 'p'\nkind = 'errors'\n")
    cfg = load_config(project_dir=tmp_path)
    assert cfg.interval_ns == 7 * 10**9 and [r.name for r in cfg.rules] == ["p"]
    # the real command, one evaluation at wall-clock time over the store (the recent burn ends now)
    jl = tmp_path / "a.jsonl"
    r = subprocess.run([sys.executable, "-m", "stagetrace.cli", "watch", "--once", "--no-investigate", "--rules",
                        str(incident_store["rules"]), "--data-dir", str(incident_store["data_dir"]), "--out",
                        str(tmp_path / "out"), "--jsonl", str(jl)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 rules from" in r.stderr and (incident_store["data_dir"] / "watch" / "state.json").is_file()
    import shutil
    shutil.rmtree(incident_store["data_dir"] / "watch")  # the post-mortem test brings its own state
