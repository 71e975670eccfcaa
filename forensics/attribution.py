"""Where the extra latency of slow requests goes: per ML stage, and one level
up per service operation and caller->callee edge.

Per trace, the critical path is split into self time (see critical_path); the
pieces add up to the root's duration, so the difference of means between
selection and baseline decomposes *exactly* into per-key contributions. A
key's share of the excess is its contribution divided by the total excess.

Edge time (a CLIENT span's time not covered by the callee's SERVER span) is
keyed to the callee, as Tempo's service graphs do: queueing in front of a
service is that service's problem, not the caller's self time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import Trace

from . import stats
from .critical_path import blame_key, critical_path


@dataclass(slots=True)
class Breakdown:
    trace_id: str
    duration_ns: int
    by_stage: dict[str, int]
    by_blame: dict[tuple[str, str, str], int]
    # blame key -> ML stage of its spans on the critical path (own ml.stage, else the
    # nearest ancestor's); absent when they have none
    stage_of: dict[tuple[str, str, str], str] = field(default_factory=dict)


def breakdown(traces: Sequence[Trace]) -> list[Breakdown]:
    out = []
    for t in traces:
        cp = critical_path(t)
        if cp.root is None:
            continue
        stage_of: dict[tuple[str, str, str], str] = {}
        for sid in cp.self_ns:
            node = cp.nodes[sid]
            if node.stage != semconv.STAGE_OTHER:
                stage_of.setdefault(blame_key(node), node.stage)
        out.append(Breakdown(t.trace_id, cp.duration_ns, cp.by_stage(), cp.by_blame(), stage_of))
    return out


def _stage_of(key: tuple[str, str, str], rows: Sequence[Breakdown]) -> str | None:
    """The stage an operation or edge belongs to: the most common one over the traces."""
    seen = Counter(b.stage_of[key] for b in rows if key in b.stage_of)
    return seen.most_common(1)[0][0] if seen else None


@dataclass(slots=True)
class Contribution:
    level: str  # stage | operation | edge
    key: str  # stage name, "service: operation", or "caller->callee"
    service: str | None
    operation: str | None
    stage: str | None
    sel_mean_ns: float
    base_mean_ns: float
    excess_ns: float
    share: float  # of the total excess
    total_excess_ns: float
    p: float = 1.0
    p_adj: float = 1.0
    significant: bool = False
    examples: list[str] = field(default_factory=list)
    edge: dict[str, str] | None = None

    def evidence(self) -> dict[str, Any]:
        return {"selection_mean_ms": self.sel_mean_ns / 1e6, "baseline_mean_ms": self.base_mean_ns / 1e6,
                "excess_ms": self.excess_ns / 1e6, "share_of_excess": self.share,
                "total_excess_ms": self.total_excess_ns / 1e6, "p_value": self.p, "p_adjusted": self.p_adj,
                "example_trace_ids": self.examples[:5]}


def compare(sel: Sequence[Breakdown], base: Sequence[Breakdown], *, min_share: float = 0.2,
            alpha: float = stats.ALPHA, weights: Mapping[str, float] | None = None) -> list[Contribution]:
    """Contributions of every stage, operation and edge to the excess mean latency.

    ``weights`` (trace id -> adjusted count, tail-sampled data) make the means
    weighted, so the decomposition stays exact; the Mann-Whitney test keeps the
    stored values (a sampled baseline over-represents its slow tail and errors,
    which only makes the test more conservative)."""
    if not sel or not base:
        return []
    sw = np.array([weights.get(b.trace_id, 1.0) for b in sel], float) if weights else None
    bw = np.array([weights.get(b.trace_id, 1.0) for b in base], float) if weights else None
    total = float(stats.weighted_mean([b.duration_ns for b in sel], sw)
                  - stats.weighted_mean([b.duration_ns for b in base], bw))
    rows: list[Contribution] = []

    def add(level, key, getter, **kw):
        s = np.array([getter(b) for b in sel], float)
        bb = np.array([getter(b) for b in base], float)
        s_mean, b_mean = stats.weighted_mean(s, sw), stats.weighted_mean(bb, bw)
        excess = s_mean - b_mean
        c = Contribution(level, key, sel_mean_ns=s_mean, base_mean_ns=b_mean, excess_ns=excess,
                         share=excess / total if total > 0 else 0.0, total_excess_ns=total, **kw)
        c.p = stats.greater_test(s, bb)
        order = np.argsort(-s)
        c.examples = [sel[i].trace_id for i in order[:5] if s[i] > 0]
        rows.append(c)

    stages = sorted({k for b in (*sel, *base) for k in b.by_stage})
    for st in stages:
        add("stage", st, lambda b, st=st: b.by_stage.get(st, 0), service=None, operation=None, stage=st)
    keys = sorted({k for b in (*sel, *base) for k in b.by_blame})
    for key in keys:
        level, svc, op = key
        edge = None
        if level == "edge":
            caller, _, callee = op.partition("->")
            edge = {"caller": caller, "callee": callee}
        add(level, op if level == "edge" else f"{svc}: {op}", lambda b, key=key: b.by_blame.get(key, 0),
            service=svc, operation=None if level == "edge" else op, stage=_stage_of(key, (*sel, *base)), edge=edge)
    for c, pa in zip(rows, stats.bh_adjust([r.p for r in rows])):
        c.p_adj = pa
        c.significant = pa < alpha and c.share >= min_share and total > 0
    rows.sort(key=lambda c: -c.excess_ns)
    return rows
