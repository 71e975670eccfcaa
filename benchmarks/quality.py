"""Quality (delayed labels joined to predictions) on labelled streams with known answers.

    .venv/bin/python benchmarks/quality.py [--seed 1] [--runs 5]

A real scikit-learn LogisticRegression, fitted on clean data, scores one-row predictions;
its inputs and outputs go through the real capture code (profile_capture) into Span
objects, labels are ``ml.label`` log records (as ``POST /stagetrace/v1/labels`` makes them)
arriving minutes later, and the real analysis (forensics.quality) reads both through an
in-memory backend. 20 buckets of 100 s; per bucket 100 predictions from each of two
clients (``client.version`` 1.0 and 2.0, resource attributes), a ``tenant`` attribute
(t1..t4) on every span; 90 % of predictions get a label. Streams (issue 18: "on a labelled
stream with a known drop, the onset is within one bucket and the affected segment is
named first"):

* clean: no drop, no segment;
* unit change: from bucket 12, client 2.0 sends ``amount`` in cents (x100) - an input
  drift that wrecks that client's predictions; the drift finding must be linked;
* concept change: from bucket 8, the outcome for tenant t3 no longer follows the
  model (40 % of its labels flipped) - no input drift at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stagetrace import mlprofile, semconv  # noqa: E402
from stagetrace.backend import LogQuery, TraceQuery, value_equals  # noqa: E402
from stagetrace.instrumentation import profiling  # noqa: E402
from stagetrace.instrumentation.profile_capture import input_attributes, output_attributes  # noqa: E402
from stagetrace.model import LogRecord, Span, Trace  # noqa: E402

NAMES = ["amount", "income", "age"]
SETTINGS = profiling.ProfileSettings(features=NAMES)
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
BUCKET = 100 * SEC
BUCKETS = 20
TENANTS = ["t1", "t2", "t3", "t4"]


def features(rng, n, unit=1.0):
    return np.column_stack([rng.normal(50, 10, n) * unit, rng.lognormal(8, 0.5, n), rng.normal(40, 12, n)])


def truth(rng, x):
    """The outcome follows the clean-unit features (what the model was fitted on)."""
    z = 0.25 * (x[:, 0] - 50) - 0.08 * (x[:, 2] - 40) + 0.3 * (np.log(x[:, 1]) - 8)
    return (rng.random(len(x)) < 1 / (1 + np.exp(-z))).astype(int)


def fit_model(seed=0):
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    x = features(rng, 5000)
    return LogisticRegression(max_iter=500).fit(x, truth(rng, x))


class Memory:
    """In-memory backend: spans (one per trace) and log records."""

    name = "memory"

    def __init__(self, spans, logs):
        self.spans = sorted(spans, key=lambda s: s.start_ns)
        self.logs = sorted(logs, key=lambda r: r.time_ns)
        self.by_trace = {s.trace_id: s for s in self.spans}

    def find_spans(self, q: TraceQuery):
        return [s for s in self.spans if (q.start_ns is None or s.start_ns >= q.start_ns)
                and (q.end_ns is None or s.start_ns < q.end_ns)
                and all(value_equals(s.attributes.get(k, s.resource.get(k)), v) for k, v in q.attributes.items())]

    def find_logs(self, q: LogQuery):
        return [r for r in self.logs if (q.start_ns is None or r.time_ns >= q.start_ns)
                and (q.end_ns is None or r.time_ns < q.end_ns)
                and all(value_equals(r.attributes.get(k), v) for k, v in q.attributes.items())]

    def get_traces(self, ids, **kw):
        return {t: Trace(t, [self.by_trace[t]]) for t in ids if t in self.by_trace}

    def close(self):
        pass


def stream(model, rng, kind: str, start_bucket: int = 12, label_share: float = 0.9, canary=None):
    """(spans, label records) of one stream; ``kind`` is clean | unit | concept. With
    ``canary`` (another fitted model), client 2.0 is served by it, as version v2."""
    spans, logs = [], []
    i = 0
    for b in range(BUCKETS):
        for client in ("1.0", "2.0"):
            n = 100
            x_true = features(rng, n)
            y = truth(rng, x_true)
            unit = 100.0 if (kind == "unit" and client == "2.0" and b >= start_bucket) else 1.0
            x_sent = x_true * np.array([unit, 1.0, 1.0])
            tenants = rng.choice(TENANTS, n)
            if kind == "concept" and b >= start_bucket:
                flip = (tenants == "t3") & (rng.random(n) < 0.4)
                y = np.where(flip, 1 - y, y)
            for r in range(n):
                i += 1
                row = x_sent[r:r + 1]
                t = T0 + b * BUCKET + int((r + 0.5 * (client == "2.0")) * BUCKET / n)
                m, version = (canary, "v2") if canary is not None and client == "2.0" else (model, "v1")
                attrs = {semconv.ML_STAGE: "inference", semconv.ML_MODEL_NAME: "fraud", semconv.ML_MODEL_VERSION: version,
                         "tenant": str(tenants[r])}
                attrs.update(input_attributes(SETTINGS, row, m, "LogisticRegression.predict_proba", "fraud"))
                attrs.update(output_attributes(m.predict_proba(row), m))
                tid, sid = f"{rng.integers(1, 2**63):016x}{i:016x}", f"{i:016x}"
                spans.append(Span(trace_id=tid, span_id=sid, parent_span_id="", name="inference fraud", kind="INTERNAL",
                                  start_ns=t, end_ns=t + 1000, attributes=attrs,
                                  resource={semconv.SERVICE_NAME: "api", "client.version": client}))
                if rng.random() < label_share:
                    when = t + int(rng.uniform(60, 600) * SEC)  # labels arrive 1-10 minutes later
                    logs.append(LogRecord(time_ns=when, observed_time_ns=when, severity_number=9, severity_text="INFO",
                                          body="label", trace_id=tid, span_id=sid,
                                          attributes={semconv.EVENT_NAME: semconv.ML_LABEL_EVENT,
                                                      semconv.ML_LABEL_VALUE: int(y[r]),
                                                      semconv.ML_PREDICTION_ID: mlprofile.prediction_id(tid, sid)},
                                          resource={semconv.SERVICE_NAME: "stagetrace-labels"}))
    return spans, logs


def reference(model, rng, path: Path) -> Path:
    """A reference profile from 4 000 clean predictions (as `profile build` makes one)."""
    from stagetrace.forensics import mlprofiles as mp
    from stagetrace.forensics.drift import save_reference
    x = features(rng, 4000)
    spans = []
    for i in range(len(x)):
        attrs = input_attributes(SETTINGS, x[i:i + 1], model, "LogisticRegression.predict_proba", "fraud")
        attrs.update(output_attributes(model.predict_proba(x[i:i + 1]), model))
        spans.append(Span(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", parent_span_id="", name="inference fraud",
                          kind="INTERNAL", start_ns=i, end_ns=i + 1, attributes=attrs))
    save_reference(path, "fraud", None, mp.distributions(spans), mp.score_dist(spans), "4000 clean predictions")
    return path


def run_case(model, rng, kind: str, start_bucket: int, ref: Path | None = None):
    from stagetrace.forensics.quality import investigate_quality
    spans, logs = stream(model, rng, kind, start_bucket)
    return investigate_quality(Memory(spans, logs), model="fraud", version=None, start_ns=T0,
                               end_ns=T0 + BUCKETS * BUCKET, interval_ns=BUCKET, reference=ref)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    t_start = time.perf_counter()
    import tempfile
    model = fit_model(a.seed)
    rng = np.random.default_rng(a.seed)
    tmp = tempfile.TemporaryDirectory(prefix="stagetrace-quality-")
    ref = reference(model, rng, Path(tmp.name) / "ref.json")
    print(f"20 buckets of 100 s, 200 one-row predictions per bucket (2 clients), 90 % labelled; {a.runs} runs per stream")
    alarms = 0
    for _ in range(a.runs):
        rep = run_case(model, rng, "clean", 0, ref)
        alarms += rep.data["onset"] is not None
    print(f"clean stream: drop reported in {alarms}/{a.runs} runs")
    for kind, start, want, label in (("unit", 12, ("client.version", "2.0"), "x100 unit change, client 2.0, bucket 12"),
                                     ("concept", 8, ("tenant", "t3"), "40 % labels flipped, tenant t3, bucket 8")):
        errs, first, linked, accs = [], 0, 0, []
        for _ in range(a.runs):
            rep = run_case(model, rng, kind, start, ref)
            on = rep.data["onset"]
            errs.append(None if on is None else on["bucket"] - start)
            segs = rep.data["segments"]
            first += bool(segs) and (segs[0]["attribute"], segs[0]["value"]) == want
            if on:
                accs.append((on["accuracy_before"], on["accuracy_after"]))
            feat = [f for f in rep.findings if f.kind == "feature"]
            linked += bool(feat) and feat[0].evidence["feature"] == "amount" and feat[0].evidence["drift"] is not None
        acc = ", ".join(f"{b:.0%}->{c:.0%}" for b, c in accs[:3])
        extra = f"; mispredictions explained by amount, linked to its drift finding, in {linked}/{a.runs}" \
            if kind == "unit" else ""
        print(f"{label}: onset error in buckets {errs}; {want[0]}={want[1]} named first in {first}/{a.runs}; "
              f"accuracy {acc}{extra}")
    print(f"({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
