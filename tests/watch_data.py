"""Telemetry with incidents that start *and stop*, for the watch and post-mortem tests.

tests/telemetry_gen.py emits one scenario from its onset to the end of the history;
alerting needs more shapes (a one-minute blip, a burn that recovers), so this helper
lays out phases (``[("clean", 6), ("slow_shard", 1), ("clean", 4)]`` in minutes) and
emits each request with telemetry_gen's own request builder, services and real OTLP
exporters: the same spans, logs, attributes and faults, only the schedule differs.
"""

from __future__ import annotations

import random
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
