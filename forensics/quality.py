"""``stagetrace investigate quality --model NAME [--version V]``: delayed labels joined
to the predictions that were made (issue 18).

Labels are ``ml.label`` log records (``POST /stagetrace/v1/labels`` or any OTLP SDK).
Each is joined to one prediction: by ``ml.prediction.id`` (``<trace id>-<span id>[-<row>]``,
the default id, is the inference span's own ids; a custom id is matched against the
span's ``ml.prediction.id`` attribute), or by trace id when the trace holds one
one-row prediction of the model. The prediction's score and class come from the span's
``ml.output.profile``, its inputs from ``ml.input.profile``, its request from the trace.

Reported: accuracy, precision, recall, AUC (Mann-Whitney, by ranks) and calibration
(mean score vs positive rate, expected calibration error) per time bucket, per model
version and per segment; the onset of a drop (the bucket boundary that best splits the
prediction errors in two, tested with a likelihood-ratio test, Bonferroni over the
boundaries tried); the segments where the drop concentrates (attribute values of the
request: client version, route, tenant, model version); the features whose values
set mispredictions apart (from the input profiles), each linked to the drift finding
of the same window when there is one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from stagetrace import mlprofile, semconv
from stagetrace.backend import Backend, LogQuery
from stagetrace.config import MAX_TIME_NS, UserError, parse_time_ns
from stagetrace.model import LogRecord, Span

from . import mlprofiles as mp
from .report import EvidenceGuard, Finding, Report

ALPHA = 0.01
MIN_SIDE = 20  # labelled predictions on each side of an onset
MIN_DROP = 0.03  # accuracy points: a smaller change is not reported as a drop
MIN_SEGMENT_SHARE = 0.02
MAX_SEGMENT_VALUES = 50
CALIBRATION_BINS = 10
# what the model said, not who asked: an output is no segment of the requests
_NOT_SEGMENTS = {semconv.ML_PREDICTION_CLASS, semconv.ML_PREDICTION_SCORE_MEAN, semconv.ML_PREDICTION_CONFIDENCE_MEAN,
                 semconv.ML_PREDICTION_ID, semconv.ML_OUTPUT_PROFILE, semconv.ML_INPUT_PROFILE, semconv.ML_INPUT_FEATURES}
_TRUE = {"1", "true", "yes", "y", "t", "positive", "pos"}
_FALSE = {"0", "false", "no", "n", "f", "negative", "neg"}


@dataclass(slots=True)
class Labelled:
    """One prediction with its label."""

    span: Span
    row: int
    t_ns: int  # when the prediction was made (span start)
    predicted: int  # class index, -1 when the output had none
    label: int  # class index of the true outcome
    score: float  # positive-class probability (binary), NaN when unknown

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


# --- reading and joining -------------------------------------------------------------

def label_records(backend: Backend, start_ns: int | None) -> list[LogRecord]:
    """Every ``ml.label`` record received from ``start_ns`` on (labels come after their
    predictions, so there is no end)."""
    return backend.find_logs(LogQuery(attributes={semconv.EVENT_NAME: semconv.ML_LABEL_EVENT}, start_ns=start_ns,
                                      end_ns=None, limit=None))


def _class_index(value: Any, classes: list[str]) -> int | None:
    """The class a label value stands for: its text among the model's classes, else a
    boolean/0-1 reading for a two-class model."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if text in classes:
        return classes.index(text)
    if len(classes) == 2:
        low = text.strip().lower()
        c0, c1 = (c.strip().lower() for c in classes)
        if low == c1 or (low in _TRUE and c1 in _TRUE | {"1"}):
            return 1
        if low == c0 or (low in _FALSE and c0 in _FALSE | {"0"}):
            return 0
        if c0 in ("0", "false") and c1 in ("1", "true"):
            if low in _TRUE:
                return 1
            if low in _FALSE:
                return 0
    return None


class _Outputs:
    """Decoded output profiles, once per span."""

    def __init__(self) -> None:
        self._cache: dict[int, mlprofile.OutputProfile | None] = {}

    def get(self, span: Span) -> mlprofile.OutputProfile | None:
        key = id(span)
        if key not in self._cache:
            text = span.attributes.get(semconv.ML_OUTPUT_PROFILE)
            self._cache[key] = mlprofile.decode_output(text) if text is not None else None
        return self._cache[key]


def _positive_score(out: mlprofile.OutputProfile, row: int) -> float:
    s = float(out.scores[row])
    if len(out.classes) != 2 or s != s:
        return math.nan
    if out.predicted is not None and len(out.predicted) and not (len(out.classes) == 2 and _derived(out)):
        # scores are the top-class probability: the positive class's is 1 - s when class 0 won
        p = int(out.predicted[row])
        return s if p == 1 else 1.0 - s if p == 0 else math.nan
    return s


def _derived(out: mlprofile.OutputProfile) -> bool:
    """True when the profile held only the positive-class score (the reader derived
    class and confidence from it)."""
    with np.errstate(invalid="ignore"):
        return bool(np.all(out.predicted == (out.scores > 0.5)) and np.allclose(
            out.confidence, np.maximum(out.scores, 1 - out.scores), equal_nan=True))


def join(spans: Sequence[Span], labels: Sequence[LogRecord], model: str,
         positive: str | None = None) -> tuple[list[Labelled], dict[str, int]]:
    """(labelled predictions, counts of what could not be joined and why)."""
    by_ids: dict[tuple[str, str], Span] = {}
    by_trace: dict[str, list[Span]] = defaultdict(list)
    custom: dict[str, Span] = {}
    for s in spans:
        by_ids[(s.trace_id, s.span_id)] = s
        by_trace[s.trace_id].append(s)
        pid = s.attributes.get(semconv.ML_PREDICTION_ID)
        if pid is not None:
            custom[str(pid)] = s
    outputs = _Outputs()
    counts: Counter = Counter()
    latest: dict[tuple[str, str, int], tuple[int, Any]] = {}
    for rec in labels:
        a = rec.attributes
        lab_model = a.get(semconv.ML_MODEL_NAME)
        if lab_model is not None and str(lab_model) != model:
            counts["other_model"] += 1
            continue
        counts["labels"] += 1
        value = a.get(semconv.ML_LABEL_VALUE)
        pid = a.get(semconv.ML_PREDICTION_ID)
        span, row = None, 0
        if pid is not None:
            parts = mlprofile.split_prediction_id(str(pid))
            if parts is not None:
                span, row = by_ids.get((parts[0], parts[1])), parts[2]
            if span is None:
                span, row = custom.get(str(pid)), 0
        else:
            tid = str(a.get(semconv.ML_LABEL_TRACE_ID) or rec.trace_id or "").lower()
            cands = by_trace.get(tid, [])
            if len(cands) == 1:
                out = outputs.get(cands[0])
                if out is not None and out.rows == 1:
                    span = cands[0]
                elif out is not None:
                    counts["ambiguous"] += 1  # a trace id cannot say which row of a batch
                    continue
            elif len(cands) > 1:
                counts["ambiguous"] += 1
                continue
        if span is None:
            counts["unmatched"] += 1
            continue
        when = _label_time_ns(a.get(semconv.ML_LABEL_TIME), rec.time_ns)
        key = (span.trace_id, span.span_id, int(row))
        if key in latest:
            counts["relabelled"] += 1
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, value)
    result: list[Labelled] = []
    spans_by_key = {(s.trace_id, s.span_id): s for s in spans}
    for (tid, sid, row), (_, value) in latest.items():
        span = spans_by_key[(tid, sid)]
        out = outputs.get(span)
        if out is None or row >= len(out.scores):
            counts["no_output"] += 1  # not profiled, or a row past the ones recorded
            continue
        classes = list(out.classes)
        if positive is not None and len(classes) == 2 and positive in classes and classes.index(positive) == 0:
            classes = classes[::-1]  # the user's positive class is index 1 below
            flip = True
        else:
            flip = False
        idx = _class_index(value, classes)
        if idx is None:
            counts["unknown_value"] += 1
            continue
        pred = int(out.predicted[row])
        score = _positive_score(out, row)
        if flip:
            pred = 1 - pred if pred in (0, 1) else pred
            score = 1.0 - score if score == score else score
        result.append(Labelled(span, row, span.start_ns, pred, idx, score))
    result.sort(key=lambda x: x.t_ns)
    counts["joined"] = len(result)
    return result, dict(counts)


# --- metrics -----------------------------------------------------------------------------

def _label_time_ns(value: Any, default: int) -> int:
    """``ml.label.time`` as a number (our store) or as text (Loki returns every attribute
    as a string); ``default`` (the record's time) when it is absent or unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # NaN, an infinity or a time past 2262 (a sender's bug) has no instant: the record's own
        return int(value) if math.isfinite(value) and 0 <= value <= MAX_TIME_NS else default
    if isinstance(value, str):
        try:
            return parse_time_ns(value, semconv.ML_LABEL_TIME)
        except UserError:
            return default
    return default


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U); None without both classes."""
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    r = stats.rankdata(p)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[list[dict], float | None]:
    """Reliability table (equal-width score bins) and the expected calibration error."""
    ok = ~np.isnan(p)
    y, p = y[ok], p[ok]
    if not len(p):
        return [], None
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        if not n:
            continue
        mean_p, rate = float(p[m].mean()), float(y[m].mean())
        ece += n / len(p) * abs(mean_p - rate)
        table.append({"bin": f"[{b / bins:.1f}, {(b + 1) / bins:.1f})", "predictions": n, "mean_score": mean_p,
                      "positive_rate": rate})
    return table, float(ece)


def metrics(items: Sequence[Labelled], binary: bool) -> dict[str, Any]:
    n = len(items)
    if not n:
        return {"labelled": 0}
    y = np.array([x.label for x in items])
    yhat = np.array([x.predicted for x in items])
    out: dict[str, Any] = {"labelled": n, "accuracy": float((y == yhat).mean()), "errors": int((y != yhat).sum())}
    if binary:
        p = np.array([x.score for x in items], dtype=float)
        tp = int(((yhat == 1) & (y == 1)).sum())
        out["precision"] = tp / int((yhat == 1).sum()) if (yhat == 1).any() else None
        out["recall"] = tp / int((y == 1).sum()) if (y == 1).any() else None
        out["positive_rate"] = float(y.mean())
        out["auc"] = auc(y, p)
        with np.errstate(invalid="ignore"):
            out["mean_score"] = float(np.nanmean(p)) if (~np.isnan(p)).any() else None
        out["calibration_gap"] = (out["mean_score"] - out["positive_rate"]) if out["mean_score"] is not None else None
        # the mean score can match the positive rate while every bin is off (over-confidence)
        out["ece"] = calibration(y, p)[1]
    return out


# --- onset and segments ---------------------------------------------------------------------

def _loglik(k: int, n: int) -> float:
    if n == 0 or k == 0 or k == n:
        return 0.0
    p = k / n
    return k * math.log(p) + (n - k) * math.log(1 - p)


def find_onset(items: Sequence[Labelled], start_ns: int, interval_ns: int, n_buckets: int,
               alpha: float = ALPHA) -> dict[str, Any] | None:
    """The bucket boundary that best splits the errors (time order) into a lower then a
    higher error rate: likelihood ratio of one rate vs two, G-test p-value with
    Bonferroni over the boundaries tried; None when no boundary clears it or the
    accuracy fell by less than ``MIN_DROP``."""
    if len(items) < 2 * MIN_SIDE:
        return None
    err = np.array([not x.correct for x in items], dtype=np.int64)
    t = np.array([x.t_ns for x in items], dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(err)])
    n, k = len(err), int(err.sum())
    cands = []
    for b in range(1, n_buckets):
        cut = int(np.searchsorted(t, start_ns + b * interval_ns, side="left"))
        if cut < MIN_SIDE or n - cut < MIN_SIDE:
            continue
        k1, k2 = int(cum[cut]), k - int(cum[cut])
        if k2 / (n - cut) <= k1 / cut:
            continue  # errors fell: not a drop
        g = 2 * (_loglik(k1, cut) + _loglik(k2, n - cut) - _loglik(k, n))
        cands.append((g, b, cut, k1, k2))
    if not cands:
        return None
    g, b, cut, k1, k2 = max(cands)
    p = float(stats.chi2.sf(g, 1))
    before, after = 1 - k1 / cut, 1 - k2 / (n - cut)
    tried = max(1, n_buckets - 1)
    if p >= alpha / tried or before - after < MIN_DROP:
        return None
    return {"onset_ns": start_ns + b * interval_ns, "bucket": b, "p_value": p, "g": g,
            "accuracy_before": before, "accuracy_after": after, "labelled_before": cut, "labelled_after": n - cut,
            "boundaries_tried": tried}


def _segments(items: Sequence[Labelled], seg_attrs: dict[tuple[str, str], dict], onset_ns: int | None,
              alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Attribute values whose predictions got worse than the rest's: errors inside vs
    outside the segment after the onset (the whole window without one), Fisher's exact
    test with Bonferroni over the values tried; ranked by the errors in excess of the
    outside rate they hold (so a big segment that carries the drop outranks a tiny one
    that is only a little worse)."""
    after = [x for x in items if onset_ns is None or x.t_ns >= onset_ns]
    before = [x for x in items if onset_ns is not None and x.t_ns < onset_ns]
    values: dict[str, dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, x in enumerate(after):
        for k, v in seg_attrs.get((x.span.trace_id, x.span.span_id), {}).items():
            if k not in _NOT_SEGMENTS:
                values[k][v].append(i)
    before_by: dict[tuple[str, Any], list[Labelled]] = defaultdict(list)
    for x in before:
        for k, v in seg_attrs.get((x.span.trace_id, x.span.span_id), {}).items():
            before_by[(k, v)].append(x)
    total = len(after)
    err = np.array([not x.correct for x in after], dtype=bool)
    cands = []
    for attr, by in values.items():
        if len(by) < 2 or len(by) > MAX_SEGMENT_VALUES:
            continue
        for v, idx in by.items():
            if len(idx) < max(5, MIN_SEGMENT_SHARE * total) or len(idx) == total:
                continue
            inside = np.zeros(total, dtype=bool)
            inside[idx] = True
            ni, no = int(inside.sum()), int((~inside).sum())
            ei, eo = int(err[inside].sum()), int(err[~inside].sum())
            cands.append((attr, v, ni, no, ei, eo, idx))
    found = []
    for attr, v, ni, no, ei, eo, idx in cands:
        rate_in, rate_out = ei / ni, eo / no
        if rate_in <= rate_out:
            continue
        p = float(stats.fisher_exact([[ei, ni - ei], [eo, no - eo]], alternative="greater")[1])
        if p >= alpha / max(1, len(cands)):
            continue
        b = before_by.get((attr, v), [])
        acc_before = 1 - sum(not x.correct for x in b) / len(b) if b else None
        found.append({"attribute": attr, "value": v, "accuracy_inside": 1 - rate_in, "accuracy_outside": 1 - rate_out,
                      "accuracy_inside_before": acc_before, "labelled": ni, "share": ni / total, "p_value": p,
                      "excess_errors": ei - rate_out * ni,
                      "example_trace_ids": [after[i].span.trace_id for i in idx if err[i]][-3:], "_idx": idx})
    found.sort(key=lambda f: (-f["excess_errors"], f["p_value"]))
    found = _unconfound(found, err, alpha)
    for f in found:
        del f["_idx"]
    return found


def _unconfound(found: list[dict[str, Any]], err: np.ndarray, alpha: float) -> list[dict[str, Any]]:
    """Put a segment whose excess errors are another's after that one.

    Why: two request attributes can share the errors of one cause. In the demo, the
    clients drifting into cents hurt the v1 model far more than the v2 canary (trees
    saturate, a linear model extrapolates: benchmarks/demo_canary_confound.py), so after
    the canary starts ``ml.model.version=v1`` is worse than v2 too, and in a short window
    its excess can outrank the drifting client's. S is explained by T when, outside T,
    S is no worse than the rest (not significantly, one-sided Fisher at ``alpha``), while
    T is worse than the rest both inside and outside S, and better supported outside S
    than S is outside T: T's effect holds whichever value S takes, S's is only T's. The explained segment stays in the list (it is worse:
    an interaction worth seeing), with ``explained_by`` naming T."""
    total = len(err)
    masks = []
    for f in found:
        m = np.zeros(total, dtype=bool)
        m[f["_idx"]] = True
        masks.append(m)

    def excess(a: np.ndarray, within: np.ndarray) -> tuple[int, int, int, int] | None:
        ins, outs = a & within, ~a & within
        ni, no = int(ins.sum()), int(outs.sum())
        return (int(err[ins].sum()), ni, int(err[outs].sum()), no) if ni >= 5 and no >= 5 else None

    def worse(c: tuple[int, int, int, int] | None) -> bool:
        return c is not None and c[0] / c[1] > c[2] / c[3]

    def p_worse(c: tuple[int, int, int, int] | None) -> float:  # one-sided Fisher; 1 when not worse at all
        if not worse(c):
            return 1.0
        ei, ni, eo, no = c  # type: ignore[misc]
        return float(stats.fisher_exact([[ei, ni - ei], [eo, no - eo]], alternative="greater")[1])
    explainer: dict[int, int] = {}
    for i, f in enumerate(found):
        for j, g in enumerate(found):
            if j == i or g["attribute"] == f["attribute"] or j in explainer:
                continue
            s, t = masks[i], masks[j]
            s_alone, t_alone = p_worse(excess(s, ~t)), p_worse(excess(t, ~s))
            # (t_alone < s_alone: of two segments that could each explain the other in a small
            # window, the one better supported without the other stays first)
            if s_alone >= alpha and t_alone < s_alone and worse(excess(t, s)):  # (t_alone < 1: worse outside S)
                explainer[i] = j
                f["explained_by"] = f"{g['attribute']}={g['value']}"
                break
    out = [f for i, f in enumerate(found) if i not in explainer]
    for i in sorted(explainer):  # each after the segment that explains it
        j = explainer[i]
        at = next((k + 1 for k, x in enumerate(out) if x is found[j]), len(out))
        out.insert(at, found[i])
    return out


def _by_segment(items: Sequence[Labelled], seg_attrs: dict[tuple[str, str], dict], binary: bool,
                max_attrs: int = 5, max_values: int = 10) -> list[dict[str, Any]]:
    """Metrics per value of the request attributes that split the labelled predictions
    into 2..``max_values`` groups (client version, route, tenant...), the attributes whose
    accuracy varies most first."""
    groups: dict[str, dict[Any, list[Labelled]]] = defaultdict(lambda: defaultdict(list))
    for x in items:
        for k, v in seg_attrs.get((x.span.trace_id, x.span.span_id), {}).items():
            if k not in _NOT_SEGMENTS:
                groups[k][v].append(x)
    ranked = []
    for attr, by in groups.items():
        if not 2 <= len(by) <= max_values:
            continue
        rows = [{"attribute": attr, "value": v, **metrics(xs, binary)} for v, xs in
                sorted(by.items(), key=lambda kv: str(kv[0]))]
        accs = [r["accuracy"] for r in rows if r["labelled"] >= 5]
        ranked.append((max(accs) - min(accs) if len(accs) > 1 else 0.0, attr, rows))
    ranked.sort(key=lambda t: (-t[0], t[1]))
    return [r for _, _, rows in ranked[:max_attrs] for r in rows]


def _split(items: Sequence[Labelled], onset_ns: int) -> dict[str, Any]:
    before = [x for x in items if x.t_ns < onset_ns]
    after = [x for x in items if x.t_ns >= onset_ns]
    acc = (lambda xs: sum(x.correct for x in xs) / len(xs) if xs else None)  # noqa: E731
    return {"accuracy_before": acc(before), "accuracy_after": acc(after), "labelled_before": len(before),
            "labelled_after": len(after)}


def _segment_onset(items: Sequence[Labelled], seg_attrs: dict[tuple[str, str], dict], segs: list[dict],
                   start_ns: int, interval_ns: int, n_buckets: int) -> dict[str, Any] | None:
    """The onset found inside the segment named first (None without one or a drop there);
    accuracies before/after are the whole stream's at that boundary, the segment's own
    test is kept under ``segment``."""
    if not segs:
        return None
    attr, value = segs[0]["attribute"], segs[0]["value"]
    inside = [x for x in items if seg_attrs.get((x.span.trace_id, x.span.span_id), {}).get(attr) == value]
    on = find_onset(inside, start_ns, interval_ns, n_buckets)
    if on is None:
        return None
    return {**on, **_split(items, on["onset_ns"]), "located_in": {"attribute": attr, "value": value},
            "segment": {k: on[k] for k in ("accuracy_before", "accuracy_after", "labelled_before", "labelled_after")}}


def _row_dists(items: Sequence[Labelled], profiles: dict[int, Any]) -> dict[str, mp.FeatureDist]:
    """Per-feature distributions of the given predictions' own rows (from the input
    profiles; a row of a sampled batch counts only when it was sampled)."""
    dists: dict[str, mp.FeatureDist] = {}
    for x in items:
        key = id(x.span)
        if key not in profiles:
            profiles[key] = mp.span_profile(x.span)
        got = profiles[key]
        if got is None:
            continue
        names, prof = got
        step = -(-prof.rows // prof.sampled) if prof.sampled and prof.sampled < prof.rows else 1
        if x.row % step or x.row // step >= prof.sampled:
            continue
        codes = prof.codes[x.row // step]
        miss = mlprofile.is_missing(codes)
        for j, name in enumerate(names):
            d = dists.get(name)
            if d is None:
                d = dists[name] = mp.FeatureDist(prof.kinds[j])
            d.rows += 1
            if miss[j]:
                d.missing += 1
            elif d.kind != "r":
                d.counts[int(codes[j])] += 1
    return dists


def _row_iccs(reference: Path | None, spans: Sequence[Span]) -> dict[str, float]:
    """How alike the rows of one call are per feature: the reference's, measured on
    stored predictions without the drop, else measured on ``spans``."""
    from .drift import load_reference

    if reference is not None and Path(reference).exists():
        raw = load_reference(Path(reference))[2].get("row_correlations")
        if isinstance(raw, dict) and raw:
            return {str(k): float(v) for k, v in raw.items()}
    unique = list({id(s): s for s in spans}.values())
    return mp.row_correlations(unique)[0]


def _feature_differences(wrong: Sequence[Labelled], right: Sequence[Labelled], alpha: float = ALPHA,
                         iccs: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Features whose values differ between mispredicted and correct predictions: the
    missing share (Fisher's exact test) and the distribution (PSI + chi-square), most
    different first; ``significant`` with Bonferroni over the features. ``iccs``: how
    alike the rows of one call are per feature (:func:`.mlprofiles.row_correlations`); the
    mispredictions of one request share its account's values, so each side's counts
    are divided by its design effect before testing."""
    profiles: dict[int, Any] = {}
    w, r = _row_dists(wrong, profiles), _row_dists(right, profiles)
    per_call_w = list(Counter(id(x.span) for x in wrong).values())
    per_call_r = list(Counter(id(x.span) for x in right).values())
    iccs = iccs or {}
    names = [n for n in w if n in r]
    m = max(1, len(names))
    out = []
    for name in names:
        fw, fr = w[name], r[name]
        if fw.rows < 5 or fr.rows < 5:
            continue
        miss_w, miss_r = fw.missing / fw.rows, fr.missing / fr.rows
        icc = iccs.get(name, 0.0)
        ew = mp.effective(fw, mp.design_effect(icc, per_call_w))
        er = mp.effective(fr, mp.design_effect(icc, per_call_r))
        mw, mr, nw, nr = (int(round(v)) for v in (ew.missing, er.missing, ew.rows, er.rows))
        p_miss = float(stats.fisher_exact([[mw, max(0, nw - mw)], [mr, max(0, nr - mr)]])[1])
        sig_miss = p_miss < alpha / m and abs(miss_w - miss_r) >= 0.1
        sh = mp.compare(name, er, ew, tests=m, alpha=alpha)
        sig_shift = sh is not None and sh.significant
        entry = {"feature": name, "mispredicted_rows": fw.rows, "correct_rows": fr.rows,
                 "missing_mispredicted": miss_w, "missing_correct": miss_r, "missing_p_value": p_miss,
                 "psi": sh.psi if sh else 0.0, "p_value": sh.p_value if sh else 1.0,
                 "top_group": sh.top_group if sh else None, "groups": sh.groups if sh else [],
                 "significant": bool(sig_miss or sig_shift)}
        entry["score"] = abs(miss_w - miss_r) * 10 * sig_miss + (sh.psi if sh else 0.0)
        out.append(entry)
    out.sort(key=lambda e: (not e["significant"], -e["score"]))
    return out


# --- the investigation ---------------------------------------------------------------------

def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _series(items: Sequence[Labelled], start_ns: int, interval_ns: int, n: int, binary: bool) -> list[dict]:
    buckets: list[list[Labelled]] = [[] for _ in range(n)]
    for x in items:
        buckets[min(n - 1, max(0, (x.t_ns - start_ns) // interval_ns))].append(x)
    return [{"start_ns": start_ns + i * interval_ns, **metrics(b, binary)} for i, b in enumerate(buckets)]


def investigate_quality(backend: Backend, *, model: str, version: str | None, start_ns: int, end_ns: int,
                        interval_ns: int | None = None, reference: Path | None = None,
                        positive: str | None = None, with_drift: bool = True,
                        drift_report: Report | None = None) -> Report:
    """``drift_report``: the drift investigation of the same window, when the caller has
    already made it (else it is made here, unless ``with_drift`` is False)."""
    from .drift import _segment_attrs, inference_spans, investigate_drift
    from .window import fmt_time

    title = f"Quality of {model}" + (f" {version}" if version else "")
    query = {"model": model, "version": version, "positive": positive}
    window = {"start_ns": start_ns, "end_ns": end_ns}
    guard = EvidenceGuard()
    spans = inference_spans(backend, model, version, start_ns, end_ns)
    if not spans:
        return Report(kind="quality", title=title, query=query, window=window,
                      verdict=[f"No profiled inference spans of model {model!r} in the window."])
    span_len = end_ns - start_ns
    labels = label_records(backend, start_ns - span_len)
    items, counts = join(spans, labels, model, positive)
    data: dict[str, Any] = {"predictions": len(spans), "join": counts}
    notes: list[str] = []
    if counts.get("unmatched"):
        notes.append(f"{counts['unmatched']} label(s) matched no profiled prediction of {model!r} in the window "
                     "(made outside it, by another model, or not profiled).")
    if counts.get("ambiguous"):
        notes.append(f"{counts['ambiguous']} label(s) gave only a trace id whose trace holds a batch or several "
                     "predictions: send the prediction id (with -<row>) instead.")
    if counts.get("unknown_value"):
        notes.append(f"{counts['unknown_value']} label value(s) are not among the model's classes.")
    if not items:
        return Report(kind="quality", title=title, query=query, window=window, data=data, notes=notes,
                      verdict=[f"No labels joined to the {len(spans)} predictions of {model!r} in the window "
                               f"({counts.get('labels', 0)} ml.label records read)."])
    n_classes = max(len(mlprofile.decode_output(x.span.attributes[semconv.ML_OUTPUT_PROFILE]).classes)
                    for x in items[:1])
    binary = n_classes == 2
    interval = interval_ns or max(1, span_len // 20)
    n_buckets = max(1, int(math.ceil(span_len / interval)))
    overall = metrics(items, binary)
    data["overall"] = overall
    data["interval_ns"] = interval
    data["series"] = _series(items, start_ns, interval, n_buckets, binary)
    if binary:
        table, ece = calibration(np.array([x.label for x in items]), np.array([x.score for x in items], dtype=float))
        data["calibration"] = {"bins": table, "ece": ece}
    by_version: dict[str, list[Labelled]] = defaultdict(list)
    for x in items:
        by_version[str(x.span.attributes.get(semconv.ML_MODEL_VERSION, "unknown"))].append(x)
    data["versions"] = [{"version": v, **metrics(xs, binary)} for v, xs in sorted(by_version.items())]

    onset = guard.run("onset", find_onset, items, start_ns, interval, n_buckets)
    seg_attrs = guard.run("segment attributes", _segment_attrs, backend, [x.span for x in items], start_ns, end_ns,
                          default={}) or {}
    segs = guard.run("segments", _segments, items, seg_attrs, onset["onset_ns"] if onset else None, default=[]) or []
    # A drop confined to one segment is diluted in the whole stream (a quarter of the
    # traffic losing 25 points moves the total by 6): its onset is located inside the
    # segment that holds it, and a drop too diluted to show in the total is found there.
    refined = guard.run("segment onset", _segment_onset, items, seg_attrs, segs, start_ns, interval, n_buckets)
    if refined is not None and (onset is None or refined["onset_ns"] != onset["onset_ns"]):
        onset = refined
        segs = guard.run("segments", _segments, items, seg_attrs, onset["onset_ns"], default=[]) or []
    data["onset"] = onset
    data["segments"] = segs[:10]
    data["by_segment"] = guard.run("per-segment metrics", _by_segment, items, seg_attrs, binary, default=[]) or []
    after = [x for x in items if onset is None or x.t_ns >= onset["onset_ns"]]
    wrong = [x for x in after if not x.correct]
    # The new mispredictions are those of the segment the drop concentrates in: the
    # rest of the stream's errors are the usual ones and would dilute what changed.
    where_new = ""
    if onset and segs:
        s0 = segs[0]
        in_seg = [x for x in wrong
                  if seg_attrs.get((x.span.trace_id, x.span.span_id), {}).get(s0["attribute"]) == s0["value"]]
        if len(in_seg) >= MIN_SIDE:
            wrong, where_new = in_seg, f" in {s0['attribute']}={s0['value']}"
    # Errors always differ from correct predictions near the decision boundary; what
    # a drop changed is best seen against the errors the model made before it.
    usual = [x for x in items if onset is not None and x.t_ns < onset["onset_ns"] and not x.correct]
    if len(usual) >= MIN_SIDE:
        versus, versus_label = usual, "mispredictions before the onset"
    else:
        versus, versus_label = [x for x in after if x.correct], "correct predictions"
    iccs = guard.run("row correlations", _row_iccs, reference, [x.span for x in (usual or items)], default={}) or {}
    feats = guard.run("feature differences", _feature_differences, wrong, versus, iccs=iccs, default=[]) or []
    data["features"] = feats
    data["features_compared_with"] = versus_label
    data["mispredictions_compared"] = {"rows": len(wrong), "where": where_new.strip() or None}

    drift_by_feature: dict[str, Finding] = {}
    if with_drift:
        drep = drift_report if drift_report is not None else guard.run(
            "drift", investigate_drift, backend, model=model, version=version, start_ns=start_ns, end_ns=end_ns,
            reference=reference, interval_ns=interval)
        if drep is not None:
            for f in drep.findings:
                drift_by_feature.setdefault(str(f.evidence.get("feature")), f)
            data["drift"] = [{"feature": f.evidence.get("feature"), "psi": f.evidence.get("psi"),
                              "onset_ns": f.evidence.get("onset_ns"), "summary": f.summary} for f in drep.findings]

    findings: list[Finding] = []
    verdict: list[str] = []
    seg0 = segs[0] if segs else None
    if onset:
        where = ""
        if seg0:
            where = (f"; concentrated in {seg0['attribute']}={seg0['value']} (accuracy {_fmt_pct(seg0['accuracy_inside'])} "
                     f"there vs {_fmt_pct(seg0['accuracy_outside'])} elsewhere, {seg0['share']:.0%} of the labelled "
                     "predictions since)")
        inner = ""
        if onset.get("located_in"):
            li, sg = onset["located_in"], onset["segment"]
            inner = (f"; located in {li['attribute']}={li['value']}, whose accuracy fell from "
                     f"{_fmt_pct(sg['accuracy_before'])} to {_fmt_pct(sg['accuracy_after'])}")
        summary = (f"accuracy fell from {_fmt_pct(onset['accuracy_before'])} to {_fmt_pct(onset['accuracy_after'])} "
                   f"from {fmt_time(onset['onset_ns'])} ({onset['labelled_after']} labelled predictions since, "
                   f"p={onset['p_value']:.1e}{inner}){where}")
        findings.append(Finding(kind="quality", summary=summary, score=onset["accuracy_before"] - onset["accuracy_after"],
                                confidence="high" if onset["p_value"] < 1e-6 else "medium",
                                metric="accuracy", attribute=seg0["attribute"] if seg0 else None,
                                value=seg0["value"] if seg0 else None,
                                evidence={**onset, "segments": segs[:5],
                                          "example_trace_ids": seg0["example_trace_ids"] if seg0 else
                                          [x.span.trace_id for x in wrong[-3:]]}))
        verdict.append(summary[0].upper() + summary[1:] + ".")
    else:
        verdict.append(f"No significant quality drop: accuracy {_fmt_pct(overall['accuracy'])} over "
                       f"{overall['labelled']} labelled predictions"
                       + (f", AUC {overall['auc']:.3f}" if binary and overall.get("auc") is not None else "") + ".")
    for s in segs[:5]:
        before = s["accuracy_inside_before"]
        summary = (f"{s['attribute']}={s['value']}: accuracy {_fmt_pct(s['accuracy_inside'])} vs "
                   f"{_fmt_pct(s['accuracy_outside'])} elsewhere" + (" since the onset" if onset else "")
                   + (f" (was {_fmt_pct(before)} before)" if before is not None else "")
                   + f"; {s['labelled']} labelled predictions, p={s['p_value']:.1e}"
                   + (f"; no worse than the rest outside {s['explained_by']}, which is worse with or without it"
                      if s.get("explained_by") else ""))
        findings.append(Finding(kind="attribute", summary=summary, score=s["excess_errors"] / max(1, len(after)),
                                confidence="high" if s["p_value"] < 1e-6 else "medium", attribute=s["attribute"],
                                value=s["value"], evidence=s))
        if not onset and s is seg0:
            verdict.append(f"Worst segment: {summary}.")
    linked = []
    for e in feats:
        if not e["significant"]:
            continue
        mis = ("mispredictions since the onset" + where_new) if onset else "mispredictions"
        if e["missing_mispredicted"] - e["missing_correct"] >= 0.1:
            what = (f"{e['feature']} missing in {e['missing_mispredicted']:.0%} of {mis} vs "
                    f"{e['missing_correct']:.0%} of {versus_label}")
        else:
            what = (f"{e['feature']} sets {mis} apart from {versus_label} (PSI {e['psi']:.2f}); "
                    f"they concentrate in {e['top_group']}")
        d = drift_by_feature.get(e["feature"])
        if d is not None:
            on = d.evidence.get("onset_ns")
            what += f"; the same feature drifted in this window (PSI {d.evidence.get('psi', 0):.2f}" + (
                f", from {fmt_time(on)}" if on else "") + ")"
            linked.append(e["feature"])
        findings.append(Finding(kind="feature", summary=what, score=e["score"], confidence="medium",
                                evidence={**e, "drift": d.to_dict() if d is not None else None}))
    if findings and any(f.kind == "feature" for f in findings):
        top = next(f for f in findings if f.kind == "feature")
        verdict.append("Mispredictions: " + top.summary + ".")
    if drift_by_feature and not linked:
        verdict.append("Drift in the same window: " + next(iter(drift_by_feature.values())).summary + ".")
    if binary and overall.get("auc") is not None:
        verdict.append(f"Window: accuracy {_fmt_pct(overall['accuracy'])}, precision {_fmt_pct(overall.get('precision'))}, "
                       f"recall {_fmt_pct(overall.get('recall'))}, AUC {overall['auc']:.3f}, mean score "
                       f"{overall['mean_score']:.3f} vs positive rate {overall['positive_rate']:.3f} "
                       f"(ECE {data['calibration']['ece']:.3f}); {overall['labelled']} labelled predictions in {len(spans)} model calls.")
    data["tables"] = _tables(data, binary)
    rep = Report(kind="quality", title=title, findings=findings, verdict=verdict, query=query, window=window,
                 data=data, notes=notes)
    guard.note(rep)
    return rep


def _tables(data: dict[str, Any], binary: bool) -> list[dict[str, Any]]:
    """Plain tables every renderer draws (``data.tables``)."""
    from .window import fmt_time

    def pct(x: Any) -> str:
        return "" if x is None else f"{x:.1%}"

    def num(x: Any) -> str:
        return "" if x is None else f"{x:.3f}"
    cols = ["bucket start", "labelled", "accuracy"] + (["precision", "recall", "AUC", "mean score", "positive rate"]
                                                      if binary else [])
    rows = []
    for b in data["series"]:
        if not b.get("labelled"):
            continue
        row = [fmt_time(b["start_ns"]), str(b["labelled"]), pct(b.get("accuracy"))]
        if binary:
            row += [pct(b.get("precision")), pct(b.get("recall")), num(b.get("auc")), num(b.get("mean_score")),
                    num(b.get("positive_rate"))]
        rows.append(row)
    tables = [{"title": "Quality over time", "columns": cols, "rows": rows}]
    # calibration per version and segment: a canary can rank as well and score too high
    vcols = ["version", "labelled", "accuracy"] + (["precision", "recall", "AUC", "mean score", "positive rate", "ECE"]
                                                   if binary else [])

    def quality_cells(r: dict[str, Any]) -> list[str]:
        return [str(r["labelled"]), pct(r.get("accuracy"))] + (
            [pct(r.get("precision")), pct(r.get("recall")), num(r.get("auc")), num(r.get("mean_score")),
             num(r.get("positive_rate")), num(r.get("ece"))] if binary else [])
    tables.append({"title": "Per model version", "columns": vcols, "rows": [
        [str(v["version"]), *quality_cells(v)] for v in data["versions"]]})
    if data.get("segments"):
        tables.append({"title": "Segments where predictions got worse", "columns":
                       ["segment", "labelled", "accuracy inside", "accuracy elsewhere", "p"], "rows": [
                           [f"{s['attribute']}={s['value']}", str(s["labelled"]), pct(s["accuracy_inside"]),
                            pct(s["accuracy_outside"]), f"{s['p_value']:.1e}"] for s in data["segments"]]})
    if data.get("by_segment"):
        tables.append({"title": "Per segment (window)", "columns": vcols[:0] + ["segment"] + vcols[1:], "rows": [
            [f"{r['attribute']}={r['value']}", *quality_cells(r)] for r in data["by_segment"]]})
    if binary and data.get("calibration", {}).get("bins"):
        tables.append({"title": "Calibration (window)", "columns": ["score bin", "predictions", "mean score",
                                                                   "positive rate"], "rows": [
            [b["bin"], str(b["predictions"]), num(b["mean_score"]), num(b["positive_rate"])]
            for b in data["calibration"]["bins"]]})
    return tables
