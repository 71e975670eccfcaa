"""Report and Finding: what every forensics command produces, and the versioned
JSON form users script against (documented in docs/report-schema.md, checked
against ``report.schema.json`` by the tests).

Analyses build :class:`Finding` objects; renderers (text, md, html) and
:func:`to_json` only read them, so every format says the same thing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

SCHEMA_NAME = "stagetrace.report"
# Bump the minor version for additive changes, the major one for anything that
# could break a script reading the previous version.
SCHEMA_VERSION = "1.4"

FINDING_KINDS = ("stage", "attribute", "log", "metric", "error_cluster", "change", "drift", "quality", "feature")
REPORT_KINDS = ("trace", "slow", "errors", "drift", "quality")


@dataclass(slots=True)
class Finding:
    """One ranked piece of explanation.

    ``score`` orders findings within a report (higher = more likely the cause);
    it is comparable within one report, not across reports. ``significant`` is
    False for findings kept for context that did not clear the significance bar.
    """

    kind: str
    summary: str
    score: float
    significant: bool = True
    confidence: str | None = None  # high | medium | low
    evidence: dict[str, Any] = field(default_factory=dict)
    service: str | None = None
    operation: str | None = None
    stage: str | None = None
    edge: dict[str, str] | None = None  # {"caller": service, "callee": service}
    attribute: str | None = None
    value: Any = None
    template: str | None = None
    metric: str | None = None

    @property
    def is_cause(self) -> bool:
        """A finding that says where or what the cause is (an incident, a component, an
        attribute value, a saturated resource), as opposed to evidence that supports one
        (a log template, a correlated metric, an onset)."""
        return (self.kind in ("error_cluster", "stage", "attribute", "drift", "quality")
                or bool(self.evidence.get("resource_step")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "summary": self.summary, "score": _num(self.score),
            "significant": bool(self.significant), "confidence": self.confidence,
            "service": self.service, "operation": self.operation, "stage": self.stage,
            "edge": self.edge, "attribute": self.attribute, "value": _jsonable(self.value),
            "template": self.template, "metric": self.metric,
            "evidence": _jsonable(self.evidence),
        }


def skipped_reason(exc: Exception) -> str:
    """Why a piece of evidence was skipped, for the report: a backend's or user's error is
    already one worded line (e.g. what was wrong with Prometheus' answer); anything else is
    odd data we did not foresee, named by its exception type so it can be reported."""
    from stagetrace.errors import UserError
    if isinstance(exc, UserError):
        return str(exc)[:300]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class EvidenceGuard:
    """Runs each evidence source of an investigation on its own: one that fails on odd data
    is skipped, and the report says which and why, instead of the command ending in a
    traceback. ``run(name, fn, *args, default=...)`` returns ``fn(*args)`` or ``default``."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def run(self, name: str, fn, *args, default=None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # odd data must not cost the whole report
            self.skipped.append(f"{name} was skipped: {skipped_reason(exc)}")
            return default

    def note(self, report: "Report") -> None:
        for s in self.skipped:
            report.notes.append(f"Evidence skipped on odd data: {s}.")
        if self.skipped:
            report.data["skipped_evidence"] = list(self.skipped)


@dataclass(slots=True)
class Report:
    """A whole report. ``data`` holds the kind-specific sections the renderers
    draw (tables, histograms, timelines, the waterfall); their keys are listed
    per kind in docs/report-schema.md."""

    kind: str  # trace | slow | errors
    title: str
    findings: list[Finding] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    query: dict[str, Any] = field(default_factory=dict)
    window: dict[str, int | None] = field(default_factory=dict)  # start_ns, end_ns
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    generated_at_ns: int = field(default_factory=time.time_ns)

    @property
    def significant_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.significant]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
            "kind": self.kind, "title": self.title,
            "generated_at_ns": self.generated_at_ns,
            "query": _jsonable(self.query), "window": _jsonable(self.window),
            "verdict": list(self.verdict),
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "data": _jsonable(self.data),
        }


def to_json(reports: Sequence[Report], indent: int | None = 2) -> str:
    """One report as itself; several as a bundle ``{"kind": "bundle", "reports": [...]}``."""
    if len(reports) == 1:
        doc: dict[str, Any] = reports[0].to_dict()
    else:
        doc = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "kind": "bundle",
               "generated_at_ns": time.time_ns(), "reports": [r.to_dict() for r in reports]}
    return json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def drift_examples(r: Report, limit: int = 3) -> list[tuple[str, list[str]]]:
    """(feature, example trace ids) of each drift finding, for the renderers' example lines
    (the html report draws them under the feature's histogram)."""
    return [(str(f.evidence.get("feature")), list(f.evidence.get("example_trace_ids") or [])[:limit])
            for f in r.findings if f.kind == "drift" and f.evidence.get("example_trace_ids")]


def headline(text: Any, limit: int = 120) -> str:
    """A message fit for a one-sentence ``summary``: its first non-empty line,
    cut at ``limit`` characters with an ellipsis. Exception messages can be whole
    paragraphs (sklearn's NaN ValueError); the full text belongs in ``evidence``."""
    s = str(text) if text is not None else ""
    line = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    more = line != s.strip()
    if len(line) > limit:
        cut = line[: limit - 1]
        space = cut.rfind(" ")
        if space > limit * 0.6:  # end on a whole word when one is near
            cut = cut[:space]
        line, more = cut.rstrip(), True
    return line + "…" if more else line


def _num(x: float) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return round(float(x), 6)


def _jsonable(v: Any) -> Any:
    """Plain JSON types only: numpy scalars, tuples, sets and NaN are normalised
    so the output is strict JSON (no NaN/Infinity)."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        return _jsonable(v.item())
    if hasattr(v, "to_dict"):
        return _jsonable(v.to_dict())
    return str(v)
