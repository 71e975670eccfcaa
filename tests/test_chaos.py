"""Chaos: kill -9 the collector (or its block maintainer alone) at random moments, in
the middle of block cuts and compactions, while two clients ingest spans, logs and
metrics at full speed over both protocols and a reader looks traces up and runs an
investigation. At the end every acknowledged record is readable exactly once. Also:
a full disk (a 3 MiB tmpfs as root, else an injected ENOSPC) answers 503, loses
nothing acknowledged and recovers by itself (issue 11).

Why raw OTLP requests instead of the SDK exporters here: an exporter retries a
request whose answer it did not get, so a request stored just before a kill would
be stored twice *by the client*; that is OTLP's at-least-once delivery, not a
store bug, and it would hide the duplicates this test looks for. Each request here
is sent once, with the generated OTLP gRPC stubs or one HTTP POST, and its records
count as acknowledged only on a 200 / OK without rejections. A record whose request
failed may be stored (written, then the kill came before the answer) but never twice.

The kill points are made reachable with the store's test failpoints
(``STAGETRACE_FAILPOINTS``): the block writer pauses briefly inside a cut or a
compaction with a marker file present, and the test kills it there.
"""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from stagetrace.backend import LogQuery, MetricQuery, TraceQuery
from stagetrace.collector.process import start_collector
from stagetrace.collector.query import EmbeddedBackend

ROUNDS = int(os.environ.get("STAGETRACE_CHAOS_ROUNDS", "10"))
SERVICE = "chaos"
FAILPOINTS = "cut=0.3,compact=0.3"  # seconds paused inside each cut / compaction
# what is killed, and when: "group" = collector and maintainer at once (a crash of the
# whole thing), "collector" = the collector alone (its maintainer notices and leaves),
# "maintainer" = the maintainer alone (the collector restarts it)
PLAN = ["group@cut", "maintainer@compact", "collector@random", "maintainer@cut", "group@compact",
        "maintainer@random", "collector@cut", "group@random", "collector@compact", "group@cut"]


def _any(s: str) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(string_value=s)


def _resource(client: str):
    from opentelemetry.proto.resource.v1 import resource_pb2
    return resource_pb2.Resource(attributes=[common_pb2.KeyValue(key="service.name", value=_any(SERVICE)),
                                             common_pb2.KeyValue(key="client", value=_any(client))])


class Ledger:
    """Every record sent, by signal: acknowledged or not (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, set] = collections.defaultdict(set)
        self.unacked: dict[str, set] = collections.defaultdict(set)
        self.traces: list[str] = []  # acknowledged whole traces, for the reader
        self.requests = collections.Counter()

    def add(self, signal: str, ids: list, ok: bool, trace_ids: list[str] = ()) -> None:
        with self.lock:
            (self.acked if ok else self.unacked)[signal].update(ids)
            self.requests["acked" if ok else "failed"] += 1
            if ok:
                self.traces.extend(trace_ids)


class Client(threading.Thread):
    """Sends spans, logs and metrics round-robin as fast as the collector answers."""

    def __init__(self, idx: int, proto: str, ports: dict, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(name=f"client-{proto}", daemon=True)
        self.idx, self.proto, self.ports, self.ledger, self.stop = idx, proto, ports, ledger, stop
        self.name_ = f"c{idx}"
        self.n = 0
        self._conn: http.client.HTTPConnection | None = None
        self._channel = None
        self.errors: list[str] = []

    # -- requests with unique record ids ------------------------------------------
    def _spans(self):
        req = trace_service_pb2.ExportTraceServiceRequest()
        rs = req.resource_spans.add(resource=_resource(self.name_))
        ss = rs.scope_spans.add()
        ids, tids = [], []
        now = time.time_ns()
        for _ in range(5):
            tid = os.urandom(15) + b"\x01"
            root = None
            for k in range(3):
                self.n += 1
                sid = struct.pack(">BxxxI", self.idx + 1, self.n)
                dur = random.randint(1, 60) * 10**6
                ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=root or b"", name="GET /chaos" if k == 0
                             else f"stage-{k}", kind=2 if k == 0 else 1, start_time_unix_nano=now,
                             end_time_unix_nano=now + dur,
                             attributes=[common_pb2.KeyValue(key="http.route", value=_any("/chaos"))])
                root = root or sid
                ids.append(sid.hex())
            tids.append(tid.hex())
        return req, ids, tids

    def _logs(self):
        req = logs_service_pb2.ExportLogsServiceRequest()
        rl = req.resource_logs.add(resource=_resource(self.name_))
        sl = rl.scope_logs.add()
        ids = []
        now = time.time_ns()
        for _ in range(10):
            self.n += 1
            body = f"{self.name_}-{self.n}"
            sl.log_records.add(time_unix_nano=now, severity_number=9, severity_text="INFO", body=_any(body))
            ids.append(body)
        return req, ids, []

    def _metrics(self):
        req = metrics_service_pb2.ExportMetricsServiceRequest()
        rm = req.resource_metrics.add(resource=_resource(self.name_))
        m = rm.scope_metrics.add().metrics.add(name="chaos.gauge", unit="1")
        ids = []
        now = time.time_ns()
        for i in range(10):
            self.n += 1
            m.gauge.data_points.add(time_unix_nano=now + i, as_int=self.n,
                                    attributes=[common_pb2.KeyValue(key="client", value=_any(self.name_))])
            ids.append((self.name_, self.n))
        return req, ids, []

    # -- transports: one attempt per request ----------------------------------------
    def _send_grpc(self, signal: str, req) -> bool:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"127.0.0.1:{self.ports['grpc']}",
                options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                         ("grpc.max_reconnect_backoff_ms", 200)])
        stub = {"traces": trace_service_pb2_grpc.TraceServiceStub, "logs": logs_service_pb2_grpc.LogsServiceStub,
                "metrics": metrics_service_pb2_grpc.MetricsServiceStub}[signal](self._channel)
        try:
            resp = stub.Export(req, timeout=5)
        except grpc.RpcError:
            return False
        return not resp.HasField("partial_success") or not resp.partial_success.error_message

    def _send_http(self, signal: str, req) -> bool:
        body = req.SerializeToString()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=5)
            self._conn.request("POST", f"/v1/{signal}", body, {"Content-Type": "application/x-protobuf"})
            r = self._conn.getresponse()
            data = r.read()
            if r.getheader("Connection", "").lower() == "close":
                self._conn.close()
                self._conn = None
        except (OSError, http.client.HTTPException):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return False
        if r.status != 200:
            return False
        resp_cls = {"traces": trace_service_pb2.ExportTraceServiceResponse,
                    "logs": logs_service_pb2.ExportLogsServiceResponse,
                    "metrics": metrics_service_pb2.ExportMetricsServiceResponse}[signal]
        resp = resp_cls.FromString(data)
        return not resp.HasField("partial_success") or not resp.partial_success.error_message

    def run(self) -> None:
        make = {"traces": self._spans, "logs": self._logs, "metrics": self._metrics}
        send = self._send_grpc if self.proto == "grpc" else self._send_http
        for signal in itertools.cycle(("traces", "logs", "metrics")):
            if self.stop.is_set():
                break
            req, ids, tids = make[signal]()
            try:
                ok = send(signal, req)
            except Exception as exc:  # the test's own bug: record it, keep going
                self.errors.append(repr(exc))
                ok = False
            self.ledger.add(signal, ids, ok, tids)
            if not ok:
                time.sleep(0.02)  # down or refusing: do not spin
        if self._channel is not None:
            self._channel.close()
        if self._conn is not None:
            self._conn.close()


class Reader(threading.Thread):
    """`stagetrace trace` on acknowledged traces and `stagetrace investigate slow`, in turn."""

    def __init__(self, data_dir: Path, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(name="reader", daemon=True)
        self.data_dir, self.ledger, self.stop = data_dir, ledger, stop
        self.runs = collections.Counter()
        self.problems: list[str] = []

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=120)

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            with self.ledger.lock:
                tid = random.choice(self.ledger.traces) if self.ledger.traces else None
            if turn % 2 == 1 and tid:
                r = self._run("trace", tid, "--format", "json")
                kind = "trace"
                if r.returncode != 0 or tid not in r.stdout:
                    self.problems.append(f"trace {tid}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
            else:
                r = self._run("investigate", "slow", "--since", "10m", "--format", "json")
                kind = "investigate"
                if r.returncode not in (0, 2) or (r.returncode == 2 and len(r.stderr.strip().splitlines()) != 1):
                    self.problems.append(f"investigate: exit {r.returncode}: {r.stderr.strip()[-500:]}")
            if "Traceback" in r.stderr:
                self.problems.append(f"{kind}: traceback: {r.stderr.strip()[-800:]}")
            self.runs[f"{kind}:{r.returncode}"] += 1


def _maintainer_pid(data_dir: Path, parent: int, not_pid: int | None = None, timeout: float = 20.0) -> int:
    """The pid in maintainer.lock of the live maintainer of collector ``parent`` (other
    than ``not_pid``): after a kill of the collector alone, the orphaned maintainer of the
    previous one may hold the lock for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int((data_dir / "maintainer.lock").read_text().split()[0])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if pid != not_pid and ppid == parent and b"stagetrace.collector.maintainer" in cmd:
                return pid
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.02)
    raise AssertionError("no block maintainer took maintainer.lock")


def _wait_marker(data_dir: Path, name: str, pid: int, timeout: float = 12.0) -> bool:
    """Wait until process ``pid`` is paused inside ``name`` (cut / compact)."""
    marker = data_dir / f"failpoint.{name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(marker.read_text().split()[0]) == pid:
                return True
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.005)
    return False


def _stored(data_dir: Path) -> dict[str, collections.Counter]:
    with EmbeddedBackend(data_dir) as b:
        spans = collections.Counter(s.span_id for s in b.find_spans(TraceQuery(service=SERVICE, limit=None)))
        logs = collections.Counter(str(r.body) for r in b.find_logs(LogQuery(service=SERVICE, limit=None)))
        points = collections.Counter()
        for s in b.metric_series(MetricQuery(name="chaos.gauge")):
            for p in s.points:
                points[(s.attributes["client"], int(p.value))] += 1
    return {"traces": spans, "logs": logs, "metrics": points}


def _audit(data_dir: Path, ledger: Ledger) -> dict[str, int]:
    stored = _stored(data_dir)
    out = collections.Counter()
    for signal, seen in stored.items():
        acked, unacked = ledger.acked[signal], ledger.unacked[signal]
        out["acknowledged"] += len(acked)
        out["lost"] += len(acked - seen.keys())
        out["duplicated"] += sum(1 for k, n in seen.items() if n > 1)
        out["unknown"] += len(seen.keys() - acked - unacked)
        out["unacknowledged_stored"] += len(seen.keys() & unacked)
        if acked - seen.keys():
            print(f"LOST {signal}: {sorted(acked - seen.keys())[:5]}")
        if any(n > 1 for n in seen.values()):
            print(f"DUPLICATED {signal}: {[k for k, n in seen.items() if n > 1][:5]}")
    return dict(out)


def test_every_acknowledged_record_survives_kill_9_exactly_once(tmp_path):
    data = tmp_path / "data"
    args = ["--wal-segment-age", "200ms"]
    env = {"STAGETRACE_FAILPOINTS": FAILPOINTS}
    t0 = time.monotonic()
    c = start_collector(data, extra_args=args, env=env)
    ports = {"grpc": c.grpc_port, "http": c.http_port}
    ledger, stop = Ledger(), threading.Event()
    clients = [Client(0, "grpc", ports, ledger, stop), Client(1, "http", ports, ledger, stop)]
    reader = Reader(data, ledger, stop)
    for t in (*clients, reader):
        t.start()
    figures = collections.Counter()
    ready_s: list[float] = []
    hits: list[str] = []
    try:
        for rnd in range(ROUNDS):
            target, _, when = PLAN[rnd % len(PLAN)].partition("@")
            time.sleep(random.uniform(0.2, 0.8))  # ingest (and read) for a while
            maint = _maintainer_pid(data, c.pid)
            if when != "random":
                t_wait = time.monotonic()
                hit = _wait_marker(data, when, maint)
                figures["waiting for a kill point (s)"] += round(time.monotonic() - t_wait, 2)
                if hit:
                    time.sleep(random.uniform(0, 0.12))  # somewhere inside the step
                    hits.append(f"{target}@{when}")
            if target == "maintainer":
                os.kill(maint, signal.SIGKILL)
                t_kill = time.monotonic()
                _maintainer_pid(data, c.pid, not_pid=maint)  # the collector starts a new one
                figures["maintainer restarts"] += 1
                ready_s.append(time.monotonic() - t_kill)
                continue
            if target == "group":
                c.kill9()
            else:  # the collector alone; its maintainer finds itself orphaned and leaves
                os.kill(c.pid, signal.SIGKILL)
                c.proc.wait(10)
            t_kill = time.monotonic()
            for m in data.glob("failpoint.*"):
                m.unlink(missing_ok=True)  # left by the killed writer
            c = start_collector(data, grpc_port=ports["grpc"], http_port=ports["http"], extra_args=args, env=env)
            ready_s.append(time.monotonic() - t_kill)
            figures["collector restarts"] += 1
        time.sleep(0.5)
    finally:
        stop.set()
        t_stop = time.monotonic()
        for t in clients:
            t.join(30)
        reader.join(150)
        figures["waiting for the reader (s)"] += round(time.monotonic() - t_stop, 2)
    t_rounds = time.monotonic() - t0
    try:
        live = _audit(data, ledger)  # WAL tail + blocks, collector running
    finally:
        c.stop()
    final = _audit(data, ledger)  # all cut into blocks by the graceful stop
    elapsed = time.monotonic() - t0
    summary = {"rounds": ROUNDS, **final, **figures, "requests": dict(ledger.requests),
               "kills_inside": hits, "ready_after_restart_s": [round(x, 2) for x in ready_s],
               "reader_runs": dict(reader.runs), "rounds_s": round(t_rounds, 1), "elapsed_s": round(elapsed, 1)}
    print("CHAOS " + json.dumps(summary))
    assert not [e for cl in clients for e in cl.errors], [cl.errors for cl in clients]
    assert live["lost"] == 0 and live["duplicated"] == 0 and live["unknown"] == 0, live
    assert final["lost"] == 0 and final["duplicated"] == 0 and final["unknown"] == 0, final
    assert final["acknowledged"] > 0
    assert not reader.problems, reader.problems[:5]
    assert sum(reader.runs.values()) >= 2
    assert any(h.endswith("@cut") for h in hits) and any(h.endswith("@compact") for h in hits), hits
    assert {h.partition("@")[0] for h in hits} == {"group", "collector", "maintainer"}, hits
    assert "Traceback" not in c.stderr_text(), c.stderr_text()[-3000:]


# --- a full disk -------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or os.environ.get("STAGETRACE_CHAOS_NO_TMPFS"):  # the latter: try the injected path
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_answers_503_keeps_acknowledged_data_and_recovers(tmp_path):
    """On a 3 MiB tmpfs (as root; else the WAL's ENOSPC is injected through a failpoint)."""
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "3m")
    data = disk / "data"
    env = {}
    if not mounted:
        env["STAGETRACE_FAILPOINTS"] = "wal_enospc=1"
    ledger = Ledger()
    c = start_collector(data, extra_args=["--wal-segment-age", "200ms"], env=env)
    try:
        cl = Client(0, "http", {"http": c.http_port}, ledger, threading.Event())
        filler = disk / "filler"
        if mounted:
            # leave ~600 KiB: enough to start, soon full
            with open(filler, "wb") as fh:
                fh.write(b"\0" * (int(os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) - (600 << 10)))
        else:
            (data / "failpoint.wal_enospc").write_text("full\n")
        statuses = collections.Counter()
        retry_after = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and statuses[503] < 20:
            req, ids, _ = cl._spans()
            conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=10)
            conn.request("POST", "/v1/traces", req.SerializeToString(), {"Content-Type": "application/x-protobuf"})
            r = conn.getresponse()
            r.read()
            statuses[r.status] += 1
            if r.status == 503:
                retry_after.add(r.getheader("Retry-After"))
            ledger.add("traces", ids, r.status == 200)
            conn.close()
        assert statuses[503] >= 20, statuses
        assert retry_after and None not in retry_after
        # space comes back: the collector recovers by itself
        if mounted:
            filler.unlink()
        else:
            (data / "failpoint.wal_enospc").unlink()
        ok_after = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ok_after < 30:
            req, ids, _ = cl._spans()
            ok = cl._send_http("traces", req)
            ledger.add("traces", ids, ok)
            ok_after += ok
            if not ok:
                time.sleep(0.2)
        assert ok_after >= 30, "the collector did not recover once space was freed"
    finally:
        c.stop()
        stored = _stored(data)["traces"]
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    assert not (ledger.acked["traces"] - stored.keys()), "acknowledged spans were lost"
    assert all(n == 1 for n in stored.values()), "a span was stored twice"
    assert not (stored.keys() - ledger.acked["traces"] - ledger.unacked["traces"])
