"""Which span and resource attributes set slow (or failing) requests apart.

Per trace, every low-cardinality attribute value found on any of its spans or
their resources counts once. Categorical values are ranked by the difference
in share between selection and baseline (Grafana Traces Drilldown's max
|Δ share|) and tested with a one-sided Fisher exact test; numeric attributes
with many distinct values are compared by distribution (Kolmogorov-Smirnov),
and summarised by the cut that best separates the two groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import Trace

from . import stats

# Identifiers, timestamps and SDK bookkeeping: never a cause, always high-cardinality noise.
_SKIP_PREFIXES = ("telemetry.", "process.pid", "process.command", "process.executable", "process.runtime",
                  "exception.", "code.", "url.", "http.url", "http.target", "user_agent.", "client.",
                  "network.peer.", "net.peer.", "net.sock.", "thread.", "otel.", "log.")
_SKIP_KEYS = {semconv.SERVER_PORT, semconv.ML_INPUT_VALUE, semconv.ML_OUTPUT_VALUE, semconv.ML_STAGE,
              semconv.ML_INPUT_SHAPE}
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

    @property
    def sel_share(self) -> float:
        return self.sel_hits / self.sel_n if self.sel_n else 0.0

    @property
    def base_share(self) -> float:
        return self.base_hits / self.base_n if self.base_n else 0.0

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
        return ev


# Outcomes of a failure, not causes: excluded when comparing failing with successful requests.
OUTCOME_KEYS = frozenset({semconv.HTTP_RESPONSE_STATUS_CODE, semconv.ERROR_TYPE, semconv.METRIC_OUTCOME,
                          "rpc.grpc.status_code", "otel.status_code"})


def _usable(key: str) -> bool:
    return key not in _SKIP_KEYS and not key.startswith(_SKIP_PREFIXES)


def _scalar(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if len(v) <= 4 else None
    return v


def trace_attributes(trace: Trace) -> dict[str, set]:
    """Every usable attribute value on any span (or its resource) of the trace."""
    out: dict[str, set] = {}
    for s in trace.spans:
        for src in (s.attributes, s.resource):
            for k, v in src.items():
                if not _usable(k):
                    continue
                v = _scalar(v)
                if v is None or v == "":
                    continue
                out.setdefault(k, set()).add(v)
    return out


def compare(selection: Sequence[Trace], baseline: Sequence[Trace], *, min_delta: float = 0.15,
            min_ks: float = 0.3, alpha: float = stats.ALPHA, max_results: int = 30,
            exclude: frozenset[str] = frozenset()) -> list[AttrStat]:
    """Attribute values over-represented in ``selection``; sorted by significance
    then |Δ share|. Under-represented values are kept (never significant) so the
    ranking matches Drilldown's max |Δ share|."""
    sel = [(t.trace_id, trace_attributes(t)) for t in selection]
    base = [(t.trace_id, trace_attributes(t)) for t in baseline]
    if not sel or not base:
        return []
    values: dict[str, set] = {}
    for _, attrs in (*sel, *base):
        for k, vs in attrs.items():
            values.setdefault(k, set()).update(vs)
    results: list[AttrStat] = []
    for key, vals in values.items():
        if key in exclude:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if numeric and len(vals) >= NUMERIC_MIN_DISTINCT:
            r = _numeric(key, sel, base)
            if r is not None:
                results.append(r)
            continue
        if len(vals) > MAX_CATEGORIES or len(vals) < 2 and all(key in a for _, a in (*sel, *base)):
            continue  # high-cardinality, or a constant everyone has
        for v in vals:
            sh = [tid for tid, a in sel if v in a.get(key, ())]
            bh = sum(1 for _, a in base if v in a.get(key, ()))
            st = AttrStat(key, v, len(sh), len(sel), bh, len(base), examples=sh[:5])
            st.p = stats.share_test(st.sel_hits, st.sel_n, st.base_hits, st.base_n)
            results.append(st)
    adj = stats.bh_adjust([r.p for r in results])
    for r, pa in zip(results, adj):
        r.p_adj = pa
        effect_ok = (r.ks_d >= min_ks and r.delta >= min_delta) if r.numeric else r.delta >= min_delta
        r.significant = pa < alpha and effect_ok
    results.sort(key=lambda r: (not r.significant, -abs(r.delta)))
    return results[:max_results]


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
        c, label, sel_mask = cuts[i_ge], f">= {_fmt(cuts[i_ge])}", lambda v: v >= cuts[i_ge]
    else:
        c, label, sel_mask = cuts[i_le], f"<= {_fmt(cuts[i_le])}", lambda v: v <= cuts[i_le]
    sh = [tid for tid, v in sv if sel_mask(v)]
    bh = sum(1 for _, v in bv if sel_mask(v))
    return AttrStat(key, label, len(sh), len(sv), bh, len(bv), p=p, numeric=True, ks_d=d,
                    sel_median=float(np.median(s_arr)), base_median=float(np.median(b_arr)), examples=sh[:5])


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def describe(st: AttrStat, sel_label: str = "slow requests", base_label: str = "baseline") -> str:
    if st.numeric:
        return (f"{st.attribute} {st.value} in {st.sel_share:.0%} of {sel_label} vs {st.base_share:.0%} of {base_label} "
                f"(median {_fmt(st.sel_median)} vs {_fmt(st.base_median)})")
    return f"{st.attribute}={st.value} in {st.sel_share:.0%} of {sel_label} vs {st.base_share:.0%} of {base_label}"


def iter_significant(results: Iterable[AttrStat]) -> list[AttrStat]:
    return [r for r in results if r.significant]
