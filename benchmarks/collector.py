"""Benchmark the embedded collector: ingest, trace-by-id lookup, bytes on disk.

    .venv/bin/python benchmarks/collector.py            # full run (1M and 10M spans)
    .venv/bin/python benchmarks/collector.py --quick    # smaller, for a smoke test

1. Ingest: a `stagetrace collector` subprocess; CLIENTS client processes each
   build SPANS_PER_CLIENT unique spans with the OTel SDK *before* the clock starts
   (8 attributes each, 4 spans per trace), then push them with the real SDK
   exporter (OTLP/gRPC, then OTLP/HTTP protobuf) in batches of 512. Throughput =
   spans / wall time from the first request to the last acknowledgement. The
   collector's own CPU seconds (utime+stime of the process, /proc) are measured
   from start until every WAL segment has been cut into Parquet blocks, so they
   include storing, not just receiving.
2. Bytes on disk per span: the blocks written by run 1 (real SDK spans), after
   the collector stopped and compacted; WAL included if any is left.
4. `stagetrace trace ID` as a fresh process over a bulk-loaded 1M-span store
   (the forensics issue's <= 300 ms), median/p90/min of N interleaved runs beside
   `python -c pass` and the unavoidable imports (--skip-cli to leave it out).
3. Trace-by-id: stores of 1M and 10M spans are bulk-loaded through the store's own
   block writer (`store.write_block`, the same code the collector cuts with), from
   synthetic spans (8 spans per trace, 8 attributes, rest-of-span protobufs drawn
   from a pool of 20k distinct ones, so these stores are not used for bytes/span).
   A fresh EmbeddedBackend then looks up random existing ids; first-query latency
   (cold reader) is reported apart from the p50/p99 of the warm ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 512
ATTRS = 8


def _cpu_seconds(pid: int) -> float:
    """utime+stime of the collector and all its live descendants (maintainer, its workers)."""
    def own(p: int) -> int:
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])
        except OSError:
            return 0

    def kids(p: int) -> list[int]:
        out = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                out += [int(k) for k in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
        return out

    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += own(p)
        todo += kids(p)
    return total / os.sysconf("SC_CLK_TCK")


# --- client process -----------------------------------------------------------

def _replay(protocol: str, endpoint: str, spans, batches, ready_file: str, go_file: str) -> None:
    """Send the exact request bytes the SDK exporter builds (its own encoder, run
    before the clock) over the same transports, so the collector, not the Python
    SDK's ~100 us/span encoder, is what is measured."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    bodies = [encode_spans(b).SerializeToString() for b in batches]
    if protocol == "grpc":
        import grpc
        channel = grpc.insecure_channel(endpoint)
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        send = lambda body: call(body, timeout=60) is not None
    else:
        import requests
        session = requests.Session()
        url = endpoint + "/v1/traces"
        send = lambda body: session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"},
                                         timeout=60).status_code == 200
    Path(ready_file).write_text("ready")
    while not os.path.exists(go_file):
        time.sleep(0.005)
    t0 = time.perf_counter()
    failed = 0
    for body, b in zip(bodies, batches):
        if not send(body):
            failed += len(b)
    t1 = time.perf_counter()
    print(f"{len(spans)} {failed} {t0!r} {t1!r}", flush=True)


def client_main(protocol: str, endpoint: str, n_spans: int, seed: int, ready_file: str, go_file: str,
                replay: bool = False) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    import random

    rnd = random.Random(seed)
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": f"bench-{seed % 3}", "service.version": "1.4.0",
                                                  "host.name": f"node-{seed}", "deployment.environment.name": "bench"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("stagetrace.bench", "0.1.0")
    stages = ["feature_fetch", "preprocess", "inference"]
    made = 0
    while made < n_spans:
        status = rnd.choice([200] * 30 + [500])
        with tracer.start_as_current_span("POST /predict", kind=SpanKind.SERVER, attributes={
                "http.request.method": "POST", "http.route": "/predict", "http.response.status_code": status,
                "server.address": "api.internal", "server.port": 8080, "ml.model.name": "fraud-xgb",
                "ml.model.version": "3", "user_agent.original": "python-requests/2.32"}):
            made += 1
            for st in stages:
                with tracer.start_as_current_span(st, attributes={
                        "ml.stage": st, "ml.model.name": "fraud-xgb", "ml.model.version": "3",
                        "ml.batch.size": rnd.choice([1, 8, 32]), "ml.feature.count": 42,
                        "code.function.name": f"app.{st}", "thread.id": rnd.randint(1, 8),
                        "ml.input.shape": "1x42"}):
                    made += 1
    spans = mem.get_finished_spans()[:n_spans]
    batches = [spans[i:i + BATCH] for i in range(0, len(spans), BATCH)]
    if replay:
        return _replay(protocol, endpoint, spans, batches, ready_file, go_file)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    Path(ready_file).write_text("ready")
    while not os.path.exists(go_file):
        time.sleep(0.005)
    t0 = time.perf_counter()
    failed = 0
    for b in batches:
        if exp.export(b) != SpanExportResult.SUCCESS:
            failed += len(b)
    t1 = time.perf_counter()
    print(f"{len(spans)} {failed} {t0!r} {t1!r}", flush=True)


# --- ingest -------------------------------------------------------------------

def bench_ingest(protocol: str, clients: int, per_client: int, workdir: Path, replay: bool = False) -> dict:
    from stagetrace.collector import store
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    data = workdir / f"ingest-{protocol}-{'replay' if replay else 'sdk'}"
    c = start_collector(data, extra_args=["--log-level", "warning"])
    ep = c.grpc_endpoint if protocol == "grpc" else c.http_endpoint
    go = workdir / f"go-{protocol}-{replay}"
    procs = []
    for i in range(clients):
        ready = workdir / f"ready-{protocol}-{replay}-{i}"
        procs.append((subprocess.Popen([sys.executable, __file__, "--client", protocol, ep, str(per_client), str(i + 1),
                                        str(ready), str(go), "replay" if replay else "sdk"],
                                       stdout=subprocess.PIPE, text=True), ready))
    while not all(r.exists() for _, r in procs):
        time.sleep(0.05)
    cpu0 = _cpu_seconds(c.pid)
    go.write_text("go")
    results = []
    for p, _ in procs:
        out, _ = p.communicate(timeout=1800)
        n, failed, t0, t1 = out.split()
        results.append((int(n), int(failed), float(t0), float(t1)))
    # storing is part of ingest: wait until every closed WAL segment is a block
    while len(store.snapshot(data, store.SPANS).tail) > 1:
        time.sleep(0.05)
    stored_at = time.perf_counter()
    cpu1 = _cpu_seconds(c.pid)
    sent = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    c.stop(timeout=300)
    with EmbeddedBackend(data) as b:
        stored = b.stats()["spans"]
    blocks = list((data / "blocks" / "spans").glob("*.parquet"))
    disk = sum(p.stat().st_size for p in (data / "blocks" / "spans").iterdir()) + \
        sum(p.stat().st_size for p in (data / "wal" / "spans").iterdir())
    return {"protocol": protocol, "sent": sent, "failed": failed, "stored": stored, "wall_s": wall,
            "stored_per_s": (sent - failed) / (stored_at - min(r[2] for r in results)),
            "spans_per_s": (sent - failed) / wall, "cpu_s": cpu1 - cpu0,
            "cpu_s_per_100k": (cpu1 - cpu0) / (sent - failed) * 100_000, "bytes_per_span": disk / max(1, stored),
            "blocks": len(blocks), "data": data}


def compact_fully(data: Path) -> tuple[int, float]:
    """Run the store's compaction to a fixed point (what the collector does in the background)."""
    from stagetrace.collector import store
    bs = store.BlockStore(data)
    while bs.compact(store.SPANS):
        pass
    files = [p for p in (data / "blocks" / "spans").iterdir()]
    n_rows = 0
    import pyarrow.parquet as pq
    for p in files:
        if p.suffix == ".parquet":
            n_rows += pq.read_metadata(p).num_rows
    return len([p for p in files if p.suffix == ".parquet"]), sum(p.stat().st_size for p in files) / max(1, n_rows)


# --- lookup ---------------------------------------------------------------------

def bulk_load(data: Path, n_spans: int, block_rows: int = 1_000_000, seed: int = 7) -> list[bytes]:
    """Write n_spans synthetic spans as blocks of block_rows through store.write_block."""
    import numpy as np
    import pyarrow as pa
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2
    from stagetrace.collector import store

    rng = np.random.default_rng(seed)
    pool = []
    for i in range(20_000):
        sp = trace_pb2.Span()
        for k, v in (("http.request.method", "POST"), ("http.route", f"/r{i % 7}"), ("ml.stage", ["feature_fetch", "preprocess", "inference"][i % 3]),
                     ("ml.model.name", "fraud-xgb"), ("ml.model.version", str(i % 4))):
            sp.attributes.add(key=k, value=common_pb2.AnyValue(string_value=v))
        for k, v in (("http.response.status_code", 200 if i % 31 else 500), ("ml.batch.size", int(rng.integers(1, 64))),
                     ("thread.id", i % 16)):
            sp.attributes.add(key=k, value=common_pb2.AnyValue(int_value=v))
        pool.append(sp.SerializeToString())
    pool_arr = pa.array(pool, pa.binary())
    res = [trace_pb2.ResourceSpans(resource=resource_pb2.Resource(attributes=[common_pb2.KeyValue(
        key="service.name", value=common_pb2.AnyValue(string_value=f"svc-{j}"))])).SerializeToString() for j in range(4)]
    scope = trace_pb2.ScopeSpans().SerializeToString()
    names = ["POST /predict", "feature_fetch", "preprocess", "inference", "GET /features", "db.query", "cache.get", "score"]
    sample_ids: list[bytes] = []
    t = 1_790_000_000_000_000_000
    seq = 1
    for lo in range(0, n_spans, block_rows):
        n = min(block_rows, n_spans - lo)
        per = 8
        n_tr = (n + per - 1) // per
        tids = rng.bytes(16 * n_tr)
        sids = rng.bytes(8 * n)
        tid_idx = np.repeat(np.arange(n_tr), per)[:n]
        tid_arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n_tr, [None, pa.py_buffer(tids)]).take(
            pa.array(tid_idx)).cast(pa.binary())
        sid_arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), n, [None, pa.py_buffer(sids)]).cast(pa.binary())
        is_root = (np.arange(n) % per) == 0
        root_pos = (np.arange(n) // per) * per
        parent = sid_arr.take(pa.array(root_pos))
        parent = pa.array([b"" if r else p for r, p in zip(is_root.tolist(), parent.to_pylist())], pa.binary())
        starts = t + np.sort(rng.integers(0, 600 * 10**9, n)).astype(np.int64)
        t += 600 * 10**9
        table = pa.table({
            "trace_id": tid_arr, "span_id": sid_arr, "parent_span_id": parent,
            "name": pa.array(np.array(names)[np.arange(n) % per]),
            "kind": pa.array(np.where(is_root, 2, 1).astype(np.int32)),
            "start_ns": pa.array(starts), "duration_ns": pa.array(rng.integers(10**5, 10**9, n).astype(np.int64)),
            "status_code": pa.array((rng.random(n) < 0.01).astype(np.int32) * 2),
            "service": pa.array([f"svc-{j}" for j in rng.integers(0, 4, n)]),
            "rest": pool_arr.take(pa.array(rng.integers(0, len(pool), n))),
            "resource": pa.array([res[j] for j in rng.integers(0, 4, n)], pa.binary()),
            "scope": pa.array([scope] * n, pa.binary()),
        }, schema=store.SPAN_SCHEMA)
        pick = rng.integers(0, n_tr, 200)
        sample_ids.extend(tids[16 * i:16 * i + 16] for i in pick)
        store.write_block(data, store.SPANS, seq, seq, table)
        seq += 1
    return sample_ids


def bench_lookup(data: Path, ids: list[bytes], n_queries: int) -> dict:
    import random
    from stagetrace.collector.query import EmbeddedBackend

    rnd = random.Random(3)
    b = EmbeddedBackend(data)
    first_id = ids[0].hex()
    t0 = time.perf_counter()
    tr = b.get_trace(first_id)
    cold = time.perf_counter() - t0
    assert tr is not None and len(tr.spans) == 8, (first_id, tr)
    lat = []
    for _ in range(n_queries):
        tid = rnd.choice(ids).hex()
        t0 = time.perf_counter()
        tr = b.get_trace(tid)
        lat.append(time.perf_counter() - t0)
        assert tr is not None and len(tr.spans) == 8
    t0 = time.perf_counter()
    miss = b.get_trace("0123456789abcdef0123456789abcdef")
    miss_s = time.perf_counter() - t0
    assert miss is None
    # bulk form: the forensics pattern (a sample of 200 traces at once)
    sample = [i.hex() for i in rnd.sample(ids, min(200, len(ids)))]
    t0 = time.perf_counter()
    got = b.get_traces(sample, with_logs=True)
    bulk = time.perf_counter() - t0
    assert len(got) == len(set(sample))
    b.close()
    lat.sort()
    return {"cold_ms": cold * 1e3, "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, "miss_ms": miss_s * 1e3,
            "bulk200_ms": bulk * 1e3, "blocks": len(list((data / "blocks" / "spans").glob("*.parquet"))),
            "disk_mb": sum(p.stat().st_size for p in (data / "blocks" / "spans").iterdir()) / 1e6}


def bench_blocks(workdir: Path, segments: int, per_segment: int = 16_384) -> dict:
    """CPU of turning the WAL into blocks, in this process: ``segments`` WAL segments of
    SDK-shaped spans (8 attributes, 4 names, one resource/scope per 512-span request),
    each cut as it closes and compacted after, as the maintainer does under a steady
    ~16k spans/s. Only cut + compaction is timed (process CPU), not building payloads."""
    import random
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from stagetrace.collector import store, wal

    def kv(k, v):
        value = common_pb2.AnyValue(string_value=v) if isinstance(v, str) else common_pb2.AnyValue(int_value=v)
        return common_pb2.KeyValue(key=k, value=value)

    rnd = random.Random(1)
    payloads = []
    for _ in range(per_segment // BATCH):
        req = trace_service_pb2.ExportTraceServiceRequest()
        rs = req.resource_spans.add(resource=resource_pb2.Resource(attributes=[
            kv("service.name", "bench-1"), kv("service.version", "1.4.0"), kv("host.name", "node-1"),
            kv("telemetry.sdk.language", "python"), kv("telemetry.sdk.name", "opentelemetry")]))
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = "stagetrace.bench", "0.1.0"
        t0 = 1_790_000_000_000_000_000
        for i in range(BATCH):
            st = ["feature_fetch", "preprocess", "inference"][i % 3]
            sp = ss.spans.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8),
                              parent_span_id=rnd.randbytes(8) if i % 4 else b"",
                              name=["POST /predict", "feature_fetch", "preprocess", "inference"][i % 4],
                              kind=2 if i % 4 == 0 else 1, start_time_unix_nano=t0 + i * 1000,
                              end_time_unix_nano=t0 + i * 1000 + rnd.randint(1, 10**8))
            sp.attributes.extend([kv("ml.stage", st), kv("ml.model.name", "fraud-xgb"), kv("ml.model.version", "3"),
                                  kv("ml.batch.size", rnd.choice([1, 8, 32])), kv("ml.feature.count", 42),
                                  kv("code.function.name", "app." + st), kv("thread.id", rnd.randint(1, 8)),
                                  kv("ml.input.shape", "1x42")])
        payloads.append(req.SerializeToString())
    store.build_table(store.SPANS, payloads[:1], dictionaries=True)  # warm-up (first-use imports)
    d = workdir / "blocks-bench"
    bs = store.BlockStore(d, store.StoreConfig())
    w = wal.WalWriter(store.wal_dir(d, store.SPANS), bs.next_seq(store.SPANS), segment_bytes=1 << 40)
    cpu = 0.0
    for _ in range(segments):
        for p in payloads:
            w.append(p)
        w.rotate()
        c0 = time.process_time()
        bs.cut(store.SPANS, w.active_seq)
        while bs.compact(store.SPANS):
            pass
        cpu += time.process_time() - c0
    w.close()
    n = segments * len(payloads) * BATCH
    out = {"spans": n, "cpu_s": cpu, "per_cpu_s": n / cpu, "blocks": len(store.list_blocks(d, store.SPANS))}
    shutil.rmtree(d, ignore_errors=True)
    return out


def bench_cli(data: Path, ids: list[bytes], runs: int) -> list[tuple[str, float, float, float]]:
    """Wall time of fresh processes, median/p90/min of ``runs`` (hyperfine-style, run
    interleaved so machine load hits every command alike): the `stagetrace trace`
    CLI next to the bare interpreter and the imports it cannot avoid."""
    tid = ids[0].hex()
    py = sys.executable
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import pyarrow.parquet'": [py, "-c", "import pyarrow.parquet"],
        "python -c 'import duckdb'": [py, "-c", "import duckdb"],
        "stagetrace trace ID --format json": [py, "-m", "stagetrace.cli", "trace", tid, "--data-dir", str(data),
                                              "--format", "json"],
        "stagetrace trace ID (text)": [py, "-m", "stagetrace.cli", "trace", tid, "--data-dir", str(data)],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for k, c in cmds.items():  # warm the page cache once
        subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    for _ in range(runs):
        for k, c in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[k].append(time.perf_counter() - t0)
    out = []
    for k, ts in times.items():
        ts.sort()
        out.append((k, statistics.median(ts) * 1e3, ts[min(len(ts) - 1, int(len(ts) * 0.9))] * 1e3, ts[0] * 1e3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--spans-per-client", type=int, default=None)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--only", default=None, help="ingest runs to do, e.g. grpc-replay,http-replay")
    ap.add_argument("--skip-lookup", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma-separated store sizes for lookup, e.g. 1000000,10000000")
    ap.add_argument("--cli-spans", type=int, default=1_000_000, help="store size for the `stagetrace trace` runs")
    ap.add_argument("--cli-runs", type=int, default=15)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--blocks", type=int, default=0, metavar="SEGMENTS",
                    help="also time cut + compaction of SEGMENTS 16k-span WAL segments in-process (e.g. 48)")
    args = ap.parse_args()
    per_client = args.spans_per_client or (20_000 if args.quick else 150_000)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([100_000, 1_000_000] if args.quick
                                                                          else [1_000_000, 10_000_000])
    workdir = Path(tempfile.mkdtemp(prefix="stagetrace-bench-"))
    print(f"# stagetrace collector benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, {workdir})")
    try:
        if not args.skip_ingest:
            print(f"\n## ingest: {args.clients} SDK client processes x {per_client} spans, batches of {BATCH}, 8 attributes/span")
            print(f"{'client':<11} {'spans':>8} {'failed':>6} {'stored':>8} {'wall s':>7} {'acked/s':>9} {'in blocks/s':>11} "
                  f"{'coll. CPU s':>11} {'CPU s/100k':>10} {'B/span':>7} {'B/span compacted':>17}")
            for proto, replay in (("grpc", False), ("http", False), ("grpc", True), ("http", True)):
                if args.only and f"{proto}-{'replay' if replay else 'sdk'}" not in args.only.split(","):
                    continue
                r = bench_ingest(proto, args.clients, per_client, workdir, replay)
                nblocks, bps = compact_fully(r["data"])
                label = proto + ("-replay" if replay else "-sdk")
                print(f"{label:<11} {r['sent']:>8} {r['failed']:>6} {r['stored']:>8} {r['wall_s']:>7.2f} "
                      f"{r['spans_per_s']:>9.0f} {r['stored_per_s']:>11.0f} {r['cpu_s']:>11.2f} {r['cpu_s_per_100k']:>10.2f} "
                      f"{r['bytes_per_span']:>7.1f} {bps:>11.1f} ({nblocks} blk)")
                shutil.rmtree(r["data"], ignore_errors=True)
        if not args.skip_lookup:
            print("\n## trace-by-id: bulk-loaded stores (store.write_block), 8 spans/trace, fresh reader")
            print(f"{'spans':>10} {'blocks':>6} {'MB':>7} {'load s':>7} {'cold ms':>8} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'miss ms':>8} {'200 traces ms':>13}")
            for n in sizes:
                d = workdir / f"lookup-{n}"
                t0 = time.perf_counter()
                ids = bulk_load(d, n)
                load = time.perf_counter() - t0
                r = bench_lookup(d, ids, 300 if args.quick else 1000)
                print(f"{n:>10} {r['blocks']:>6} {r['disk_mb']:>7.1f} {load:>7.1f} {r['cold_ms']:>8.1f} {r['p50_ms']:>7.2f} "
                      f"{r['p99_ms']:>7.2f} {r['miss_ms']:>8.2f} {r['bulk200_ms']:>13.1f}")
                shutil.rmtree(d, ignore_errors=True)
        if args.blocks:
            r = bench_blocks(workdir, args.blocks)
            print(f"\n## block building: {args.blocks} WAL segments of 16384 spans, cut + compaction after each")
            print(f"{r['spans']} spans: {r['cpu_s']:.2f} CPU s -> {r['per_cpu_s']:,.0f} spans per CPU-second "
                  f"({r['blocks']} blocks)")
        if not args.skip_cli:
            n = args.cli_spans
            print(f"\n## `stagetrace trace ID` as a fresh process, {n} spans stored; median of {args.cli_runs} runs")
            d = workdir / f"cli-{n}"
            ids = bulk_load(d, n)
            print(f"{'command':<40} {'median ms':>9} {'p90 ms':>7} {'min ms':>7}")
            for k, med, p90, lo in bench_cli(d, ids, args.cli_runs):
                print(f"{k:<40} {med:>9.0f} {p90:>7.0f} {lo:>7.0f}")
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7],
                    sys.argv[8] == "replay")
    else:
        main()
