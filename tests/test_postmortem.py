"""`stagetrace postmortem` on a generated incident (model v2 canary raising KeyError),
through the real CLI, checked against the generator's ground truth; and on a clean
window, where it must not invent a cause."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from stagetrace import semconv
from stagetrace.incidents.notify import JsonlTarget
from watch_data import MIN, incident_store  # noqa: F401 - the session fixture

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "stagetrace.cli"]


def _iso(ns: int) -> str:
    return str(ns / 1e9)


def _run(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, **kw)


def test_postmortem_of_the_v2_canary_incident(incident_store, tmp_path):
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.incidents.rules import load_config
    from stagetrace.incidents.watch import Watcher

    seg = incident_store["segments"]["errors"]
    _, onset, end = seg.phase(1)
    # the watch ran over the incident (its state is what the timeline's "alert fired" comes from)
    state = tmp_path / "data"
    w = Watcher(load_config(incident_store["rules"]), state_dir=state, out_dir=tmp_path / "watch",
                open_backend=lambda: EmbeddedBackend(incident_store["data_dir"]),
                targets=[JsonlTarget(tmp_path / "a.jsonl")], investigate=False)
    t = seg.start_ns + 3 * MIN
    while t <= end:
        w.step(t)
        t += 30_000_000_000
    fired = [a for a in list(w.state["alerts"].values()) + w.state["history"] if a.get("fired_at")]
    assert fired
    # the post-mortem reads the store; its state dir is where the watch kept its alerts
    import shutil
    shutil.copytree(state / "watch", incident_store["data_dir"] / "watch", dirs_exist_ok=True)
    try:
        out = tmp_path / "pm"
        r = _run(["postmortem", "--from", _iso(seg.start_ns), "--until", _iso(end), "--data-dir",
                  str(incident_store["data_dir"]), "--rules", str(incident_store["rules"]), "--out", str(out)])
        assert r.returncode == 0, r.stderr
        md = (out / "postmortem.md").read_text()
        doc = json.loads((out / "postmortem.json").read_text())
        # the numbers are the telemetry's: every request of the window, every failed one
        truth = seg.result
        assert doc["numbers"]["requests"] == truth.requests
        assert doc["numbers"]["failed"] == len(truth.error_trace_ids)
        for section in ("## Summary", "## Impact", "## Timeline", "## Root cause", "## Contributing factors",
                        "## What went well", "## What went wrong", "## Action items", "## Queries"):
            assert section in md
        # each number links to the query behind it, and the query's report is there
        assert f"[{truth.requests}][q-requests]" in md and f"[{len(truth.error_trace_ids)}][q-requests]" in md
        assert "stagetrace investigate errors --from" in md and (out / "postmortem-errors.html").is_file()
        errors = json.loads((out / "postmortem-errors.json").read_text())
        top = next(f for f in errors["findings"] if f["kind"] == "error_cluster")
        assert top["attribute"] == semconv.ML_MODEL_VERSION and top["value"] == "v2"
        # example traces in the root cause are failing ones, and they are listed to open
        tids = set(re.findall(r"#trace-([0-9a-f]{32})", md))
        assert tids and tids <= set(truth.all_trace_ids)
        assert tids & set(truth.error_trace_ids)
        # timeline: onset near the injected one, the version change, the alert with time to detect
        tl = doc["timeline"]
        assert abs(doc["numbers"]["onset_ns"] - onset) <= 2 * MIN
        assert any("ml.model.version=v2" in e["event"] for e in tl)
        assert doc["numbers"]["first_alert_ns"] == min(a["fired_at"] for a in fired)
        assert doc["numbers"]["time_to_detect_s"] is not None and doc["numbers"]["time_to_detect_s"] >= 0
        assert "canary check on `ml.model.version`" in md
        # the html is the same draft, parseable, with the query anchors
        html = (out / "postmortem.html").read_text()

        class P(HTMLParser):
            ids: set = set()

            def handle_starttag(self, tag, attrs):
                d = dict(attrs)
                if "id" in d:
                    self.ids.add(d["id"])
        p = P()
        p.feed(html)
        assert {"q-requests", "q-slow"} <= p.ids and "<h2" in html
        # --alert: the same incident from the alert's id
        aid = fired[0]["id"]
        r = _run(["postmortem", "--alert", aid, "--data-dir", str(incident_store["data_dir"]), "--rules",
                  str(incident_store["rules"]), "--out", str(tmp_path / "pm2")])
        assert r.returncode == 0, r.stderr
        assert aid in (tmp_path / "pm2" / "postmortem.md").read_text()
    finally:
        shutil.rmtree(incident_store["data_dir"] / "watch", ignore_errors=True)


def test_postmortem_of_a_clean_window_names_no_cause(incident_store, tmp_path):
    seg = incident_store["segments"]["blip"]
    _, blip, _ = seg.phase(1)
    r = _run(["postmortem", "--from", _iso(seg.start_ns), "--until", _iso(blip - MIN), "--data-dir",
              str(incident_store["data_dir"]), "--rules", str(incident_store["rules"]), "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "postmortem.md").read_text()
    assert "No finding cleared the significance bar" in md
    assert "canary check" not in md


def test_postmortem_bad_input_is_one_line(tmp_path):
    for args in (["postmortem"], ["postmortem", "--from", "yesterday"], ["postmortem", "--alert", "nope",
                                                                          "--data-dir", str(tmp_path)]):
        r = _run(args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
