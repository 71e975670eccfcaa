"""The block maintainer: cuts closed WAL segments into Parquet blocks, compacts
them and applies retention, in its own process.

Why a process: turning OTLP into columns costs ~10 us of Python per span, the
receive path ~3 us. In one process they would share one GIL (one core); split,
the receivers keep acknowledging while blocks are built on the other core.
The receivers own the WAL (the active segment is always the highest-numbered
one, so every lower segment is closed and safe to cut); this process owns
``blocks/``. An exclusive lock on ``maintainer.lock`` guarantees one maintainer
per data dir even across a crash and restart, and the process exits when its
collector is gone.

Run by :class:`stagetrace.collector.server.Collector`; not a user command.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from . import wal
from .store import TABLES, BlockStore, StoreConfig, wal_dir

log = logging.getLogger("stagetrace.collector.maintainer")


class Maintainer:
    def __init__(self, data_dir: Path, config: StoreConfig, *, interval_s: float = 0.25,
                 retention_interval_s: float = 60.0, workers: int = 1) -> None:
        self.store = BlockStore(data_dir, config)
        # a backlog is cut by `workers` processes at once (spawned lazily: idle collectors pay nothing)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.data_dir = Path(data_dir)
        self.interval_s = interval_s
        self.retention_interval_s = retention_interval_s
        self.stop_event = threading.Event()

    def cut_closed(self) -> int:
        """Cut every WAL segment that has a newer sibling (so it is closed)."""
        n = 0
        for t in TABLES:
            segs = wal.list_segments(wal_dir(self.data_dir, t))
            if len(segs) > 1:
                if self.store.cut(t, segs[-1][0], pool=self._pool_if_backlog(segs)) is not None:
                    n += 1
        return n

    def _pool_if_backlog(self, segs: list) -> ProcessPoolExecutor | None:
        if self.workers < 2 or len(segs) < 3:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def step(self) -> bool:
        """One round of work, cuts and compaction in turn (tests; :meth:`run` does both
        at once); True if there may be more to do right away."""
        busy = self.cut_closed() > 0
        for t in TABLES:
            if self.stop_event.is_set():
                break
            if self.store.compact(t):
                busy = True
                self.cut_closed()  # cutting first keeps the WAL backlog short
        return busy

    def compact_all(self) -> bool:
        """One compaction per table; True if any merged (there may be more)."""
        busy = False
        for t in TABLES:
            if self.stop_event.is_set():
                break
            busy = self.store.compact(t) or busy
        return busy

    def run(self, alive: "callable[[], bool]" = lambda: True) -> None:
        """Cut closed WAL segments in this thread; compact and apply retention in another.

        Why two threads: a merge of 1M-span blocks takes seconds, and while it ran no
        segment was cut, so the WAL grew towards the receivers' backpressure limit and
        everything acknowledged took that much longer to reach blocks (20M-span ingest:
        13.5 s after the last acknowledgement; docs/benchmarks.md). Arrow reads, sorts
        and writes without the GIL, so the two overlap; they touch disjoint files (a cut
        writes a new range, a merge rewrites existing blocks)."""
        alive_flag = threading.Event()
        alive_flag.set()
        compactor = threading.Thread(target=self._compact_loop, args=(alive_flag,), name="compaction", daemon=True)
        compactor.start()
        try:
            self._loop(lambda: self.cut_closed() > 0, alive, alive_flag)
        finally:
            alive_flag.clear()
            compactor.join()
            self.close()

    def _compact_loop(self, alive_flag: threading.Event) -> None:
        last_retention = 0.0

        def one_round() -> bool:
            nonlocal last_retention
            busy = self.compact_all()
            if time.monotonic() - last_retention >= self.retention_interval_s:
                last_retention = time.monotonic()
                removed = self.store.enforce_retention()
                if removed:
                    log.info("retention removed %d blocks", removed)
            return busy
        self._loop(one_round, alive_flag.is_set, alive_flag)

    def _loop(self, work: "callable[[], bool]", alive: "callable[[], bool]", alive_flag: threading.Event) -> None:
        while not self.stop_event.is_set() and alive() and alive_flag.is_set():
            try:
                busy = work()
            except Exception:  # keep going: the WAL still holds everything acknowledged
                log.exception("block maintenance failed; will retry")
                busy = False
                self.stop_event.wait(2.0)
            if not busy:
                self.stop_event.wait(self.interval_s)
        alive_flag.clear()  # the other loop ends too


def lock_data_dir(data_dir: Path, alive: "callable[[], bool]") -> int:
    """Take ``maintainer.lock``, waiting for a previous maintainer to finish."""
    fd = os.open(data_dir / "maintainer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:  # who holds it (operators, tests that kill the maintainer alone)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
            return fd
        except OSError:
            if not alive():
                os.close(fd)
                return -1
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stagetrace-collector-maintainer")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--retention-ns", type=int, required=True)
    ap.add_argument("--retention-bytes", type=int, required=True)
    ap.add_argument("--max-block-rows", type=int, required=True)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--workers", type=int, default=1)  # 2 did not help on 2 shared cores (docs/benchmarks.md)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--pdeathsig", action="store_true")  # see process.exit_with_parent
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parent = args.parent_pid

    def alive() -> bool:
        return os.getppid() == parent

    data_dir = Path(args.data_dir)
    fd = lock_data_dir(data_dir, alive)
    if fd < 0:
        return 0
    m = Maintainer(data_dir, StoreConfig(retention_ns=args.retention_ns, retention_bytes=args.retention_bytes,
                                         max_block_rows=args.max_block_rows), interval_s=args.interval,
                   workers=args.workers)
    signal.signal(signal.SIGTERM, lambda *_: m.stop_event.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the collector decides when we stop
    from .process import exit_with_parent
    # a cut in progress may finish; beyond 3 s exit hard (blocks are renamed into place, WAL kept)
    exit_with_parent(parent, use_prctl=args.pdeathsig, hard_exit_after_s=3.0)
    m.run(alive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
