"""The UI search at scale, before and after, side by side in one run (issue 19 part 2).

For each store given (e.g. the 1.4M- and 10M-span hours that `benchmarks/forensics.py
--keep DIR [--copies 7]` builds), one `stagetrace ui` subprocess of this checkout and,
with ``--before PKGDIR``, one of another package (a directory holding a `stagetrace`
package, e.g. main's extracted with `git archive`); the same searches over the store's
hour go to each in turn, round after round, so both see the same machine load. Reported
per search: the median HTTP round trip, and the median CPU seconds the UI process spent
on it (utime + stime from /proc, DuckDB's threads included), beside the load average.
The stores are only read.

    .venv/bin/python benchmarks/ui_scale.py --store /tmp/scale/f1m-new --store /tmp/scale/f10m-new \
        [--before /tmp/wt19b/before-pkg] [--rounds 5] [--first "attr ml.model.version=v2"] [--first-after 5] [--drop-cache]

``--first`` names the search each fresh process answers first (default: no filter),
``--first-after`` how long after its start (default 0: at once; the UI warms up in
the background meanwhile, as it does before someone opens the page);
with ``--drop-cache`` every file of the store is dropped from the OS page cache
(``posix_fadvise(DONTNEED)``) before each process starts, so that first search reads
from disk, as a user's first search after the store was written long ago would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = {"no filter": "", "service=feature-service": "&service=feature-service", "status=error": "&status=error",
           "min=500ms": "&min=500ms", "attr ml.model.version=v2": "&attr=ml.model.version%3Dv2"}
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def start_ui(data_dir: Path, pythonpath: str | None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen([str(Path(sys.executable).with_name("stagetrace")), "ui", "--data-dir", str(data_dir),
                             "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    line = proc.stdout.readline()
    if "url=" not in line:
        proc.kill()
        raise SystemExit(f"stagetrace ui did not start: {line!r}")
    return proc, line.strip().split("url=", 1)[1]


def drop_page_cache(root: Path) -> int:
    """Ask the kernel to drop every file under ``root`` from the page cache; the number of files."""
    n = 0
    for d, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def timed(proc: subprocess.Popen, url: str) -> tuple[float, float, dict]:
    c0, t0 = cpu_s(proc.pid), time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        doc = json.loads(r.read())
    return time.perf_counter() - t0, cpu_s(proc.pid) - c0, doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, action="append", required=True,
                    help="a store with bench-meta.json (benchmarks/forensics.py --keep); repeatable")
    ap.add_argument("--before", default=None, help="a PYTHONPATH holding the 'before' stagetrace package")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--first", default="no filter", choices=list(QUERIES),
                    help="the search each fresh process answers first")
    ap.add_argument("--first-after", type=float, default=0.0,
                    help="seconds between a process's start and its first search (a user opening the page)")
    ap.add_argument("--drop-cache", action="store_true",
                    help="drop the store's files from the page cache before each process starts")
    args = ap.parse_args()
    variants = [("after", None)] + ([("before", args.before)] if args.before else [])
    print(f"load average at start: {os.getloadavg()}")
    for data_dir in args.store:
        meta = json.loads((data_dir / "bench-meta.json").read_text())
        window = f"from={meta['start_ns'] // 1_000_000}&to={meta['end_ns'] // 1_000_000}"
        print(f"\nstore {data_dir}: {meta['spans']:,} spans, {meta['requests']:,} requests")
        servers = {}
        try:
            for name, pp in variants:  # the first search of each process, page cache dropped first if asked
                dropped = drop_page_cache(data_dir) if args.drop_cache else 0
                proc, base = servers[name] = start_ui(data_dir, pp)
                time.sleep(args.first_after)
                dt, cpu, _ = timed(proc, f"{base}api/search?{window}{QUERIES[args.first]}")
                print(f"  {name}: first search of the process ({args.first}, {args.first_after:g} s after its start"
                      f"{f', {dropped} files dropped from the page cache' if dropped else ''}): "
                      f"{dt * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU")
            got: dict[tuple[str, str], list[tuple[float, float]]] = {}
            docs: dict[tuple[str, str], dict] = {}
            for _ in range(args.rounds):
                for q, extra in QUERIES.items():
                    for name, (proc, base) in servers.items():
                        dt, cpu, doc = timed(proc, f"{base}api/search?{window}{extra}")
                        got.setdefault((q, name), []).append((dt, cpu))
                        docs[(q, name)] = doc
            for q in QUERIES:
                cells = []
                for name, _ in variants:
                    xs = got[(q, name)]
                    doc = docs[(q, name)]
                    frac = doc.get("read_fraction", 1.0)
                    cells.append(f"{name} {statistics.median(x[0] for x in xs) * 1e3:6.0f} ms wall "
                                 f"{statistics.median(x[1] for x in xs) * 1e3:5.0f} ms CPU "
                                 f"({doc['count']} pts of {doc['matched']}"
                                 f"{', read %.1f%%' % (100 * frac) if frac < 1 else ''})")
                print(f"  {q:26} " + " | ".join(cells))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
        print(f"  load average now: {os.getloadavg()}")


if __name__ == "__main__":
    main()
