"""scipy.stats (~1 s of CPU to import) is imported on a thread while an investigation
reads its requests (forensics.stats.prefetch), so importing the analyses must not
import it on the spot. No timing here: the figures are in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys, threading
from stagetrace.forensics import attributes, errorclusters, mlprofiles, slow, stats
before = "scipy.stats" in sys.modules
stats.prefetch()
for t in threading.enumerate():
    if t.name == "stagetrace-scipy-stats":
        t.join()
after = "scipy.stats" in sys.modules
print(json.dumps({"before": before, "after": after, "p": stats.share_test(8, 10, 1, 10)}))
"""


def test_analyses_import_scipy_stats_only_when_prefetched_or_used():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["before"] is False and got["after"] is True
    from scipy import stats as st

    assert got["p"] == float(st.fisher_exact([[8, 2], [1, 9]], alternative="greater")[1])
