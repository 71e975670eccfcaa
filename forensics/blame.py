"""Blame by component: which service (and operation in it) holds the extra
latency of slow requests, and which slow requests each component explains.

Per trace, the critical path is split into self time per *key*: a span's own
work (``("operation", service, name)``) or the gap on a call edge (a CLIENT
span's time not covered by its callee's SERVER span, ``("edge", callee,
"caller->callee")``). The sum over keys is the request's duration.

**Controlled for what the request did.** A checkout that calls six services is
slower than a page view that calls two, and neither is evidence. So a key's
time is compared with what the same key costs per occurrence in the baseline:
``expected_k(t) = n_k(t) * m_k``, with ``n_k(t)`` the number of spans of the
key in trace ``t`` and ``m_k`` the baseline's critical-path time per
occurrence. ``excess_k(t) = self_k(t) - expected_k(t)`` sums, over keys, to the
request's duration minus the duration its own composition predicts. A heavy
route is heavy in the baseline too and leaves no excess.

**Edges: caller or callee side.** A gap that grew on a call ``a -> b`` is the
callee's (network into it, queueing in front of it) when calls into ``b`` from
its other callers grew too, or ``a``'s other calls did not. It is the
caller's (``a`` is starved: CPU, GC, a full thread pool delays everything it
sends and receives) when ``a``'s other outgoing calls grew too and ``b``'s
other callers did not notice anything.

**One component per service.** Keys are summed per blamed service into one
:class:`Component`; its ``operation`` names the key that holds most of it.
Each slow request is assigned to the component that holds most of its own
excess, so concurrent causes come out as separate groups of requests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import Trace

from . import stats
from .critical_path import blame_key, critical_path

Key = tuple[str, str, str]  # (level, service, operation): level "operation" | "edge"

MIN_CALLS = 5  # an edge with fewer calls on either side is not judged "grown"
MIN_GROWTH_NS = 1_000_000  # 1 ms: below this a grown gap is scheduling noise
# Calls after an order-of-magnitude jump needed to call it (key_jumps): a component called a
# few times a minute has only a handful in the minutes after a fault, and the size filters
# (x5 the median, 80% of them above the 90th percentile before) keep noise out.
MIN_JUMP_CALLS = 4


@dataclass(slots=True)
class TraceCost:
    """One request's critical path, by key, plus the gap of every call edge it made."""

    trace_id: str
    duration_ns: int
    self_ns: dict[Key, int]
    count: dict[Key, int]
    stage_of: dict[Key, str]
    gaps: dict[tuple[str, str], list[int]]  # (caller, callee) -> gap of each call, ns


def trace_costs(traces: Sequence[Trace]) -> list[TraceCost]:
    out = []
    for t in traces:
        cp = critical_path(t, implied_calls=True)  # a lost call's gap is its edge's, not the caller's
        if cp.root is None:
            continue
        count: dict[Key, int] = defaultdict(int)
        stage_of: dict[Key, str] = {}
        gaps: dict[tuple[str, str], list[int]] = defaultdict(list)
        for node in cp.nodes.values():
            key = blame_key(node)
            count[key] += 1
            if node.stage != semconv.STAGE_OTHER:
                stage_of.setdefault(key, node.stage)
            if key[0] == "edge":
                caller, _, callee = key[2].partition("->")
                # the callee's SERVER span, or (that span lost) its own spans re-hung here
                covered = max((c.end_ns - c.start_ns for c in node.children
                               if (c.span.kind in ("SERVER", "CONSUMER") or c.orphan)
                               and c.span.service_name == callee and not c.outside_parent), default=0)
                gaps[(caller, callee)].append(max(0, (node.end_ns - node.start_ns) - covered))
        out.append(TraceCost(t.trace_id, cp.duration_ns, cp.by_blame(), dict(count), stage_of, dict(gaps)))
    return out


@dataclass(slots=True)
class EdgeGrowth:
    caller: str
    callee: str
    sel_mean_ns: float
    base_mean_ns: float
    calls: tuple[int, int]
    p: float
    grew: bool = False
    side: str = "callee"  # who the edge's extra time is blamed on: "callee" | "caller"

    def evidence(self) -> dict[str, Any]:
        return {"caller": self.caller, "callee": self.callee, "selection_gap_ms": self.sel_mean_ns / 1e6,
                "baseline_gap_ms": self.base_mean_ns / 1e6, "calls": list(self.calls), "p_value": self.p,
                "grew": self.grew, "side": self.side}


def edge_growth(sel: Sequence[TraceCost], base: Sequence[TraceCost], alpha: float = stats.ALPHA) -> dict[tuple[str, str], EdgeGrowth]:
    """Per call edge: did its gap grow in ``sel`` against ``base``, and whose side is it on."""
    s_gaps: dict[tuple[str, str], list[int]] = defaultdict(list)
    b_gaps: dict[tuple[str, str], list[int]] = defaultdict(list)
    for group, acc in ((sel, s_gaps), (base, b_gaps)):
        for tc in group:
            for e, g in tc.gaps.items():
                acc[e].extend(g)
    out: dict[tuple[str, str], EdgeGrowth] = {}
    for e in sorted(set(s_gaps) | set(b_gaps)):  # sorted: the report lists edges in this order
        s, b = s_gaps.get(e, []), b_gaps.get(e, [])
        sm = float(np.mean(s)) if s else 0.0
        bm = float(np.mean(b)) if b else 0.0
        # ranks for many calls, log sizes for a few (the better of the two, Bonferroni x2)
        p = min(1.0, 2 * min(stats.greater_test(s, b), log_welch_greater(s, b))) \
            if len(s) >= MIN_CALLS and len(b) >= MIN_CALLS else 1.0
        out[e] = EdgeGrowth(e[0], e[1], sm, bm, (len(s), len(b)), p)
    edges = list(out.values())
    for g, pa in zip(edges, stats.bh_adjust([g.p for g in edges])):
        g.grew = pa < alpha and _big_enough(g)
    for g in edges:
        g.side = _side(g, edges, alpha)
    return out


def _big_enough(g: EdgeGrowth) -> bool:
    """Growth worth a cause: 1 ms and half the baseline's mean gap more."""
    return g.sel_mean_ns - g.base_mean_ns >= max(MIN_GROWTH_NS, 0.5 * g.base_mean_ns)


def _grown_among(group: Sequence[EdgeGrowth], alpha: float) -> float | None:
    """The share of ``group`` (one caller's other calls, or one callee's other callers) that
    grew, each tested with the correction of its own group, or None when none can be judged.
    Which side an edge's growth is on is a question about its neighbours, not about every
    edge of the system: BH over all edges would let a starved caller's few other calls
    (69 and 62 ms against 4 and 9 ms, a handful each) pass for unchanged."""
    judged = [x for x in group if min(x.calls) >= MIN_CALLS]
    if not judged:
        return None
    adj = stats.bh_adjust([x.p for x in judged])
    return sum(pa < alpha and _big_enough(x) for x, pa in zip(judged, adj)) / len(judged)


def _side(g: EdgeGrowth, edges: Sequence[EdgeGrowth], alpha: float = stats.ALPHA) -> str:
    """Caller-starved or callee-side, from the caller's other calls and the callee's other callers."""
    caller_support = _grown_among([x for x in edges if x.caller == g.caller and x is not g], alpha)
    callee_support = _grown_among([x for x in edges if x.callee == g.callee and x is not g], alpha)
    if caller_support is None:
        return "callee" if callee_support is None or callee_support >= 0.5 else "caller"
    if callee_support is None:
        return "caller" if caller_support >= 0.5 else "callee"
    return "caller" if caller_support > callee_support else "callee"


@dataclass(slots=True)
class Component:
    """One blamed service: the excess critical-path time it holds in slow requests."""

    service: str
    operation: str | None  # the key that holds most of the service's excess, when it holds most
    stage: str | None
    excess_ns: float  # mean over the selection
    share: float  # of the selection's total (positive) excess
    total_excess_ns: float
    sel_mean_ns: float
    base_mean_ns: float  # what the same requests' composition predicts from the baseline
    parts: list[dict[str, Any]] = field(default_factory=list)  # per key: label, side, excess
    p: float = 1.0
    p_adj: float = 1.0
    significant: bool = False
    examples: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)  # slow requests whose excess it holds most of
    group_share: float = 0.0  # of those requests' excess, the share it holds
    grew: bool = False  # one of its operations or call edges got slower per call since the onset

    @property
    def where(self) -> str:
        """Where in the component the time sits: its own work, calls into it, or its calls out."""
        sides = defaultdict(float)
        for p in self.parts:
            sides[p["side"]] += p["excess_ms"]
        return max(sides, key=sides.get) if sides else "self"

    def evidence(self) -> dict[str, Any]:
        return {"selection_mean_ms": self.sel_mean_ns / 1e6, "expected_mean_ms": self.base_mean_ns / 1e6,
                "excess_ms": self.excess_ns / 1e6, "share_of_excess": self.share,
                "total_excess_ms": self.total_excess_ns / 1e6, "p_value": self.p, "p_adjusted": self.p_adj,
                "where": self.where, "parts": self.parts[:6], "group_size": len(self.group),
                "group_share": self.group_share, "grew": self.grew,
                "example_trace_ids": self.examples[:5]}


@dataclass(slots=True)
class Blame:
    components: list[Component]  # by excess, largest first
    edges: dict[tuple[str, str], EdgeGrowth]
    expected_ns: dict[str, float]  # trace id -> duration its composition predicts
    key_excess: dict[Key, float]  # mean excess per key over the selection
    stage_excess: dict[str, tuple[float, float]]  # stage -> (selection mean, expected mean)


def _shift_test(after: Sequence[float], base: Sequence[float]) -> float:
    """p-value that a component costs more in ``after`` than in ``base``: the best of
    Mann-Whitney (every request a little slower: CPU, network) and two tail tests (some
    requests much slower: one shard, one pod, one batch size): the share of requests
    beyond the baseline's 99th percentile (its 95th on a small baseline), and how many
    lie beyond anything the baseline holds (``stats.exceedance_test``: the sharper one
    when the baseline is small and its own outliers set the 99th percentile).
    Bonferroni-corrected for taking the best of three."""
    p_mw = stats.greater_test(after, base)
    if len(after) < 3 or len(base) < 3:
        return p_mw
    cut = float(np.percentile(base, 99 if len(base) >= 100 else 95))
    a_hit = int(np.sum(np.asarray(after) > cut))
    b_hit = int(np.sum(np.asarray(base) > cut))
    p_tail = stats.share_test(a_hit, len(after), b_hit, len(base))
    return min(1.0, 3 * min(p_mw, p_tail, stats.exceedance_test(after, base)))


def _per_call(costs: Sequence[TraceCost]) -> dict[Key, list[float]]:
    """Key -> its time per call in each request (self time / calls of the key)."""
    out: dict[Key, list[float]] = defaultdict(list)
    for tc in costs:
        for k, n in tc.count.items():
            if n > 0:
                out[k].append(tc.self_ns.get(k, 0) / n)
    return out


def log_welch_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Welch's t p-value that log times in ``x`` exceed those in ``y``, with a floor
    on each side's log variance (0.05: a timer's resolution is not certainty). With a handful
    of calls rank tests saturate; a 20x jump is still unmistakable in size."""
    from scipy import stats as _st
    if len(x) < 2 or len(y) < 2:
        return 1.0
    lx, ly = np.log(np.maximum(np.asarray(x, float), 1e3)), np.log(np.maximum(np.asarray(y, float), 1e3))
    vx, vy = max(float(lx.var(ddof=1)), 0.05), max(float(ly.var(ddof=1)), 0.05)
    se = math.sqrt(vx / lx.size + vy / ly.size)
    t = (float(lx.mean()) - float(ly.mean())) / se
    df = (vx / lx.size + vy / ly.size) ** 2 / ((vx / lx.size) ** 2 / max(lx.size - 1, 1)
                                              + (vy / ly.size) ** 2 / max(ly.size - 1, 1))
    return float(_st.t.sf(t, max(df, 1.0)))


def per_call_jumps(target: Sequence[TraceCost], base: Sequence[TraceCost], min_ratio: float = 2.0) -> dict[Key, float]:
    """Key -> p that its calls in ``target`` take longer than in ``base`` (unadjusted: the
    caller corrects for the keys it takes the best of): Welch's t on log time per call (a floor on the spread, so a timer's resolution
    is not certainty), for keys whose median per call at least ``min_ratio``-ed and grew
    1 ms. Judged per call, a small incident (a dozen calls that each gained a second) is as
    clear as it is to a person reading the traces; per request it drowns among the
    requests that never made such a call."""
    a, b = _per_call(target), _per_call(base)
    keys = [k for k in a if len(a[k]) >= stats.MIN_SUPPORT and len(b.get(k, [])) >= 3]
    out: dict[Key, float] = {}
    for k in keys:
        x, y = np.asarray(a[k], float), np.asarray(b[k], float)
        # the typical call (median) or the calls on average (a CPU-starved service slows its tail first)
        med = float(np.median(x)) >= min_ratio * float(np.median(y))
        avg = float(x.mean()) >= 1.5 * float(y.mean())
        if not (med or avg) or float(x.mean()) - float(y.mean()) < MIN_GROWTH_NS:
            continue
        out[k] = min(1.0, 2 * min(log_welch_greater(x, y), _shift_test(x, y)))
    return out


def _owner(key: Key, edges: Mapping[tuple[str, str], EdgeGrowth]) -> tuple[str, str]:
    """(service blamed, side) for a key."""
    level, svc, op = key
    if level != "edge":
        return svc, "self"
    caller, _, callee = op.partition("->")
    g = edges.get((caller, callee))
    if g is not None and g.side == "caller":
        return caller, "calls out"
    return callee, "calls in"


def blame(sel: Sequence[TraceCost], base: Sequence[TraceCost], *, after: Sequence[TraceCost] | None = None,
          stepped: set[Key] | frozenset[Key] = frozenset(), min_share: float = 0.1, alpha: float = stats.ALPHA,
          weights: Mapping[str, float] | None = None) -> Blame:
    """Components ranked by the excess they hold against ``base``.

    ``after`` (a sample of *every* request since the onset, slow or not) is what the
    components are scored and tested on when given: a component at fault costs more in
    all the requests that pass through it, while a busy component's natural tail only
    looks guilty among requests picked *because* they were slow. ``sel`` (the slow
    requests) is always what the groups are made of. ``weights`` (trace id -> adjusted
    count, tail-sampled data) weight the means; the tests run on stored values.
    ``stepped``: keys whose own time rose since the onset (keys_grown)."""
    if not sel or not base:
        return Blame([], {}, {}, {}, {})
    target = list(after) if after else list(sel)
    w = (lambda tid: float(weights.get(tid, 1.0))) if weights else (lambda tid: 1.0)  # noqa: E731
    # Baseline cost per occurrence of each key.
    tot: dict[Key, float] = defaultdict(float)
    occ: dict[Key, float] = defaultdict(float)
    for tc in base:
        for k, n in tc.count.items():
            occ[k] += n * w(tc.trace_id)
        for k, v in tc.self_ns.items():
            tot[k] += v * w(tc.trace_id)
    per_occ = {k: tot[k] / occ[k] for k in occ if occ[k] > 0}

    def excess(tc: TraceCost) -> dict[Key, float]:
        keys = sorted(set(tc.self_ns) | set(tc.count))  # sorted: sums and ties must not follow the hash seed
        return {k: tc.self_ns.get(k, 0) - tc.count.get(k, 0) * per_occ.get(k, 0.0) for k in keys}

    edges = edge_growth(target, base, alpha)
    t_ex = [excess(tc) for tc in target]
    s_ex = [excess(tc) for tc in sel]
    b_ex = [excess(tc) for tc in base]
    tw = np.array([w(tc.trace_id) for tc in target])
    expected = {tc.trace_id: tc.duration_ns - sum(ex.values())
                for tc, ex in zip((*target, *sel, *base), (*t_ex, *s_ex, *b_ex))}
    keys = sorted({k for ex in t_ex for k in ex})
    key_excess = {k: float(np.average([ex.get(k, 0.0) for ex in t_ex], weights=tw)) for k in keys}
    # Per service: its keys' excess, per trace.
    owner = {k: _owner(k, edges) for k in set(keys) | {k for ex in (*b_ex, *s_ex) for k in ex}}

    def by_service(ex: dict[Key, float]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for k, v in ex.items():
            out[owner[k][0]] += v
        return out
    t_svc = [by_service(ex) for ex in t_ex]
    s_svc = [by_service(ex) for ex in s_ex]
    b_svc = [by_service(ex) for ex in b_ex]
    services = sorted({s for d in t_svc for s in d})
    means = {s: float(np.average([d.get(s, 0.0) for d in t_svc], weights=tw)) for s in services}
    total_pos = sum(v for v in means.values() if v > 0)
    sel_dur = float(np.average([tc.duration_ns for tc in target], weights=tw))
    # Each slow request belongs to the component holding most of its excess.
    dominant = [max(d, key=d.get) if d and max(d.values()) > 0 else None for d in s_svc]
    stage_of: dict[Key, str] = {}
    for tc in (*sel, *base):
        for k, st in tc.stage_of.items():
            stage_of.setdefault(k, st)
    comps: list[Component] = []
    for s in services:
        if means[s] <= 0:
            continue
        tv = [d.get(s, 0.0) for d in t_svc]
        sv = [d.get(s, 0.0) for d in s_svc]
        bv = [d.get(s, 0.0) for d in b_svc]
        parts = sorted(({"key": k[2] if k[0] == "edge" else f"{k[1]}: {k[2]}", "level": k[0],
                         "operation": None if k[0] == "edge" else k[2], "side": owner[k][1],
                         "excess_ms": key_excess[k] / 1e6, "stage": stage_of.get(k)}
                        for k in keys if owner[k][0] == s and key_excess[k] > 0), key=lambda p: -p["excess_ms"])
        top = parts[0] if parts else None
        op = stage = None
        if top is not None and top["excess_ms"] * 1e6 >= 0.5 * means[s]:
            stage = top["stage"]
            op = top["operation"] if top["side"] == "self" else None
        order = np.argsort(-np.asarray(sv))
        c = Component(s, op, stage, means[s], means[s] / total_pos if total_pos > 0 else 0.0, total_pos,
                      sel_dur, sel_dur - total_pos, parts, p=_shift_test(tv, bv),
                      examples=[sel[i].trace_id for i in order[:5] if sv[i] > 0],
                      group=[sel[i].trace_id for i, d in enumerate(dominant) if d == s])
        comps.append(c)
    # A component that holds most of the excess of its own slow requests is a cause even
    # when a louder concurrent cause holds most of the total, or when its fault touched
    # too few of all the requests since the onset to move their distribution (one shard
    # for a few seconds): then its own group of slow requests is tested against the baseline,
    # provided one of its operations or edges got slower per call since the onset (slow
    # requests picked for a busy component's natural tail hold its excess too, but its own
    # time per call did not rise).
    floor = max(stats.MIN_SUPPORT, int(0.1 * len(sel)))
    jumps = per_call_jumps(target, base) if after else {}
    for c in comps:
        mine_p = [p for k, p in jumps.items() if owner.get(k, (None,))[0] == c.service]
        # Bonferroni over the component's own keys; across components the BH step below corrects
        p_call = min(1.0, min(mine_p) * len(mine_p)) if mine_p else 1.0
        if p_call < 1.0:
            c.p = min(1.0, 2 * min(c.p, p_call))
            c.grew = True
        mine = [i for i, d in enumerate(dominant) if d == c.service]
        own = sum(s_svc[i].get(c.service, 0.0) for i in mine)
        all_ = sum(max(v, 0.0) for i in mine for v in s_svc[i].values())
        c.group_share = own / all_ if all_ > 0 else 0.0
        steps = any(owner.get(k, (None,))[0] == c.service for k in stepped)
        c.grew = c.grew or steps
        if after and steps and len(mine) >= floor and c.group_share >= 0.5:
            p_group = stats.greater_test([s_svc[i].get(c.service, 0.0) for i in mine],
                                         [d.get(c.service, 0.0) for d in b_svc])
            c.p = min(1.0, 2 * min(c.p, p_group))
    for c, pa in zip(comps, stats.bh_adjust([c.p for c in comps])):
        c.p_adj = pa
        c.significant = pa < alpha and (c.share >= min_share or (len(c.group) >= floor and c.group_share >= 0.5))
    comps.sort(key=lambda c: -c.excess_ns)
    # Stage view (ML services): the same excess summed per ML stage.
    st_sel: dict[str, float] = defaultdict(float)
    for k, v in key_excess.items():
        st_sel[stage_of.get(k, semconv.STAGE_OTHER)] += v
    stage_excess = {st: (v, 0.0) for st, v in st_sel.items()}
    return Blame(comps, edges, expected, key_excess, stage_excess)


@dataclass(slots=True)
class KeyOnset:
    """When one operation or call edge stepped up: its own change point."""

    key: Key
    time_ns: int
    p: float
    before_ns: float  # mean time per occurrence before the step
    after_ns: float


def key_onset(costs: Sequence[TraceCost], start_of: Mapping[str, int], w_start: int, w_end: int,
              alpha: float = stats.ALPHA) -> KeyOnset | None:
    """The earliest lasting step up in any one key's time per occurrence, or None.

    The slow-request rate of a whole system can be moved by its busiest component's
    bursts; a fault shows as a step in one component's own time."""
    found = key_steps(costs, start_of, w_start, w_end, alpha)
    return min(found, key=lambda o: o.time_ns) if found else None


def _timed_per_call(costs: Sequence[TraceCost], start_of: Mapping[str, int]) -> dict[Key, list[tuple[int, float]]]:
    """Key -> (request start, time per call of the key in it), for the requests with a start time.

    A key with no time on the request's critical path is left out of its series, not read
    as 0: its calls ran off the path (beside a longer sibling, or in a broken part of the
    trace: a lost span, a skewed clock), which says nothing of how long they took. One such
    zero among a handful of calls, on a log scale, hides an order-of-magnitude jump."""
    series: dict[Key, list[tuple[int, float]]] = defaultdict(list)
    for tc in costs:
        t = start_of.get(tc.trace_id)
        if t is None:
            continue
        for k, n in tc.count.items():
            ns = tc.self_ns.get(k, 0)
            if n > 0 and ns > 0:
                series[k].append((t, ns / n))
    return series


def service_slowed(costs: Sequence[TraceCost], start_of: Mapping[str, int], service: str, time_ns: int,
                   min_ratio: float = 2.0) -> bool:
    """Whether any of the service's keys (its own operations, calls into it) took at least
    ``min_ratio`` times longer per call after ``time_ns`` than before it (medians, a call
    on each side at least). Not a test: a consistency check for evidence found elsewhere
    (a metric), so that a busy CPU nobody waited on is not called a cause of slowness."""
    for k, pts in _timed_per_call(costs, start_of).items():
        if k[1] != service:
            continue
        before = [v for t, v in pts if t < time_ns]
        after = [v for t, v in pts if t >= time_ns]
        if before and after and np.median(after) >= min_ratio * max(float(np.median(before)), 1.0):
            return True
    return False


def key_steps(costs: Sequence[TraceCost], start_of: Mapping[str, int], w_start: int, w_end: int,
              alpha: float = stats.ALPHA, min_traces: int = 30) -> list[KeyOnset]:
    """Every key whose time per occurrence stepped up and stayed up (Pettitt's rank
    change-point test per key, Bonferroni over keys). A step must leave a tenth of the
    window on each side, at least 1.5x the time per occurrence and 1 ms more."""
    series = _timed_per_call(costs, start_of)
    tested = {k: sorted(v) for k, v in series.items() if len(v) >= min_traces}
    floor = (w_end - w_start) // 10
    found: list[KeyOnset] = []
    for k, pts in tested.items():
        times = np.array([t for t, _ in pts], dtype=np.int64)
        y = np.array([v for _, v in pts], dtype=float)
        j, p = stats.pettitt_increase(y)
        if j <= 0 or j >= y.size:
            continue
        t_split = int(times[j])
        if t_split - w_start < floor or w_end - t_split < floor:
            continue
        before, after = float(y[:j].mean()), float(y[j:].mean())
        p = min(1.0, p * len(tested))
        if p < alpha and after >= 1.5 * before and after - before >= MIN_GROWTH_NS:
            found.append(KeyOnset(k, t_split, p, before, after))
    return found


def keys_grown(base: Sequence[TraceCost], after: Sequence[TraceCost], alpha: float = stats.ALPHA) -> set[Key]:
    """Keys whose own time per occurrence rose since the onset: shifted or with a heavier
    tail (the better of the two tests, Bonferroni over keys), at least 1.5x and 1 ms more
    on average. A busy component picked up only through its natural tail does not qualify."""
    b, a = _per_call(base), _per_call(after)
    keys = [k for k in a if len(a[k]) >= MIN_CALLS and len(b.get(k, [])) >= MIN_CALLS]
    grown = set()
    for k in keys:
        bm, am = float(np.mean(b[k])), float(np.mean(a[k]))
        if am >= 1.5 * bm and am - bm >= MIN_GROWTH_NS and min(1.0, _shift_test(a[k], b[k]) * len(keys)) < alpha:
            grown.add(k)
    return grown



ANY_CALLER = "*"  # the caller of a key that pools every call edge into one service


def calls_into(service: str) -> Key:
    """The key of every call into ``service``, whoever made it (see :func:`key_jumps`)."""
    return ("edge", service, f"{ANY_CALLER}->{service}")


def has_key(tc: TraceCost, key: Key) -> bool:
    """Whether the request went through ``key`` (for a :func:`calls_into` key: called the service)."""
    if key[2].startswith(ANY_CALLER + "->"):
        return any(k[0] == "edge" and k[1] == key[1] and "->" in k[2] for k in tc.count)
    return key in tc.count


def _timed_calls_into(costs: Sequence[TraceCost], start_of: Mapping[str, int]
                      ) -> dict[Key, list[tuple[int, float, frozenset[str]]]]:
    """:func:`calls_into` key -> (request start, time per call over every call edge into the
    service, the callers), for services called by two callers or more. Timed calls only,
    as in :func:`_timed_per_call`."""
    series: dict[Key, list[tuple[int, float, frozenset[str]]]] = defaultdict(list)
    for tc in costs:
        t = start_of.get(tc.trace_id)
        if t is None:
            continue
        into: dict[str, tuple[int, int, frozenset[str]]] = {}
        for k, n in tc.count.items():
            ns = tc.self_ns.get(k, 0)
            if k[0] != "edge" or "->" not in k[2] or n <= 0 or ns <= 0:
                continue
            total, calls, callers = into.get(k[1], (0, 0, frozenset()))
            into[k[1]] = (total + ns, calls + n, callers | {k[2].split("->", 1)[0]})
        for callee, (total, calls, callers) in into.items():
            series[calls_into(callee)].append((t, total / calls, callers))
    return {k: v for k, v in series.items() if len(frozenset().union(*(c for _, _, c in v))) >= 2}


def key_jumps(costs: Sequence[TraceCost], start_of: Mapping[str, int], alpha: float = stats.ALPHA,
              min_side: int = MIN_JUMP_CALLS, min_before: int = 3, min_ratio: float = 5.0,
              max_calls: int = 2000) -> list[KeyOnset]:
    """Keys whose time per call jumped by an order of magnitude and stayed there: the
    split of each key's calls (in time order) with the largest t on log time per call
    (``stats.log_step``), corrected for the splits and keys scanned, kept when the median after it is at
    least ``min_ratio`` times the median before, 1 ms more, and at least 80 % of the calls
    after it sit above the 90th percentile before (a burst of a noisy operation does not).

    This is what a fault in one component looks like when it touches only a handful of
    calls (a CPU-starved or network-delayed service called a few times a minute): too few
    for rank tests, which saturate, but unmistakable in size.

    The calls into a service from all its callers are one more series (:func:`calls_into`):
    a network delay into a service with several callers, each calling it rarely, leaves
    each edge too few calls, while together they show it. Such a jump counts only when calls
    from two callers or more jumped (above the 90th percentile before): one starved caller's
    calls are its own side, and its own edge says so."""
    series = _timed_per_call(costs, start_of)
    callers_at: dict[Key, list[frozenset[str]]] = {}
    for k, pts3 in _timed_calls_into(costs, start_of).items():
        pts3 = sorted(pts3, key=lambda p: (p[0], p[1]))[-max_calls:]
        series[k] = [(t, v) for t, v, _ in pts3]
        callers_at[k] = [c for _, _, c in pts3]
    tested = {k: sorted(v)[-max_calls:] for k, v in series.items() if len(v) >= min_before + min_side}
    n_tests = sum(stats.scan_tests(len(v) - min_before - min_side + 1) for v in tested.values())
    found: list[KeyOnset] = []
    for k, pts in tested.items():
        raw = np.array([v for _, v in pts], dtype=float)
        best = stats.log_step(raw, min_before, min_side, floor=1e3)  # 1 µs: timer resolution
        if best is None:
            continue
        split, _, p1 = best
        p = min(1.0, p1 * n_tests)
        before, after = raw[:split], raw[split:]
        mbf, maf = float(np.median(before)), float(np.median(after))
        above = after > np.percentile(before, 90)
        consistent = float(np.mean(above)) >= 0.8
        if k in callers_at:  # pooled calls into a service: the jump is seen by two callers or more
            seen = frozenset().union(*(c for c, a in zip(callers_at[k][split:], above) if a))
            consistent = consistent and len(seen) >= 2
        if p < alpha and maf >= min_ratio * mbf and maf - mbf >= MIN_GROWTH_NS and consistent:
            found.append(KeyOnset(k, int(pts[split][0]), p, mbf, maf))
    return sorted(found, key=lambda o: o.p)


def key_service(step: KeyOnset, costs: Sequence[TraceCost], start_of: Mapping[str, int]) -> str:
    """The service a key's step or jump blames. An operation's is its own service. A call
    edge's is decided as for the slow requests' edges (``edge_growth``), with the requests
    split at the step: the callee's side, unless the caller's other outgoing calls grew too,
    and more of them than the callee's other incoming calls: then the caller is starved
    (CPU, GC, threads). One rule, so a step and a blamed component never disagree on whose
    side the same edge is."""
    level, callee, op = step.key
    if level != "edge" or "->" not in op:
        return callee
    timed = [tc for tc in costs if start_of.get(tc.trace_id) is not None]
    after = [tc for tc in timed if start_of[tc.trace_id] >= step.time_ns]
    before = [tc for tc in timed if start_of[tc.trace_id] < step.time_ns]
    g = edge_growth(after, before).get((op.split("->", 1)[0], callee))
    if g is None:
        return callee
    return g.caller if g.side == "caller" else g.callee
