"""Sustained ingest at scale (issue 19): does the collector keep up with its own
acknowledgements? A fresh `stagetrace collector` subprocess; CLIENTS client
processes send SPANS spans in all (default 20M) over OTLP/HTTP protobuf (or gRPC)
in requests of BATCH spans, as fast as they are answered. Reported:

- acked spans/s: spans / wall time from the first request to the last acknowledgement
  (acknowledged = in the write-ahead log, durable and queryable);
- drain: seconds from the last acknowledgement until every acknowledged span is in a
  Parquet block (block row counts from their check files == spans acknowledged), and
  the WAL backlog (bytes) at the last acknowledgement;
- peak memory: the largest sampled sum of RSS over the collector and its descendants
  (maintainer, cut workers), sampled every 0.2 s, and each process's own peak (VmHWM);
- trace-by-id lookups served by the collector (what `stagetrace trace ID` asks while a
  collector runs: its query API over HTTP, from this process), of ids the clients have
  already had acknowledged: every 0.25 s during the run, then LOOKUPS_AFTER once
  everything is in blocks; p50/p99 and how many found their whole trace.

Requests: the SDK's own encoder builds POOL distinct requests before the clock
(4-span traces, 8 attributes per span, as in benchmarks/collector.py); each send
copies one and overwrites its trace ids in place (offsets found once), so every
span sent is a new trace, at a client cost of a few microseconds per span.

    .venv/bin/python benchmarks/ingest.py [--spans 20000000] [--clients 2] [--protocol http|grpc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = 64
LOOKUPS_AFTER = 500
LOOKUP_EVERY_S = 0.25


def _templates(batch: int, seed: int) -> list[tuple[bytes, list[list[int]]]]:
    """POOL encoded requests of ``batch`` spans, each with the offsets of every trace id."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    import random

    rnd = random.Random(seed)
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": f"bench-{seed % 3}", "service.version": "1.4.0",
                                                  "host.name": f"node-{seed}"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("stagetrace.bench", "0.1.0")
    out = []
    for _ in range(POOL):
        mem.clear()
        while len(mem.get_finished_spans()) < batch:
            with tracer.start_as_current_span("POST /predict", kind=SpanKind.SERVER, attributes={
                    "http.request.method": "POST", "http.route": "/predict",
                    "http.response.status_code": rnd.choice([200] * 30 + [500]), "server.port": 8080,
                    "ml.model.name": "fraud-xgb", "ml.model.version": "3", "user.id": rnd.randrange(10**6),
                    "user_agent.original": "python-requests/2.32"}):
                for st in ("feature_fetch", "preprocess", "inference"):
                    with tracer.start_as_current_span(st, attributes={
                            "ml.stage": st, "ml.model.name": "fraud-xgb", "ml.batch.size": rnd.choice([1, 8, 32]),
                            "ml.feature.count": 42, "code.function.name": f"app.{st}",
                            "thread.id": rnd.randint(1, 8), "ml.input.shape": "1x42", "shard": rnd.randrange(8)}):
                        pass
        spans = mem.get_finished_spans()[:batch]
        body = encode_spans(spans).SerializeToString()
        tids = sorted({s.context.trace_id.to_bytes(16, "big") for s in spans})
        offsets = []
        for t in tids:
            at, found = -1, []
            while (at := body.find(t, at + 1)) >= 0:
                found.append(at)
            offsets.append(found)
        out.append((body, offsets))
    return out


def trace_id_of(client_no: int, n_req: int, k: int) -> bytes:
    """The trace id a client gives trace ``k`` (from 0) of its request ``n_req`` (from 0)."""
    return struct.pack(">IIQ", client_no + 1, n_req + 1, k + 1)


def client_main(protocol: str, endpoint: str, n_spans: int, batch: int, client_no: int, ready: str, go: str) -> None:
    templates = _templates(batch, client_no)
    progress = Path(ready).with_name(f"acked-{client_no}")  # requests acknowledged so far, for the lookups
    if protocol == "grpc":
        import grpc
        call = grpc.insecure_channel(endpoint).unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")

        def send(body: bytes) -> bool:
            while True:
                try:
                    return call(body, timeout=120) is not None
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # backpressure: retry, as the SDK does
                        return False
                    time.sleep(0.05)
    else:
        import requests
        session = requests.Session()
        url = endpoint + "/v1/traces"

        def send(body: bytes) -> bool:
            while True:
                code = session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"},
                                    timeout=120).status_code
                if code not in (429, 503):  # backpressure: retry, as the SDK does
                    return code == 200
                time.sleep(0.05)
    Path(ready).write_text("ready")
    while not os.path.exists(go):
        time.sleep(0.005)
    t0 = time.perf_counter()
    sent = failed = 0
    n_req = 0
    while sent < n_spans:
        body, offsets = templates[n_req % POOL]
        buf = bytearray(body)
        # unique trace ids: (client, request number, trace number within the request)
        for k, places in enumerate(offsets):
            new = trace_id_of(client_no, n_req, k)
            for at in places:
                buf[at:at + 16] = new
        if not send(bytes(buf)):
            failed += batch
        sent += batch
        n_req += 1
        if n_req % 50 == 0:
            progress.write_text(str(n_req))
    t1 = time.perf_counter()
    print(f"{sent} {failed} {t0!r} {t1!r}", flush=True)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(k) for k in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _role(pid: int, collector_pid: int) -> str:
    if pid == collector_pid:
        return "collector"
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return "worker"
    return "maintainer" if b"collector.maintainer" in cmd else "worker"


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemorySampler(threading.Thread):
    """Every 0.2 s: RSS of the collector's process tree, each process's peak, its CPU
    time so far, and the WAL backlog (so the report can say how long ingest sat at the
    backpressure limit, which is what sets the drain time)."""

    def __init__(self, pid: int, data: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.hwm_kb, self.stop = pid, 0, {}, threading.Event()
        self.names: dict[int, str] = {}
        self.cpu: dict[int, float] = {}
        self.data = data
        self.backlog: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            self.peak_kb = max(self.peak_kb, sum(_status_kb(p, "VmRSS") for p in pids))
            for p in pids:
                self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), _status_kb(p, "VmHWM"))
                self.cpu[p] = max(self.cpu.get(p, 0.0), _cpu_s(p))
                if p not in self.names:
                    self.names[p] = _role(p, self.pid)
            if self.data is not None:
                try:
                    self.backlog.append(wal_bytes(self.data))
                except OSError:
                    pass
            self.stop.wait(0.2)


class Lookups(threading.Thread):
    """Trace-by-id lookups of acknowledged ids, served by the collector, while the clients send."""

    def __init__(self, data: Path, work: Path, clients: int) -> None:
        super().__init__(daemon=True)
        self.data, self.work, self.clients = data, work, clients
        self.during: list[float] = []
        self.found = self.missing = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def one(self, rnd: "random.Random", acked: list[int]) -> float | None:
        from stagetrace.collector.client import open_embedded
        ready = [c for c in range(self.clients) if acked[c] > 0]
        if not ready:
            return None
        c = rnd.choice(ready)
        tid = trace_id_of(c, rnd.randrange(acked[c]), 0).hex()
        backend = open_embedded(self.data)
        t = time.perf_counter()
        got = backend._post("get_trace", [tid], {"start_ns": None, "end_ns": None})  # served, or it raises
        dt = time.perf_counter() - t
        if got is not None and len(got.spans) == 4:
            self.found += 1
        else:
            self.missing += 1
        return dt

    def acked(self) -> list[int]:
        out = []
        for c in range(self.clients):
            try:
                out.append(int((self.work / f"acked-{c}").read_text() or 0))
            except (OSError, ValueError):
                out.append(0)
        return out

    def run(self) -> None:
        import random
        rnd = random.Random(7)
        try:
            while not self.stop.wait(LOOKUP_EVERY_S):
                dt = self.one(rnd, self.acked())
                if dt is not None:
                    self.during.append(dt)
        except Exception as exc:  # reported beside the figures: a lookup that fails is a finding
            self.error = f"{type(exc).__name__}: {exc}"


def _pcts(xs: list[float]) -> str:
    import numpy as np
    if not xs:
        return "none"
    return (f"p50 {np.percentile(xs, 50) * 1e3:.1f} ms, p99 {np.percentile(xs, 99) * 1e3:.1f} ms, "
            f"max {max(xs) * 1e3:.1f} ms over {len(xs)}")


def rows_in_blocks(data: Path) -> int:
    from stagetrace.collector import store
    total = 0
    for ref in store.list_blocks(data, store.SPANS):
        try:
            total += store.block_info(ref)[0]
        except (OSError, ValueError):
            pass  # compacted away meanwhile: its rows are in the merged block
    return total


def store_blocks(data: Path) -> list:
    from stagetrace.collector import store
    return store.list_blocks(data, store.SPANS)


def wal_bytes(data: Path) -> int:
    from stagetrace.collector import store
    return sum(p.stat().st_size for _, p in store.snapshot(data, store.SPANS).tail if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=20_000_000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: a temp dir, removed)")
    ap.add_argument("--drain-timeout", type=float, default=1800.0)
    ap.add_argument("--no-lookups", action="store_true",
                    help="no trace-by-id lookups during the run (they make the collector decode its WAL tail)")
    args = ap.parse_args()
    if args.spans < args.batch * args.clients or args.clients < 1 or args.batch < 1:
        raise SystemExit("--spans must be at least --batch x --clients, both at least 1")
    from stagetrace.collector.process import start_collector

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagetrace-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if data.exists():
        raise SystemExit(f"{data} exists: the benchmark needs a fresh store")
    per_client = -(-args.spans // args.clients // args.batch) * args.batch
    try:
        c = start_collector(data, extra_args=["--log-level", "warning"])
        ep = c.grpc_endpoint if args.protocol == "grpc" else c.http_endpoint
        go = work / "go"
        procs = []
        for i in range(args.clients):
            ready = work / f"ready-{i}"
            procs.append((subprocess.Popen([sys.executable, __file__, "--client", args.protocol, ep, str(per_client),
                                            str(args.batch), str(i), str(ready), str(go)],
                                           stdout=subprocess.PIPE, text=True), ready))
        while not all(r.exists() for _, r in procs):
            if any(p.poll() is not None for p, _ in procs):
                raise SystemExit("a client process failed while building its requests")
            time.sleep(0.05)
        sampler = MemorySampler(c.pid, data)
        sampler.start()
        load0 = os.getloadavg()[0]
        lookups = Lookups(data, work, args.clients)
        go.write_text("go")
        if not args.no_lookups:
            lookups.start()
        results = []
        for p, _ in procs:
            out, _ = p.communicate(timeout=7200)
            n, failed, t0, t1 = out.split()
            results.append((int(n), int(failed), float(t0), float(t1)))
        acked_at = time.perf_counter()
        lookups.stop.set()
        n_during = len(sampler.backlog)
        load1 = os.getloadavg()[0]
        sent, failed = sum(r[0] for r in results), sum(r[1] for r in results)
        acked = sent - failed
        backlog = wal_bytes(data)
        wall = max(r[3] for r in results) - min(r[2] for r in results)
        print(f"sent {sent:,} spans in {sent // args.batch:,} requests of {args.batch} ({args.protocol}, "
              f"{args.clients} clients): acked {acked:,} in {wall:.1f} s = {acked / wall:,.0f} spans/s; "
              f"WAL backlog at the last ack {backlog / 2**20:.0f} MiB", flush=True)
        while True:
            in_blocks = rows_in_blocks(data)
            if in_blocks >= acked:
                break
            if time.perf_counter() - acked_at > args.drain_timeout:
                raise SystemExit(f"only {in_blocks:,} of {acked:,} acknowledged spans in blocks after "
                                 f"{args.drain_timeout:.0f} s")
            time.sleep(0.1)
        drained = time.perf_counter() - acked_at
        n_blocks = len(store_blocks(data))
        sampler.stop.set()
        sampler.join()
        if lookups.is_alive():
            lookups.join()
        during_found, during_missing = lookups.found, lookups.missing
        import random
        rnd, final, after = random.Random(11), [(r[0] // args.batch) for r in results], []
        for _ in range(LOOKUPS_AFTER):
            after.append(lookups.one(rnd, final))
        blocks_after = len(store_blocks(data))
        hwm = sorted(((sampler.names.get(p, "worker"), kb) for p, kb in sampler.hwm_kb.items()),
                     key=lambda x: -x[1])
        print(f"everything acknowledged in blocks {drained:.1f} s after the last ack "
              f"({acked / (wall + drained):,.0f} spans/s end to end); {in_blocks:,} spans in "
              f"{n_blocks} blocks ({blocks_after} after the lookups that follow)", flush=True)
        import numpy as np
        during = np.array(sampler.backlog[:n_during] or [0]) / 2**20
        cpu: dict[str, float] = {}
        for p, secs in sampler.cpu.items():
            cpu[sampler.names.get(p, "worker")] = cpu.get(sampler.names.get(p, "worker"), 0.0) + secs
        print(f"WAL backlog while sending: median {np.median(during):.0f} MiB, max {during.max():.0f} MiB; "
              f"CPU s: {', '.join(f'{n} {v:.0f}' for n, v in sorted(cpu.items()))}; "
              f"load average (1 min) {load0:.1f} at the start, {load1:.1f} at the last ack, "
              f"{os.getloadavg()[0]:.1f} at the end", flush=True)
        print(f"peak memory: collector + maintainer + workers {sampler.peak_kb / 2**20:.2f} GiB (sampled sum of RSS); "
              f"per process peak (VmHWM) {', '.join(f'{n} {k / 2**20:.2f}' for n, k in hwm)} GiB", flush=True)
        print(f"trace-by-id served by the collector, during ingest: {_pcts(lookups.during)} "
              f"({during_found} whole, {during_missing} not); after: {_pcts(after)} "
              f"({lookups.found - during_found} whole, {lookups.missing - during_missing} not)"
              + (f"; lookups stopped: {lookups.error}" if lookups.error else ""), flush=True)
        c.stop(timeout=300)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7],
                    sys.argv[8])
    else:
        main()
