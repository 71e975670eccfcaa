"""Calls two user-code inference stages (tests/apps/userstage_rules.py) with no tracing
code; run by tests/test_ml_profiles.py under ``opentelemetry-instrument`` with
``STAGETRACE_STAGES`` naming them. Writes what it scored to argv[1]."""

import json
import sys

import numpy as np

import userstage_rules
from stagetrace.instrumentation.profiling import last_prediction_id

rows = [{"amount": 12.0, "country": "FR", "device_age_days": 3.0},
        {"amount": 250.0, "country": "BR", "device_age_days": None},
        {"amount": 80.0, "country": "DE", "device_age_days": 40.0},
        {"amount": 5.0, "country": "FR", "device_age_days": None}]
out = {"dicts": {"scores": userstage_rules.score(rows).tolist(), "prediction_id": last_prediction_id(),
                 "inputs": [[r["amount"], r["device_age_days"]] for r in rows]}}
x = np.array([[100.0, 2.0], [400.0, np.nan], [50.0, 7.0]])
out["matrix"] = {"scores": userstage_rules.score_matrix(x).tolist(), "prediction_id": last_prediction_id(),
                 "inputs": x.tolist()}
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh)
