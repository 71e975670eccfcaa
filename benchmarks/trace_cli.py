"""`stagetrace trace ID` as a user runs it while a collector serves the store: where a
fresh CLI process spends its time (issue 19 part 2: served <= 300 ms over a 10M-span store).

Interleaved, ROUNDS times each, a fresh process of: `python -c pass` (interpreter start-up),
`python -c "import stagetrace.forensics.cli"` (the imports the command needs before it
asks anything), `stagetrace trace ID --format json` and `stagetrace trace ID` (text); and,
in this process, the served lookup alone (ServedBackend.get_trace: the HTTP hop + the
collector's lookup) and the report built and rendered from a warm backend. Medians of
wall time and of the child's CPU time (utime + stime), with the load average.

    .venv/bin/python benchmarks/trace_cli.py --data-dir DIR [--trace-id ID] [--rounds 10]

DIR must be served by a running `stagetrace collector --data-dir DIR`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd="/tmp", env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--trace-id", default=None, help="default: one from the newest span block's entry sidecar")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--before", type=Path, default=None,
                    help="also run both commands with this package dir first on PYTHONPATH (e.g. main's, from "
                         "`git archive`), interleaved with the others")
    args = ap.parse_args()
    from stagetrace.collector.client import ServedBackend, open_embedded

    backend = open_embedded(args.data_dir)
    if not isinstance(backend, ServedBackend):
        raise SystemExit(f"no collector serves {args.data_dir}: start `stagetrace collector --data-dir {args.data_dir}`")
    tid = args.trace_id
    if tid is None:
        import pyarrow.parquet as pq
        side = sorted((args.data_dir / "blocks" / "spans").glob("*.entries.parquet"))[-1]
        tids = pq.read_table(side, columns=["trace_id"]).column(0)
        tid = tids[len(tids) // 2].as_py().hex()
    exe = str(Path(sys.executable).with_name("stagetrace"))
    py = sys.executable
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "import stagetrace.forensics.cli": [py, "-c", "import stagetrace.forensics.cli"],
        "stagetrace trace ID --format json": [exe, "trace", tid, "--data-dir", str(args.data_dir), "--format", "json"],
        "stagetrace trace ID (text)": [exe, "trace", tid, "--data-dir", str(args.data_dir)],
    }
    envs: dict[str, dict | None] = {k: None for k in cmds}
    if args.before is not None:
        before_env = dict(os.environ, PYTHONPATH=str(args.before))
        for name in ("stagetrace trace ID --format json", "stagetrace trace ID (text)"):
            cmds[f"{name}, before"] = cmds[name]
            envs[f"{name}, before"] = before_env
    for name, cmd in cmds.items():  # warm the page cache and the collector
        run(cmd, envs[name])
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    served, report = [], []
    from stagetrace.forensics import trace_report
    import stagetrace.forensics.render_text  # noqa: F401  (imported before the clock)
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            got[name].append(run(cmd, envs[name]))
        t = time.perf_counter()
        backend.get_trace(tid)
        served.append(time.perf_counter() - t)
        t = time.perf_counter()
        trace_report(backend, tid)
        report.append(time.perf_counter() - t)
    print(f"trace {tid}, {args.rounds} rounds, load average {os.getloadavg()}")
    for name, xs in got.items():
        print(f"  {name:36} median {statistics.median(x[0] for x in xs) * 1e3:5.0f} ms wall "
              f"(min {min(x[0] for x in xs) * 1e3:4.0f}), {statistics.median(x[1] for x in xs) * 1e3:4.0f} ms CPU")
    print(f"  {'served get_trace (warm client)':36} median {statistics.median(served) * 1e3:5.1f} ms wall")
    print(f"  {'trace_report over the served backend':36} median {statistics.median(report) * 1e3:5.1f} ms wall")


if __name__ == "__main__":
    main()
