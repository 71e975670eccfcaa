"""Where the input/output profile's cost goes (diagnostic for docs/benchmarks.md).

    .venv/bin/python benchmarks/profile_breakdown.py [--rows 1] [--calls 28000]

1. In the real call path: the benchmark's sklearn Pipeline through the sklearn hook, with
   the inline capture functions (``STAGETRACE_PROFILE_DEFER=false``) swapped for stubs
   (nothing, constant attribute dicts, the real ones), and the default deferred capture
   (also with its snapshots made of constants, and with nothing deferred), the variants
   alternating call by call (order rotated every round), each call timed; p5/p10/p25/p50
   and their excess over profiling off, with a second "off" as an A/A control of the noise.
2. Cold caches: the capture functions timed standalone right after an 8 MB copy and a
   model call (what runs before them in a real call), against a no-op.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--calls", type=int, default=28000)
    ap.add_argument("--deferred-only", action="store_true", help="only off, the A/A control and the deferred variants")
    a = ap.parse_args()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stagetrace.instrumentation import profile_capture as pc
    from stagetrace.instrumentation import profiling, wrapping
    from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor

    if not hasattr(pc, "remember_prediction"):
        # session 8 wrote the deferred snapshots into wrapping._begin/_end and dropped the
        # last-prediction context variable: there is nothing left to stub. Count instructions
        # instead (benchmarks/instrumentation.py --instructions), or run this on an older tree.
        raise SystemExit("profile_breakdown.py: this tree has no separate snapshot or last-prediction functions "
                         "to stub; use benchmarks/instrumentation.py --profile-only --instructions")

    class DropSpans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(DropSpans(), max_queue_size=1 << 16))
    inst = StagetraceInstrumentor()
    inst.instrument(tracer_provider=tp, stages="", libraries=["sklearn"])
    rng = np.random.default_rng(3)
    X = rng.lognormal(3.0, 1.0, (4000, 9))
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    on = profiling.ProfileSettings(defer=False)  # the stubs below replace the inline capture functions
    deferred = profiling.ProfileSettings()  # the default: snapshots in the call, encoding in the export thread
    batch = X[:a.rows].copy()
    real_in, real_out, real_rem = pc.input_attributes, pc.output_attributes, pc.remember_prediction
    ia = real_in(on, batch, model, "Pipeline.predict_proba", "Pipeline")
    oa = real_out(model.predict_proba(batch), model)

    def noop(*_):
        return None
    # (stubs for a tree whose snapshots are taken in functions of their own; inlined ones cannot be stubbed)
    real_defer, real_output = getattr(wrapping, "_defer_input", None), wrapping._profile_output
    snap_in, snap_out = batch.tobytes(), model.predict_proba(batch).tobytes()

    def const_snapshot(tracer, spec, instance, args, kwargs, model_name):  # the deferred snapshot, made of constants
        return [deferred, snap_in, batch.dtype, batch.shape, instance, spec.qualname, model_name, None, None, None]

    def const_output(active, spec, result):  # only what last_prediction_id() needs
        pending = active.frame.profiled
        pending[7], pending[8], pending[9] = snap_out, batch.dtype, (len(batch), 2)
        wrapping._last_prediction_ctx.set(active.span._context)

    no_stage = profiling.ProfileSettings(stages=())  # settings set, the stage not among them: a control

    def no_snapshot(*_):
        return None
    variants = {
        "off": (None, real_in, real_out, real_rem, real_defer, real_output),
        "off again (A/A control)": (None, real_in, real_out, real_rem, real_defer, real_output),
        "on, no stage profiled": (no_stage, real_in, real_out, real_rem, real_defer, real_output),
        "on, capture returns {}": (on, lambda *_: {}, real_out, real_rem, real_defer, real_output),
        "constant in, {} out": (on, lambda *_: dict(ia), lambda *_: {}, noop, real_defer, real_output),
        "constant in + out": (on, lambda *_: dict(ia), lambda *_: dict(oa), noop, real_defer, real_output),
        "real in, {} out": (on, real_in, lambda *_: {}, noop, real_defer, real_output),
        "constant in, real out": (on, lambda *_: dict(ia), real_out, noop, real_defer, real_output),
        "real in + out (full)": (on, real_in, real_out, real_rem, real_defer, real_output),
        "deferred, no snapshot": (deferred, lambda *_: {}, real_out, real_rem, no_snapshot, real_output),
        "deferred, const snapshot": (deferred, real_in, real_out, real_rem, const_snapshot, const_output),
        "deferred (the default)": (deferred, real_in, real_out, real_rem, real_defer, real_output),
    }
    if real_defer is None:
        variants = {k: v for k, v in variants.items() if "snapshot" not in k}
    if a.deferred_only:
        variants = {k: v for k, v in variants.items() if k.startswith(("off", "deferred", "on, no stage"))}
    names = list(variants)
    res: dict[str, list[int]] = {k: [] for k in names}
    clock = time.perf_counter_ns

    def use(k: str) -> None:
        (wrapping.settings.profile, pc.input_attributes, pc.output_attributes, pc.remember_prediction,
         wrapping._defer_input, wrapping._profile_output) = variants[k]
    for i in range(a.calls + 200 * len(names)):
        r, j = divmod(i, len(names))
        k = names[(j + r) % len(names)]  # the order rotated every round
        use(k)
        t0 = clock()
        model.predict_proba(batch)
        if i >= 200 * len(names):  # warm-up first
            res[k].append(clock() - t0)
    use("off")
    qs = (5, 10, 25, 50)
    base = {q: np.percentile(res["off"], q) for q in qs}
    print(f"in the call path, {a.rows}-row batch, {a.calls} calls alternating {len(names)} variants (us; +excess over off)")
    for k in names:
        print(f"  {k:<24}" + "  ".join(f"p{q} {np.percentile(res[k], q) / 1000:6.1f} (+{(np.percentile(res[k], q) - base[q]) / 1000:5.1f})"
                                       for q in qs))
    inst.uninstrument()

    big, big2 = np.ones(1_000_000), np.empty(1_000_000)
    lr = model[-1]
    out = model.predict_proba(batch)
    tests = {"no-op": lambda: None,
             "input_attributes": lambda: real_in(on, batch, lr, "LogisticRegression.predict_proba", None),
             "output_attributes": lambda: real_out(out, lr)}
    cold: dict[str, list[int]] = {k: [] for k in tests}
    for _ in range(1500):
        for k, f in tests.items():
            np.copyto(big2, big)
            lr.predict_proba(batch)
            t0 = clock()
            f()
            cold[k].append(clock() - t0)
    print("standalone after evicting the caches (8 MB copy + a model call before each call), us")
    for k, v in cold.items():
        print(f"  {k:<24} p10 {np.percentile(v, 10) / 1000:6.2f}  p50 {np.percentile(v, 50) / 1000:6.2f}")


if __name__ == "__main__":
    main()
