"""``stagetrace investigate drift``, ``investigate quality`` and ``stagetrace profile build``
(issue 18).

Kept out of forensics/cli.py except for the lines that add ``drift`` and ``quality`` to
the ``investigate`` group.
"""

from __future__ import annotations

from pathlib import Path

import click

from stagetrace.cli import backend_options, report_options
from stagetrace.config import data_dir as resolve_data_dir
from stagetrace.config import parse_duration_ns, path_exists
from stagetrace.errors import UserError


def _window(since, from_, until):
    from .cli import resolve_window
    return resolve_window(since, from_, until)


MAX_BUCKETS = 10_000  # an --interval that cuts the window finer than this is a typo, not a question


def _interval(interval: str | None, start: int, end: int) -> int | None:
    """``--interval`` in ns, or None for the analysis' default (the window / 20)."""
    if not interval:
        return None
    ns = parse_duration_ns(interval, default_unit="s")
    if ns <= 0:
        raise UserError("--interval must be positive")
    if (end - start) // ns > MAX_BUCKETS:
        raise UserError(f"--interval is too small for the window (over {MAX_BUCKETS} buckets)")
    return ns


def _reference(reference: str | None, model: str, version: str | None, data_dir) -> Path | None:
    """The reference profile to compare with: ``--reference``, else the one ``profile build``
    stored for this model and version, else for the model (any version); None when none exists."""
    from .drift import reference_path
    if reference:
        ref = Path(reference)
        if not path_exists(ref, f"reference profile {ref}"):
            raise UserError(f"no reference profile at {ref}")
        return ref
    root = resolve_data_dir(data_dir)
    for ref in (reference_path(root, model, version), reference_path(root, model, None)):
        if path_exists(ref, f"reference profile {ref}"):
            return ref
    return None


def _window_opts(func):
    func = click.option("--until", "until", metavar="T", default=None, help="End of the window (default: now).")(func)
    func = click.option("--from", "from_", metavar="T", default=None,
                        help="Start of the window: ISO 8601 (UTC unless an offset is given) or Unix seconds.")(func)
    func = click.option("--since", default=None, metavar="DURATION", help="Look back this far from now (default: 1h).")(func)
    return func


@click.command("drift")
@click.option("--model", required=True, help="ml.model.name (or the inference span's model / service name).")
@click.option("--version", default=None, help="Only this ml.model.version.")
@_window_opts
@click.option("--interval", default=None, metavar="DURATION",
              help="Evaluation interval for the onset (default: the window / 20).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Reference profile JSON (default: the one `profile build` stored for this model and version).")
@report_options
@backend_options
def drift_cmd(model, version, since, from_, until, interval, reference, fmt, output, **opts) -> None:
    """Did the model's inputs or predictions drift? PSI + chi-square per feature vs the
    reference profile and the previous period; onset, segments, example traces."""
    from .cli import _backend, _emit
    from .drift import investigate_drift
    start, end = _window(since, from_, until)
    interval_ns = _interval(interval, start, end)
    ref = _reference(reference, model, version, opts.get("data_dir"))
    backend = _backend(opts)
    try:
        report = investigate_drift(backend, model=model, version=version, start_ns=start, end_ns=end,
                                   reference=ref, interval_ns=interval_ns)
    finally:
        backend.close()
    _emit(report, fmt, output)


@click.command("quality")
@click.option("--model", required=True, help="ml.model.name (or the inference span's model / service name).")
@click.option("--version", default=None, help="Only this ml.model.version.")
@_window_opts
@click.option("--interval", default=None, metavar="DURATION",
              help="Time bucket for the series and the onset (default: the window / 20).")
@click.option("--positive", default=None, metavar="CLASS",
              help="The positive class of a two-class model (default: the model's second class, e.g. 1 or True).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Reference profile for the drift findings linked in (default: the stored one, as for drift).")
@report_options
@backend_options
def quality_cmd(model, version, since, from_, until, interval, positive, reference, fmt, output, **opts) -> None:
    """How good were the model's predictions, by the labels sent back since? Accuracy,
    precision, recall, AUC and calibration over time, per version and segment; the onset
    of a drop; what sets mispredictions apart (features, attributes), linked to drift."""
    from .cli import _backend, _emit
    from .quality import investigate_quality
    start, end = _window(since, from_, until)
    interval_ns = _interval(interval, start, end)
    ref = _reference(reference, model, version, opts.get("data_dir"))
    backend = _backend(opts)
    try:
        report = investigate_quality(backend, model=model, version=version, start_ns=start, end_ns=end,
                                     interval_ns=interval_ns, reference=ref,
                                     positive=positive)
    finally:
        backend.close()
    _emit(report, fmt, output)


@click.group("profile")
def profile_group() -> None:
    """Reference profiles of a model's inputs and predictions (for drift)."""


@profile_group.command("build")
@click.option("--model", required=True, help="Model name the profile is for (ml.model.name).")
@click.option("--version", default=None, help="Model version (default: any version).")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False), default=None,
              help="Training data: CSV or Parquet, one column per feature.")
@_window_opts
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of DATA_DIR/profiles/<model>/<version>.json.")
@backend_options
def build_cmd(model, version, from_file, since, from_, until, output, **opts) -> None:
    """Build a reference profile from a training file or a healthy window of stored
    inference spans (--since / --from / --until)."""
    from . import mlprofiles as mp
    from .cli import _backend
    from .drift import inference_spans, profile_from_table, reference_path, row_correlations, save_reference
    if from_file and (since or from_ or until):
        raise UserError("use either --from-file or a window (--since/--from/--until), not both")
    target = Path(output) if output else reference_path(resolve_data_dir(opts.get("data_dir")), model, version)
    if from_file:
        if not Path(from_file).is_file():
            raise UserError(f"no such file: {from_file}")
        dists, scores, source = profile_from_table(from_file), None, f"file {from_file}"
        correlations = None  # a file's rows are independent draws
    else:
        start, end = _window(since, from_, until)
        backend = _backend(opts)
        try:
            spans = inference_spans(backend, model, version, start, end)
        finally:
            backend.close()
        if not spans:
            raise UserError(f"no profiled inference spans of model {model!r} in the window")
        dists, scores = mp.distributions(spans), mp.score_dist(spans)
        correlations = row_correlations(spans)  # how the rows of one call resemble each other
        source = f"{len(spans)} stored predictions"
    if not dists:
        raise UserError("nothing to profile: no features found")
    try:
        save_reference(target, model, version, dists, scores, source, correlations=correlations)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    rows = max(d.rows for d in dists.values())
    click.echo(f"wrote {target}: {len(dists)} features, {rows} rows ({source})")
