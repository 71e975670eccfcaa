"""Load generator of the compose stack: the demo's own client (stagetrace.demo.loadgen),
run in cycles, each with the demo's fault schedule.

Each cycle writes the schedule where the services re-read it
(STAGETRACE_DEMO_SCHEDULE_FILE on a shared volume), so every few minutes the
stack shows a clean period, then a slow feature-store shard, then model-v2
errors, then CPU-heavy preprocessing, and the point-of-sale client sending amounts
in cents (silent drift): data for the dashboards, the alerts and
`stagetrace investigate --backend grafana`. Each prediction's label goes back a few
seconds later as an ``ml.label`` OTLP log record (docs/semantic-conventions.md) to the
Collector, whose logs pipeline stores it in Loki next to the services' logs:
`stagetrace investigate quality --backend grafana` joins it to its prediction there.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from stagetrace.demo.loadgen import LabelFeed, instrument_client, run_load
from stagetrace.demo.scenarios import ENV_DEMO_SCHEDULE_FILE, Schedule, parse_scenarios

API_URL = os.environ.get("LOADGEN_API_URL", "http://fraud-api:8000")
CANARY_URL = os.environ.get("LOADGEN_CANARY_URL", "http://fraud-api-canary:8000")
OTLP_HTTP = os.environ.get("LOADGEN_OTLP_HTTP_ENDPOINT", "http://otelcol:4318")
RATE = float(os.environ.get("LOADGEN_RATE", "10"))
CYCLE_S = float(os.environ.get("LOADGEN_CYCLE_S", "600"))
SCENARIOS = parse_scenarios(os.environ.get("LOADGEN_SCENARIOS", "all"))
SCHEDULE_FILE = Path(os.environ.get(ENV_DEMO_SCHEDULE_FILE, "/run/stagetrace/schedule.json"))


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shutdown = instrument_client(OTLP_HTTP)
    # OTLP/HTTP to the Collector, which has no labels endpoint (that is `stagetrace collector`)
    labels = LabelFeed(OTLP_HTTP, otlp=True)
    try:
        while not stop.is_set():
            schedule = Schedule.plan(SCENARIOS, time.time(), CYCLE_S)
            tmp = SCHEDULE_FILE.with_suffix(".tmp")
            tmp.write_text(schedule.to_env())
            tmp.replace(SCHEDULE_FILE)  # atomic: a service never reads half a file
            stats = run_load(API_URL, schedule, rate=RATE, canary_url=CANARY_URL, stop=stop, labels=labels)
            print(f"cycle done: {stats.sent} requests, {stats.failed} failed, p95 {stats.p95_ms():.0f} ms; "
                  f"labels so far {labels.counts}", flush=True)
    finally:
        labels.close(timeout_s=5.0)
        shutdown()


if __name__ == "__main__":
    main()
