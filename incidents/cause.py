"""The cause attached to an alert: the matching investigation over the alert's window.

When an alert fires, ``watch`` runs ``investigate slow`` (latency rules) or
``investigate errors`` (error rules, new fingerprints, error regressions after a
version change) exactly as the CLI would, writes the full report as html, md and json
under ``OUT/alerts/<alert id>/``, and returns the top findings for the notification.
The findings' structured fields (service, operation, stage, attribute, value) travel
as annotations too, so a receiver can route on them without parsing sentences.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetrace.backend import Backend

from .evaluate import Condition

log = logging.getLogger("stagetrace.watch")
TOP = 3


@dataclass(slots=True)
class Cause:
    lines: list[str]  # top findings, one sentence each
    top: dict[str, Any] = field(default_factory=dict)  # the first finding's structured fields
    report_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)  # fmt -> path
    example_trace_ids: list[str] = field(default_factory=list)
    error: str | None = None

    def annotations(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.lines:
            out["cause"] = "\n".join(f"{i}. {ln}" for i, ln in enumerate(self.lines, 1))
            out["root_cause"] = self.lines[0]
        for k, v in self.top.items():
            if v not in (None, ""):
                out[f"cause_{k}"] = str(v)
        if self.files.get("html"):
            out["report"] = self.files["html"]
        if self.example_trace_ids:
            out["example_trace_id"] = self.example_trace_ids[0]
        if self.error:
            out["cause_error"] = self.error
        return out


def investigate(backend: Backend, cond: Condition, alert_id: str, out_dir: Path) -> Cause:
    """Run the investigation for ``cond``; never raises (an alert without its cause is
    still an alert): a failure is reported in ``Cause.error``."""
    from stagetrace.forensics import investigate_errors, investigate_slow, render

    start, end = cond.window_ns
    # A route's SLO threshold is a request threshold; a stage's is not (its requests are longer).
    threshold: str | int = cond.threshold_ns if cond.threshold_ns and cond.route else "p95"

    def run(service: str | None):
        if cond.investigate == "slow":
            return investigate_slow(backend, service=service, route=cond.route if service else None, start_ns=start,
                                    end_ns=end, threshold=threshold)
        return investigate_errors(backend, service=service, start_ns=start, end_ns=end)

    if cond.report is not None:  # drift / quality rules: the investigation that found it
        report = cond.report
    elif cond.investigate not in ("slow", "errors"):
        return Cause([])
    else:
        try:
            report = run(cond.service)
            # Scoped to a service that clients call inside their own traces, the entry spans can be
            # few (investigate's rule: the service's root spans when it has any); then the whole
            # requests, from their roots, say more.
            if cond.service and (report.data.get("counts") or {}).get("requests", 0) < 20:
                report = run(None)
        except Exception as exc:  # noqa: BLE001 - the alert goes out with the reason instead
            log.warning("investigation for alert %s failed: %s", alert_id, exc)
            return Cause([], error=f"investigation failed: {exc}")
    sig = [f for f in report.findings if f.significant]
    # the root cause is a cause (where, or which attribute), not supporting evidence (a log, a metric);
    # a new-error alert's cause is the incident of its own exception type, not the biggest one
    want_exc = cond.labels.get("exception_type")
    f = None
    if want_exc and want_exc != "-":
        f = next((x for x in report.findings if x.kind == "error_cluster" and any(
            fp.get("exception_type") == want_exc for fp in x.evidence.get("fingerprints") or [])), None)
    if f is None:
        f = next((x for x in sig if x.is_cause), sig[0] if sig else None)
    weak = False
    if f is None:
        # Nothing cleared the bar: the cause is still the investigation's first incident or
        # component, said to be below the bar, never the verdict's summary line.
        f = next((x for x in report.findings if x.kind in ("error_cluster", "stage", "attribute")), None)
        weak = f is not None
    ordered = ([f] if f is not None else []) + [x for x in sig if x is not f]
    lines = [x.summary for x in ordered[:TOP]]
    if weak:
        lines[0] = f"(not significant) {lines[0]}"
    if not lines:
        lines = [f"no cause found: {report.verdict[-1]}" if report.verdict else "no cause found"]
    top: dict[str, Any] = {}
    if f is not None:
        top = {"kind": f.kind, "service": f.service, "operation": f.operation, "stage": f.stage,
               "attribute": f.attribute, "value": f.value, "confidence": f.confidence}
    examples = list(report.data.get("example_trace_ids") or [])
    if f is not None and f.evidence.get("example_trace_ids"):
        examples = list(f.evidence["example_trace_ids"]) + examples
    if not examples:
        for x in sig:
            examples += list(x.evidence.get("example_trace_ids") or [])
    rdir = out_dir / "alerts" / alert_id
    files: dict[str, str] = {}
    try:
        rdir.mkdir(parents=True, exist_ok=True)
        for fmt in ("html", "md", "json"):
            p = rdir / f"report.{fmt}"
            p.write_text(render(report, fmt), encoding="utf-8")
            files[fmt] = str(p.resolve())
    except OSError as exc:
        log.warning("cannot write the report of alert %s: %s", alert_id, exc)
    return Cause(lines, top, rdir, files, examples[:5])
