"""Fault scenarios of the demo, and the schedule that staggers them in time.

The driver computes one :class:`Schedule` (wall-clock windows, so every process
and every uvicorn worker agrees without talking to each other) once the services
are up, and hands it to them in a file (:class:`LiveSchedule`). The services
only ask "is fault X active now?"; they contain no tracing code.

Scenarios (``stagetrace demo --scenario``):

1. ``slow-shard``   the feature store is slow for one shard: cache misses, a
                    slow replica, and a growing connection-pool wait.
2. ``model-errors`` the v2 model canary is rolled out to a share of accounts,
                    side by side with v1; v2 raises on inputs with a missing
                    feature (that some clients always send) and the API
                    answers 500.
3. ``cpu-preprocess`` preprocessing burns CPU on large batches.
4. ``baseline``     no fault at all (a clean run).
5. ``silent-drift`` one client (the point-of-sale gateway) starts sending
                    ``amount`` in cents: no error, no latency change, only the
                    model's decisions go wrong (the load generator does it, and
                    feeds back the labels that show it).

``all`` (the default) runs 1-3 and 5 staggered after a clean period, so the
investigations have a "before the onset" to compare against.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from stagetrace.errors import UserError

# Demo-internal: how the driver hands the schedule to the services it starts.
ENV_DEMO_SCHEDULE = "STAGETRACE_DEMO_SCHEDULE"
ENV_DEMO_SCHEDULE_FILE = "STAGETRACE_DEMO_SCHEDULE_FILE"

SLOW_SHARD = "slow-shard"
MODEL_ERRORS = "model-errors"
CPU_PREPROCESS = "cpu-preprocess"
BASELINE = "baseline"
SILENT_DRIFT = "silent-drift"
FAULTS = (SLOW_SHARD, MODEL_ERRORS, CPU_PREPROCESS, SILENT_DRIFT)
# silent-drift came after baseline: it is number 5, so the numbers users know keep their meaning
SCENARIOS = (SLOW_SHARD, MODEL_ERRORS, CPU_PREPROCESS, BASELINE, SILENT_DRIFT)
_ALIASES = {"1": SLOW_SHARD, "2": MODEL_ERRORS, "3": CPU_PREPROCESS, "4": BASELINE, "5": SILENT_DRIFT,
            "clean": BASELINE, "drift": SILENT_DRIFT}

DESCRIPTIONS = {
    SLOW_SHARD: "feature store slow for one shard (cache misses, growing pool wait)",
    MODEL_ERRORS: "model v2 canary rolled out; it raises on inputs with a missing feature",
    CPU_PREPROCESS: "preprocess burns CPU on large batches",
    BASELINE: "clean baseline, no fault",
    SILENT_DRIFT: "one client starts sending amount in cents (no error, no latency change)",
}

# Fraction of the load period at which each fault starts and stops under `all`.
# The first 30 % is clean; the two latency faults do not overlap, so each slow
# request has one cause; the error fault overlaps both, as incidents do. The drift
# starts on its own second (not with another fault), so its onset is its own.
_STAGGER = {SLOW_SHARD: (0.30, 0.68), MODEL_ERRORS: (0.45, 1.0), CPU_PREPROCESS: (0.68, 1.0),
            SILENT_DRIFT: (0.38, 1.0)}
# A single fault starts after a clean 35 % of the run and lasts to the end.
_SINGLE = (0.35, 1.0)

N_SHARDS = 8
DEFAULT_SLOW_SHARD = 7
DEFAULT_CANARY_SHARE = 0.4  # share of accounts the v2 canary scores
LEGACY_CLIENT_SHARE = 0.2  # share of requests from an old client that omits device_age_days
LARGE_BATCH = 32  # preprocess burns CPU from this batch size on
# The clients of the API (User-Agent, share of requests). The point-of-sale gateway is
# the one whose upstream switches to cents under silent-drift.
CLIENTS = (("web-checkout/5.2", 0.45), ("mobile-app/4.1", 0.30), ("pos-gateway/2.3", 0.25))
DRIFT_CLIENT = "pos-gateway/2.3"
CENTS = 100.0


def parse_scenarios(text: str) -> tuple[str, ...]:
    """``all``, or a comma-separated list of scenario names or numbers 1-5."""
    text = (text or "all").strip().lower()
    if text == "all":
        return FAULTS
    out: list[str] = []
    for part in text.split(","):
        name = _ALIASES.get(part.strip(), part.strip())
        if name not in SCENARIOS:
            raise UserError(f"unknown scenario {part.strip()!r}: use all, "
                            + ", ".join(f"{i + 1}/{s}" for i, s in enumerate(SCENARIOS)))
        if name not in out:
            out.append(name)
    if BASELINE in out and len(out) > 1:
        raise UserError("scenario 'baseline' is the clean run and cannot be combined with faults")
    return tuple(out)


@dataclass(slots=True)
class Schedule:
    """When each fault is active, in Unix seconds; half-open windows."""

    start: float
    end: float
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    slow_shard: int = DEFAULT_SLOW_SHARD
    canary_share: float = DEFAULT_CANARY_SHARE

    @classmethod
    def plan(cls, scenarios: tuple[str, ...], start: float, duration_s: float) -> "Schedule":
        windows: dict[str, tuple[float, float]] = {}
        faults = [s for s in scenarios if s in FAULTS]
        for name in faults:
            lo, hi = _STAGGER[name] if len(faults) > 1 else _SINGLE
            windows[name] = (start + lo * duration_s, start + hi * duration_s)
        return cls(start=start, end=start + duration_s, windows=windows)

    def active(self, fault: str, now: float | None = None) -> bool:
        w = self.windows.get(fault)
        if w is None:
            return False
        t = time.time() if now is None else now
        return w[0] <= t < w[1]

    def elapsed_in(self, fault: str, now: float | None = None) -> float:
        """Seconds since the fault began (0 when inactive): faults that grow use it."""
        if not self.active(fault, now):
            return 0.0
        return (time.time() if now is None else now) - self.windows[fault][0]

    def phase(self, now: float | None = None) -> str:
        """A label for the progress bar: the active faults, or 'baseline'."""
        active = [f for f in FAULTS if self.active(f, now)]
        return "+".join(active) if active else BASELINE

    @property
    def onset(self) -> float | None:
        """When the first fault begins; None for a clean run."""
        return min((w[0] for w in self.windows.values()), default=None)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> "Schedule":
        doc = json.loads(raw)
        doc["windows"] = {k: (float(v[0]), float(v[1])) for k, v in doc.get("windows", {}).items()}
        return cls(**doc)


class LiveSchedule:
    """What a service consults: the schedule in ``STAGETRACE_DEMO_SCHEDULE_FILE``
    (re-read when the driver rewrites it, so faults can be placed after the
    services are up), else the JSON in ``STAGETRACE_DEMO_SCHEDULE``, else none
    (a service started by hand runs clean)."""

    _RECHECK_S = 0.2

    def __init__(self, environ: "dict[str, str] | os._Environ[str] | None" = None) -> None:
        env = environ if environ is not None else os.environ
        self._file = env.get(ENV_DEMO_SCHEDULE_FILE)
        self._current = Schedule(start=0.0, end=0.0)
        self._mtime = None
        self._checked = 0.0
        raw = env.get(ENV_DEMO_SCHEDULE)
        if raw:
            try:
                self._current = Schedule.from_json(raw)
            except (ValueError, TypeError, KeyError, IndexError):
                pass

    def get(self) -> Schedule:
        if self._file:
            now = time.monotonic()
            if now - self._checked >= self._RECHECK_S:
                self._checked = now
                try:
                    mtime = os.stat(self._file).st_mtime_ns
                    if mtime != self._mtime:
                        with open(self._file, encoding="utf-8") as fh:
                            self._current = Schedule.from_json(fh.read())
                        self._mtime = mtime
                except (OSError, ValueError, TypeError, KeyError, IndexError):
                    pass
        return self._current

    def active(self, fault: str) -> bool:
        return self.get().active(fault)

    def elapsed_in(self, fault: str) -> float:
        return self.get().elapsed_in(fault)

    @property
    def slow_shard(self) -> int:
        return self.get().slow_shard

    @property
    def canary_share(self) -> float:
        return self.get().canary_share
