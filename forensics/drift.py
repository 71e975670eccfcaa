"""``stagetrace investigate drift --model NAME [--version V]`` and reference profiles.

Per feature, and for the prediction scores: the window against the reference
profile (``stagetrace profile build``) and against the period of equal length
before the window; PSI plus chi-square with sample-size-aware bars
(:func:`.mlprofiles.compare`); the onset (first evaluation interval from which the
feature stays drifted); the segments (attribute values of the request: client
version, route, tenant...) where the drift concentrates; example trace ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from stagetrace import mlprofile, semconv
from stagetrace.backend import Backend, TraceQuery
from stagetrace.errors import UserError
from stagetrace.model import Span

from . import mlprofiles as mp
# the rows-of-one-call helpers live with the distributions; imported from here too
from .mlprofiles import PREDICTION, call_sizes, design_effect, design_effects, row_correlations  # noqa: F401
from .report import Finding, Report

MAX_SEGMENT_VALUES = 50  # an attribute with more distinct values is an id, not a segment
MIN_SEGMENT_SHARE = 0.02
# what the model said is no segment of who asked (a one-row call's class is on its span)
_SKIP_ATTRS = {semconv.ML_INPUT_PROFILE, semconv.ML_OUTPUT_PROFILE, semconv.ML_PREDICTION_ID, semconv.ML_INPUT_FEATURES,
               semconv.ML_PREDICTION_CLASS,
               semconv.ML_INPUT_SAMPLE, semconv.ML_PREDICTION_SCORE_MEAN, semconv.ML_PREDICTION_CONFIDENCE_MEAN,
               semconv.ML_BATCH_SIZE, semconv.ML_INPUT_SHAPE, semconv.SERVICE_INSTANCE_ID, "process.pid",
               semconv.URL_FULL, semconv.SERVER_PORT, semconv.CLIENT_PORT}


# --- reference profiles --------------------------------------------------------------

# 2: a classifier's prediction scores are stored as 0.05 steps (mlprofiles.score_dist); 1 is read too
REFERENCE_VERSION = 2


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def reference_path(data_dir: Path, model: str, version: str | None) -> Path:
    return Path(data_dir) / "profiles" / _safe(model) / f"{_safe(version or 'any')}.json"


def save_reference(path: Path, model: str, version: str | None, dists: dict[str, mp.FeatureDist],
                   scores: mp.FeatureDist | None, source: str,
                   correlations: tuple[dict[str, float], dict[str, float]] | None = None) -> None:
    """``correlations``: :func:`row_correlations` of a reference made from stored
    predictions; None for independent rows (a training file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": "stagetrace.profile", "version": REFERENCE_VERSION, "model": model, "model_version": version, "source": source,
           "features": {k: v.to_json() for k, v in dists.items()},
           "prediction": scores.to_json() if scores is not None and scores.rows else None}
    if correlations is not None:
        doc["row_correlations"] = {k: round(float(v), 4) for k, v in correlations[0].items()}
        doc["design_effects"] = {k: round(float(v), 4) for k, v in correlations[1].items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    tmp.replace(path)


def load_reference(path: Path) -> tuple[dict[str, mp.FeatureDist], mp.FeatureDist | None, dict[str, Any]]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        feats = {k: mp.FeatureDist.from_json(v) for k, v in doc["features"].items()}
        pred = mp.FeatureDist.from_json(doc["prediction"]) if doc.get("prediction") else None
        if pred is not None and doc.get("version") == 1:
            pred = mp.score_dist_from_v1(pred)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read reference profile {path}: {exc}") from None
    return feats, pred, doc


def profile_from_table(path: str) -> dict[str, mp.FeatureDist]:
    """Per-feature distributions of a training file (CSV or Parquet), binned exactly
    as the instrumentation bins inputs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if str(path).lower().endswith((".parquet", ".pq")) else pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    dists: dict[str, mp.FeatureDist] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type) \
                or pa.types.is_null(col.type):
            x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            codes = mlprofile.bin_codes(x)
            miss = mlprofile.is_missing(codes)
            d = mp.FeatureDist("n", missing=int(miss.sum()), rows=len(x))
            vals, cnt = np.unique(codes[~miss], return_counts=True)
            d.counts.update(dict(zip(vals.tolist(), cnt.tolist())))
        else:
            values = col.to_pylist()
            codes_l = [mlprofile.category_code(v) for v in values]
            d = mp.FeatureDist("c", missing=sum(1 for c in codes_l if c == mlprofile.MISSING_CODE), rows=len(values))
            d.counts.update(c for c in codes_l if c != mlprofile.MISSING_CODE)
        dists[name] = d
    return dists


class _Tester:
    """mp.compare on effective samples: each side's counts divided by its design effect.
    The effects come from data without drift where there is some (a reference made of
    stored predictions, else the previous period): drift in a segment makes whole calls
    differ, which would inflate an effect measured on the drifted window itself."""

    def __init__(self, ref_effects: dict[str, float], cur_effects: dict[str, float], tests: int) -> None:
        self.ref_effects, self.cur_effects, self.tests = ref_effects, cur_effects, tests

    def __call__(self, feature: str, ref: mp.FeatureDist, cur: mp.FeatureDist) -> mp.Shift | None:
        sh = mp.compare(feature, mp.effective(ref, self.ref_effects.get(feature, 1.0)),
                        mp.effective(cur, self.cur_effects.get(feature, 1.0)), tests=self.tests)
        if sh is not None:  # report the rows there are, not the effective ones
            sh.ref_rows, sh.cur_rows = ref.rows, cur.rows
        return sh


# --- reading the window -------------------------------------------------------------------

def inference_spans(backend: Backend, model: str, version: str | None, start_ns: int | None,
                    end_ns: int | None) -> list[Span]:
    """Profiled inference spans of the model: ``ml.model.name`` or the span name
    (``inference <model>``) or the service name may name it."""
    spans = backend.find_spans(TraceQuery(attributes={semconv.ML_STAGE: semconv.STAGE_INFERENCE},
                                          start_ns=start_ns, end_ns=end_ns, limit=None))
    out = []
    for s in spans:
        if semconv.ML_INPUT_PROFILE not in s.attributes:
            continue
        names = {str(s.attributes.get(semconv.ML_MODEL_NAME, "")), s.name, s.name.partition(" ")[2], s.service_name}
        if model not in names:
            continue
        if version is not None and str(s.attributes.get(semconv.ML_MODEL_VERSION, "")) != version:
            continue
        out.append(s)
    return out


def _segment_attrs(backend: Backend, spans: list[Span], start_ns: int | None, end_ns: int | None) -> dict[tuple[str, str], dict]:
    """Attributes of each inference span's request: its own, its resource's, and those
    of the root and server spans of its trace (client version, route, tenant...). The
    server and root spans the prediction runs under come first, nearest first: the
    server span of a downstream call (a feature store the model's service asked) has
    the same attributes with the caller's values (its User-Agent is the service's
    HTTP library, not the client's)."""
    tids = {s.trace_id for s in spans}
    try:
        traces = backend.get_traces(sorted(tids), start_ns=start_ns, end_ns=end_ns, with_logs=False)
    except Exception:
        traces = {}
    by_id: dict[str, dict[str, Span]] = {tid: {sp.span_id: sp for sp in tr.spans} for tid, tr in traces.items()}
    others: dict[str, dict] = {}
    for tid, tr in traces.items():
        attrs: dict[str, Any] = {}
        for sp in tr.spans:
            if sp.kind == "SERVER" or not sp.parent_span_id:
                for k, v in sp.attributes.items():
                    attrs.setdefault(k, v)
        others[tid] = attrs
    out = {}
    for s in spans:
        a: dict[str, Any] = {}
        index = by_id.get(s.trace_id, {})
        parent, seen = index.get(s.parent_span_id or ""), set()
        while parent is not None and parent.span_id not in seen:  # a cycle in bad data ends the walk
            seen.add(parent.span_id)
            if parent.kind == "SERVER" or not parent.parent_span_id:
                for k, v in parent.attributes.items():
                    a.setdefault(k, v)
            parent = index.get(parent.parent_span_id or "")
        for k, v in others.get(s.trace_id, {}).items():
            a.setdefault(k, v)
        for k, v in s.resource.items():
            a.setdefault(k, v)
        for k, v in s.attributes.items():
            a[k] = v
        out[(s.trace_id, s.span_id)] = {k: v for k, v in a.items() if k not in _SKIP_ATTRS and isinstance(v, (str, int, bool))}
    return out


# --- the investigation -------------------------------------------------------------------

class _PerSpan:
    """Each span's distributions, decoded once: the onset and segment searches add up
    the same spans many times over (decoding was most of a drift report's time)."""

    def __init__(self) -> None:
        self._feats: dict[int, dict[str, mp.FeatureDist]] = {}
        self._scores: dict[int, mp.FeatureDist] = {}

    def dist(self, spans: list[Span], feature: str, kind: str) -> mp.FeatureDist:
        total = mp.FeatureDist(kind)
        for sp in spans:
            key = id(sp)
            if feature == PREDICTION:
                d = self._scores.get(key)
                if d is None:
                    d = self._scores[key] = mp.score_dist([sp])
            else:
                one = self._feats.get(key)
                if one is None:
                    one = self._feats[key] = mp.distributions([sp])
                d = one.get(feature)
                if d is None:
                    continue
                total.kind = d.kind
            total.counts.update(d.counts)
            total.missing += d.missing
            total.rows += d.rows
        return total


def _onset(spans: list[Span], feature: str, ref: mp.FeatureDist, start_ns: int, end_ns: int, interval_ns: int,
           test: _Tester, per_span: _PerSpan) -> tuple[int | None, list[dict]]:
    """First interval from which the feature stays drifted (80 % of later intervals
    with enough rows drift), and the per-interval PSI series."""
    n = max(1, int(np.ceil((end_ns - start_ns) / interval_ns)))
    buckets: list[list[Span]] = [[] for _ in range(n)]
    for s in spans:
        i = min(n - 1, max(0, (s.start_ns - start_ns) // interval_ns))
        buckets[i].append(s)
    series, flags = [], []
    for i, b in enumerate(buckets):
        cur = per_span.dist(b, feature, ref.kind)
        sh = test(feature, ref, cur) if cur.rows >= 20 else None
        series.append({"start_ns": start_ns + i * interval_ns, "rows": cur.rows,
                       "psi": sh.psi if sh else None, "drift": bool(sh and sh.significant)})
        flags.append(None if sh is None else sh.significant)
    for i, f in enumerate(flags):
        if not f:
            continue
        later = [x for x in flags[i:] if x is not None]
        if later and sum(later) >= 0.8 * len(later):
            return start_ns + i * interval_ns, series
    return None, series


def _segments(spans: list[Span], seg_attrs: dict[tuple[str, str], dict], feature: str, ref: mp.FeatureDist,
              test: _Tester, per_span: _PerSpan) -> list[dict]:
    values: dict[str, dict[Any, list[Span]]] = {}
    for s in spans:
        for k, v in seg_attrs.get((s.trace_id, s.span_id), {}).items():
            values.setdefault(k, {}).setdefault(v, []).append(s)
    total = len(spans)
    found = []
    for attr, by in values.items():
        if len(by) < 2 or len(by) > MAX_SEGMENT_VALUES:
            continue  # one value everywhere explains nothing; many are ids
        for v, inside in by.items():
            if len(inside) < MIN_SEGMENT_SHARE * total or len(inside) == total:
                continue
            ids = {id(s) for s in inside}
            outside = [s for s in spans if id(s) not in ids]
            si = test(feature, ref, per_span.dist(inside, feature, ref.kind))
            so = test(feature, ref, per_span.dist(outside, feature, ref.kind))
            if si is None or not si.significant:
                continue
            psi_out = so.psi if so is not None else 0.0
            if psi_out >= si.psi / 4 and so is not None and so.significant:
                continue  # drifted outside too: not concentrated here
            found.append({"attribute": attr, "value": v, "psi_inside": si.psi, "psi_outside": psi_out,
                          "share": len(inside) / total, "requests": len(inside),
                          "example_trace_ids": [s.trace_id for s in inside[-3:]]})  # latest: after the onset
    found.sort(key=lambda f: -(f["psi_inside"] - f["psi_outside"]))
    return found[:5]


def investigate_drift(backend: Backend, *, model: str, version: str | None, start_ns: int, end_ns: int,
                      reference: Path | None, interval_ns: int | None = None) -> Report:
    spans = inference_spans(backend, model, version, start_ns, end_ns)
    span_len = end_ns - start_ns
    prev = inference_spans(backend, model, version, start_ns - span_len, start_ns)
    ref_feats: dict[str, mp.FeatureDist] | None = None
    ref_pred = None
    notes: list[str] = []
    ref_label = "the previous period"
    ref_effects: dict[str, float] | None = None
    ref_iccs: dict[str, float] = {}
    if reference is not None and reference.exists():
        ref_feats, ref_pred, doc = load_reference(reference)
        ref_label = f"the reference ({doc.get('source', reference.name)})"
        raw = doc.get("design_effects")
        # absent: a training file, whose rows are independent draws
        ref_effects = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        raw = doc.get("row_correlations")
        ref_iccs = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    else:
        notes.append("no reference profile for this model (build one with `stagetrace profile build`); "
                     "compared with the previous period only")
    query = {"model": model, "version": version, "reference": str(reference) if reference else None}
    title = f"Drift of {model}" + (f" {version}" if version else "")
    if not spans:
        return Report(kind="drift", title=title, query=query, window={"start_ns": start_ns, "end_ns": end_ns},
                      verdict=[f"No profiled inference spans of model {model!r} in the window."], notes=notes)
    cur = mp.distributions(spans)
    cur_pred = mp.score_dist(spans)
    prev_feats = mp.distributions(prev) if prev else {}
    base = ref_feats if ref_feats is not None else prev_feats
    base_pred = ref_pred if ref_feats is not None else (mp.score_dist(prev) if prev else None)
    tests = len(cur) + 1
    # The rows' clustering in calls, measured where there is no drift to inflate it (see _Tester).
    if ref_iccs:  # the reference's correlations, with this window's rows per call
        sizes = call_sizes(spans)
        cur_effects = {f: design_effect(icc, sizes) for f, icc in ref_iccs.items()}
    else:
        cur_effects = design_effects(prev if len(prev) >= mp.MIN_ICC_CALLS else spans)
    test = _Tester(ref_effects if ref_effects is not None else cur_effects, cur_effects, tests)
    prev_test = _Tester(cur_effects, cur_effects, tests)
    interval = interval_ns or max(1, span_len // 20)
    per_span = _PerSpan()
    seg_attrs: dict[tuple[str, str], dict] | None = None
    findings: list[Finding] = []
    rows: list[dict] = []
    items: list[tuple[str, mp.FeatureDist, mp.FeatureDist | None]] = [(f, d, base.get(f)) for f, d in cur.items()]
    items.append((PREDICTION, cur_pred, base_pred))
    for feature, c, r in items:
        if r is None or not r.rows or not c.rows:
            continue
        sh = test(feature, r, c)
        if sh is None:
            continue
        vs_prev = None
        if ref_feats is not None and prev:
            p = mp.score_dist(prev) if feature == PREDICTION else prev_feats.get(feature)
            if p is not None and p.rows:
                vs_prev = prev_test(feature, p, c)
        row = {"feature": feature, **sh.to_dict(), "design_effect": round(cur_effects.get(feature, 1.0), 3),
               "vs_previous": vs_prev.to_dict() if vs_prev is not None else None}
        if sh.significant:
            onset, series = _onset(spans, feature, r, start_ns, end_ns, interval, test, per_span)
            if seg_attrs is None:
                seg_attrs = _segment_attrs(backend, spans, start_ns, end_ns)
            segs = _segments(spans, seg_attrs, feature, r, test, per_span)
            onset_all, located = onset, None
            if segs:
                # Drift confined to one client is diluted in the whole stream, and an
                # interval where that client sent little looks clean: the onset is located
                # inside the segment, where every interval with its rows shows it.
                a, v = segs[0]["attribute"], segs[0]["value"]
                inside = [sp for sp in spans if seg_attrs.get((sp.trace_id, sp.span_id), {}).get(a) == v]
                seg_onset, _ = _onset(inside, feature, r, start_ns, end_ns, interval, test, per_span)
                if seg_onset is not None:
                    onset, located = seg_onset, {"attribute": a, "value": v}
            row.update({"onset_ns": onset, "onset_whole_stream_ns": onset_all, "onset_located_in": located,
                        "series": series, "segments": segs})
            miss = ""
            if abs(sh.cur_missing - sh.ref_missing) >= 0.02:
                miss = f"; missing {sh.ref_missing:.0%} -> {sh.cur_missing:.0%}"
            where = ""
            if segs:
                s0 = segs[0]
                where = (f"; concentrated in {s0['attribute']}={s0['value']} (PSI {s0['psi_inside']:.2f} there vs "
                         f"{s0['psi_outside']:.2f} elsewhere, {s0['share']:.0%} of requests)")
            summary = (f"{feature} drifted vs {ref_label}: PSI {sh.psi:.2f} (bar {sh.threshold:.2f}), "
                       f"chi-square p={sh.p_value:.1e}; most new mass in {sh.top_group}{miss}{where}")
            examples = segs[0]["example_trace_ids"] if segs else [s.trace_id for s in spans[-3:]]
            findings.append(Finding(kind="drift", summary=summary, score=sh.psi, significant=True,
                                    confidence="high" if sh.psi >= 0.25 else "medium",
                                    attribute=segs[0]["attribute"] if segs else None,
                                    value=segs[0]["value"] if segs else None,
                                    evidence={"feature": feature, "psi": sh.psi, "p_value": sh.p_value,
                                              "threshold": sh.threshold, "onset_ns": onset,
                                              "onset_whole_stream_ns": onset_all, "onset_located_in": located,
                                              "design_effect": cur_effects.get(feature, 1.0), "groups": sh.groups,
                                              "top_group": sh.top_group,
                                              "segments": segs, "example_trace_ids": examples,
                                              "vs_previous_psi": vs_prev.psi if vs_prev else None}))
        rows.append(row)
    # Inputs first: the prediction scores drift because an input did (they lead only when no
    # input drifted, e.g. a changed model), and the drifted input is what to act on.
    findings.sort(key=lambda f: (f.evidence.get("feature") == PREDICTION, -f.score))
    verdict = []
    if findings:
        from .window import fmt_time
        for f in findings[:3]:
            on = f.evidence.get("onset_ns")
            verdict.append(f.summary + (f"; onset {fmt_time(on)}" if on else ""))
    else:
        verdict.append(f"No significant drift in {len(spans)} predictions vs {ref_label}.")
    return Report(kind="drift", title=title, findings=findings, verdict=verdict, query=query,
                  window={"start_ns": start_ns, "end_ns": end_ns}, notes=notes,
                  data={"features": rows, "predictions": len(spans), "previous_predictions": len(prev),
                        "interval_ns": interval})
