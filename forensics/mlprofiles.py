"""Feature distributions from the profiles on inference spans, and the tests that
compare two of them (PSI plus chi-square, sample-size aware).

Used by ``investigate drift`` (:mod:`.drift`), ``stagetrace profile build`` and, for
the lead's errors/slow investigations, :func:`compare_input_profiles`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import scipy  # scipy.stats is imported on first use (stats.prefetch)

from stagetrace import mlprofile, semconv
from stagetrace.model import Span, Trace

ALPHA = 0.01  # family-wise, Bonferroni over the features tested
PSI_MIN = 0.1  # the usual "moderate shift" bar; raised when the samples are small
MAX_GROUPS = 10
MISSING = "missing"
NEW = "new category"
OTHER = "other categories"
PREDICTION = "prediction score"  # the model's scores, compared like a feature
SCORE_STEPS = 20  # a classifier's scores (probabilities) are counted on a 0.05 grid: kind "s", code = step
MIN_ICC_CALLS = 50  # calls: fewer give no usable estimate of how alike the rows of one call are


@dataclass(slots=True)
class FeatureDist:
    """One feature's observed values: bin/category code counts, missing values, rows."""

    kind: str  # n | c | r, or s: a classifier's scores, code = the 0.05 step (score_dist)
    counts: Counter = field(default_factory=Counter)
    missing: int = 0
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "missing": self.missing, "rows": self.rows,
                "counts": {str(k): v for k, v in sorted(self.counts.items())}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureDist":
        return cls(d["kind"], Counter({int(k): int(v) for k, v in d["counts"].items()}), int(d["missing"]),
                   int(d["rows"]))


def add_profile(dists: dict[str, FeatureDist], names: Sequence[str], prof: mlprofile.InputProfile) -> None:
    """Add one span's profile to per-feature distributions (sampled rows for the
    shape, all rows for missing counts)."""
    miss = mlprofile.is_missing(prof.codes)
    for j, name in enumerate(names):
        d = dists.get(name)
        if d is None:
            d = dists[name] = FeatureDist(prof.kinds[j])
        col = prof.codes[:, j]
        d.counts.update(col[~miss[:, j]].tolist() if d.kind != "r" else [])
        d.missing += int(prof.missing[j])
        d.rows += prof.rows


def span_profile(span: Span) -> tuple[list[str], mlprofile.InputProfile] | None:
    text = span.attributes.get(semconv.ML_INPUT_PROFILE)
    if text is None:
        return None
    prof = mlprofile.decode_input(text)
    if prof is None:
        return None
    names = mlprofile.parse_feature_list(span.attributes.get(semconv.ML_INPUT_FEATURES))
    if len(names) != prof.width:
        names = [f"f{i}" for i in range(prof.width)]
    return names, prof


def distributions(spans: Iterable[Span]) -> dict[str, FeatureDist]:
    dists: dict[str, FeatureDist] = {}
    for sp in spans:
        got = span_profile(sp)
        if got is not None:
            add_profile(dists, got[0], got[1])
    return dists


# --- rows that are not independent --------------------------------------------------------

def _icc(groups: list[np.ndarray]) -> float:
    """Intra-class correlation of values grouped by call (one-way ANOVA estimator),
    clipped to [0, 1]."""
    groups = [g for g in groups if len(g)]
    k = len(groups)
    n = sum(len(g) for g in groups)
    if k < 2 or n <= k:
        return 0.0
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    means = np.array([g.mean() for g in groups])
    grand = float(np.concatenate(groups).mean())
    msb = float((sizes * (means - grand) ** 2).sum()) / (k - 1)
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups)) / (n - k)
    m0 = (n - float((sizes ** 2).sum()) / n) / (k - 1)
    if msw == 0.0:
        return 1.0 if msb > 0 else 0.0
    return float(min(1.0, max(0.0, (msb - msw) / (msb + (m0 - 1) * msw))))


def row_correlations(spans: list[Span]) -> tuple[dict[str, float], dict[str, float]]:
    """(ICC, design effect) per feature and for the prediction scores.

    The rows of one call are not independent draws when they share values (every
    transaction of a request carries the same account's features), and a test that
    counts them as such calls drift on noise. Kish's design effect, 1 + (m - 1) * ICC
    with m the size-weighted mean rows per call, is the factor by which the rows
    overstate the evidence; dividing the counts by it gives the effective sample. ICC
    on the bin order (numeric) or the category code (categorical: equal codes are what
    matters there), from a one-way ANOVA of rows within and between calls; and on whether
    the value is missing, when it is missing anywhere (a client that omits a feature omits
    it in every row of its request): the larger of the two."""
    per: dict[str, list[np.ndarray]] = {}
    missing: dict[str, list[np.ndarray]] = {}
    for sp in spans:
        got = span_profile(sp)
        if got is not None:
            names, prof = got
            miss = mlprofile.is_missing(prof.codes)
            order = mlprofile.bin_order(prof.codes)
            for j, name in enumerate(names):
                if prof.kinds[j] == "r":
                    continue
                vals = (order if prof.kinds[j] == "n" else prof.codes.astype(np.int64))[~miss[:, j], j]
                per.setdefault(name, []).append(vals.astype(np.float64))
                missing.setdefault(name, []).append(miss[:, j].astype(np.float64))
        text = sp.attributes.get(semconv.ML_OUTPUT_PROFILE)
        out = mlprofile.decode_output(text) if text is not None else None
        if out is not None:
            sc = out.scores.astype(np.float64)
            per.setdefault(PREDICTION, []).append(np.floor(sc[~np.isnan(sc)] * SCORE_STEPS))  # score_dist's grid
    iccs, effects = {}, {}
    for name, groups in per.items():
        sizes = [len(g) for g in groups if len(g)]
        flags = [f for f in missing.get(name, []) if len(f)]
        icc_v = _icc(groups) if sizes else 0.0
        icc_m = _icc(flags) if any(f.any() for f in flags) else 0.0
        if not sizes and not icc_m:
            continue
        iccs[name] = max(icc_v, icc_m)
        effects[name] = max(design_effect(icc_v, sizes) if sizes else 1.0,
                            design_effect(icc_m, [len(f) for f in flags]) if icc_m else 1.0)
    return iccs, effects


def design_effect(icc: float, sizes: list[int]) -> float:
    """1 + (m - 1) * ICC for calls contributing ``sizes`` rows each."""
    n = sum(sizes)
    m = sum(k * k for k in sizes) / n if n else 1.0
    return max(1.0, 1.0 + (m - 1.0) * icc)


def design_effects(spans: list[Span]) -> dict[str, float]:
    return row_correlations(spans)[1]


def call_sizes(spans: list[Span]) -> list[int]:
    """Rows each call contributes to the distributions (its sampled rows)."""
    sizes = []
    for sp in spans:
        got = span_profile(sp)
        if got is not None and got[1].sampled:
            sizes.append(got[1].sampled)
    return sizes


def effective(d: FeatureDist, deff: float) -> FeatureDist:
    """``d`` as the effective sample it is worth: every count divided by its design effect."""
    if deff <= 1.0:
        return d
    return FeatureDist(d.kind, Counter({k: v / deff for k, v in d.counts.items()}), d.missing / deff,
                          d.rows / deff)


# --- grouping and tests ---------------------------------------------------------------

def groups_for(ref: FeatureDist, cur: FeatureDist) -> tuple[list[str], Any]:
    """Group labels and a code -> group index function, from the reference: up to
    ``MAX_GROUPS`` quantile groups of the ordered bins (numeric) or the most common
    categories plus "other" and "new" (categorical); "missing" last."""
    if ref.kind == "c" or cur.kind == "c":
        top = [c for c, _ in ref.counts.most_common(MAX_GROUPS - 2)]
        index = {c: i for i, c in enumerate(top)}
        labels = [f"category #{c}" for c in top] + [OTHER, NEW]
        known = set(ref.counts)

        def of(code: int) -> int:
            i = index.get(code)
            if i is not None:
                return i
            return len(top) if code in known else len(top) + 1
        return labels + [MISSING], of
    keys = list(ref.counts or cur.counts)
    if not keys:
        return [MISSING], lambda code: 0
    if ref.kind == "s" or cur.kind == "s":  # score steps: ordered as they are, labelled as scores
        return _ordered_groups(ref, keys, lambda codes: list(codes),
                               lambda code: (code / SCORE_STEPS, (code + 1) / SCORE_STEPS), "{:.2f}")
    return _ordered_groups(ref, keys, lambda codes: mlprofile.bin_order(np.array(codes)).tolist(),
                           mlprofile.bin_edges, "{:.4g}")


def _ordered_groups(ref: FeatureDist, keys: list, order: Any, edges: Any, fmt: str) -> tuple[list[str], Any]:
    """Up to ``MAX_GROUPS`` quantile groups of ordered codes (by the reference's counts),
    labelled with the value ranges ``edges`` gives each code; "missing" last."""
    # the value order of every code at once (a watch evaluates this many times a second)
    order_of = dict(zip(keys, order(keys)))
    codes = sorted(keys, key=order_of.__getitem__)
    total = sum(ref.counts[c] for c in codes) or 1
    bounds: list[int] = []  # order value of the last code of each group
    acc = 0
    for c in codes:
        acc += ref.counts[c]
        if acc >= total * (len(bounds) + 1) / MAX_GROUPS or c == codes[-1]:
            bounds.append(order_of[c])
    bounds = sorted(set(bounds))
    labels = []
    by_order = {order_of[c]: c for c in codes}
    prev = None
    for b in bounds:
        first = codes[0] if prev is None else min((c for c in codes if order_of[c] > prev), key=order_of.__getitem__)
        lo, hi = edges(first)[0], edges(by_order[b])[1]
        labels.append(f"[{fmt.format(lo)}, {fmt.format(hi)})")
        prev = b
    if len(labels) > 1:
        labels[0] = "< " + labels[0].split(", ")[1].rstrip(")")
        labels[-1] = ">= " + labels[-1].split(", ")[0].lstrip("[")
    bnd = np.array(bounds)

    def of(code: int) -> int:
        o = order_of.get(code)
        if o is None:
            o = int(order([code])[0])
        return int(min(np.searchsorted(bnd, o, side="left"), len(bnd) - 1))
    return labels + [MISSING], of


def grouped(d: FeatureDist, of: Any, n_groups: int) -> np.ndarray:
    v = np.zeros(n_groups, dtype=np.float64)
    for code, cnt in d.counts.items():
        v[of(code)] += cnt
    # missing share over all rows, scaled to the sampled rows so the groups add up
    sampled = v.sum()
    if d.rows:
        v[-1] = d.missing * (sampled / max(1, d.rows - d.missing)) if d.rows > d.missing else d.missing
    return v


def psi(ref: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    p = np.maximum(ref / max(ref.sum(), 1), eps)
    q = np.maximum(cur / max(cur.sum(), 1), eps)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass(slots=True)
class Shift:
    """One feature (or the prediction) compared between two samples."""

    feature: str
    kind: str
    psi: float
    p_value: float
    significant: bool
    threshold: float  # the PSI bar used (sample-size aware)
    ref_rows: int
    cur_rows: int
    ref_missing: float
    cur_missing: float
    groups: list[dict[str, Any]]  # label, ref share, cur share
    top_group: str  # where the extra mass went

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def compare(feature: str, ref: FeatureDist, cur: FeatureDist, tests: int = 1, alpha: float = ALPHA) -> Shift | None:
    """PSI and a chi-square test of homogeneity on the grouped bins. Drift is called
    when p < alpha/tests (Bonferroni) and PSI clears both 0.1 and the PSI that
    sampling noise alone exceeds with probability alpha (PSI ~ chi2(G-1) * (1/n + 1/m)
    under no change), so small samples need a bigger shift and huge ones do not
    flag trivial shifts."""
    if (ref.kind == "s") != (cur.kind == "s"):
        return None  # a classifier's score steps against a regressor's values: not comparable
    labels, of = groups_for(ref, cur)
    r, c = grouped(ref, of, len(labels)), grouped(cur, of, len(labels))
    if r.sum() < 1 or c.sum() < 1:
        return None
    keep = (r + c) > 0
    g = int(keep.sum())
    value = psi(r, c)
    if g < 2:
        p = 1.0
    else:
        table = np.vstack([r[keep], c[keep]])
        p = float(scipy.stats.chi2_contingency(table, correction=False)[1])
    noise = scipy.stats.chi2.ppf(1 - alpha, max(1, g - 1)) * (1 / r.sum() + 1 / c.sum())
    thr = max(PSI_MIN, float(noise))
    sig = p < alpha / max(1, tests) and value >= thr
    rs, cs = r / r.sum(), c / c.sum()
    contrib = (cs - rs) * np.log(np.maximum(cs, 1e-4) / np.maximum(rs, 1e-4))
    gains = np.where(cs > rs, contrib, -1)
    top = labels[int(np.argmax(gains))]
    return Shift(feature, ref.kind, value, p, bool(sig), thr, ref.rows, cur.rows,
                 ref.missing / max(1, ref.rows), cur.missing / max(1, cur.rows),
                 [{"group": lb, "reference": float(a), "current": float(b)} for lb, a, b in zip(labels, rs, cs)], top)


def compare_trace_inputs(selected: Sequence[Trace], normal: Sequence[Trace],
                         what: str = "failing") -> list[dict[str, Any]]:
    """:func:`compare_input_profiles` over the spans of two groups of requests (failing or
    slow vs normal); empty when no span carries a profile."""
    sel = [s for t in selected for s in t.spans]
    out = compare_input_profiles(sel, [s for t in normal for s in t.spans], what=what)
    # the service whose model took these inputs (the profile sits on its inference spans)
    owners = Counter(s.service_name for s in sel if semconv.ML_INPUT_PROFILE in s.attributes)
    for e in out:
        e["service"] = owners.most_common(1)[0][0] if owners else None
    return out


def compare_input_profiles(failing_spans: Sequence[Span], normal_spans: Sequence[Span],
                           alpha: float = ALPHA, what: str = "failing") -> list[dict[str, Any]]:
    """Per-feature differences between the input profiles of two groups of spans
    (failing or slow vs normal), most different first. Each entry: feature, missing
    share in each group with Fisher's exact test on it, the distribution shift (PSI,
    chi-square p), and ``significant`` (Bonferroni over features). For
    ``investigate errors``/``slow``: "device_age_days missing in 100% vs 0%".

    The rows of one call (a batch) are not independent observations: a few large
    batches would otherwise make their shared values look like a difference. Each
    side's counts are divided by its design effect (:func:`design_effect`), with the
    rows' correlation within calls measured on the normal calls (the failing ones may
    differ as a whole, which would inflate it) when there are enough of them."""
    fail, norm = distributions(failing_spans), distributions(normal_spans)
    names = [n for n in fail if n in norm]
    if not names:
        return []
    base = list(normal_spans) if len(normal_spans) >= MIN_ICC_CALLS else [*normal_spans, *failing_spans]
    iccs = row_correlations(base)[0]
    sizes_f, sizes_n = call_sizes(failing_spans), call_sizes(normal_spans)
    out = []
    m = max(1, len(names))
    for name in names:
        f, n = fail[name], norm[name]
        icc = iccs.get(name, 0.0)
        ef, en = effective(f, design_effect(icc, sizes_f)), effective(n, design_effect(icc, sizes_n))
        mf, mn, rf, rn = (int(round(v)) for v in (ef.missing, en.missing, ef.rows, en.rows))
        table = [[mf, max(0, rf - mf)], [mn, max(0, rn - mn)]]
        p_miss = float(scipy.stats.fisher_exact(table)[1]) if rf and rn else 1.0
        miss_f, miss_n = f.missing / max(1, f.rows), n.missing / max(1, n.rows)
        shift = compare(name, en, ef, tests=m, alpha=alpha)
        sig_miss = p_miss < alpha / m and abs(miss_f - miss_n) >= 0.1
        entry = {"feature": name, "kind": f.kind, "failing_rows": f.rows, "normal_rows": n.rows,
                 "missing_failing": miss_f, "missing_normal": miss_n, "missing_p_value": p_miss,
                 "psi": shift.psi if shift else 0.0, "p_value": shift.p_value if shift else 1.0,
                 "top_group": shift.top_group if shift else None, "row_correlation": round(icc, 4),
                 "significant": bool(sig_miss or (shift is not None and shift.significant))}
        if sig_miss:
            entry["summary"] = f"{name} missing in {miss_f:.0%} of {what} vs {miss_n:.0%} of normal predictions"
        elif shift is not None and shift.significant:
            entry["summary"] = (f"{name} distribution differs (PSI {shift.psi:.2f}); "
                                f"{what} predictions concentrate in {shift.top_group}")
        else:
            entry["summary"] = f"{name}: no significant difference"
        entry["score"] = abs(miss_f - miss_n) * 10 * sig_miss + (shift.psi if shift else 0.0)
        # the effect on the scale of an attribute's share difference (0..1): the missing
        # share's difference, or the distribution's total variation distance
        tvd = 0.5 * sum(abs(g["reference"] - g["current"]) for g in shift.groups) if shift else 0.0
        entry["effect"] = round(max(abs(miss_f - miss_n) if sig_miss else 0.0, tvd), 4)
        out.append(entry)
    out.sort(key=lambda e: (not e["significant"], -e["score"]))
    return out


def score_dist(spans: Iterable[Span]) -> FeatureDist:
    """The prediction's score distribution as a feature. A classifier's scores (its
    output names classes: probabilities, or a top-class confidence) are counted on a
    0.05 grid (kind ``s``: even steps, labelled as scores); any other model's (a
    regressor's values, raw logits) are binned like a numeric feature (kind ``n``)."""
    grid: FeatureDist | None = None
    binned: FeatureDist | None = None
    for sp in spans:
        text = sp.attributes.get(semconv.ML_OUTPUT_PROFILE)
        if text is None:
            continue
        out = mlprofile.decode_output(text)
        if out is None:
            continue
        s = out.scores.astype(np.float64)
        ok = ~np.isnan(s)
        if out.classes:
            d = grid = grid or FeatureDist("s")
            d.counts.update(np.floor(s[ok].clip(0.0, 1.0) * SCORE_STEPS).clip(0, SCORE_STEPS - 1).astype(int).tolist())
        else:
            d = binned = binned or FeatureDist("n")
            d.counts.update(mlprofile.bin_codes(s[ok]).tolist())
        d.missing += int((~ok).sum())
        d.rows += len(s)
    if grid is not None and binned is not None:  # one model named classes on some calls only: the majority's
        return grid if grid.rows >= binned.rows else binned
    return grid or binned or FeatureDist("s")


def score_dist_from_v1(d: FeatureDist) -> FeatureDist:
    """A prediction distribution stored by a version-1 reference (the 0.05 steps plus one,
    as float bins: 4 per power of two, so steps merge above 0.35) as score steps; a merged
    bin goes to its lowest step."""
    if d.kind != "n":
        return d
    out = FeatureDist("s", missing=d.missing, rows=d.rows)
    for code, n in d.counts.items():
        lo = mlprofile.bin_edges(code)[0]
        out.counts[int(min(SCORE_STEPS - 1, max(0, round(lo) - 1)))] += n
    return out
