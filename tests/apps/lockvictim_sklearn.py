"""Imports scikit-learn while hooklock's contender waits: the sklearn hook's version
check runs under this module's import lock (and sklearn's)."""

import hooklock

hooklock.inside_import()

import sklearn.base  # noqa: E402,F401
