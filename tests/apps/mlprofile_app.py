"""Scores batches with real scikit-learn, XGBoost and PyTorch models; no tracing code.

Run by tests/test_ml_profiles.py as ``opentelemetry-instrument python mlprofile_app.py OUT.json``.
Writes what it scored (inputs, outputs, the prediction ids the app got back) to OUT.json,
so the test can check the profiles read back from the store against the real values.
"""

import json
import sys

import numpy as np
import pandas as pd
import torch
import xgboost as xgb
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from stagetrace.instrumentation.profiling import last_prediction_id

rng = np.random.default_rng(11)
names = ["amount", "hour", "merchant_risk", "device_age_days"]
X = np.column_stack([rng.lognormal(3.5, 1.0, 600), rng.integers(0, 24, 600), rng.beta(2, 8, 600),
                     rng.exponential(200.0, 600)])
y = (X[:, 2] + rng.normal(0, 0.1, 600) > 0.25).astype(int)
df = pd.DataFrame(X, columns=names)
out = {"calls": []}


def record(framework, inputs, outputs, features):
    out["calls"].append({"framework": framework, "inputs": np.asarray(inputs, dtype=float).tolist(),
                         "outputs": np.asarray(outputs, dtype=float).tolist(), "features": features,
                         "prediction_id": last_prediction_id()})


# scikit-learn fitted on a DataFrame: names from the data (and feature_names_in_)
lr = LogisticRegression(max_iter=500).fit(df, y)
batch = df.iloc[:64].copy()
batch.iloc[3, 3] = np.nan  # a missing value the profile must count (LogisticRegression would refuse NaN:
proba = lr.predict_proba(batch.fillna(0.0))  # so the model sees the filled frame)
record("sklearn", batch.fillna(0.0).to_numpy(), proba[:, 1], names)
one = df.iloc[[5]]
record("sklearn", one.to_numpy(), lr.predict_proba(one)[:, 1], names)

# plain numpy arrays (what most services pass): one row and 64 rows, profiled by default in
# the span export thread from a snapshot taken in the call (instrumentation/profile_export.py)
gb_np = GradientBoostingClassifier(n_estimators=10).fit(X, y)  # fitted on an array: no names
for rows in (X[300:301], X[301:365]):
    record("sklearn", rows, gb_np.predict_proba(rows)[:, 1], ["f0", "f1", "f2", "f3"])

# a model that rejects NaN: the span fails, its input profile still says what was missing
gb = GradientBoostingClassifier(n_estimators=10).fit(X, y)
bad = X[:8].copy()
bad[:, 3] = np.nan
try:
    gb.predict_proba(bad)
except ValueError:
    out["failed_rows"] = bad.tolist()

# XGBoost sklearn wrapper fitted on a DataFrame
xm = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(df, y)
xb = df.iloc[100:132]
record("xgboost", xb.to_numpy(), xm.predict_proba(xb)[:, 1], names)

# an XGBoost Booster fed an array (the names it was trained with come from the booster)
booster = xm.get_booster()
xa = X[140:172].copy()
record("xgboost", xa, booster.inplace_predict(xa), names)

# PyTorch module: no names anywhere, so f0..f3
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
tb = torch.tensor(X[200:216], dtype=torch.float32)
with torch.no_grad():
    logits = net(tb)
record("pytorch", tb.numpy(), logits.numpy().max(axis=1), ["f0", "f1", "f2", "f3"])

with open(sys.argv[1], "w") as fh:
    json.dump(out, fh)
