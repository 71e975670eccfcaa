"""Three scikit-learn models scored by a process that names its models by configuration.

Run by tests/test_ml_profiles.py under ``opentelemetry-instrument`` with ``STAGETRACE_MODEL_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and a ``[tool.stagetrace.model]`` table; no tracing code. Writes the
prediction id of each call to OUT.json.
"""

import json
import sys

import numpy as np
from sklearn.tree import DecisionTreeClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import modelname_stages
from stagetrace.instrumentation.profiling import last_prediction_id

rng = np.random.default_rng(2)
X = rng.normal(size=(300, 4))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
ids = {}
# (not a GradientBoostingClassifier: its fit calls DummyClassifier.predict_proba, an inference span)
gb = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=3)).fit(X, y)
gb.predict_proba(X[:16])  # the process's model: its name from the environment
ids["pipeline"] = last_prediction_id()
lr = LogisticRegression().fit(X, y)
lr.predict_proba(X[:8])  # named per model in [tool.stagetrace.model.stages]
ids["lr"] = last_prediction_id()
modelname_stages.score(gb, X[:4])  # a user stage named per stage target
ids["user"] = last_prediction_id()
with open(sys.argv[1], "w") as fh:
    json.dump(ids, fh)
