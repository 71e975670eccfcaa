"""The feature service: a small FastAPI app in front of an embedded SQLite online store.

The fraud API calls it over HTTP with ``requests``, so a request's trace crosses
two services. Users are sharded by id; each shard has its own small connection
pool and an in-process cache. Plain application code: no tracing. Its one
piece of telemetry code is what real services have, a metric through the
global OpenTelemetry *API* (``opentelemetry-api`` only): the pool-wait gauge.

Scenario ``slow-shard``: one shard's replica turns slow and its cache is cold,
so every read misses ("cache miss for user ..."), holds a pooled connection
longer, and the pool wait for that shard grows while the fault lasts.

Run: ``opentelemetry-instrument uvicorn stagetrace.demo.features:app``.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException
from opentelemetry import metrics

from .scenarios import N_SHARDS, SLOW_SHARD, LiveSchedule
from .truth import N_USERS, account_rows

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
log = logging.getLogger("feature_store")

POOL_SIZE = 2  # connections per shard
POOL_TIMEOUT_S = 1.5  # then 503 and the client retries
CACHE_SIZE = 1000  # entries per shard: the whole (small) shard fits, as in a healthy online store
BASE_MISS_RATE = 0.03  # healthy background: new or expired users
POOL_WAIT_GAUGE = "feature_store.pool.wait_time"  # recent mean wait per shard
POOL_NAME_ATTR = "db.client.connection.pool.name"  # OTel semantic-convention attribute
SHARD_ATTR = "feature.store.shard"
_COLUMNS = ("user_avg_amount", "user_txn_30d", "account_age_days", "chargebacks_90d")


def _seed_database(path: Path, n_users: int = N_USERS) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE IF NOT EXISTS user_features (user_id INTEGER PRIMARY KEY, shard INTEGER, "
                    "user_avg_amount REAL, user_txn_30d REAL, account_age_days REAL, chargebacks_90d REAL)")
        con.execute("DELETE FROM user_features")
        con.executemany("INSERT INTO user_features VALUES (?,?,?,?,?,?)",
                        [(uid, uid % N_SHARDS, *vals) for uid, *vals in account_rows(n_users)])
    con.close()


_meter = metrics.get_meter("stagetrace.demo.features")


class _ShardPool:
    """A fixed pool of SQLite connections for one shard; remembers recent waits."""

    def __init__(self, path: Path, shard: int, size: int) -> None:
        self.shard = shard
        self.name = f"online-store-shard-{shard}"
        self._free: queue.Queue[sqlite3.Connection] = queue.Queue()
        for _ in range(size):
            self._free.put(sqlite3.connect(path, check_same_thread=False))
        self.recent_waits: deque[tuple[float, float]] = deque(maxlen=256)  # (when, seconds)

    def acquire(self, timeout: float) -> tuple[sqlite3.Connection, float]:
        t0 = time.perf_counter()
        try:
            con = self._free.get(timeout=timeout)
        except queue.Empty:
            self._record(time.perf_counter() - t0)
            raise
        wait = time.perf_counter() - t0
        self._record(wait)
        return con, wait

    def _record(self, wait: float) -> None:
        self.recent_waits.append((time.time(), wait))

    def release(self, con: sqlite3.Connection) -> None:
        self._free.put(con)

    def wait_level(self, horizon_s: float = 3.0) -> float:
        """Mean pool wait over the last few seconds (0 when idle)."""
        cutoff = time.time() - horizon_s
        waits = [w for t, w in list(self.recent_waits) if t >= cutoff]
        return sum(waits) / len(waits) if waits else 0.0


class OnlineStore:
    """Sharded online feature store: LRU cache per shard, SQLite behind it."""

    def __init__(self, path: Path, schedule: LiveSchedule) -> None:
        self.schedule = schedule
        self.pools = {s: _ShardPool(path, s, POOL_SIZE) for s in range(N_SHARDS)}
        self.caches: dict[int, OrderedDict[int, dict]] = {s: OrderedDict() for s in range(N_SHARDS)}
        self._lock = threading.Lock()
        self._rng = random.Random(5)
        self._warm(path)

    def _warm(self, path: Path) -> None:
        """Load every shard into its cache at start-up, as a warm replica would be."""
        con = sqlite3.connect(path)
        try:
            for uid, shard, *vals in con.execute("SELECT user_id, shard, user_avg_amount, user_txn_30d, "
                                                 "account_age_days, chargebacks_90d FROM user_features"):
                self.caches[shard][uid] = dict(zip(_COLUMNS, vals))
        finally:
            con.close()

    def get(self, user_id: int, shard: int) -> dict | None:
        """The user's features, from cache or from the shard's database."""
        degraded = shard == self.schedule.slow_shard and self.schedule.active(SLOW_SHARD)
        with self._lock:
            hit = self.caches[shard].get(user_id)
            miss_anyway = self._rng.random() < BASE_MISS_RATE
        if hit is not None and not degraded and not miss_anyway:
            return hit
        log.warning("cache miss for user %s in shard %s", user_id, shard)
        pool = self.pools[shard]
        try:
            con, wait = pool.acquire(POOL_TIMEOUT_S)
        except queue.Empty:
            log.error("connection pool for shard %s exhausted after %.0f ms", shard, POOL_TIMEOUT_S * 1000)
            raise HTTPException(503, f"shard {shard} busy") from None
        if wait > 0.05:
            log.warning("waited %.0f ms for a connection to shard %s", wait * 1000, shard)
        try:
            row = con.execute("SELECT user_avg_amount, user_txn_30d, account_age_days, chargebacks_90d "
                              "FROM user_features WHERE user_id = ?", (user_id,)).fetchone()
            if degraded:
                # The injected fault: a slow replica that gets slower while the
                # incident lasts (I/O wait, so it holds the connection, not the CPU).
                time.sleep(min(0.8, 0.35 + 0.08 * self.schedule.elapsed_in(SLOW_SHARD)) * self._rng.uniform(0.8, 1.2))
        finally:
            pool.release(con)
        if row is None:
            return None
        feats = dict(zip(_COLUMNS, row))
        with self._lock:
            cache = self.caches[shard]
            cache[user_id] = feats
            cache.move_to_end(user_id)
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        return feats


def _db_path() -> Path:
    """One database per service instance, in the demo's run directory when given."""
    base = Path(os.environ.get("STAGETRACE_DEMO_RUN_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return base / f"online-store-{os.getpid()}.sqlite"


_path = _db_path()
_seed_database(_path)
store = OnlineStore(_path, LiveSchedule())


def _observe_pool_wait(options: metrics.CallbackOptions):
    for shard, pool in store.pools.items():
        yield metrics.Observation(pool.wait_level(), {POOL_NAME_ATTR: pool.name, SHARD_ATTR: str(shard)})


# The only telemetry code here, as real services have it: metrics through the
# global OpenTelemetry API (a no-op until opentelemetry-instrument sets a provider).
_meter.create_observable_gauge(
    POOL_WAIT_GAUGE, callbacks=[_observe_pool_wait], unit="s",
    description="Mean wait for a pooled database connection over the last 3 s, per shard")

app = FastAPI(title="feature-store")


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@app.get("/features/{user_id}")
def get_features(user_id: int, x_feature_shard: int | None = Header(default=None)) -> dict:
    shard = x_feature_shard if x_feature_shard is not None else user_id % N_SHARDS
    if not 0 <= shard < N_SHARDS:
        raise HTTPException(400, f"no shard {shard}")
    feats = store.get(user_id, shard)
    if feats is None:
        raise HTTPException(404, f"unknown user {user_id}")
    return {"user_id": user_id, "shard": shard, "features": feats}
