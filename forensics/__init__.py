"""stagetrace.forensics: joins spans, logs and metrics to explain one trace,
slow requests, or failing requests.

The public API is four functions; the CLI (``stagetrace trace`` and
``stagetrace investigate``) and ``stagetrace demo`` are thin callers of them.
Every analysis reads through :class:`stagetrace.backend.Backend` only, so the
embedded store and Tempo+Loki+Prometheus are interchangeable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from stagetrace.backend import Backend
    from .report import Report

__all__ = ["trace_report", "investigate_slow", "investigate_errors", "render"]


def trace_report(backend: "Backend", trace_id: str) -> "Report":
    """One trace: waterfall, critical path, self time per stage, logs under their
    spans, the service's metric points in the window. Raises
    :class:`stagetrace.errors.NotFound` (exit 2) for an unknown id and
    :class:`stagetrace.errors.UserError` for an invalid one."""
    from .traceview import build_trace_report
    return build_trace_report(backend, trace_id)


def investigate_slow(backend: "Backend", *, service: str | None = None, route: str | None = None,
                     start_ns: int | None = None, end_ns: int | None = None,
                     threshold: str | int = "p95", progress: bool = False) -> "Report":
    """Explain slow requests in a window: the components at fault (service, operation,
    ML stage; caller- or callee-side on call edges), each slow relative to its own
    operation, with attribute, log and metric evidence, onset and version changes.
    ``threshold`` is ``"p95"``-style percentile text, a duration text such as
    ``"500ms"``, or nanoseconds as an int."""
    from .stats import prefetch
    prefetch()  # scipy.stats imports on a thread while the requests are read
    from .slow import investigate_slow as _run
    return _run(backend, service=service, route=route, start_ns=start_ns, end_ns=end_ns,
                threshold=threshold, progress=progress)


def investigate_errors(backend: "Backend", *, service: str | None = None,
                       start_ns: int | None = None, end_ns: int | None = None,
                       progress: bool = False) -> "Report":
    """Cluster errors (spans, exception events, ERROR logs) into incidents,
    ranked by impact, each with origin span, attributes and examples."""
    from .stats import prefetch
    prefetch()  # scipy.stats imports on a thread while the requests are read
    from .errorclusters import investigate_errors as _run
    return _run(backend, service=service, start_ns=start_ns, end_ns=end_ns, progress=progress)


def render(reports: "Report | Sequence[Report]", fmt: str) -> str:
    """Render one report, or several as one combined document, as
    ``text`` (rich, plain when not a terminal), ``md``, ``json`` or ``html``."""
    from .report import Report
    items = [reports] if isinstance(reports, Report) else list(reports)
    if fmt == "json":
        from .report import to_json
        return to_json(items)
    if fmt == "md":
        from .render_md import render_md
        return render_md(items)
    if fmt == "html":
        from .render_html import render_html
        return render_html(items)
    if fmt == "text":
        from .render_text import render_text
        return render_text(items)
    from stagetrace.errors import UserError
    raise UserError(f"unknown report format {fmt!r}: use text, md, json or html")
