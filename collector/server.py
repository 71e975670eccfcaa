"""The collector process: receivers + write-ahead log, the block maintainer child
process, and the query service readers use while it runs (:mod:`.queryapi`)."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import queryapi, wal
from .maintainer import Maintainer, lock_data_dir
from .receiver import Ingestor, Limits, TLSFiles, start_grpc, start_http
from .store import LOGS, SPANS, TABLES, BlockStore, StoreConfig, wal_dir
from .tailindex import TailIndex

log = logging.getLogger("stagetrace.collector")


@dataclass(slots=True)
class CollectorConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    token: str | None = None
    allow_remote: bool = False
    tls: TLSFiles | None = None  # both receivers and the query endpoint serve TLS with it
    fsync: bool = False
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    segment_bytes: int = 8 << 20
    segment_age_s: float = 1.0
    maintain_interval_s: float = 0.25
    maintainer_process: bool = True  # build blocks in a child process (own core, own GIL)
    retention_interval_s: float = 60.0
    serve_queries: bool = True  # answer `stagetrace trace` lookups warm (queryapi)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DataDirLocked(RuntimeError):
    pass


SLOW_STOP_S = 2.0  # a graceful stop longer than this logs its parts


class _Phases:
    """Wall time of each part of a stop, logged (once, as one line) only when the whole was slow."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.parts: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.parts.append((name, now - self.last))
        self.last = now

    def log_if_slow(self) -> None:
        total = self.last - self.t0
        if total > SLOW_STOP_S:
            log.warning("graceful stop took %.1f s: %s", total, ", ".join(f"{n} {s:.1f} s" for n, s in self.parts))


class Collector:
    """One running collector. ``start()`` binds and returns; ``stop()`` shuts down."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).resolve()
        self._stop = threading.Event()
        self._lock_fd = -1
        self.grpc_port = 0
        self.http_port = 0

    def _take_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "collector.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataDirLocked(f"another collector is already writing to {self.data_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # released by the kernel even on kill -9

    def start(self) -> None:
        cfg = self.config
        self._take_lock()
        self.store = BlockStore(self.data_dir, cfg.store)
        self.writers = {t: wal.WalWriter(wal_dir(self.data_dir, t), self.store.next_seq(t),
                                         segment_bytes=cfg.segment_bytes, segment_age_s=cfg.segment_age_s,
                                         fsync=cfg.fsync) for t in TABLES}
        self._backlog = 0
        self._lag_s = 0.0
        # serving lookups: the receivers index the trace ids of what they append, for the query service
        tail_index = TailIndex({t: self.writers[t].active_seq for t in (SPANS, LOGS)},
                               {t: wal_dir(self.data_dir, t) for t in (SPANS, LOGS)}) if cfg.serve_queries else None
        self.ingestor = Ingestor(self.writers, cfg.limits, cfg.token, lambda: self._backlog, lambda: self._lag_s,
                                 tail_index)
        self._child: subprocess.Popen | None = None
        self._maint: Maintainer | None = None
        self._start_maintainer()
        self._housekeeper = threading.Thread(target=self._housekeep, name="housekeeper", daemon=True)
        self._housekeeper.start()
        self.grpc_server = None
        self.http_server = None
        self.query = queryapi.QueryService(self.data_dir, tail_index) if cfg.serve_queries else None
        try:
            self.grpc_server, self.grpc_port = start_grpc(self.ingestor, cfg.host, cfg.grpc_port, cfg.tls)
            self.http_server, self.http_port, self._http_thread = start_http(self.ingestor, cfg.host, cfg.http_port,
                                                                             self.query, cfg.tls)
        except BaseException:
            self.stop(final_cut=False)
            raise
        if self.query is not None:
            queryapi.write_discovery(self.data_dir, cfg.host, self.http_port,
                                     ca_file=str(Path(cfg.tls.cert_file).resolve()) if cfg.tls else None)
            self.query.warm()

    def _measure_backlog(self) -> int:
        return self._measure_wal()[0]

    def _measure_wal(self) -> tuple[int, float]:
        """(bytes in the WAL, seconds since the oldest closed segment was last written):
        how far blocks are behind what was acknowledged (see ``Limits.max_lag_s``)."""
        total, oldest = 0, None
        for t in TABLES:
            segs = wal.list_segments(wal_dir(self.data_dir, t))
            for i, (_, p) in enumerate(segs):
                try:
                    st = p.stat()
                except FileNotFoundError:  # cut meanwhile
                    continue
                total += st.st_size
                if i < len(segs) - 1:  # closed: waiting for the maintainer (the last is being written)
                    oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
        return total, (max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def _start_maintainer(self) -> None:
        cfg = self.config
        if not cfg.maintainer_process:
            self._maint = Maintainer(self.data_dir, cfg.store, interval_s=cfg.maintain_interval_s,
                                     retention_interval_s=cfg.retention_interval_s)
            threading.Thread(target=self._maint.run, name="block-maintainer", daemon=True).start()
            return
        st = cfg.store
        self._child = subprocess.Popen(
            [sys.executable, "-m", "stagetrace.collector.maintainer", "--data-dir", str(self.data_dir),
             "--parent-pid", str(os.getpid()), "--retention-ns", str(st.retention_ns),
             "--retention-bytes", str(st.retention_bytes), "--max-block-rows", str(st.max_block_rows),
             "--interval", str(cfg.maintain_interval_s),
             # PR_SET_PDEATHSIG fires when the forking *thread* ends: only ask for it from the main thread
             *(["--pdeathsig"] if threading.current_thread() is threading.main_thread() else []),
             "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _housekeep(self) -> None:
        """Rotate WAL segments by age, measure the backlog, keep the maintainer alive."""
        while not self._stop.is_set():
            try:
                for w in self.writers.values():
                    w.rotate_if_due()
                self._backlog, self._lag_s = self._measure_wal()
                child = self._child
                if child is not None and child.poll() is not None and not self._stop.is_set():
                    log.error("block maintainer exited with %s; restarting it", child.returncode)
                    self._start_maintainer()
            except Exception:
                log.exception("housekeeping failed; will retry")
            self._stop.wait(0.1)

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, *, final_cut: bool = True, grace_s: float = 2.0) -> None:
        """Stop receiving, close the WAL, and cut it into blocks if that is quick.

        A stop that takes over :data:`SLOW_STOP_S` logs how long each part took: one once
        took 10 s under load in CI (usually < 1 s) and nothing said which part."""
        phases = _Phases()
        self._stop.set()
        queryapi.remove_discovery(self.data_dir)
        if getattr(self, "http_server", None) is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
        phases.done("http")
        if getattr(self, "grpc_server", None) is not None:
            self.grpc_server.stop(grace_s).wait(grace_s + 1)
        phases.done("grpc")
        if getattr(self, "query", None) is not None:
            self.query.close()
        if getattr(self, "_housekeeper", None) is not None:
            self._housekeeper.join(timeout=5)
        for w in getattr(self, "writers", {}).values():
            w.close()
        phases.done("query, housekeeper and WAL close")
        if getattr(self, "_maint", None) is not None:
            self._maint.stop_event.set()
        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None:
            child.terminate()  # finishes the block it is writing, then exits
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        phases.done("maintainer exit")
        try:
            self._final_cut(final_cut)
        finally:
            phases.done("final cut")
            phases.log_if_slow()

    def _final_cut(self, final_cut: bool) -> None:
        if final_cut and hasattr(self, "store") and self._measure_backlog() <= 64 << 20:
            fd = lock_data_dir(self.data_dir, lambda: True)
            try:
                for t in TABLES:
                    try:
                        self.store.cut_all(t)
                    except Exception:
                        log.exception("final cut of %s failed; the WAL keeps the data", t)
            finally:
                os.close(fd)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
