"""Scores one-row transactions with a real scikit-learn model; no tracing code.

Run by tests/test_quality.py as ``opentelemetry-instrument python quality_app.py OUT.json GO_FILE CENTS``
(one process per client, its ``client.version`` in OTEL_RESOURCE_ATTRIBUTES). It fits
the model, writes ``OUT.json.ready``, waits for GO_FILE (which holds the start time, Unix
seconds), scores for PHASE seconds, then - if CENTS is 1 - sends ``amount`` in cents for
PHASE seconds more (an upstream unit change), else keeps sending it in euros. OUT.json
gets each prediction's id (``last_prediction_id()``), its true outcome and the phase.
"""

import json
import os
import sys
import time

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from stagetrace.instrumentation.profiling import last_prediction_id

PHASE = 3.0
out_path, go_file, cents = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rng = np.random.default_rng(int(cents) + 7)
names = ["amount", "income", "age"]


def draw(n):
    x = np.column_stack([rng.normal(50, 10, n), rng.lognormal(8, 0.5, n), rng.normal(40, 12, n)])
    z = 0.25 * (x[:, 0] - 50) - 0.08 * (x[:, 2] - 40) + 0.3 * (np.log(x[:, 1]) - 8)
    return x, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)


x, y = draw(4000)
model = LogisticRegression(max_iter=500).fit(pd.DataFrame(x, columns=names), y)
open(out_path + ".ready", "w").close()
while not os.path.exists(go_file):
    time.sleep(0.02)
time.sleep(0.05)
start = float(open(go_file).read())
out = []
while time.time() < start + 2 * PHASE:
    phase = 1 if time.time() >= start + PHASE else 0
    xi, yi = draw(1)
    sent = xi * np.array([100.0 if (cents and phase) else 1.0, 1.0, 1.0])
    model.predict_proba(pd.DataFrame(sent, columns=names))
    out.append({"prediction_id": last_prediction_id(), "label": int(yi[0]), "phase": phase})
    time.sleep(0.004)
with open(out_path, "w") as fh:
    json.dump(out, fh)
