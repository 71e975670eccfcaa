"""The fraud-scoring API: ``POST /predict`` scores a batch of card transactions.

Plain application code, **no tracing code**. ``stagetrace demo`` runs it as

    STAGETRACE_CONFIG=.../stagetrace/demo/stagetrace.toml \\
    opentelemetry-instrument uvicorn stagetrace.demo.app:app --workers 2

and the spans per stage, the logs with trace ids and the metrics come from
``opentelemetry-instrument`` alone (the stages are listed in ``stagetrace.toml``).

Per request: fetch the account's features from the feature service
(:class:`FeatureClient`, over HTTP), :func:`preprocess` the batch into a matrix,
and :meth:`Scorer.score` it with the model version this deployment serves
(``FRAUD_MODEL_VERSION``: v1, or v2 for the canary deployment). v2 raises on a
transaction without ``device_age_days`` (scenario ``model-errors``).

The answer carries the ``prediction_id`` of the scores (row *i* is ``<id>-<i>``), for
whoever learns later whether a transaction was fraud: the labels sent back with it
join the prediction, its model version and its request. It is the one line that
knows about stagetrace (``last_prediction_id``, a no-op without it).
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import requests
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from .model import FEATURES, Scorer, train_model
from .scenarios import CPU_PREPROCESS, LARGE_BATCH, N_SHARDS, LiveSchedule

try:
    from stagetrace.instrumentation.profiling import last_prediction_id
except ImportError:  # served without stagetrace: no id to hand out
    def last_prediction_id() -> str | None:
        return None

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
log = logging.getLogger("fraud_api")

FEATURE_SERVICE_URL = os.environ.get("FEATURE_SERVICE_URL", "http://127.0.0.1:8001")
MODEL_VERSION = os.environ.get("FRAUD_MODEL_VERSION", "v1")  # which model this deployment serves
AMOUNT_LIMIT = 20_000.0


class Transaction(BaseModel):
    amount: float = Field(ge=0)
    hour: int = Field(ge=0, le=23)
    merchant_risk: float = Field(ge=0, le=1)
    distance_km: float = Field(ge=0)
    device_age_days: float | None = None  # legacy mobile clients do not send it


class PredictRequest(BaseModel):
    account_id: int = Field(ge=0)
    transactions: list[Transaction] = Field(min_length=1, max_length=256)


class FeatureClient:
    """Reads an account's features from the sharded feature service."""

    def __init__(self, base_url: str, timeout_s: float = 3.0, retries: int = 1) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.session = requests.Session()
        # As many pooled connections as the server has request threads.
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=40))

    def get(self, account_id: int) -> dict:
        shard = account_id % N_SHARDS
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                # The shard is the routing key; sent as a header like sharding proxies expect.
                resp = self.session.get(f"{self.base_url}/features/{account_id}",
                                        headers={"X-Feature-Shard": str(shard)}, timeout=self.timeout_s)
                if resp.status_code == 404:
                    log.warning("no features for account %s, using defaults", account_id)
                    return {}
                resp.raise_for_status()
                took_ms = (time.perf_counter() - t0) * 1000
                if took_ms > 250:
                    log.warning("slow feature fetch for account %s from shard %s: %.0f ms", account_id, shard, took_ms)
                return resp.json()["features"]
            except (requests.Timeout, requests.ConnectionError, requests.HTTPError) as exc:
                if attempt == self.retries:
                    log.error("feature fetch for account %s failed after %d attempts: %s", account_id, attempt + 1, exc)
                    raise
                log.warning("retrying feature fetch for account %s after %s (attempt %d)",
                            account_id, type(exc).__name__, attempt + 2)
                time.sleep(0.05)
        raise AssertionError("unreachable")


def _burn_cpu(seconds: float) -> None:
    """Busy numerical work: the injected preprocess regression (scenario 3)."""
    end = time.perf_counter() + seconds
    a = np.random.default_rng(0).random((64, 64))
    while time.perf_counter() < end:
        a = np.tanh(a @ a.T / 64.0)


def preprocess(transactions: list[Transaction], features: dict) -> np.ndarray:
    """One model-input row per transaction (NaN where a value is missing)."""
    rows = []
    missing = 0
    for txn in transactions:
        amount = txn.amount
        if amount > AMOUNT_LIMIT:
            log.warning("validation: amount %.2f above limit, clipped to %.0f", amount, AMOUNT_LIMIT)
            amount = AMOUNT_LIMIT
        if txn.device_age_days is None:
            missing += 1
        values = {"amount": amount, "hour": txn.hour, "merchant_risk": txn.merchant_risk,
                  "distance_km": txn.distance_km, "device_age_days": txn.device_age_days, **features}
        rows.append([math.nan if values.get(name) is None else float(values[name]) for name in FEATURES])
    if missing:
        log.warning("validation: %d of %d transactions missing device_age_days", missing, len(transactions))
    X = np.asarray(rows, dtype=float)
    if len(transactions) >= LARGE_BATCH and SCHEDULE.active(CPU_PREPROCESS):
        # The regression: a per-batch velocity feature recomputed naively, cost grows with the batch.
        log.info("computing velocity features for a batch of %d transactions", len(transactions))
        _burn_cpu(0.006 * len(transactions))
    return X


SCHEDULE = LiveSchedule()
features = FeatureClient(FEATURE_SERVICE_URL)
scorer = Scorer(train_model(MODEL_VERSION), MODEL_VERSION)
app = FastAPI(title="fraud-scoring API")


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True, "model_version": scorer.version}


@app.post("/predict")
def predict(req: PredictRequest) -> dict:
    try:
        feats = features.get(req.account_id)
    except requests.RequestException as exc:
        raise HTTPException(503, f"feature store unavailable: {type(exc).__name__}") from exc
    X = preprocess(req.transactions, feats)
    try:
        scores = scorer.score(X)[:, 1]  # the fraud probability
    except Exception as exc:
        log.exception("scoring failed for account %s with model %s", req.account_id, scorer.version)
        raise HTTPException(500, f"model {scorer.version} failed: {type(exc).__name__}") from exc
    flagged = int((scores > 0.5).sum())
    if flagged:
        log.info("flagged %d of %d transactions for account %s", flagged, len(scores), req.account_id)
    return {"account_id": req.account_id, "model_version": scorer.version, "prediction_id": last_prediction_id(),
            "scores": [round(float(s), 4) for s in scores]}
