"""The trace-by-id path stays lean: a fresh process that looks a trace up imports
neither pandas (pyarrow's probe), nor DuckDB, nor pyarrow.compute. Together they are
~0.5-0.8 s of imports on this machine, more than the 300 ms `stagetrace trace`
budget (figures in docs/benchmarks.md; no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys

from stagetrace.collector import store

from test_collector_store import request, tid, write_segments

_PROBE = """
import json, sys
from stagetrace.collector.query import EmbeddedBackend
with EmbeddedBackend(sys.argv[1]) as b:
    tr = b.get_trace(sys.argv[2])
    miss = b.get_trace("0" * 31 + "1")
print(json.dumps({"spans": len(tr.spans), "miss": miss is None,
                  "heavy": sorted(m for m in ("pandas", "duckdb", "pyarrow.compute") if m in sys.modules)}))
"""


def test_trace_by_id_imports_no_pandas_duckdb_or_compute(tmp_path):
    bs = store.BlockStore(tmp_path)
    w = write_segments(tmp_path, [[request(n, 4) for n in range(2, 40)], [request(40, 4)]])
    bs.cut(store.SPANS, w.active_seq)  # two segments -> one block
    w.close()
    assert store.list_blocks(tmp_path, store.SPANS)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path), tid(7)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"spans": 4, "miss": True, "heavy": []}, got
