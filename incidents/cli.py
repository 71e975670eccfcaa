"""``stagetrace watch`` (and ``watch silence|alerts``) and ``stagetrace postmortem``.

Thin: parse options, build the config, the backend factory and the targets, then hand
over to :class:`stagetrace.incidents.watch.Watcher` or
:func:`stagetrace.incidents.postmortem.build_postmortem`.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import click

from stagetrace.cli import backend_options
from stagetrace.config import data_dir as resolve_data_dir
from stagetrace.config import parse_duration_ns
from stagetrace.display import visible
from stagetrace.errors import UserError


def _open_factory(opts: dict):
    from stagetrace.backend import open_backend

    def factory():
        return open_backend(kind=opts.get("backend"), data_dir=opts.get("data_dir"), tempo_url=opts.get("tempo_url"),
                            loki_url=opts.get("loki_url"), prometheus_url=opts.get("prometheus_url"),
                            tenant=opts.get("tenant"), headers=opts.get("headers") or (),
                            backend_config=opts.get("backend_config"))
    return factory


def _echo(msg: str) -> None:
    """One watch message on stderr; alert names and summaries carry telemetry text, so
    control and bidi characters are shown as escapes (our own line breaks are kept)."""
    ts = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S")
    click.echo(f"[{ts}] {visible(msg, keep_newlines=True)}", err=True)


@click.group("watch", invoke_without_command=True)
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="TOML rules file (else [tool.stagetrace.watch] in ./pyproject.toml, else the defaults).")
@click.option("--interval", default=None, metavar="DURATION", help="Evaluate every DURATION (default 30s).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the alerts' reports (default: DATA_DIR/watch).")
@click.option("--alertmanager", "am_urls", multiple=True, metavar="URL",
              help="Alertmanager base URL; alerts are POSTed to URL/api/v2/alerts (repeatable).")
@click.option("--webhook", "webhooks", multiple=True, metavar="URL",
              help="POST Alertmanager's webhook payload (version 4) to URL (repeatable).")
@click.option("--slack-webhook", "slack", multiple=True, metavar="URL",
              help="Slack-compatible incoming webhook URL (repeatable).")
@click.option("--jsonl", default=None, type=click.Path(dir_okay=False),
              help="Append one JSON line per notification (default: OUT/alerts.jsonl).")
@click.option("--once", is_flag=True, help="Evaluate once and exit (for cron and scripts).")
@click.option("--no-investigate", is_flag=True, help="Do not attach the cause (skip the investigations).")
@click.option("--ignore-before", default=None, metavar="T",
              help="Ignore telemetry older than T (ISO 8601 or Unix s), e.g. a warm-up.")
@backend_options
@click.pass_context
def watch_group(ctx: click.Context, rules_file, interval, out_dir, am_urls, webhooks, slack, jsonl, once,
                no_investigate, ignore_before, **opts) -> None:
    """Evaluate alert rules continuously; each alert carries its root cause.

    \b
    Examples:
      stagetrace watch --alertmanager http://127.0.0.1:9093
      stagetrace watch --rules rules.toml --slack-webhook https://hooks.slack.com/services/...
      stagetrace watch silence add alertname=route-latency service=fraud-api --for 2h --comment deploy
    """
    if ctx.invoked_subcommand is not None:
        return
    from .notify import AlertmanagerTarget, JsonlTarget, LogTarget, SlackTarget, WebhookTarget
    from .rules import load_config
    from .watch import Watcher

    overrides = {"interval": interval} if interval else None
    cfg = load_config(rules_file, overrides=overrides)
    data = resolve_data_dir(opts.get("data_dir"))
    out = Path(out_dir) if out_dir else data / "watch"
    floor = None
    if ignore_before:
        from stagetrace.forensics.cli import parse_time_ns
        floor = parse_time_ns(ignore_before, "--ignore-before")
    w = Watcher(cfg, state_dir=data, out_dir=out, open_backend=_open_factory(opts), investigate=not no_investigate,
                ignore_before_ns=floor, background_causes=not once)
    targets: list = [LogTarget(_echo), JsonlTarget(jsonl or out / "alerts.jsonl")]
    targets += [AlertmanagerTarget(u, w.hold_ns) for u in am_urls]
    targets += [WebhookTarget(u, w.hold_ns) for u in webhooks]
    targets += [SlackTarget(u) for u in slack]
    for u in (*am_urls, *webhooks, *slack):
        if not u.startswith(("http://", "https://")):
            raise UserError(f"invalid URL {u!r}: use http:// or https://")
    w.targets = targets
    _echo(f"watch: {w.describe()}; state in {data / 'watch'}; reports in {out}")
    if once:
        w.step()
        w.close()
        _print_alerts(w.state)
        return
    try:
        w.run()
    except KeyboardInterrupt:
        _echo("watch: stopped")


def _print_alerts(state: dict) -> None:
    active = list(state.get("alerts", {}).values())
    if not active:
        click.echo("no active alerts")
    for a in sorted(active, key=lambda a: a.get("active_since", 0)):
        lab = a["labels"]
        click.echo(visible(f"{a['state']:<8} {a['id']}  {lab.get('alertname')} [{lab.get('severity')}] "
                           f"{a.get('annotations', {}).get('summary', '')}"))


@watch_group.command("alerts")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Store directory (as for watch).")
@click.option("--all", "show_all", is_flag=True, help="Also list resolved alerts.")
def alerts_cmd(data_dir, show_all) -> None:
    """List active alerts (and resolved ones with --all), as the watch saved them."""
    from .state import StateStore
    state = StateStore(resolve_data_dir(data_dir)).load()
    _print_alerts(state)
    if show_all:
        for a in state.get("history", [])[-50:]:
            lab = a["labels"]
            click.echo(visible(f"resolved {a['id']}  {lab.get('alertname')} [{lab.get('severity')}] "
                               f"{_fmt_ns(a.get('fired_at'))} .. {_fmt_ns(a.get('resolved_at'))}"))


def _fmt_ns(ns) -> str:
    if not ns:
        return "-"
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@watch_group.group("silence")
def silence_group() -> None:
    """Mute alerts matching labels until the silence expires."""


@silence_group.command("add")
@click.argument("matchers", nargs=-1, required=True, metavar="LABEL=VALUE...")
@click.option("--for", "duration", default="2h", show_default=True, help="How long the silence holds.")
@click.option("--comment", default="", help="Why (shown in `silence list`).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Store directory (as for watch).")
def silence_add(matchers, duration, comment, data_dir) -> None:
    """Silence alerts whose labels match every LABEL=VALUE (wildcards: *, ?)."""
    import getpass

    from .state import SilenceStore, parse_matchers
    m = parse_matchers(matchers)
    ns = parse_duration_ns(duration, default_unit="m")
    now = time.time_ns()
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = ""
    s = SilenceStore(resolve_data_dir(data_dir)).add(m, now, now + ns, comment, user)
    click.echo(f"silence {s.id} until {_fmt_ns(s.ends_ns)}: " + " ".join(f"{k}={v}" for k, v in s.matchers.items()))


@silence_group.command("list")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Store directory (as for watch).")
def silence_list(data_dir) -> None:
    """Silences, active first."""
    from .state import SilenceStore
    now = time.time_ns()
    items = SilenceStore(resolve_data_dir(data_dir)).all()
    if not items:
        click.echo("no silences")
    for s in sorted(items, key=lambda s: (not s.active(now), -s.ends_ns)):
        state = "active " if s.active(now) else "expired"
        click.echo(f"{state} {s.id}  until {_fmt_ns(s.expired_ns or s.ends_ns)}  "
                   + " ".join(f"{k}={v}" for k, v in s.matchers.items()) + (f"  # {s.comment}" if s.comment else ""))


@silence_group.command("expire")
@click.argument("silence_id")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Store directory (as for watch).")
def silence_expire(silence_id, data_dir) -> None:
    """End a silence now."""
    from .state import SilenceStore
    s = SilenceStore(resolve_data_dir(data_dir)).expire(silence_id, time.time_ns())
    click.echo(f"silence {s.id} expired")


@click.command("postmortem")
@click.option("--from", "from_", metavar="T", default=None, help="Start of the incident window (ISO 8601 or Unix s).")
@click.option("--until", metavar="T", default=None, help="End of the window (default: now).")
@click.option("--alert", "alert_id", default=None, help="Use the window of this watch alert (id from `watch alerts --all`).")
@click.option("--service", default=None, help="Only requests served by this service.")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="The watch's rules file, for SLO thresholds and objectives.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for postmortem.md, postmortem.html and the investigations behind them.")
@backend_options
def postmortem_cmd(from_, until, alert_id, service, rules_file, out_dir, **opts) -> None:
    """Write a blameless post-mortem draft (md and html) from the telemetry."""
    from stagetrace.forensics.cli import resolve_window

    from .postmortem import build_postmortem, write_postmortem
    from .rules import load_config
    from .state import StateStore

    alert = None
    data = resolve_data_dir(opts.get("data_dir"))
    if alert_id:
        if from_ or until:
            raise UserError("use either --alert or --from/--until, not both")
        alert = StateStore(data).find_alert(alert_id)
        if alert is None:
            raise UserError(f"no watch alert {alert_id!r} in {data / 'watch'} (see `stagetrace watch alerts --all`)")
        start, end = None, None
    else:
        if not from_:
            raise UserError("give the incident window: --from T [--until T], or --alert ID")
        start, end = resolve_window(None, from_, until)
    cfg = load_config(rules_file)
    backend = _open_factory(opts)()
    try:
        pm = build_postmortem(backend, start_ns=start, end_ns=end, alert=alert, service=service, cfg=cfg,
                              state_dir=data)
    finally:
        backend.close()
    files = write_postmortem(pm, Path(out_dir))
    for f in files.values():
        click.echo(f"wrote {f}", err=True)
