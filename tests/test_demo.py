"""`stagetrace demo` end to end, for real: the embedded collector, the feature
service and the fraud API (2 workers + a v2 canary) under the real
`opentelemetry-instrument`, load from instrumented `requests`, then the
forensics on what arrived over OTLP. Nothing is mocked.

The demo injects known causes; the test asserts the report names them, and
that no process or port survives a run, a Ctrl-C or a failed start.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "stagetrace.cli", "demo", "--no-progress"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _procs_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker`` (our
    unique tmp dir): every child the demo starts carries it, in an argument
    (the collector's --data-dir) or in its environment (the services)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            environ = (d / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline + environ and _alive(int(d.name)):
            found.append(f"{d.name}: {cmdline.replace(bytes(1), b' ')[:200]!r}")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _assert_nothing_left(marker: str, pids: list[int], ports: list[int]) -> None:
    deadline = time.monotonic() + 5  # the kernel may need a moment to reap
    while time.monotonic() < deadline and (_procs_mentioning(marker) or any(map(_alive, pids))):
        time.sleep(0.2)
    assert not _procs_mentioning(marker), "processes survived the demo"
    assert not [p for p in pids if _alive(p)], "child pids survived the demo"
    assert not [p for p in ports if _port_open(p)], "ports left open"


class _Charts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            chart = dict(attrs).get("data-chart")
            if chart:
                self.charts.append(chart)


# An 18 s run gives each fault a few seconds and a few hundred requests: on a busy 2-core
# machine one of the two slow causes misses the significance bar in about one run in four
# (measured 2026-12-07, issue 17 note). So `make test` runs it alone, after the parallel
# tests (marker `alone`), and up to two reruns remain; a systematic miss still fails.
@pytest.mark.alone
@pytest.mark.flaky(reruns=2)
def test_demo_finds_the_injected_causes(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    # A relative --out, as users type it (the services run elsewhere and must still find it).
    proc = subprocess.Popen([*DEMO, "--duration", "18s", "--out", "demo-out"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_clean_env(), start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("stagetrace demo did not finish within 180 s")
    assert proc.returncode == 0, stdout[-4000:]
    run = json.loads((out / "run" / "run.json").read_text())
    _assert_nothing_left(str(tmp_path), run["pids"], run["ports"])

    doc = json.loads((out / "report.json").read_text())
    assert doc["kind"] == "bundle"
    reports = doc["reports"]
    slow = next(r for r in reports if r["kind"] == "slow")
    errors = next(r for r in reports if r["kind"] == "errors")

    # Slow requests: blamed components first; the slow shard's feature-store fetch is one
    # of them (CPU-bound preprocessing, when its window fits the run, is another), and the
    # shard is named.
    sig = [f for f in slow["findings"] if f["significant"]]
    assert sig, slow["verdict"]
    assert sig[0]["kind"] == "stage" and sig[0]["service"], sig[0]
    comps = [f for f in sig if f["kind"] == "stage"]
    assert any(f["service"] == "feature-store" and f["stage"] == "feature_fetch" for f in comps[:2]), \
        [f["summary"] for f in comps]
    if "cpu-preprocess" in run["schedule"]["windows"]:
        assert any("preprocess" in f["summary"] for f in comps[:2]), [f["summary"] for f in comps]
    shard = [f for f in sig[:8] if f["kind"] == "attribute" and "shard" in (f["attribute"] or "")]
    assert shard and str(shard[0]["value"]) == "7", [f["summary"] for f in sig[:8]]
    assert any(f["kind"] == "log" and "cache miss" in (f["template"] or "") for f in sig), \
        "the cache-miss warnings of the slow shard are not among the evidence"

    # Errors: the top incident is the v2 canary's exception, with its origin span.
    top = errors["findings"][0]
    assert top["kind"] == "error_cluster" and top["significant"], top["summary"]
    assert top["service"] == "fraud-api" and top["stage"] == "inference", top
    assert "Scorer.score" in top["operation"] and "ValueError" in top["summary"]
    origin = top["evidence"]["origin"][0]
    assert "Scorer.score" in origin["operation"] and origin["stage"] == "inference"
    # ...propagated up to the API's server span and the client's span.
    assert {"fraud-api", "loadgen"} <= {p["service"] for p in top["evidence"]["propagated"]}
    sig_attrs = {(a["attribute"], str(a["value"])) for a in top["evidence"]["attributes"] if a["significant"]}
    assert sig_attrs & {("ml.model.version", "v2"), ("service.version", "1.5.0-rc1")}, sig_attrs
    # ...and explained by the model's inputs (issue 18): the failing predictions lack device_age_days.
    err_sig = [f for f in errors["findings"] if f["significant"]]
    assert any(f["attribute"] == "ml.input.features" and f["value"] == "device_age_days" for f in err_sig[:3]), \
        [f["summary"] for f in err_sig[:3]]
    # The store agrees: every example trace of the cluster is a v2 request whose
    # inference failed and whose client span is an error.
    from stagetrace.backend import open_backend
    backend = open_backend(kind="embedded", data_dir=run["data_dir"])
    try:
        for tid in top["evidence"]["example_trace_ids"][:5]:
            t = backend.get_trace(tid)
            assert t is not None
            inference = [s for s in t.spans if s.attributes.get("ml.stage") == "inference"]
            assert inference and all(s.attributes.get("ml.model.version") == "v2" and s.is_error for s in inference)
            assert any(s.service_name == "loadgen" and s.kind == "CLIENT" and s.is_error for s in t.spans)
    finally:
        backend.close()

    # The clean period before the first fault, investigated on its own, names no cause.
    from stagetrace.forensics import investigate_errors, investigate_slow
    sched = run["schedule"]
    onset = min(w[0] for w in sched["windows"].values())
    # Requests that started just before the first fault run into it (the shard is slow when
    # they fetch, a moment later): the clean period ends a second (> the p99 of a clean
    # request) before the onset.
    clean = (int(sched["start"] * 1e9), int((onset - 1.0) * 1e9))
    backend = open_backend(kind="embedded", data_dir=run["data_dir"])
    try:
        for r in (investigate_slow(backend, start_ns=clean[0], end_ns=clean[1]),
                  investigate_errors(backend, start_ns=clean[0], end_ns=clean[1])):
            assert r.data["counts"]["requests"] > 50, r.data["counts"]
            assert not r.significant_findings, [f.summary for f in r.significant_findings]
    finally:
        backend.close()

    # Silent drift (issue 18): the point-of-sale gateway sends amount in cents from the
    # fault's start, with no error and no latency change. Drift names the feature, its
    # onset (within one evaluation interval) and the client, and nothing else in the inputs.
    from stagetrace.demo.scenarios import DRIFT_CLIENT
    drift_from = sched["windows"]["silent-drift"][0]
    drift = next(r for r in reports if r["kind"] == "drift")
    drifted = [f for f in drift["findings"] if f["significant"]]
    assert drifted and drifted[0]["evidence"]["feature"] == "amount", drift["verdict"]
    assert {f["evidence"]["feature"] for f in drifted} <= {"amount", "prediction score"}, drift["verdict"]
    step = drift["data"]["interval_ns"] / 1e9
    assert abs(drifted[0]["evidence"]["onset_ns"] / 1e9 - drift_from) <= step, (drifted[0]["evidence"]["onset_ns"],
                                                                             drift_from, step)
    seg = drifted[0]["evidence"]["segments"][0]
    assert (seg["attribute"], seg["value"]) == ("user_agent.original", DRIFT_CLIENT), drifted[0]["summary"]
    assert seg["psi_inside"] > 1.0 > 0.1 > seg["psi_outside"]
    # The labels the load generator sent back (each a few seconds after its prediction)
    # all joined their predictions; the predictions the drift touched got much worse.
    labels = run["labels"]
    assert labels["accepted"] > 1000 and labels["rejected"] == labels["unsent"] == labels["failed_posts"] == 0, labels
    quality = next(r for r in reports if r["kind"] == "quality")
    q = quality["data"]
    assert q["join"]["joined"] >= 0.98 * labels["accepted"], q["join"]
    assert q["onset"] and abs(q["onset"]["onset_ns"] / 1e9 - drift_from) <= q["interval_ns"] / 1e9, q["onset"]
    qseg = q["segments"][0]
    assert (qseg["attribute"], qseg["value"]) == ("user_agent.original", DRIFT_CLIENT), quality["verdict"]
    assert qseg["accuracy_inside"] < 0.6 and qseg["accuracy_outside"] > 0.75 and qseg["accuracy_inside_before"] > 0.75
    feat = next(f for f in quality["findings"] if f["kind"] == "feature")
    assert feat["evidence"]["feature"] == "amount" and feat["evidence"]["drift"], feat["summary"]
    # ...and the demo says so.
    assert re.search(rf"amount drifted from \+\d+\.\ds: .* concentrated in user_agent.original={re.escape(DRIFT_CLIENT)}",
                     stdout), stdout[-3000:]
    assert re.search(rf"user_agent.original={re.escape(DRIFT_CLIENT)}: accuracy \d+% vs \d+% elsewhere", stdout)
    assert "mispredictions set apart by amount; the same feature drifted" in stdout

    # The watch beside the load (issue 18, part 6): a drift alert naming amount and the
    # client that sends it, and an accuracy alert once the labels came back, each with its
    # cause, like the latency and error alerts; neither in the clean period before the drift.
    from stagetrace.incidents.demo import fired_alerts
    model_alerts = [a for a in fired_alerts(out / "watch")
                    if a["labels"]["alertname"] in ("model-input-drift", "model-accuracy")]
    assert all(a["fired_at"] / 1e9 >= drift_from for a in model_alerts), \
        [(a["labels"]["alertname"], a["fired_at"] / 1e9 - drift_from) for a in model_alerts]
    fired = {}
    for a in model_alerts:
        fired.setdefault(a["labels"]["alertname"], a)
    assert set(fired) == {"model-input-drift", "model-accuracy"}, (sorted(fired), stdout[-3000:])
    ann = fired["model-input-drift"]["annotations"]
    assert ann["feature"] == "amount" and ann["cause_kind"] == "drift", json.dumps(ann, indent=1)
    assert (ann["cause_attribute"], ann["cause_value"]) == ("user_agent.original", DRIFT_CLIENT), ann["root_cause"]
    assert ann["root_cause"].startswith("amount drifted") and Path(ann["report"]).is_file()
    ann = fired["model-accuracy"]["annotations"]
    assert float(ann["accuracy"]) < 0.8 and fired["model-accuracy"]["labels"]["severity"] == "page"
    assert ann["cause_kind"] == "quality" and "accuracy fell" in ann["root_cause"], json.dumps(ann, indent=1)
    assert Path(ann["report"]).is_file()
    assert re.search(r"FIRING model-input-drift \[ticket\] \+\d+s  fraud-api: input drift in amount", stdout)
    assert re.search(r"FIRING model-accuracy \[page\] \+\d+s  fraud-api: accuracy \d", stdout)
    assert re.search(r"cause: amount drifted vs the (reference|previous period)", stdout), stdout[-3000:]
    pm = (out / "postmortem.md").read_text()
    assert "`model-input-drift`" in pm and "`model-accuracy`" in pm

    # One slow and one failed request opened as traces; the summary says what to run next.
    assert sorted(run["traces"]) == ["failed", "slow"]
    assert sum(r["kind"] == "trace" for r in reports) == 2
    assert f"stagetrace trace {run['traces']['slow']} --data-dir" in stdout

    parser = _Charts()
    parser.feed((out / "report.html").read_text())
    assert {"latency-histogram", "stage-breakdown", "timeline", "waterfall"} <= set(parser.charts), parser.charts
    assert "feature_fetch" in (out / "report.md").read_text()


def test_ctrl_c_during_the_load_stops_everything(tmp_path: Path) -> None:
    # A terminal delivers SIGINT to a process that has not ignored it; a test run started in
    # the background of a non-interactive shell (`make test &`) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt. Give the demo a terminal's disposition.
    def as_in_a_terminal() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([*DEMO, "--duration", "30s", "--out", str(tmp_path / "o")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_clean_env(), start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "demo exited early:\n" + "".join(seen)
                continue
            seen.append(line)
            if "phase baseline" in line:  # services up, load running
                break
        else:
            pytest.fail("the demo never started its load:\n" + "".join(seen))
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(seen)
    assert rc == 130, text
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", text)]
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
    assert len(pids) == 4 and len(ports) == 5, text  # collector, feature store, API, canary
    _assert_nothing_left(str(tmp_path), pids, ports)


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*DEMO, "--api-port", str(port), "--out", str(tmp_path)], capture_output=True,
                           text=True, env=_clean_env(), timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "already in use" in r.stderr and str(port) in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_missing_demo_extra_says_what_to_install(tmp_path: Path) -> None:
    # Hide scikit-learn from the demo process as if the `demo` extra were not installed.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sklearn' or name.startswith('sklearn.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n")
    env = _clean_env(PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([*DEMO, "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "scikit-learn" in r.stderr and "stagetrace[demo]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "run").exists()  # nothing was started


def test_failed_service_start_is_reported_and_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that dies at start-up: one clear message, and the collector
    that was already running is stopped too."""
    from rich.console import Console

    from stagetrace.demo import runner
    from stagetrace.errors import UserError

    # A launcher that fails the way a broken install would (exit status 3).
    monkeypatch.setattr(runner, "otel_instrument_argv",
                        lambda: [sys.executable, "-c", "import sys; print('ImportError: boom'); sys.exit(3)"])
    opts = runner.DemoOptions(scenarios=("baseline",), duration_s=5, out=tmp_path / "o", progress=False)
    with open(os.devnull, "w") as sink, pytest.raises(UserError) as err:
        runner.run_demo(opts, Console(file=sink))
    msg = str(err.value)
    assert "exited with code 3 during start-up" in msg and "\n" not in msg
    _assert_nothing_left(str(tmp_path), [], [])


def test_scenario_names_and_schedule() -> None:
    from stagetrace.demo.scenarios import FAULTS, Schedule, parse_scenarios
    from stagetrace.errors import UserError

    assert parse_scenarios("all") == FAULTS and "silent-drift" in FAULTS
    assert parse_scenarios("1,model-errors") == ("slow-shard", "model-errors")
    assert parse_scenarios("5") == parse_scenarios("drift") == ("silent-drift",)
    with pytest.raises(UserError):
        parse_scenarios("slow-disk")
    with pytest.raises(UserError):
        parse_scenarios("baseline,1")
    s = Schedule.plan(FAULTS, 1000.0, 100.0)
    assert s.onset == 1030.0  # a clean period comes first
    assert s.phase(1010.0) == "baseline" and s.active("slow-shard", 1031.0)
    assert not (s.active("slow-shard", 1080.0) and s.active("cpu-preprocess", 1080.0))  # latency faults apart
    # the drift starts after the clean period, on its own (its onset is not another fault's)
    assert s.windows["silent-drift"][0] > s.onset
    assert s.windows["silent-drift"][0] not in {w[0] for f, w in s.windows.items() if f != "silent-drift"}
    assert Schedule.from_json(s.to_env()) == s
    assert Schedule.plan(("baseline",), 0.0, 10.0).windows == {}


def test_drift_client_sends_cents_and_the_truth_does_not_change() -> None:
    """The same seed with and without silent-drift: the same requests, clients and
    labels; only the drift client's amounts, and only while the fault is on, are x100."""
    from stagetrace.demo.loadgen import Workload
    from stagetrace.demo.scenarios import CLIENTS, DRIFT_CLIENT, Schedule

    clean = Workload(Schedule(start=0.0, end=100.0))
    drift = Workload(Schedule(start=0.0, end=100.0, windows={"silent-drift": (50.0, 100.0)}))
    seen, cents, labels = set(), 0, []
    for i in range(400):
        now = 25.0 if i < 200 else 75.0
        a, b = clean.next(now), drift.next(now)
        assert (a.client, a.labels) == (b.client, b.labels)
        seen.add(a.client)
        labels += a.labels
        amounts = [(t["amount"], u["amount"]) for t, u in zip(a.body["transactions"], b.body["transactions"])]
        if b.cents:
            assert now > 50 and b.client == DRIFT_CLIENT
            assert all(y == round(x * 100) for x, y in amounts)
            cents += 1
        else:
            assert not (now > 50 and b.client == DRIFT_CLIENT)
            assert all(x == y for x, y in amounts)
    assert seen == {c for c, _ in CLIENTS} and 20 < cents < 100
    assert 0.05 < sum(labels) / len(labels) < 0.3  # fraud is rare, but there is some


def test_label_feed_sends_each_label_after_its_delay(tmp_path: Path) -> None:
    """LabelFeed against a real collector: nothing before the delay, everything after,
    and close() sends what is still pending."""
    from stagetrace.collector.process import start_collector
    from stagetrace.demo.loadgen import LabelFeed

    coll = start_collector(tmp_path / "data", grpc_port=0, http_port=0, timeout=30.0)
    try:
        feed = LabelFeed(f"http://127.0.0.1:{coll.http_port}", delay_s=1.0, period_s=0.1)
        t0 = time.time()
        feed.add([{"prediction_id": f"{'ab' * 16}-{'cd' * 8}-{i}", "label": i % 2} for i in range(5)], t0)
        feed.add([{"trace_id": "not hex", "label": 1}], t0)  # the collector says why it refuses a line
        time.sleep(0.5)
        assert feed.counts["accepted"] == 0
        counts = feed.close(timeout_s=10)
        assert time.time() - t0 >= 1.0
        assert counts == {"queued": 6, "accepted": 5, "rejected": 1, "failed_posts": 0, "unsent": 0}, counts
        assert any("32 hex" in e for e in feed.errors), feed.errors
    finally:
        coll.stop(timeout=15.0)


def test_the_demo_waits_for_the_watchs_last_evaluation(tmp_path: Path) -> None:
    """The demo stops its watch only once an evaluation that began after the load has
    finished (the saved state says when the last one began), bounded, and not for a dead watch."""
    from stagetrace.incidents.demo import wait_for_evaluation
    from stagetrace.incidents.state import StateStore

    assert not wait_for_evaluation(tmp_path, 1, 0.3)  # no state yet: the watch never finished one
    store = StateStore(tmp_path)
    doc = store.load()
    doc["last_eval_ns"] = 2_000
    store.save(doc)
    assert wait_for_evaluation(tmp_path, 1_500, 0.3)
    assert not wait_for_evaluation(tmp_path, 2_500, 0.5)  # it gives up
    asked: list[int] = []
    assert not wait_for_evaluation(tmp_path, 2_500, 3600, alive=lambda: bool(asked.append(1)))
    assert len(asked) == 1  # a dead watch is not waited for
