"""``stagetrace demo``'s incident loop: a real ``stagetrace watch`` process beside the load,
and the post-mortem draft written next to the reports.

The demo's load lasts ~35 s, so its watch runs the SRE workbook's burn-rate tiers scaled
down to seconds (1 h/5 m becomes 12 s/3 s): the same rules, on the demo's time scale; and
the model's drift and quality rules (issue 18) over 6 s windows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The default rules, on the demo's time scale.
DEMO_RULES_TOML = """\
# stagetrace demo: the default watch rules with burn-rate windows scaled to a 35 s load
interval = "2s"
lookback = "10m"
settle = "3s"
min_requests = 20
repeat_interval = "1h"

[[burn_windows]]
long = "12s"
short = "3s"
factor = 14.4
severity = "page"

[[burn_windows]]
long = "30s"
short = "6s"
factor = 6
severity = "page"

[[rules]]
name = "route-latency"
kind = "latency"
objective = 0.995
ratio = 2.0

[[rules]]
name = "route-errors"
kind = "errors"
objective = 0.999

[[rules]]
name = "stage-latency"
kind = "latency"
stage = "*"
objective = 0.995
ratio = 2.0

[[rules]]
name = "new-error-fingerprint"
kind = "new_error"
severity = "ticket"
within = "8s"
min_events = 3

[[rules]]
name = "version-change-regression"
kind = "version_change"
within = "60s"

# The model's inputs against the clean period's reference profile (the demo stores it with
# `stagetrace profile build` once the clean period is over; until then, against the previous
# 6 s), over the last 6 s: ~1 000 rows, enough for one client's unit change within seconds.
[[rules]]
name = "model-input-drift"
kind = "drift"
model = "fraud-api"
within = "6s"

# Accuracy by the labels fed back 3 s after each prediction (the clean period's is ~88%);
# the same window as the drift rule, so both share one drift investigation and the
# quality cause links to it.
[[rules]]
name = "model-accuracy"
kind = "quality"
model = "fraud-api"
objective = 0.8
within = "6s"
min_events = 100
"""


def watch_argv(rules: Path, data_dir: Path, out: Path, ignore_before_s: float) -> list[str]:
    """The warm-up's first, slow requests are not part of the incident story. ``nice``: the
    watch must not take CPU from the services it measures on a small machine."""
    import shutil
    nice = [shutil.which("nice"), "-n", "10"] if shutil.which("nice") else []
    return [*nice, sys.executable, "-m", "stagetrace.cli", "watch", "--rules", str(rules), "--data-dir", str(data_dir),
            "--out", str(out), "--ignore-before", f"{ignore_before_s:.3f}"]


def write_rules(run_dir: Path) -> Path:
    p = run_dir / "watch-rules.toml"
    p.write_text(DEMO_RULES_TOML, encoding="utf-8")
    return p


def wait_for_evaluation(data_dir: Path, after_ns: int, timeout_s: float, alive: Any = lambda: True) -> bool:
    """Wait (at most ``timeout_s``) until the watch has finished an evaluation that began at
    or after ``after_ns`` and has no cause investigation still running: the niced watch can
    be a whole evaluation behind on a busy machine, and an alert waits for its cause before
    it is sent, so stopping it then loses the alerts of the end of the load. True when it
    caught up."""
    import time

    from .state import StateStore

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = StateStore(data_dir).load()
            done = int(state.get("last_eval_ns") or 0) >= after_ns and not state.get("causes_pending")
        except Exception:  # noqa: BLE001 - a state being replaced, or none yet: look again
            done = False
        if done:
            return True
        if time.monotonic() >= deadline or not alive():
            return False
        time.sleep(0.25)


def fired_alerts(out: Path) -> list[dict[str, Any]]:
    """The firing notifications the watch appended to ``alerts.jsonl``."""
    path = out / "alerts.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r.get("event") == "firing"]


def write_postmortem(data_dir: Path, rules: Path, start_ns: int, end_ns: int, out: Path) -> dict[str, str]:
    from stagetrace.backend import open_backend

    from .postmortem import build_postmortem, write_postmortem as _write
    from .rules import load_config

    backend = open_backend(kind="embedded", data_dir=str(data_dir))
    try:
        pm = build_postmortem(backend, start_ns=start_ns, end_ns=end_ns, cfg=load_config(rules), state_dir=data_dir)
    finally:
        backend.close()
    return _write(pm, out)
