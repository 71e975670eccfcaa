"""A scikit-learn model scoring three periods of traffic; no tracing code.

Run by tests/test_profile_build.py as ``opentelemetry-instrument python drift_app.py DIR``.
Writes DIR/train.csv and DIR/train.parquet (the training data, as a training pipeline
would keep it) and DIR/periods.json: the time boundaries (Unix ns) of

- ``healthy``: 40 calls of 16 rows from the training distribution (a reference window);
- ``clean``: 40 more from the same distribution;
- ``shifted``: 40 calls in which ``amount`` arrives in cents (x100), nothing else changed.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

out = Path(sys.argv[1])
rng = np.random.default_rng(21)
NAMES = ["amount", "hour", "merchant_risk"]


def draw(n: int, unit: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"amount": rng.lognormal(3.5, 0.8, n) * unit, "hour": rng.integers(0, 24, n).astype(float),
                         "merchant_risk": rng.beta(2, 8, n)}, columns=NAMES)


train = draw(3000)
y = (train["merchant_risk"] + rng.normal(0, 0.05, len(train)) > 0.22).astype(int)
model = LogisticRegression(max_iter=500).fit(train, y)
train.to_csv(out / "train.csv", index=False)
train.to_parquet(out / "train.parquet", index=False)

periods = {}
for name, unit in (("healthy", 1.0), ("clean", 1.0), ("shifted", 100.0)):
    start = time.time_ns()
    for _ in range(40):
        model.predict_proba(draw(16, unit))
    time.sleep(0.05)  # the next period starts strictly after this one's last span
    periods[name] = [start, time.time_ns()]
(out / "periods.json").write_text(json.dumps(periods))
