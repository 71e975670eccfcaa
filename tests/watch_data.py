"""Telemetry with incidents that start *and stop*, for the watch and post-mortem tests.

tests/telemetry_gen.py emits one scenario from its onset to the end of the history;
alerting needs more shapes (a one-minute blip, a burn that recovers), so this helper
lays out phases (``[("clean", 6), ("slow_shard", 1), ("clean", 4)]`` in minutes) and
emits each request with telemetry_gen's own request builder, services and real OTLP
exporters: the same spans, logs, attributes and faults, only the schedule differs.
"""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import dataclass, field

import telemetry_gen as gen

MIN = 60_000_000_000


@dataclass
class Phases:
    start_ns: int
    end_ns: int
    bounds: list[tuple[str, int, int]] = field(default_factory=list)  # (scenario, start_ns, end_ns)
    result: gen.GenResult | None = None

    def phase(self, i: int) -> tuple[str, int, int]:
        return self.bounds[i]


def emit(exporters, phases: list[tuple[str, float]], *, end_ns: int, per_minute: int = 120,
         seed: int = 11) -> Phases:
    total_min = sum(m for _, m in phases)
    start_ns = end_ns - int(total_min * MIN)
    out = Phases(start_ns, end_ns)
    t = start_ns
    for scen, minutes in phases:
        if scen not in gen.SCENARIOS:
            raise ValueError(scen)
        out.bounds.append((scen, t, t + int(minutes * MIN)))
        t += int(minutes * MIN)
    rnd = random.Random(f"watch:{seed}")
    ids = gen.SeededIds(random.Random(seed * 104729))
    faults = [b for b in out.bounds if b[0] != "clean"]
    onset = faults[0][1] if faults else end_ns
    res = gen.GenResult("+".join(s for s, _ in phases), start_ns, end_ns, onset)
    api = [gen._Service(gen.API, f"api-{i}", "1.4.2", ids, exporters) for i in range(2)]
    feat = gen._Service(gen.FEATURES, "features-0", "2.0.1", ids, exporters)
    n = int(total_min * per_minute)
    res.requests = n
    step = (end_ns - start_ns - 2e9) / n
    for i in range(n):
        t0 = start_ns + int((i + rnd.random()) * step)
        scen = next((s for s, lo, hi in out.bounds if lo <= t0 < hi), "clean")
        gen._request(rnd, scen, t0, scen != "clean", api[i % 2], feat, res)
    for s in (*api, feat):
        s.flush()
    metric_scen = faults[0][0] if faults else "clean"
    res.metric_points = gen._metrics(rnd, metric_scen, exporters, api, feat, start_ns, end_ns, onset, 10)
    for s in (*api, feat):
        s.shutdown()
    out.result = res
    return out


# --- the shared store: one collector, four incident shapes, an hour apart -------------------------

import pytest  # noqa: E402

# Scaled-down burn-rate windows: the SRE workbook's 1h/5m x14.4 and 6h/30m x6 tiers divided by 12,
# so a test walks through minutes of generated history, not hours.
RULES_TOML = """
interval = "30s"
lookback = "40m"
settle = "30s"
repeat_interval = "1h"
min_requests = 10

[[burn_windows]]
long = "5m"
short = "25s"
factor = 14.4
severity = "page"

[[burn_windows]]
long = "30m"
short = "150s"
factor = 6
severity = "page"

[[rules]]
name = "predict-latency"
kind = "latency"
route = "/predict"
service = "fraud-api"
threshold = "250ms"
objective = 0.995

[[rules]]
name = "predict-errors"
kind = "errors"
route = "/predict"
service = "fraud-api"
objective = 0.997

[[rules]]
name = "new-error"
kind = "new_error"
within = "5m"
min_events = 3

[[rules]]
name = "version-regression"
kind = "version_change"
within = "10m"
"""

SEGMENTS = {  # name -> (phases, hours before now that the segment ends)
    "blip": ([("clean", 6), ("slow_shard", 1), ("clean", 3)], 3),
    "burn": ([("clean", 6), ("slow_shard", 5), ("clean", 4)], 2),
    "errors": ([("clean", 6), ("v2_errors", 5)], 1),
    "recent": ([("clean", 6), ("slow_shard", 4)], 0),
}


_SHARED: dict = {}


@pytest.fixture(scope="session")
def incident_store(tmp_path_factory):
    """Built once per session even when several test modules import it (each import is
    its own fixture definition to pytest; without a conftest they share this cache)."""
    if _SHARED:
        yield _SHARED
        return
    import time

    from stagetrace.collector.process import start_collector
    data = tmp_path_factory.mktemp("watch-store")
    now = time.time_ns()
    with start_collector(data) as c:
        segs = {}
        for i, (name, (phases, hours)) in enumerate(SEGMENTS.items()):
            segs[name] = emit(gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), phases,
                              end_ns=now - hours * 60 * MIN - 1_000_000_000, seed=20 + i)
        rules = data.parent / "watch-rules.toml"
        rules.write_text(RULES_TOML)
        _SHARED.update({"collector": c, "data_dir": Path(c.data_dir), "segments": segs, "rules": rules})
        try:
            yield _SHARED
        finally:
            _SHARED.clear()


