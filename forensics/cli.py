"""``stagetrace trace`` and ``stagetrace investigate slow|errors``.

Thin: parse options, open the backend, call the public API, render, write.
User mistakes (bad id, bad time, unknown trace) raise UserError, which
``stagetrace.cli.main`` prints as one line with exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from stagetrace.backend import open_backend
from stagetrace.cli import backend_options, report_options
from stagetrace.config import parse_duration_ns, parse_time_ns, path_exists  # noqa: F401 (re-exported)
from stagetrace.errors import UserError


def _backend(opts: dict, *, warn: bool = True):
    backend = _open(opts)
    note = _missing_store(backend)
    if note and warn:
        click.echo(f"stagetrace: note: {note}", err=True)
    return backend


def _missing_store(backend) -> str | None:
    """The embedded store reads a missing dir as empty; say so, or a typo in
    --data-dir looks like "no data"."""
    d = getattr(backend, "data_dir", None)
    if d is None:
        return None
    if path_exists(d, f"the store in {d}"):
        return None
    return f"no store at {d} (start `stagetrace collector`, or pass --data-dir)"


def _open(opts: dict):
    return open_backend(kind=opts.get("backend"), data_dir=opts.get("data_dir"), tempo_url=opts.get("tempo_url"),
                        loki_url=opts.get("loki_url"), prometheus_url=opts.get("prometheus_url"),
                        tenant=opts.get("tenant"), headers=opts.get("headers") or (),
                        backend_config=opts.get("backend_config"))


def _emit(reports, fmt: str, output: str | None) -> None:
    from . import render
    if output:
        text = render(reports, fmt)
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output}", err=True)
        return
    color = fmt == "text" and sys.stdout.isatty()
    if fmt == "text":
        from .render_text import render_text
        import shutil
        text = render_text([reports] if not isinstance(reports, list) else reports, color=color,
                           width=max(100, shutil.get_terminal_size((140, 40)).columns) if color else 140)
    else:
        text = render(reports, fmt)
    try:
        click.echo(text, nl=False)
    except BrokenPipeError:
        raise  # `... | head`: stagetrace.cli.main ends quietly
    except OSError as exc:  # a full disk or a closed terminal: one line, not a traceback
        _drop_stdout()
        raise UserError(f"cannot write the report to standard output: {exc.strerror or exc}") from None


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is left in its buffer would fail again when Python
    flushes it on exit, as a second message ("Exception ignored ...")."""
    import os
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def resolve_window(since: str | None, from_: str | None, until: str | None) -> tuple[int, int]:
    now = time.time_ns()
    if since and (from_ or until):
        raise UserError("use either --since or --from/--until, not both")
    if from_ or until:
        start = parse_time_ns(from_, "--from") if from_ else None
        end = parse_time_ns(until, "--until") if until else now
        if start is None:
            raise UserError("--until needs --from")
        if start >= end:
            raise UserError("--from must be before --until")
        return start, end
    if since is not None and not since.strip():
        raise UserError("--since needs a duration, e.g. 30m, 1h, 2d")
    back = parse_duration_ns(since or "1h", default_unit="m")
    if back <= 0:
        raise UserError(f"--since {since!r} is an empty window: give a duration above 0, e.g. 30m")
    # a look-back past 1970 means "everything": no telemetry is older (OTLP times are unsigned)
    return max(0, now - back), now


def _window_options(func):
    func = click.option("--until", "until", metavar="T", default=None, help="End of the window (default: now).")(func)
    func = click.option("--from", "from_", metavar="T", default=None,
                        help="Start of the window: ISO 8601 (UTC unless an offset is given) or Unix seconds.")(func)
    func = click.option("--since", default=None, metavar="DURATION",
                        help="Look back this far from now, e.g. 30m, 1h, 2d (default: 1h).")(func)
    func = click.option("--service", default=None, help="Only requests served by this service (service.name).")(func)
    return func


@click.command("trace")
@click.argument("trace_id")
@report_options
@backend_options
def trace_cmd(trace_id: str, fmt: str, output: str | None, **opts) -> None:
    """Show one trace: waterfall, critical path, self time per stage, logs under
    their spans, and the services' metrics in the trace's window."""
    from stagetrace.config import normalize_trace_id
    tid = normalize_trace_id(trace_id)  # fail before touching the backend
    from stagetrace.errors import NotFound
    backend = _backend(opts, warn=False)
    try:
        # Look the trace up while this (new, short-lived) process imports the analysis
        # and the renderer: the lookup waits on the collector, Tempo or the disk.
        fetched = _in_background(backend.get_trace, tid)
        from .traceview import build_trace_report
        if fmt == "text":
            from . import render_text  # noqa: F401
        report = build_trace_report(backend, tid, trace=fetched())
    except NotFound as exc:
        note = _missing_store(backend)
        raise NotFound(f"{exc}: {note}" if note else str(exc)) from None
    finally:
        backend.close()
    _emit(report, fmt, output)


def _in_background(fn, *args):
    """Start ``fn(*args)`` on a thread; the returned callable waits and returns or raises its outcome."""
    import threading
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    th = threading.Thread(target=run, name="trace-lookup", daemon=True)
    th.start()

    def result():
        th.join()
        if "error" in box:
            raise box["error"]
        return box["value"]
    return result


@click.group("investigate")
def investigate_group() -> None:
    """Explain slow requests or cluster errors, joined across traces, logs and metrics."""


@investigate_group.command("slow")
@_window_options
@click.option("--route", default=None, help="Only requests with this http.route, e.g. /predict.")
@click.option("--threshold", default="p95", show_default=True,
              help="Slow means slower than this: a duration (500ms) or a percentile of the window (p95).")
@report_options
@backend_options
def slow_cmd(service, since, from_, until, route, threshold, fmt, output, **opts) -> None:
    """Why are requests slow? Stage, service/edge, attribute, log, metric and timeline evidence."""
    from . import investigate_slow
    start, end = resolve_window(since, from_, until)
    th = threshold.strip()
    from .slow import parse_threshold
    import numpy as np
    parse_threshold(th, np.array([1]))  # validate before touching the backend: one line, exit 2
    backend = _backend(opts)
    try:
        report = investigate_slow(backend, service=service, route=route, start_ns=start, end_ns=end,
                                  threshold=th, progress=True)
    finally:
        backend.close()
    _emit(report, fmt, output)


@investigate_group.command("errors")
@_window_options
@report_options
@backend_options
def errors_cmd(service, since, from_, until, fmt, output, **opts) -> None:
    """Group errors into incidents: fingerprints, origin vs propagated, attributes, bursts."""
    from . import investigate_errors
    start, end = resolve_window(since, from_, until)
    backend = _backend(opts)
    try:
        report = investigate_errors(backend, service=service, start_ns=start, end_ns=end, progress=True)
    finally:
        backend.close()
    _emit(report, fmt, output)


# issue 18: `investigate drift` lives in mlcli.py (kept apart from the slow/errors code)
from .mlcli import drift_cmd as _drift_cmd  # noqa: E402

investigate_group.add_command(_drift_cmd)
from .mlcli import quality_cmd as _quality_cmd  # noqa: E402

investigate_group.add_command(_quality_cmd)
