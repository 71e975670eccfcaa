"""What counting rootless traces beside a window's requests costs
(``forensics.window.rootless_beside_note``, called by `investigate slow` and `errors`).

On a store kept by benchmarks/forensics.py (``--keep DIR``; its bench-meta.json gives the
window), interleaved ROUNDS times in this process, warm after a first unmeasured round:
the requests read (``indexed_entry_requests``), the rootless count, and a whole
``investigate_slow`` (which now includes the count). Medians of wall and CPU time,
the count's share of the investigation, and the load average.

    .venv/bin/python benchmarks/rootless_scan.py --data-dir DIR [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _clock(fn) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics import investigate_slow
    from stagetrace.forensics.window import indexed_entry_requests, rootless_beside_note

    meta = json.loads((args.data_dir / "bench-meta.json").read_text())
    start, end = meta["start_ns"], meta["end_ns"]
    b = EmbeddedBackend(str(args.data_dir))

    def requests():
        return indexed_entry_requests(b, service=None, route=None, start_ns=start, end_ns=end)

    def count():
        _, row_of = requests()
        return rootless_beside_note(b, service=None, start_ns=start, end_ns=end, requests=row_of)

    steps = {"requests": requests, "requests+count": count,
             "investigate_slow": lambda: investigate_slow(b, start_ns=start, end_ns=end)}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for k, fn in steps.items():  # warm-up
        fn()
    load0 = os.getloadavg()
    note = None
    for _ in range(args.rounds):
        for k, fn in steps.items():
            w, c, out = _clock(fn)
            res[k].append((w, c))
            if k == "requests+count":
                note = out
    load1 = os.getloadavg()
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in res.items()}
    n_req = len(requests()[0])
    print(f"{args.data_dir}: {n_req:,} requests in the window, {args.rounds} rounds interleaved; "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f}")
    for k in steps:
        print(f"  {k:<18} wall {med[k][0] * 1e3:9.1f} ms   cpu {med[k][1] * 1e3:9.1f} ms")
    cw = med["requests+count"][0] - med["requests"][0]
    cc = med["requests+count"][1] - med["requests"][1]
    print(f"  the count alone: wall {cw * 1e3:.1f} ms, cpu {cc * 1e3:.1f} ms = "
          f"{cw / med['investigate_slow'][0]:.1%} / {cc / med['investigate_slow'][1]:.1%} of investigate_slow")
    print(f"  note: {note}")


if __name__ == "__main__":
    main()
