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
        "traces": traces,
    }
    _print_summary(console, summary, schedule, data_dir, files, stats, n_spans)
    summary["files"] = files
    return summary


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
    console.print()
    console.print("[bold]Reports[/]  " + "  ".join(str(p) for p in files.values()))
    console.print("[bold]Try next[/]")
    dd = f"--data-dir {data_dir}"
    for label, tid in s["traces"].items():
        console.print(f"  stagetrace trace {tid} {dd}   [dim]# the {label} request[/]")
    console.print(f"  stagetrace investigate slow {dd} --format html -o slow.html")
    console.print(f"  stagetrace investigate errors {dd}")
