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

Ten times the data (issue 19): ``--copies 7`` writes each generated chunk 7
times, each copy's trace ids rewritten (the first 8 bytes XOR a per-copy
constant), so 200k generated requests become 1.4M requests, ~9.8M spans and
~7M logs with the same rates, faults and timestamps, without an hour of SDK
generation per copy. ``--base DIR`` takes the chunks from an existing store's
blocks (e.g. a kept 1.4M run) instead of generating them.

    .venv/bin/python benchmarks/forensics.py [--requests 200000] [--keep DIR]
    .venv/bin/python benchmarks/forensics.py --copies 7 --base DIR1M --keep DIR10M
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


def copy_ids(t, copy: int):
    """``t`` (a span or log table) with its trace ids moved to another random-looking id
    (first 8 bytes XOR a per-copy constant; empty ids stay empty): copy 0 is ``t``."""
    if copy == 0:
        return t
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    salt = np.uint64((0x9E3779B97F4A7C15 * copy) & 0xFFFFFFFFFFFFFFFF)
    ids = t.column("trace_id").combine_chunks()
    full = pc.fill_null(pc.equal(pc.binary_length(ids), 16), False).to_numpy(zero_copy_only=False)
    fixed = pc.if_else(full, ids, pa.scalar(bytes(16), pa.binary())).cast(pa.binary(16))
    raw = np.frombuffer(fixed.buffers()[1], dtype=np.uint8, count=16 * len(fixed),
                        offset=fixed.offset * 16).reshape(-1, 16).copy()
    head = raw[:, :8].copy().view(">u8").ravel() ^ salt
    raw[:, :8] = head.astype(">u8").view(np.uint8).reshape(-1, 8)
    moved = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(raw), [None, pa.py_buffer(raw.tobytes())])
    new = pc.if_else(pa.array(full), moved.cast(pa.binary()), ids)
    return t.set_column(t.schema.get_field_index("trace_id"), "trace_id", new)


def replicate(base: Path, data_dir: Path, copies: int) -> dict:
    """Every span and log block of the store ``base``, ``copies`` times with moved trace
    ids, plus its metric blocks once (see the module docstring)."""
    import pyarrow.parquet as pq
    from stagetrace.collector import store

    meta = json.loads((base / "bench-meta.json").read_text())
    t0 = time.perf_counter()
    seq = 0
    totals = {"spans": 0, "logs": 0}
    for table in store.TABLES:
        for ref in store.list_blocks(base, table):
            t = pq.read_table(ref.path).replace_schema_metadata(None)
            for c in range(copies if table != store.METRICS else 1):
                out = copy_ids(t, c) if table != store.METRICS else t
                store.write_block(data_dir, table, seq, seq, out)
                seq += 1
                if table in totals:
                    totals[table] += out.num_rows
            print(f"  {table} block {ref.path.name}: {t.num_rows:,} rows x {copies}", flush=True)
    reqs = meta["requests"] * copies
    return {"spans": totals["spans"], "logs": totals["logs"], "metric_points": meta["metric_points"],
            "requests": reqs, "start_ns": meta["start_ns"], "end_ns": meta["end_ns"],
            "load_s": time.perf_counter() - t0, "copies": copies, "base": str(base)}


def load(data_dir: Path, requests: int, copies: int = 1) -> dict:
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
            for c in range(copies if table != store.METRICS else 1):
                store.write_block(data_dir, table, i * copies + c, i * copies + c, copy_ids(t, c)
                                  if table != store.METRICS else t)
        totals["spans"] += len(spans) * copies
        totals["logs"] += len(logs) * copies
        totals["metric_points"] += r.metric_points
        totals["requests"] += r.requests * copies
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
    # the result is the last JSON object (older stores' DuckDB drew a progress bar on the same line)
    at = p.stdout.rfind('{"seconds"')
    if at < 0:
        raise SystemExit(f"{what}: no result in its output:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout[at:].splitlines()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the store in this directory")
    ap.add_argument("--copies", type=int, default=1, help="write each chunk this many times, trace ids moved")
    ap.add_argument("--base", type=Path, default=None, help="replicate this kept store instead of generating")
    ap.add_argument("--only", default="slow,errors,trace", help="measurements to run, comma-separated: "
                    "slow, errors, trace (in process and `stagetrace trace` CLI); empty: load and compact only")
    args = ap.parse_args()
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    if only - {"slow", "errors", "trace"}:
        raise SystemExit(f"--only: unknown measurement(s) {', '.join(sorted(only - {'slow', 'errors', 'trace'}))}")
    if args.copies < 1:
        raise SystemExit("--copies must be at least 1")
    if args.base is not None and not (args.base / "bench-meta.json").exists():
        raise SystemExit(f"--base {args.base}: not a store kept by this script (no bench-meta.json)")
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="stagetrace-bench-forensics-"))
    meta_path = data_dir / "bench-meta.json"
    try:
        if meta_path.exists():
            totals = json.loads(meta_path.read_text())
            print(f"reusing store {data_dir}")
        else:
            if args.base is not None:
                print(f"replicating {args.base} x{args.copies} into {data_dir}")
                totals = replicate(args.base, data_dir, args.copies)
            else:
                print(f"loading {args.requests:,} requests x{args.copies} into {data_dir}")
                totals = load(data_dir, args.requests, args.copies)
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
        for what in [w for w in ("slow", "errors") if w in only]:
            r = child(data_dir, what, s, e)
            rows.append((what, r))
            inside = sum(r["backend_seconds"].values())
            print(f"investigate {what:6}: {r['seconds']:6.2f} s wall ({r['cpu_seconds']:.2f} s CPU), peak RSS "
                  f"{r['peak_rss_mb']:5.0f} MB; {inside:.2f} s inside backend calls {r['backend_seconds']}, "
                  f"{r['seconds'] - inside:.2f} s analysis; {r['significant']} significant findings")
            print(f"    top: {r['top'][0] if r['top'] else '-'}")
        if "trace" not in only:
            return
        # trace lookups: ids of 21 pseudo-random root traces of the window (one scan of
        # two columns: turning every root into a Span here would cost gigabytes at 10M)
        import duckdb
        files = [str(r.path) for r in _store.list_blocks(data_dir, _store.SPANS)]
        ids = [bytes(row[0]).hex() for row in duckdb.sql(
            "SELECT trace_id FROM read_parquet($files) WHERE octet_length(parent_span_id) = 0 "
            "AND start_ns >= $s AND start_ns < $e ORDER BY hash(trace_id) LIMIT 21",
            params={"files": files, "s": s, "e": e}).fetchall()]
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
