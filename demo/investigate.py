"""The demo's last act: run the forensics on what the collector stored, write
the reports, and say in a few lines what was found and what to try next.

It calls the same public API as ``stagetrace investigate`` and ``stagetrace
trace`` (:mod:`stagetrace.forensics`), on the embedded store the demo's
collector wrote, so the commands it prints give the same answers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.console import Console

from .loadgen import LoadStats
from .scenarios import Schedule

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
# The inference spans' ml.model.name is the scikit-learn class (Pipeline); the model is
# named by the service that serves it, which investigate drift/quality also accept.
MODEL = "fraud-api"
REFERENCE_SHARE = 0.3  # of a clean run: the reference period when no fault gives an onset
MIN_REFERENCE = 50  # predictions: fewer make no reference worth comparing with
IN_FLIGHT_S = 3.0


def _example_ids(finding: Any) -> list[str]:
    """Trace ids a finding cites as examples, wherever its evidence keeps them."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str) and _HEX32.match(v):
            if v not in found:
                found.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if "trace" in str(k) or isinstance(x, (dict, list)):
                    walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(finding.evidence)
    return found


def _pick_slow(report: Any, stats: LoadStats, schedule: Schedule) -> str | None:
    for f in report.significant_findings:
        ids = _example_ids(f)
        if ids:
            return ids[0]
    # No finding cited one: the slowest successful request of the load.
    ok = [o for o in stats.outcomes if o.status == 200 and o.trace_id]
    return max(ok, key=lambda o: o.latency_s).trace_id if ok else None


def _pick_failed(report: Any, stats: LoadStats) -> str | None:
    for f in report.findings:
        if f.kind == "error_cluster":
            ids = _example_ids(f)
            if ids:
                return ids[0]
    failed = [o for o in stats.outcomes if o.status is not None and o.status >= 500 and o.trace_id]
    return failed[0].trace_id if failed else None


def investigate(data_dir: Path, schedule: Schedule, stats: LoadStats, out: Path, console: Console,
                *, n_spans: int = 0) -> dict[str, Any]:
    from stagetrace.backend import open_backend
    from stagetrace.errors import NotFound
    from stagetrace.forensics import investigate_errors, investigate_slow, render, trace_report

    start_ns = int(schedule.start * 1e9)  # the warm-up before it is not part of the story
    end_ns = int((schedule.end + 30) * 1e9)
    backend = open_backend(kind="embedded", data_dir=str(data_dir))
    try:
        console.print("  investigating  slow requests, errors, one slow and one failed trace ...")
        slow = investigate_slow(backend, start_ns=start_ns, end_ns=end_ns, threshold="p95")
        errors = investigate_errors(backend, start_ns=start_ns, end_ns=end_ns)
        reports = [slow, errors]
        console.print("  investigating  drift of the model's inputs, quality by the labels sent back ...")
        model = _investigate_model(backend, data_dir, schedule)
        reports += [r for r in (model["drift_report"], model["quality_report"]) if r is not None]
        slow_id = _pick_slow(slow, stats, schedule)
        failed_id = _pick_failed(errors, stats)
        traces: dict[str, str] = {}
        for label, tid in (("slow", slow_id), ("failed", failed_id)):
            if not tid:
                continue
            try:
                reports.append(trace_report(backend, tid))
                traces[label] = tid
            except NotFound:
                console.print(f"  [yellow]the {label} trace {tid} is not in the store[/]")
    finally:
        backend.close()

    files = {}
    for fmt, name in (("html", "report.html"), ("md", "report.md"), ("json", "report.json")):
        path = out / name
        path.write_text(render(reports, fmt), encoding="utf-8")
        files[fmt] = path

    summary = {
        "slow_causes": _headlines(slow),
        "error_causes": _headlines(errors),
        "slow_verdict": list(slow.verdict), "error_verdict": list(errors.verdict),
        "drift": model["drift"], "quality": model["quality"], "reference": model["reference"],
        "model": MODEL, "traces": traces,
    }
    _print_summary(console, summary, schedule, data_dir, files, stats, n_spans)
    summary["files"] = files
    return summary


def _rel(schedule: Schedule, ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9 - schedule.start, 1)


def clean_reference_end(schedule: Schedule) -> float:
    """Where the clean period ends: a second before the first fault (a request then runs
    into it), or a share of a clean run."""
    if schedule.onset is not None:
        return schedule.onset - 1.0
    return schedule.start + REFERENCE_SHARE * (schedule.end - schedule.start)


def save_clean_reference(backend: Any, data_dir: Path, schedule: Schedule) -> dict[str, Any] | None:
    """The model's reference profile from the predictions of the clean period, as
    `stagetrace profile build` makes it from a healthy window, stored where
    `stagetrace investigate drift --model fraud-api` and the watch's drift rule find it.
    None when the clean period has too few predictions to compare with."""
    from stagetrace.forensics import mlprofiles as mp
    from stagetrace.forensics.drift import inference_spans, reference_path, row_correlations, save_reference

    ref_end = clean_reference_end(schedule)
    clean = inference_spans(backend, MODEL, None, int(schedule.start * 1e9), int(ref_end * 1e9))
    if len(clean) < MIN_REFERENCE:
        return None
    path = reference_path(data_dir, MODEL, None)
    dists = mp.distributions(clean)
    save_reference(path, MODEL, None, dists, mp.score_dist(clean),
                   f"{len(clean)} predictions of the clean period, +0.0s..+{ref_end - schedule.start:.1f}s",
                   correlations=row_correlations(clean))
    return {"path": str(path), "predictions": len(clean), "rows": max((d.rows for d in dists.values()), default=0),
            "until_s": round(ref_end - schedule.start, 1)}


def _investigate_model(backend: Any, data_dir: Path, schedule: Schedule) -> dict[str, Any]:
    """The reference profile of the clean period (made again now that all of its telemetry
    is in), then drift and quality over the whole load."""
    from stagetrace.forensics.drift import investigate_drift
    from stagetrace.forensics.quality import investigate_quality

    # predictions of the requests still in flight when the load stopped count too
    start_ns, end_ns = int(schedule.start * 1e9), int((schedule.end + IN_FLIGHT_S) * 1e9)
    out: dict[str, Any] = {"drift": [], "quality": None, "reference": None, "drift_report": None,
                           "quality_report": None}
    out["reference"] = save_clean_reference(backend, data_dir, schedule)
    reference = Path(out["reference"]["path"]) if out["reference"] else None
    drift = investigate_drift(backend, model=MODEL, version=None, start_ns=start_ns, end_ns=end_ns,
                              reference=reference)
    quality = investigate_quality(backend, model=MODEL, version=None, start_ns=start_ns, end_ns=end_ns,
                                  reference=reference, drift_report=drift)
    out["drift_report"], out["quality_report"] = drift, quality
    for f in drift.significant_findings[:3]:
        ev = f.evidence
        seg = (ev.get("segments") or [None])[0]
        out["drift"].append({"feature": ev.get("feature"), "psi": ev.get("psi"), "threshold": ev.get("threshold"),
                             "top_group": ev.get("top_group"),
                             "onset_s": _rel(schedule, ev.get("onset_ns")),
                             "segment": None if seg is None else {
                                 "attribute": seg["attribute"], "value": seg["value"], "share": seg["share"],
                                 "psi_inside": seg["psi_inside"], "psi_outside": seg["psi_outside"]}})
    q = quality.data
    onset = q.get("onset")
    seg = (q.get("segments") or [None])[0]
    feats = [f for f in quality.findings if f.kind == "feature"]
    out["quality"] = {
        "labelled": (q.get("overall") or {}).get("labelled", 0), "predictions": q.get("predictions", 0),
        "join": q.get("join", {}),
        "onset_s": _rel(schedule, onset["onset_ns"]) if onset else None,
        "accuracy_before": onset["accuracy_before"] if onset else None,
        "accuracy_after": onset["accuracy_after"] if onset else None,
        "located_in": onset.get("located_in") if onset else None,
        "segment": None if seg is None else {k: seg.get(k) for k in (
            "attribute", "value", "labelled", "accuracy_inside", "accuracy_outside", "accuracy_inside_before",
            "p_value")},
        "features": [{"feature": f.evidence.get("feature"), "linked_to_drift": f.evidence.get("drift") is not None}
                     for f in feats[:3]],
        "verdict": list(quality.verdict),
    }
    return out


def _headlines(report: Any, n: int = 5) -> list[str]:
    """Each blamed component, then the best significant finding of each other kind, in
    rank order: one attribute, one log template... reads better than three takes on one fact."""
    seen: set[str] = set()
    out = []
    for f in report.significant_findings:
        # every blamed component leads its own group of slow requests: list each of them
        lead = f.kind == "stage" and f.evidence.get("lead")
        if f.kind in seen and f.kind != "error_cluster" and not lead:
            continue
        seen.add(f.kind)
        out.append(_shorten_cluster(f.summary) if f.kind == "error_cluster" else _shorten(f.summary))
        if len(out) == n:
            break
    return out


def _shorten_cluster(text: str) -> str:
    """Keep the counts, origin and attributes of an incident; shorten only its
    exception message (library messages can run to a paragraph)."""
    m = re.match(r"^(.*?)(: \d+ failed requests? .*)$", " ".join(str(text).split()))
    if not m:
        return _shorten(text)
    return _shorten(m.group(1), 90) + _shorten(m.group(2), 260)


def _shorten(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_summary(console: Console, s: dict[str, Any], schedule: Schedule, data_dir: Path,
                   files: dict[str, Path], stats: LoadStats, n_spans: int) -> None:
    console.print()
    console.print(f"[bold]What stagetrace found[/] ({stats.sent} requests, {stats.failed} failed, {n_spans} spans)")
    injected = ", ".join(schedule.windows) or "none (clean baseline)"
    console.print(f"  injected: {injected}")
    for title, items in (("Slow requests", s["slow_causes"]), ("Errors", s["error_causes"])):
        console.print(f"  [bold]{title}[/]")
        if not items:
            console.print("    no cause stands out against the baseline")
        for i, text in enumerate(items, 1):
            console.print(f"    {i}. {text}")
    _print_model(console, s)
    console.print()
    console.print("[bold]Reports[/]  " + "  ".join(str(p) for p in files.values()))
    console.print("[bold]Try next[/]")
    dd = f"--data-dir {data_dir}"
    for label, tid in s["traces"].items():
        console.print(f"  stagetrace trace {tid} {dd}   [dim]# the {label} request[/]")
    console.print(f"  stagetrace investigate slow {dd} --format html -o slow.html")
    console.print(f"  stagetrace investigate errors {dd}")
    console.print(f"  stagetrace investigate drift --model {s['model']} {dd}   [dim]# vs the stored reference[/]")
    console.print(f"  stagetrace investigate quality --model {s['model']} {dd}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _print_model(console: Console, s: dict[str, Any]) -> None:
    """Drift (feature, onset, the segment that sends it) and the quality drop it caused."""
    ref = s["reference"]
    console.print(f"  [bold]Drift[/] of the model's inputs ({s['model']}"
                  + (f", vs {ref['rows']} rows of the clean period)" if ref else ", no clean period to compare with)"))
    if not s["drift"]:
        console.print("    no feature drifted")
    for i, d in enumerate(s["drift"], 1):
        seg = d["segment"]
        where = (f"; concentrated in {seg['attribute']}={seg['value']} (PSI {seg['psi_inside']:.2f} there vs "
                 f"{seg['psi_outside']:.2f} elsewhere, {seg['share']:.0%} of requests)") if seg else ""
        onset = f" from +{d['onset_s']:.1f}s" if d["onset_s"] is not None else ""
        group = f", new mass in {d['top_group']}" if d.get("top_group") else ""
        console.print(f"    {i}. {d['feature']} drifted{onset}: PSI {d['psi']:.2f} (bar {d['threshold']:.2f}){group}"
                      f"{where}")
    q = s["quality"]
    console.print(f"  [bold]Quality[/] by the labels sent back ({q['labelled']} labelled predictions, "
                  f"in {q['predictions']} model calls)")
    if q["onset_s"] is None and q["segment"] is None:
        console.print("    " + (q["verdict"][0] if q["verdict"] else "no labels"))
        return
    if q["onset_s"] is not None:
        console.print(f"    accuracy fell from {_pct(q['accuracy_before'])} to {_pct(q['accuracy_after'])} "
                      f"from +{q['onset_s']:.1f}s")
    seg = q["segment"]
    if seg:
        was = f", was {_pct(seg['accuracy_inside_before'])} before" if seg.get("accuracy_inside_before") is not None \
            else ""
        console.print(f"    {seg['attribute']}={seg['value']}: accuracy {_pct(seg['accuracy_inside'])} vs "
                      f"{_pct(seg['accuracy_outside'])} elsewhere ({seg['labelled']} labelled predictions{was})")
    for f in q["features"][:1]:
        link = "; the same feature drifted" if f["linked_to_drift"] else ""
        console.print(f"    mispredictions set apart by {f['feature']}{link}")
