"""Forensics at scale: time and peak memory of `investigate slow` and
`investigate errors` over >= 1M spans + >= 1M logs + a few thousand metric
points, and `stagetrace trace` latency at that size.

Data: tests/telemetry_gen.py (real OTel SDK objects, seeded) in 10 chunks of
6 minutes (an hour in all): 6 clean chunks, then slow shard 7 / v2 errors
alternating. Each chunk is encoded with the OTLP exporter's own protobuf
encoders and bulk-loaded through the collector's block writer
(``stagetrace.collector.store.build_table`` + ``write_block``), i.e. the same
Parquet blocks the collector cuts from its WAL, without 1M spans of network
round-trips. Each measurement then runs in a fresh Python process against
``EmbeddedBackend`` (peak RSS = that process's ru_maxrss).

    .venv/bin/python benchmarks/forensics.py [--requests 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHUNKS = 10
CHUNK_MIN = 6


def load(data_dir: Path, requests: int) -> dict:
    import telemetry_gen as gen
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from stagetrace.collector import store

    end = time.time_ns()
    start = end - CHUNKS * CHUNK_MIN * 60_000_000_000
    per_minute = max(1, requests // (CHUNKS * CHUNK_MIN))
    totals = {"spans": 0, "logs": 0, "metric_points": 0, "requests": 0}
    t0 = time.perf_counter()
    import gc
    for i in range(CHUNKS):
        gc.disable()  # the cyclic GC rescans the growing heap of in-memory spans: quadratic without this
        scenario = "clean" if i < 6 else ("slow_shard" if i % 2 == 0 else "v2_errors")
        ex = gen.MemoryExporters()
        c_end = start + (i + 1) * CHUNK_MIN * 60_000_000_000
        r = gen.generate(scenario, ex, minutes=CHUNK_MIN, per_minute=per_minute, onset_fraction=0.0, seed=100 + i,
                         end_ns=c_end)
        spans = ex.spans.get_finished_spans()
        logs = ex.logs.get_finished_logs()
        for table, payload in ((store.SPANS, encode_spans(spans)), (store.LOGS, encode_logs(logs)),
                               (store.METRICS, encode_metrics(ex.metrics[0]))):
            t = store.build_table(table, [payload.SerializeToString()])
            store.write_block(data_dir, table, i, i, t)
        totals["spans"] += len(spans)
        totals["logs"] += len(logs)
        totals["metric_points"] += r.metric_points
        totals["requests"] += r.requests
        del spans, logs, ex
        gc.enable()
        gc.collect()
        print(f"  chunk {i + 1}/{CHUNKS} {scenario:10} spans={totals['spans']:,} logs={totals['logs']:,}", flush=True)
    totals.update(start_ns=start, end_ns=end, load_s=time.perf_counter() - t0)
    return totals


CHILD = r"""
import json, resource, sys, time
from stagetrace.collector.query import EmbeddedBackend
from stagetrace.forensics import investigate_slow, investigate_errors, trace_report, render
data_dir, what, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


class Timed:
    # wall time spent inside backend calls, to split backend from analysis
    def __init__(self, inner):
        self.inner, self.spent, self.name = inner, {}, inner.name

    def __getattr__(self, attr):
        fn = getattr(self.inner, attr)
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.spent[attr] = self.spent.get(attr, 0.0) + time.perf_counter() - t
        return call


b = Timed(EmbeddedBackend(data_dir))
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
if what == "slow":
    r = investigate_slow(b, start_ns=start, end_ns=end)
    out = render(r, "json")
elif what == "errors":
    r = investigate_errors(b, start_ns=start, end_ns=end)
    out = render(r, "json")
else:
    ids = sys.argv[5].split(",")
    times = []
    for tid in ids:
        t1 = time.perf_counter()
        render(trace_report(b, tid), "text")
        times.append(time.perf_counter() - t1)
    r = None
el = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
res = {"seconds": el, "peak_rss_mb": ru.ru_maxrss / 1024,
       "cpu_seconds": ru.ru_utime + ru.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
       "backend_seconds": {k: round(v, 2) for k, v in b.spent.items()}}
if r is not None:
    res["top"] = [f.summary for f in r.findings[:3]]
    res["significant"] = sum(f.significant for f in r.findings)
    res["counts"] = r.data.get("counts")
else:
    res["trace_times"] = times
print(json.dumps(res))
"""


def child(data_dir: Path, what: str, start: int, end: int, extra: str = "") -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), what, str(start), str(end), extra],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{what} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the store in this directory")
    args = ap.parse_args()
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="stagetrace-bench-forensics-"))
    meta_path = data_dir / "bench-meta.json"
    try:
        if meta_path.exists():
            totals = json.loads(meta_path.read_text())
            print(f"reusing store {data_dir}")
        else:
            print(f"loading {args.requests:,} requests into {data_dir}")
            totals = load(data_dir, args.requests)
            meta_path.write_text(json.dumps(totals))
        # Merge the chunk blocks as a running collector's maintainer would, so every
        # measurement reads the layout a live store has (a no-op when already done).
        from stagetrace.collector import store as _store
        bs = _store.BlockStore(data_dir)
        t0 = time.perf_counter()
        merges = 0
        for table in _store.TABLES:
            while bs.compact(table):
                merges += 1
        if merges:
            print(f"compacted the store: {merges} merges in {time.perf_counter() - t0:.1f} s")
        print(f"store: {totals['spans']:,} spans, {totals['logs']:,} logs, {totals['metric_points']:,} metric points, "
              f"{totals['requests']:,} requests (load {totals.get('load_s', 0):.0f} s)")
        s, e = totals["start_ns"], totals["end_ns"]
        rows = []
        for what in ("slow", "errors"):
            r = child(data_dir, what, s, e)
            rows.append((what, r))
            inside = sum(r["backend_seconds"].values())
            print(f"investigate {what:6}: {r['seconds']:6.2f} s wall ({r['cpu_seconds']:.2f} s CPU), peak RSS "
                  f"{r['peak_rss_mb']:5.0f} MB; {inside:.2f} s inside backend calls {r['backend_seconds']}, "
                  f"{r['seconds'] - inside:.2f} s analysis; {r['significant']} significant findings")
            print(f"    top: {r['top'][0] if r['top'] else '-'}")
        # trace lookups: ids of random traces from the window
        from stagetrace.backend import TraceQuery
        from stagetrace.collector.query import EmbeddedBackend
        import random
        b = EmbeddedBackend(data_dir)
        roots = b.find_spans(TraceQuery(root_only=True, start_ns=s, end_ns=e, limit=None))
        ids = [x.trace_id for x in random.Random(0).sample(roots, 21)]
        b.close()
        r = child(data_dir, "trace", s, e, ",".join(ids))
        tt = r["trace_times"][1:]  # first call includes opening the store
        print(f"trace report+render (in process): median {statistics.median(tt) * 1e3:.0f} ms, "
              f"max {max(tt) * 1e3:.0f} ms, first (cold) {r['trace_times'][0] * 1e3:.0f} ms over {len(tt) + 1} traces")
        # `stagetrace trace ID` as a new process, two ways, interleaved: reading the
        # store itself, and with a `stagetrace collector` serving this data dir (the
        # normal set-up: the collector is what fills the store).
        from stagetrace.collector.client import ENV_DIRECT
        from stagetrace.collector.process import start_collector

        # Byte-compile our sources first, as `pip install` does: an editable install
        # under PYTHONDONTWRITEBYTECODE=1 (set on this machine) would otherwise
        # re-compile every stagetrace module in every new process (~5 ms each).
        import compileall
        for d in ("core", "collector", "forensics", "instrumentation", "demo"):
            compileall.compile_dir(str(ROOT / d), quiet=1)
        script = Path(sys.executable).with_name("stagetrace")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stagetrace.cli"]

        def run_cli(tid: str, direct: bool) -> float:
            env = {**os.environ, ENV_DIRECT: "1" if direct else "0"}
            t = time.perf_counter()
            p = subprocess.run([*cmd, "trace", tid, "--data-dir", str(data_dir)],
                               capture_output=True, text=True, cwd=ROOT, env=env)
            dt = time.perf_counter() - t
            assert p.returncode == 0 and tid in p.stdout, p.stderr
            return dt

        cli: dict[str, list[float]] = {"direct": [], "served": []}
        with start_collector(data_dir) as c:
            time.sleep(3)  # let its query service open the store (warm-up at start)
            for tid in ids[:10]:
                cli["served"].append(run_cli(tid, direct=False))
                cli["direct"].append(run_cli(tid, direct=True))
        for how, label in (("served", "collector running (served, warm)"), ("direct", "no collector (reads the store)")):
            v = cli[how]
            print(f"`stagetrace trace ID` new process, {label}: median {statistics.median(v) * 1e3:.0f} ms, "
                  f"min {min(v) * 1e3:.0f}, max {max(v) * 1e3:.0f} over {len(v)} runs")
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
