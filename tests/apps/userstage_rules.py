"""User-code inference stages for tests/apps/userstage_app.py, named by configuration
(``STAGETRACE_STAGES``): no model library is called, so the profile is of their own
argument and return value."""

import numpy as np


def score(rows):
    """A rules model over request dicts: a probability per row."""
    return np.array([min(1.0, (r.get("amount") or 0.0) / 500.0 + (0.3 if r.get("country") == "BR" else 0.0))
                     for r in rows])


def score_matrix(x):
    """The same rules over a bare array whose columns only the configuration names."""
    return np.clip(x[:, 0] / 500.0, 0.0, 1.0)
