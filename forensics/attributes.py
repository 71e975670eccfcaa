"""Which span and resource attributes set slow (or failing) requests apart.

Per trace, every low-cardinality attribute value found on any of its spans or
their resources counts once. Categorical values are ranked by the difference
in share between selection and baseline (Grafana Traces Drilldown's max
|Δ share|) and tested with a one-sided Fisher exact test; numeric attributes
with many distinct values are compared by distribution (Kolmogorov-Smirnov),
and summarised by the cut that best separates the two groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import Trace

from . import stats
from .window import weighted_evidence

# Identifiers, timestamps and SDK bookkeeping: never a cause, always high-cardinality noise.
_SKIP_PREFIXES = ("telemetry.", "process.pid", "process.command", "process.executable", "process.runtime",
                  "exception.", "code.", "url.", "http.url", "http.target", "user_agent.", "client.",
                  "network.peer.", "net.peer.", "net.sock.", "thread.", "otel.", "log.")
_SKIP_KEYS = {semconv.SERVER_PORT, semconv.ML_INPUT_VALUE, semconv.ML_OUTPUT_VALUE, semconv.ML_STAGE,
              semconv.ML_INPUT_SHAPE,
              # the model's input/output profiles: compared feature by feature (mlprofiles), not as strings
              semconv.ML_INPUT_FEATURES, semconv.ML_INPUT_PROFILE, semconv.ML_INPUT_SAMPLE, semconv.ML_OUTPUT_PROFILE,
              # tail-sampling bookkeeping: kept *because* slow or failing, so always "over-represented"
              semconv.TAILSAMPLING_POLICY, semconv.SAMPLING_ADJUSTED_COUNT}
MAX_CATEGORIES = 25  # a key with more distinct values is high-cardinality (unless numeric)
NUMERIC_MIN_DISTINCT = 13  # numeric keys with fewer distinct values are compared as categories


@dataclass(slots=True)
class AttrStat:
    attribute: str
    value: Any  # the value, or "≥ cut" text for numeric comparisons
    sel_hits: int
    sel_n: int
    base_hits: int
    base_n: int
    p: float = 1.0
    p_adj: float = 1.0
    numeric: bool = False
    ks_d: float = 0.0
    sel_median: float | None = None
    base_median: float | None = None
    examples: list[str] = field(default_factory=list)
    significant: bool = False
    # Tail-sampled data: (Σ adjusted_count of hits, of the group); None = unweighted.
    # ``neff``: the Kish effective sizes the significance test used.
    sel_w: tuple[float, float] | None = None
    base_w: tuple[float, float] | None = None
    neff: tuple[float, float] | None = None
    # Other (attribute, value) pairs held by exactly the same requests (selection and
    # baseline): perfectly confounded, so one finding names them all.
    aliases: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def sel_share(self) -> float:
        return stats.share(self.sel_hits, self.sel_n, self.sel_w)

    @property
    def base_share(self) -> float:
        return stats.share(self.base_hits, self.base_n, self.base_w)

    @property
    def delta(self) -> float:
        return self.sel_share - self.base_share

    def evidence(self) -> dict[str, Any]:
        ev = {"selection_share": self.sel_share, "baseline_share": self.base_share, "delta_share": self.delta,
              "selection_count": self.sel_hits, "selection_total": self.sel_n,
              "baseline_count": self.base_hits, "baseline_total": self.base_n,
              "p_value": self.p, "p_adjusted": self.p_adj, "example_trace_ids": self.examples[:5]}
        if self.numeric:
            ev.update({"ks_statistic": self.ks_d, "selection_median": self.sel_median,
                       "baseline_median": self.base_median})
        ev.update(weighted_evidence(self.sel_w, self.base_w, self.neff))
        if self.aliases:
            ev["aliases"] = [{"attribute": k, "value": v} for k, v in self.aliases]
        return ev


# Outcomes of a failure, not causes: excluded when comparing failing with successful requests.
OUTCOME_KEYS = frozenset({semconv.HTTP_RESPONSE_STATUS_CODE, semconv.ERROR_TYPE, semconv.METRIC_OUTCOME,
                          "rpc.grpc.status_code", "otel.status_code"})


# Tie-break between equally strong attributes: what was *deployed* explains a
# difference; the instance it landed on is usually a consequence of the deployment.
_DEPLOYMENT_KEYS = {semconv.SERVICE_VERSION, semconv.DEPLOYMENT_ENVIRONMENT}
_DEPLOYMENT_PREFIXES = ("deployment.", "k8s.deployment.", "k8s.replicaset.", "service.version")
_IDENTITY_KEYS = {semconv.SERVICE_INSTANCE_ID, semconv.HOST_NAME, semconv.SERVER_ADDRESS, semconv.SERVER_PORT}
_IDENTITY_PREFIXES = ("host.", "server.", "net.peer.", "net.host.", "network.peer.", "network.local.", "process.",
                      "k8s.pod.", "k8s.node.", "container.", "client.", "service.instance.")


def attribute_priority(key: str) -> int:
    """Lower = more likely a cause when two attributes separate the requests equally
    well: ml.* (model, features), then version / deployment, then any other
    attribute, then instance identity (service.instance.id, host.name, server.address...)."""
    if key.startswith("ml."):
        return 0
    if key in _DEPLOYMENT_KEYS or key.startswith(_DEPLOYMENT_PREFIXES):
        return 1
    if key in _IDENTITY_KEYS or key.startswith(_IDENTITY_PREFIXES):
        return 3
    return 2


def _rank_key(r: "AttrStat") -> tuple:
    # |Δ| rounded so float noise does not decide a tie; then priority, then name (deterministic)
    return (not r.significant, -round(abs(r.delta), 9), attribute_priority(r.attribute), r.attribute, str(r.value))


def _collapse_aliases(results: list["AttrStat"], hits: dict[int, tuple[frozenset, frozenset]]) -> list["AttrStat"]:
    """Merge categorical values held by exactly the same selection and baseline
    requests into the best-ranked one (its ``aliases`` list the others). Runs
    after the significance correction, so it never changes what is significant."""
    keep: list[AttrStat] = []
    by_part: dict[tuple[frozenset, frozenset], AttrStat] = {}
    for r in results:  # already in rank order: the first of a partition is the representative
        part = hits.get(id(r))
        if part is None or not (part[0] or part[1]):
            keep.append(r)
            continue
        rep_ = by_part.get(part)
        if rep_ is None or rep_.significant != r.significant:
            by_part.setdefault(part, r)
            keep.append(r)
        else:
            rep_.aliases.append((r.attribute, r.value))
    return keep


@functools.lru_cache(maxsize=4096)  # a handful of distinct keys, checked on every span of every sample
def _usable(key: str) -> bool:
    return key not in _SKIP_KEYS and not key.startswith(_SKIP_PREFIXES)


def _value_order(v: Any) -> tuple[str, str]:
    """A total order over attribute values of any type (a set of them has none)."""
    return type(v).__name__, repr(v)


def scalar_value(v: Any) -> Any:
    """An attribute value as one hashable value to count and compare: a short array or
    map (OTLP allows both; a map value was a TypeError that cost the whole attribute
    evidence) as its text, a long one as None (no value worth comparing)."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if len(v) <= 4 else None
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) if len(v) <= 4 else None
    return v


def trace_attributes(trace: Trace) -> dict[str, set]:
    """Every usable attribute value on any span (or its resource) of the trace."""
    out: dict[str, set] = {}
    for s in trace.spans:
        for src in (s.attributes, s.resource):
            for k, v in src.items():
                if not _usable(k):
                    continue
                v = scalar_value(v)
                if v is None or v == "":
                    continue
                out.setdefault(k, set()).add(v)
    return out


def compare(selection: Sequence[Trace], baseline: Sequence[Trace], *, min_delta: float = 0.15,
            min_ks: float = 0.3, alpha: float = stats.ALPHA, max_results: int = 30,
            exclude: frozenset[str] = frozenset(), weights: Mapping[str, float] | None = None) -> list[AttrStat]:
    """Attribute values over-represented in ``selection``; sorted by significance
    then |Δ share|. Under-represented values are kept (never significant) so the
    ranking matches Drilldown's max |Δ share|.

    ``weights`` (trace id -> adjusted count, missing = 1) makes the shares
    Horvitz-Thompson estimates for tail-sampled data; the Fisher test then runs
    on Kish effective counts. Without weights nothing changes."""
    sel = [(t.trace_id, trace_attributes(t)) for t in selection]
    base = [(t.trace_id, trace_attributes(t)) for t in baseline]
    if not sel or not base:
        return []
    # A value is compared among the requests that passed through a service that carries it:
    # "k8s.pod.name=checkout-1 in 60% of slow requests" only says the slow ones were
    # checkouts; among requests that reached checkout, one pod of two is evidence.
    carriers: dict[tuple[str, Any], set[str]] = {}
    for t in (*selection, *baseline):
        for sp in t.spans:
            for src in (sp.attributes, sp.resource):
                for k, v in src.items():
                    if _usable(k):
                        v = scalar_value(v)
                        if v is not None and v != "":
                            carriers.setdefault((k, v), set()).add(sp.service_name)
    services = {t.trace_id: {sp.service_name for sp in t.spans} for t in (*selection, *baseline)}
    sw: dict[str, float] | None = None
    if weights:
        sw = {tid: float(weights.get(tid, 1.0)) for tid, _ in (*sel, *base)}
    values: dict[str, set] = {}
    for _, attrs in (*sel, *base):
        for k, vs in attrs.items():
            values.setdefault(k, set()).update(vs)
    results: list[AttrStat] = []
    hits: dict[int, tuple[frozenset, frozenset]] = {}  # categorical stat -> trace ids holding the value
    for key, vals in values.items():
        if key in exclude:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if numeric and len(vals) >= NUMERIC_MIN_DISTINCT:
            r = _numeric(key, sel, base) if sw is None else _numeric_weighted(key, sel, base, sw)
            if r is not None:
                results.append(r)
            continue
        if len(vals) > MAX_CATEGORIES or len(vals) < 2 and all(key in a for _, a in (*sel, *base)):
            continue  # high-cardinality, or a constant everyone has
        for v in sorted(vals, key=_value_order):  # a set: in hash-seed order ties would rank differently
            if key == semconv.SERVICE_NAME:
                continue  # which services a request reached is the component blame's question
            via = carriers.get((key, v), set())
            sel_v = [(tid, a) for tid, a in sel if services[tid] & via]
            base_v = [(tid, a) for tid, a in base if services[tid] & via]
            if len(sel_v) < stats.MIN_SUPPORT or not base_v:
                continue
            sh = [tid for tid, a in sel_v if v in a.get(key, ())]
            bh = sum(1 for _, a in base_v if v in a.get(key, ()))
            st = AttrStat(key, v, len(sh), len(sel_v), bh, len(base_v), examples=sh[:5])
            hits[id(st)] = (frozenset(sh), frozenset(t for t, a in base_v if v in a.get(key, ())))
            if sw is None:
                st.p = stats.share_test(st.sel_hits, st.sel_n, st.base_hits, st.base_n)
            else:
                sv_tot, bv_tot = sum(sw[t] for t, _ in sel_v), sum(sw[t] for t, _ in base_v)
                st.sel_w = (sum(sw[t] for t in sh), sv_tot)
                st.base_w = (sum(sw[t] for t, a in base_v if v in a.get(key, ())), bv_tot)
                st.neff = (stats.effective_n([sw[t] for t, _ in sel_v]), stats.effective_n([sw[t] for t, _ in base_v]))
                st.p = stats.weighted_share_test(st.sel_share, st.neff[0], st.base_share, st.neff[1])
            results.append(st)
    adj = stats.bh_adjust([r.p for r in results])
    for r, pa in zip(results, adj):
        r.p_adj = pa
        effect_ok = (r.ks_d >= min_ks and r.delta >= min_delta) if r.numeric else r.delta >= min_delta
        r.significant = pa < alpha and effect_ok and r.sel_hits >= stats.MIN_SUPPORT
    results.sort(key=_rank_key)
    return _collapse_aliases(results, hits)[:max_results]


def _numeric(key: str, sel, base) -> AttrStat | None:
    """Compare by distribution (per trace: the largest value), and name the cut
    ``key >= c`` that best separates selection from baseline."""
    def vals(group):
        out = []
        for tid, a in group:
            vs = [v for v in a.get(key, ()) if isinstance(v, (int, float))]
            if vs:
                out.append((tid, float(max(vs))))
        return out
    sv, bv = vals(sel), vals(base)
    if len(sv) < 3 or len(bv) < 3:
        return None
    s_arr = np.array([v for _, v in sv])
    b_arr = np.array([v for _, v in bv])
    d, p = stats.distribution_test(s_arr, b_arr)
    cuts = np.unique(np.concatenate([s_arr, b_arr]))
    s_sorted, b_sorted = np.sort(s_arr), np.sort(b_arr)
    ge_s = 1 - np.searchsorted(s_sorted, cuts, side="left") / s_arr.size
    ge_b = 1 - np.searchsorted(b_sorted, cuts, side="left") / b_arr.size
    le_s = np.searchsorted(s_sorted, cuts, side="right") / s_arr.size
    le_b = np.searchsorted(b_sorted, cuts, side="right") / b_arr.size
    i_ge, i_le = int(np.argmax(ge_s - ge_b)), int(np.argmax(le_s - le_b))
    if ge_s[i_ge] - ge_b[i_ge] >= le_s[i_le] - le_b[i_le]:
        label, sel_mask = f">= {_fmt(cuts[i_ge])}", lambda v: v >= cuts[i_ge]
    else:
        label, sel_mask = f"<= {_fmt(cuts[i_le])}", lambda v: v <= cuts[i_le]
    sh = [tid for tid, v in sv if sel_mask(v)]
    bh = sum(1 for _, v in bv if sel_mask(v))
    return AttrStat(key, label, len(sh), len(sv), bh, len(bv), p=p, numeric=True, ks_d=d,
                    sel_median=float(np.median(s_arr)), base_median=float(np.median(b_arr)), examples=sh[:5])


def _numeric_weighted(key: str, sel, base, sw: Mapping[str, float]) -> AttrStat | None:
    """:func:`_numeric` for tail-sampled data: weighted ECDFs for the KS statistic,
    the best cut and the medians; the KS p-value at Kish effective sample sizes."""
    def vals(group):
        out = []
        for tid, a in group:
            vs = [v for v in a.get(key, ()) if isinstance(v, (int, float))]
            if vs:
                out.append((tid, float(max(vs)), sw[tid]))
        return out
    sv, bv = vals(sel), vals(base)
    if len(sv) < 3 or len(bv) < 3:
        return None
    s_arr, s_w = np.array([v for _, v, _ in sv]), np.array([w for _, _, w in sv])
    b_arr, b_w = np.array([v for _, v, _ in bv]), np.array([w for _, _, w in bv])
    cuts = np.unique(np.concatenate([s_arr, b_arr]))

    def ecdf(arr, w, side):  # weighted share <= cut ("right") or < cut ("left")
        o = np.argsort(arr)
        cw = np.concatenate([[0.0], np.cumsum(w[o])]) / w.sum()
        return cw[np.searchsorted(arr[o], cuts, side=side)]
    le_s, le_b = ecdf(s_arr, s_w, "right"), ecdf(b_arr, b_w, "right")
    ge_s, ge_b = 1 - ecdf(s_arr, s_w, "left"), 1 - ecdf(b_arr, b_w, "left")
    d = float(np.max(np.abs(le_s - le_b)))
    ne_s, ne_b = stats.effective_n(s_w), stats.effective_n(b_w)
    p = stats.ks_pvalue(d, ne_s, ne_b)
    i_ge, i_le = int(np.argmax(ge_s - ge_b)), int(np.argmax(le_s - le_b))
    if ge_s[i_ge] - ge_b[i_ge] >= le_s[i_le] - le_b[i_le]:
        label, sel_mask = f">= {_fmt(cuts[i_ge])}", lambda v: v >= cuts[i_ge]
    else:
        label, sel_mask = f"<= {_fmt(cuts[i_le])}", lambda v: v <= cuts[i_le]
    sh = [tid for tid, v, _ in sv if sel_mask(v)]
    bh = [w for _, v, w in bv if sel_mask(v)]
    return AttrStat(key, label, len(sh), len(sv), len(bh), len(bv), p=p, numeric=True, ks_d=d,
                    sel_median=stats.weighted_quantile(s_arr, 50, s_w),
                    base_median=stats.weighted_quantile(b_arr, 50, b_w), examples=sh[:5],
                    sel_w=(float(sum(w for _, v, w in sv if sel_mask(v))), float(s_w.sum())),
                    base_w=(float(sum(bh)), float(b_w.sum())), neff=(ne_s, ne_b))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def describe(st: AttrStat, sel_label: str = "slow requests", base_label: str = "baseline") -> str:
    if st.numeric:
        return (f"{st.attribute} {st.value} in {st.sel_share:.0%} of {sel_label} vs {st.base_share:.0%} of {base_label} "
                f"(median {_fmt(st.sel_median)} vs {_fmt(st.base_median)})")
    alias = ""
    if st.aliases:
        names = [f"{k}={v}" for k, v in st.aliases[:3]]
        more = f" and {len(st.aliases) - 3} more" if len(st.aliases) > 3 else ""
        alias = f" (same requests as {', '.join(names)}{more})"
    return (f"{st.attribute}={st.value}{alias} in {st.sel_share:.0%} of {sel_label} vs {st.base_share:.0%} "
            f"of {base_label}")


def iter_significant(results: Iterable[AttrStat]) -> list[AttrStat]:
    return [r for r in results if r.significant]
