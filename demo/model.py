"""The fraud model: two scikit-learn versions trained at start-up on synthetic data.

- ``v1`` imputes missing values, scales, and fits a logistic regression.
- ``v2`` (the canary) is a gradient-boosted model whose training pipeline
  forgot the imputer: it raises ``ValueError: Input X contains NaN`` on a
  transaction with a missing feature. That is the bug scenario 2 ships.

Plain application code: no tracing. ``Scorer.score`` becomes the ``inference``
stage through ``stagetrace.toml`` (``STAGETRACE_CONFIG``) and the scikit-learn hook.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger("fraud_api.model")

# Column order of the model input (preprocess builds rows in this order): demo/columns.py.
from .columns import FEATURES  # noqa: E402
from .truth import fraud_logit  # noqa: E402
MODEL_NAME = "fraud-detector"


def synthetic_dataset(n: int = 4000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Transactions whose fraud label depends on a few features, as real ones do."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    merchant_risk = rng.beta(2, 8, n)
    distance = rng.exponential(20.0, n)
    device_age = rng.exponential(200.0, n)
    avg_amount = rng.lognormal(3.5, 0.6, n)
    txn_30d = rng.poisson(25, n).astype(float)
    account_age = rng.exponential(900.0, n)
    chargebacks = rng.poisson(0.1, n).astype(float)
    logit = fraud_logit(amount, hour, merchant_risk, distance, device_age, avg_amount, chargebacks)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    X = np.column_stack([amount, hour, merchant_risk, distance, device_age,
                         avg_amount, txn_30d, account_age, chargebacks])
    return X, y


def train_model(version: str, seed: int = 7) -> Pipeline:
    """One version, trained in well under a second on this machine."""
    t0 = time.perf_counter()
    X, y = synthetic_dataset(seed=seed)
    if version == "v1":
        model = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                          ("clf", LogisticRegression(max_iter=300))])
    elif version == "v2":
        model = Pipeline([("scale", StandardScaler()),
                          ("clf", GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=seed))])
    else:
        raise ValueError(f"unknown model version {version!r}: v1 or v2")
    model.fit(X, y)
    log.info("trained %s %s on %d synthetic transactions in %.2f s", MODEL_NAME, version, len(y),
             time.perf_counter() - t0)
    return model


class Scorer:
    """Scores a preprocessed batch with the model this deployment serves."""

    def __init__(self, model: Pipeline, version: str) -> None:
        self.model = model
        self.version = version

    @property
    def classes_(self) -> np.ndarray:
        """The model's classes (0 = legitimate, 1 = fraud), as a scikit-learn classifier
        exposes them: the output profile then records a binary classifier's output, and
        labels sent back as 0/1 join it."""
        return self.model.classes_

    def score(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities per row (legitimate, fraud), as ``predict_proba`` gives
        them. Raises whatever the model raises."""
        return self.model.predict_proba(X)
