"""What the text views' escaping (``stagetrace.display.visible_tree``) and the trace view's
value cut (``shown``) cost, side by side in one run.

A synthetic trace of N spans (each with 8 attributes and 1 log record, as a busy
inference request has) is built into a trace report once; then, interleaved ROUNDS
times: the text rendering as shipped, and the same rendering with ``visible_tree``
replaced by the identity (what main did). Also the report build with and without
``shown``. Medians of wall and CPU time (this process), their ratio, and the load.

    .venv/bin/python benchmarks/view_escapes.py [--spans 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from stagetrace.model import LogRecord, Span, Trace


class _Backend:
    """Only what the trace view asks besides the trace: no metrics."""
    name = "synthetic"

    def metric_series(self, q):
        return []


def synthetic_trace(n: int) -> Trace:
    t0 = 1_700_000_000 * 10**9
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    spans, logs = [], []
    for i in range(n):
        sid = f"{i + 1:016x}"
        parent = "" if i == 0 else f"{(i - 1) // 4 + 1:016x}"
        spans.append(Span(tid, sid, parent, f"op-{i % 37} /predict", "INTERNAL" if i else "SERVER",
                          t0 + i * 1000, t0 + i * 1000 + 500_000 - i, attributes={
                              f"attr.{k}": f"value {i} {k} " * 3 for k in range(8)},
                          resource={"service.name": f"svc-{i % 5}"}))
        logs.append(LogRecord(t0 + i * 1000 + 10, t0 + i * 1000 + 10, 9, "INFO", f"step {i} done in {i % 13} ms",
                              trace_id=tid, span_id=sid, resource={"service.name": f"svc-{i % 5}"}))
    return Trace(tid, spans, logs)


def _clock(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    from stagetrace.forensics import render_text as rt
    from stagetrace.forensics import traceview as tv

    trace = synthetic_trace(args.spans)
    report = tv.build_trace_report(_Backend(), trace.trace_id, trace=trace)
    shipped_tree, shipped_shown = rt.visible_tree, tv.shown
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in ("render", "render_main", "build", "build_main")}
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        rt.visible_tree = shipped_tree
        res["render"].append(_clock(lambda: rt.render_text([report])))
        rt.visible_tree = lambda x: x
        res["render_main"].append(_clock(lambda: rt.render_text([report])))
        tv.shown = shipped_shown
        res["build"].append(_clock(lambda: tv.build_trace_report(_Backend(), trace.trace_id, trace=trace)))
        tv.shown = lambda v, limit=0: v
        res["build_main"].append(_clock(lambda: tv.build_trace_report(_Backend(), trace.trace_id, trace=trace)))
    rt.visible_tree, tv.shown = shipped_tree, shipped_shown
    load1 = os.getloadavg()
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in res.items()}
    print(f"{args.spans} spans, {args.rounds} rounds interleaved; load average {load0[0]:.2f} -> {load1[0]:.2f}")
    for k in res:
        print(f"  {k:<12} wall {med[k][0] * 1e3:8.1f} ms   cpu {med[k][1] * 1e3:8.1f} ms")
    for a, b in (("render", "render_main"), ("build", "build_main")):
        print(f"  {a} / without: wall x{med[a][0] / med[b][0]:.3f}   cpu x{med[a][1] / med[b][1]:.3f}")


if __name__ == "__main__":
    main()
