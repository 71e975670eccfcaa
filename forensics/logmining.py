"""Log templates over-represented in a set of traces.

Templates come from drain3's in-memory TemplateMiner (no persistence): the
maintained implementation of the Drain parser. Numbers and hex ids are masked
before mining so "took 512 ms" and "took 7 ms" share a template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from stagetrace.model import LogRecord, Trace


# drain3 and scipy are imported where used: `stagetrace trace` needs body_text only
# and must start fast.

_MASKS = [
    (r"\b[0-9a-fA-F]{16,}\b", "HEX"),
    (r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])", "NUM"),
]


class LogMiner:
    def __init__(self) -> None:
        from drain3 import TemplateMiner
        from drain3.masking import MaskingInstruction
        from drain3.template_miner_config import TemplateMinerConfig
        cfg = TemplateMinerConfig()
        cfg.masking_instructions = [MaskingInstruction(p, m) for p, m in _MASKS]
        cfg.drain_sim_th = 0.5
        cfg.drain_max_clusters = 5000  # bounded memory on pathological logs
        cfg.profiling_enabled = False
        self.miner = TemplateMiner(config=cfg)
        self._seen: dict[str, int] = {}

    def add(self, text: str) -> int:
        # Identical lines are common (the same error thousands of times): mine each text once.
        cid = self._seen.get(text)
        if cid is None:
            cid = int(self.miner.add_log_message(text[:2000])["cluster_id"])
            if len(self._seen) < 200_000:  # bounded memory
                self._seen[text] = cid
        return cid

    def template(self, cluster_id: int) -> str:
        for c in self.miner.drain.clusters:
            if c.cluster_id == cluster_id:
                return c.get_template()
        return ""

    def templates(self) -> dict[int, str]:
        return {c.cluster_id: c.get_template() for c in self.miner.drain.clusters}


def body_text(rec: LogRecord) -> str:
    b = rec.body
    if isinstance(b, str):
        return b
    if isinstance(b, (dict, list)):
        if isinstance(b, dict) and isinstance(b.get("message"), str):
            return b["message"]
        return json.dumps(b, sort_keys=True, default=str)
    return "" if b is None else str(b)


def message_text(rec: LogRecord) -> str:
    """The body's message without the line's own header (see :mod:`.logtext`): what is templated."""
    from .logtext import message
    return message(body_text(rec))


@dataclass(slots=True)
class TemplateStat:
    template: str
    sel_traces: int
    sel_n: int
    base_traces: int
    base_n: int
    lines: int = 0
    severity: str = ""
    service: str = ""
    examples: list[dict[str, str]] = field(default_factory=list)  # {"trace_id", "line"}
    p: float = 1.0
    p_adj: float = 1.0
    significant: bool = False
    # Tail-sampled data: (Σ adjusted_count of traces with the template, of the group); None = unweighted
    sel_w: tuple[float, float] | None = None
    base_w: tuple[float, float] | None = None
    neff: tuple[float, float] | None = None

    @property
    def sel_share(self) -> float:
        from .stats import share  # scipy stays out of `stagetrace trace`'s imports
        return share(self.sel_traces, self.sel_n, self.sel_w)

    @property
    def base_share(self) -> float:
        from .stats import share  # scipy stays out of `stagetrace trace`'s imports
        return share(self.base_traces, self.base_n, self.base_w)

    @property
    def delta(self) -> float:
        return self.sel_share - self.base_share

    @property
    def lift(self) -> float:
        return self.sel_share / max(self.base_share, 1 / (self.base_n + 1))

    def evidence(self) -> dict[str, Any]:
        ev = {"selection_share": self.sel_share, "baseline_share": self.base_share, "lift": self.lift,
              "selection_count": self.sel_traces, "selection_total": self.sel_n,
              "baseline_count": self.base_traces, "baseline_total": self.base_n, "lines": self.lines,
              "severity": self.severity, "p_value": self.p, "p_adjusted": self.p_adj,
              "example_trace_ids": [e["trace_id"] for e in self.examples], "example_lines": self.examples}
        from .window import weighted_evidence  # numpy: not for `stagetrace trace`, which needs body_text only
        ev.update(weighted_evidence(self.sel_w, self.base_w, self.neff))
        return ev


def over_represented(selection: Sequence[Trace], baseline: Sequence[Trace], *, min_delta: float = 0.15,
                     min_lift: float = 2.0, alpha: float | None = None, max_results: int = 15,
                     weights: Mapping[str, float] | None = None) -> list[TemplateStat]:
    """Templates whose share of traces is higher in ``selection`` than in ``baseline``.
    ``weights`` (trace id -> adjusted count) as in :func:`attributes.compare`."""
    from . import stats
    alpha = stats.ALPHA if alpha is None else alpha
    miner = LogMiner()
    sel_ids = {t.trace_id for t in selection}
    hits: dict[int, dict[str, Any]] = {}
    from .logtext import MessageTexts
    texts = MessageTexts().learn(rec for t in (*selection, *baseline) for rec in t.logs)
    for t in (*selection, *baseline):
        for rec in t.logs:
            text = texts.text(rec)
            if not text:
                continue
            cid = miner.add(text)
            h = hits.setdefault(cid, {"sel": set(), "base": set(), "lines": 0, "sev": {}, "svc": {}, "ex": []})
            (h["sel"] if t.trace_id in sel_ids else h["base"]).add(t.trace_id)
            h["lines"] += 1
            sev = rec.severity_text or str(rec.severity_number)
            h["sev"][sev] = h["sev"].get(sev, 0) + 1
            h["svc"][rec.service_name] = h["svc"].get(rec.service_name, 0) + 1
            if t.trace_id in sel_ids and len(h["ex"]) < 3 and all(e["trace_id"] != t.trace_id for e in h["ex"]):
                h["ex"].append({"trace_id": t.trace_id, "line": text[:300]})
    templates = miner.templates()
    out = []
    w = (lambda tid: float(weights.get(tid, 1.0))) if weights else (lambda tid: 1.0)  # noqa: E731
    # A template is compared among the requests that reached the service that logs it:
    # a heavy route's own log lines are not evidence that its requests are slow.
    reached: dict[str, tuple[list[str], list[str]]] = {}
    for t in selection:
        for svc in {s.service_name for s in t.spans}:
            reached.setdefault(svc, ([], []))[0].append(t.trace_id)
    for t in baseline:
        for svc in {s.service_name for s in t.spans}:
            reached.setdefault(svc, ([], []))[1].append(t.trace_id)
    for cid, h in hits.items():
        svc = max(h["svc"], key=h["svc"].get)
        s_ids, b_ids = reached.get(svc, ([t.trace_id for t in selection], [t.trace_id for t in baseline]))
        if not s_ids or not b_ids:
            s_ids, b_ids = [t.trace_id for t in selection], [t.trace_id for t in baseline]
        # Hits are counted among the same requests as the denominator: a template that several
        # services log also appears in traces that never reached its main service.
        s_set, b_set = set(s_ids), set(b_ids)
        s_hit, b_hit = h["sel"] & s_set, h["base"] & b_set
        st = TemplateStat(templates.get(cid, ""), len(s_hit), len(s_set), len(b_hit), len(b_set),
                          h["lines"], max(h["sev"], key=h["sev"].get), svc, h["ex"])
        if weights:
            # sums in id order: over a set, the float sum's last bits followed the hash seed
            s_hit, s_set, b_hit, b_set = sorted(s_hit), sorted(s_set), sorted(b_hit), sorted(b_set)
            st.sel_w = (sum(w(t) for t in s_hit), sum(w(t) for t in s_set))
            st.base_w = (sum(w(t) for t in b_hit), sum(w(t) for t in b_set))
            st.neff = (stats.effective_n([w(t) for t in s_set]), stats.effective_n([w(t) for t in b_set]))
            neff = st.neff
            st.p = stats.weighted_share_test(st.sel_share, neff[0], st.base_share, neff[1])
        else:
            st.p = stats.share_test(st.sel_traces, st.sel_n, st.base_traces, st.base_n)
        out.append(st)
    for st, pa in zip(out, stats.bh_adjust([s.p for s in out])):
        st.p_adj = pa
        st.significant = (pa < alpha and st.delta >= min_delta and st.lift >= min_lift
                          and st.sel_traces >= stats.MIN_SUPPORT)
    out.sort(key=lambda s: (not s.significant, -s.delta))
    return [s for s in out if s.delta > 0][:max_results]
