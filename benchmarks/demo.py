"""Wall time of `stagetrace demo`, step by step, and whether it found the injected causes.

    .venv/bin/python benchmarks/demo.py [--repeat 3] [--duration 35s] [-- extra demo args]

Runs the real command in a subprocess (as a user would), reads the per-step
timings it records in ``<out>/run/run.json`` and the top findings of
``report.json``, and prints medians. The issue's target: the whole default run
under 90 s on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("collector", "services", "load", "telemetry", "flush", "forensics")


def one_run(duration: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="stagetrace-demo-bench-") as tmp:
        out = Path(tmp) / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "stagetrace.cli", "demo", "--no-progress", "--duration", duration,
                            "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=600)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise SystemExit(f"demo failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        run = json.loads((out / "run" / "run.json").read_text())
        doc = json.loads((out / "report.json").read_text())
        slow = next(x for x in doc["reports"] if x["kind"] == "slow")
        errors = next(x for x in doc["reports"] if x["kind"] == "errors")
        top_slow = next((f for f in slow["findings"] if f["significant"]), None)
        top_err = next((f for f in errors["findings"] if f["significant"]), None)
        shard = any(f["significant"] and f["kind"] == "attribute" and "shard" in (f["attribute"] or "")
                    and str(f["value"]) == "7" for f in slow["findings"][:5])
        return {"wall": wall, "steps": run["timings_s"], "requests": run["requests"], "spans": run["spans"],
                "found_stage": bool(top_slow and "feature_fetch" in ((top_slow["stage"] or "") + (top_slow["operation"] or ""))),
                "found_shard": shard,
                "found_v2": bool(top_err and top_err["kind"] == "error_cluster" and "Scorer.score" in (top_err["operation"] or ""))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", default="35s", help="the demo's --duration (default: the demo's default)")
    ap.add_argument("extra", nargs="*", help="more demo arguments, after --")
    args = ap.parse_args()
    runs = []
    for i in range(args.repeat):
        res = one_run(args.duration, args.extra)
        runs.append(res)
        print(f"run {i + 1}: {res['wall']:.1f} s wall, {res['requests']} requests, {res['spans']} spans, "
              f"steps {res['steps']}, found stage/shard/v2: {res['found_stage']}/{res['found_shard']}/{res['found_v2']}",
              flush=True)
    prev = 0.0
    print(f"\nmedian of {len(runs)} runs, --duration {args.duration}, load average {os.getloadavg()[0]:.1f} now")
    print(f"{'step':<12} {'median s':>9}")
    for step in STEPS:
        ends = [r["steps"].get(step) for r in runs if r["steps"].get(step) is not None]
        if not ends:
            continue
        med = statistics.median(ends)
        print(f"{step:<12} {med - prev:9.1f}")
        prev = med
    print(f"{'total wall':<12} {statistics.median(r['wall'] for r in runs):9.1f}")
    print(f"causes found in {sum(r['found_stage'] and r['found_shard'] and r['found_v2'] for r in runs)} of {len(runs)} runs")


if __name__ == "__main__":
    main()
