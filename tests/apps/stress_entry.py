"""uvicorn's target in the start-up stress: ``stress_entry:app``.

With ``STRESS_FORCE_INTERLEAVING=1`` each worker first starts hooklock's contender
(a thread holding the OTLP log handler's lock that then imports ``stressapp``), so
the worker meets issue 19's interleaving on every start instead of by chance.
"""

import os

if os.environ.get("STRESS_FORCE_INTERLEAVING") == "1":
    import hooklock

    hooklock.contend_then_import("stressapp")

from stressapp import app  # noqa: E402,F401
