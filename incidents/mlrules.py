"""Watch rules on a model's inputs and predictions (issue 18): ``drift`` and ``quality``.

Unlike the SLO rules (pure over the span aggregates, :mod:`.evaluate`), these read the
profiles and labels themselves, by running the investigation over the rule's window
(``within``, default 30m) at each evaluation:

- ``drift``: ``investigate drift`` for ``model`` (``version``) against the stored reference
  profile (``DATA_DIR/profiles``, as the CLI finds it; or the rule's ``reference``), else the
  previous period. Holds while a feature or the prediction scores drifted significantly.
- ``quality``: ``investigate quality`` for ``model``: holds while the accuracy of the
  labelled predictions of the window is below ``objective`` with at least ``min_events``
  of them labelled (labels come late: the newest predictions usually have none yet);
  when the investigation finds a drop inside the window, the accuracy since its onset is
  the one judged (the earlier predictions, labelled first, would otherwise hold the
  window's accuracy up for as long as labels take to arrive).

The report computed for the condition is its cause: the alert carries its top findings
(drifted feature and the segment it concentrates in; the quality drop, its onset, the
segment, the features that set the mispredictions apart and their drift), exactly as the
latency and error rules carry the slow/errors investigation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stagetrace.backend import Backend

from .evaluate import Condition
from .rules import Rule, WatchConfig, fmt_duration

MODEL_KINDS = ("drift", "quality")


def _reference(rule: Rule, data_dir: Path | None) -> Path | None:
    from stagetrace.forensics.drift import reference_path

    if rule.reference:
        p = Path(rule.reference)
        return p if p.exists() else None
    if data_dir is None or rule.model is None:
        return None
    for version in ((rule.version, None) if rule.version else (None,)):
        p = reference_path(data_dir, rule.model, version)
        if p.exists():
            return p
    return None


def evaluate_models(cfg: WatchConfig, backend: Backend, now_ns: int, data_dir: Path | None = None,
                    ignore_before_ns: int | None = None) -> list[Condition]:
    """Conditions of the drift and quality rules true at ``now_ns``. Data older than
    ``ignore_before_ns`` (a demo's warm-up) is not read: a quality window starts after it,
    and a drift rule without a reference profile waits until its previous period does."""
    out: list[Condition] = []
    # a drift and a quality rule of the same model and window share one drift investigation
    # (the quality report links its findings to the drift of the same window)
    drift_reports: dict[tuple, Any] = {}
    for rule in cfg.rules:
        if rule.kind == "drift":
            c = _drift(rule, backend, now_ns, data_dir, ignore_before_ns, drift_reports)
        elif rule.kind == "quality":
            c = _quality(rule, backend, now_ns, data_dir, ignore_before_ns, drift_reports)
        else:
            continue
        if c is not None:
            out.append(c)
    return out


def _labels(rule: Rule, severity: str) -> dict[str, str]:
    labels = {"alertname": rule.name, "severity": rule.severity or severity, "model": str(rule.model)}
    if rule.version:
        labels["model_version"] = rule.version
    return labels


def _drift(rule: Rule, backend: Backend, now_ns: int, data_dir: Path | None, ignore_before_ns: int | None,
           shared: dict[tuple, Any]) -> Condition | None:
    from stagetrace.forensics.drift import investigate_drift
    from stagetrace.forensics.window import fmt_time

    start = now_ns - rule.within_ns
    ref = _reference(rule, data_dir)
    if ignore_before_ns is not None:
        if ref is None and start - rule.within_ns < ignore_before_ns:
            return None  # the previous period it would compare with is not part of the story yet
        start = max(start, ignore_before_ns)
    rep = investigate_drift(backend, model=str(rule.model), version=rule.version, start_ns=start, end_ns=now_ns,
                            reference=ref)
    shared[(rule.model, rule.version, start, now_ns, ref)] = rep
    sig = [f for f in rep.findings if f.significant]
    if not sig:
        return None
    top = sig[0]
    ev = top.evidence
    feats = ", ".join(str(f.evidence.get("feature")) for f in sig[:5])
    against = f"the reference {ref}" if ref else "the previous period"
    onset = ev.get("onset_ns")
    summary = rule.summary or (f"{rule.model}: input drift in {feats} (top: {ev.get('feature')} PSI {ev.get('psi', 0):.2f}"
                               + (f", in {top.attribute}={top.value}" if top.attribute else "") + ")")
    desc = (f"investigate drift over the last {fmt_duration(rule.within_ns)} against {against}: "
            f"{len(sig)} feature(s) drifted" + (f"; onset {fmt_time(onset)}" if onset else "") + ".")
    ann: dict[str, Any] = {"feature": str(ev.get("feature")), "psi": f"{ev.get('psi', 0):.3f}",
                           "drifted_features": feats}
    if onset:
        ann["onset"] = fmt_time(onset)
    cond = Condition(rule, _labels(rule, "ticket"), summary, desc, float(ev.get("psi") or 0.0), "drift",
                     (start, now_ns), annotations=ann, onset_ns=onset)
    cond.report = rep
    return cond


def _quality(rule: Rule, backend: Backend, now_ns: int, data_dir: Path | None, ignore_before_ns: int | None,
             shared: dict[tuple, Any]) -> Condition | None:
    from stagetrace.forensics.quality import investigate_quality
    from stagetrace.forensics.window import fmt_time

    start = now_ns - rule.within_ns
    if ignore_before_ns is not None:
        start = max(start, ignore_before_ns)
    ref = _reference(rule, data_dir)
    rep = investigate_quality(backend, model=str(rule.model), version=rule.version, start_ns=start, end_ns=now_ns,
                              reference=ref, drift_report=shared.get((rule.model, rule.version, start, now_ns, ref)))
    overall = rep.data.get("overall") or {}
    n, acc = overall.get("labelled", 0), overall.get("accuracy")
    on = rep.data.get("onset") or {}
    onset = on.get("onset_ns")
    since = ""
    if onset and on.get("accuracy_after") is not None:
        # a drop found inside the window: the objective is judged on the predictions since it
        # (the labelled ones from before it would hold the window's accuracy up for as long as
        # the labels take to arrive)
        acc, since = on["accuracy_after"], f" since {fmt_time(onset)}"
    if acc is None or n < rule.min_events or acc >= rule.objective:
        return None
    summary = rule.summary or (f"{rule.model}: accuracy {acc:.1%}{since} below the {rule.objective:.1%} objective "
                               f"({n} labelled predictions in the last {fmt_duration(rule.within_ns)})")
    desc = (f"Quality objective: accuracy >= {rule.objective:g} over the labelled predictions of the last "
            f"{fmt_duration(rule.within_ns)} (at least {rule.min_events} labelled); now {acc:.4f} over {n}"
            + (f"; the drop began at {fmt_time(onset)}" if onset else "") + ".")
    ann = {"accuracy": f"{acc:.4f}", "objective": f"{rule.objective:g}", "labelled": str(n)}
    if onset:
        ann["onset"] = fmt_time(onset)
    cond = Condition(rule, _labels(rule, "page"), summary, desc, float(acc), "quality", (start, now_ns),
                     annotations=ann, onset_ns=onset)
    cond.report = rep
    return cond
