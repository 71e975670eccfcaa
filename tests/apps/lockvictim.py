"""A module named by deliberately broken stage entries (tests/test_instrumentation_deadlocks.py)."""

import hooklock

hooklock.inside_import()

LIMIT = 3


def score(x):
    return x
