"""The rootless-trace count's one backend read alone (``stagetrace.backend.rootless_trace_ids``
over a kept benchmarks/forensics.py store's window), warm, three calls in this process; wall
and CPU (``process_time``, DuckDB's threads included) of each, and the candidates it leaves
beside the window's requests. Put a package tree first on ``PYTHONPATH`` to time another
version on the same store.

    .venv/bin/python benchmarks/rootless_read.py DIR
"""

from __future__ import annotations

import json
import sys
import time


def _clock(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> None:
    from stagetrace.backend import TraceQuery, rootless_trace_ids
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics.window import indexed_entry_requests

    d = sys.argv[1]
    m = json.load(open(f"{d}/bench-meta.json"))
    b = EmbeddedBackend(d)
    w, c, (_, row_of) = _clock(lambda: indexed_entry_requests(b, service=None, route=None, start_ns=m["start_ns"],
                                                               end_ns=m["end_ns"]))
    print(f"requests read: {len(row_of):,} in {w:.2f} s wall, {c:.2f} s CPU")
    for _ in range(3):
        w, c, ids = _clock(lambda: rootless_trace_ids(b, TraceQuery(start_ns=m["start_ns"], end_ns=m["end_ns"],
                                                                    limit=None)))
        print(f"rootless_trace_ids: {w:.2f} s wall, {c:.2f} s CPU, {len(ids)} ids, "
              f"{sum(t not in row_of for t in ids)} beside the requests")


if __name__ == "__main__":
    main()
