"""A tiny fraud-scoring service with no tracing code at all.

Run by tests/test_instrumentation_e2e.py as
``opentelemetry-instrument uvicorn mlapp:app`` with STAGETRACE_STAGES naming
``FeatureClient.get``, ``preprocess`` and ``Scorer.score``.
"""

import logging
import os

import numpy as np
from fastapi import FastAPI
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger("mlapp")
log.setLevel(logging.INFO)

_rng = np.random.default_rng(7)
_X = _rng.random((200, 3))
MODEL = make_pipeline(StandardScaler(), LogisticRegression()).fit(_X, (_X[:, 0] + _X[:, 2] > 1.0).astype(int))


class FeatureClient:
    """Stands in for a feature-store client."""

    def get(self, customer_id: int) -> dict:
        log.info("fetched features for customer %s", customer_id)
        return {"amount_7d": customer_id % 97 / 97.0, "country_risk": 0.3, "velocity": (customer_id % 13) / 13.0}


def preprocess(features: dict) -> np.ndarray:
    log.info("preprocessed %d features", len(features))
    return np.array([[features["amount_7d"], features["country_risk"], features["velocity"]]])


class Scorer:
    def __init__(self, model) -> None:
        self.model = model

    def score(self, x: np.ndarray) -> float:
        log.info("scoring %d row(s)", len(x))
        return float(self.model.predict_proba(x)[0, 1])


CLIENT = FeatureClient()
SCORER = Scorer(MODEL)
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"ok": True, "pid": os.getpid()}


@app.get("/score/{customer_id}")
def score(customer_id: int) -> dict:
    features = CLIENT.get(customer_id)
    x = preprocess(features)
    return {"customer_id": customer_id, "fraud_probability": SCORER.score(x), "pid": os.getpid()}


@app.get("/raw/{customer_id}")
async def raw(customer_id: int) -> dict:
    """The model called directly: the inference span comes from the sklearn hook alone."""
    x = np.array([[0.1, 0.2, (customer_id % 10) / 10.0]])
    return {"fraud_probability": float(MODEL.predict_proba(x)[0, 1]), "pid": os.getpid()}
