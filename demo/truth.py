"""The demo's world: its accounts, and how fraud arises in it.

One place for both sides of the story. The model learns fraud from
:func:`fraud_logit` (``model.synthetic_dataset``); the feature store serves the
accounts of :func:`account_rows`; the load generator draws each transaction's
eventual label from the same :func:`fraud_logit` with the transaction's real
amount (in dollars, whatever unit a client sent), which is what makes the labels
fed back a ground truth the predictions can be wrong against. Pure numpy/stdlib:
the driver imports it without scikit-learn or FastAPI.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np

N_USERS = 5000
ACCOUNT_SEED = 11


def account_rows(n_users: int = N_USERS, seed: int = ACCOUNT_SEED) -> Iterator[tuple[int, float, float, float, float]]:
    """(user id, user_avg_amount, user_txn_30d, account_age_days, chargebacks_90d) per
    account, the same every time for a seed (the feature store and the labeller agree)."""
    rng = random.Random(seed)
    for uid in range(n_users):
        yield (uid, round(rng.lognormvariate(3.5, 0.6), 2), float(rng.randint(0, 60)),
               round(rng.expovariate(1 / 900), 1), float(rng.random() < 0.08))


def fraud_logit(amount, hour, merchant_risk, distance_km, device_age_days, user_avg_amount, chargebacks_90d):
    """Log-odds that a transaction is fraud; works on scalars and numpy arrays."""
    night = (np.asarray(hour) < 5) | (np.asarray(hour) > 22)
    return (-4.0 + 1.2 * np.log1p(np.asarray(amount) / user_avg_amount) + 4.0 * np.asarray(merchant_risk)
            + 0.02 * np.asarray(distance_km) - 0.004 * np.asarray(device_age_days) + 0.8 * chargebacks_90d
            + 0.6 * night)


def fraud_probability(*args) -> float:
    return float(1.0 / (1.0 + np.exp(-fraud_logit(*args))))
