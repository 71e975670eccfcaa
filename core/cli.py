"""The ``stagetrace`` command line.

Sub-commands live next to the code they drive and are imported only when run,
so ``stagetrace --help`` and ``stagetrace trace`` stay fast:

- ``collector``            -> stagetrace.collector.cli:collector_cmd
- ``trace``                -> stagetrace.forensics.cli:trace_cmd
- ``investigate``          -> stagetrace.forensics.cli:investigate_group
- ``demo``                 -> stagetrace.demo.cli:demo_cmd
- ``watch``                -> stagetrace.incidents.cli:watch_group
- ``postmortem``           -> stagetrace.incidents.cli:postmortem_cmd
- ``profile``              -> stagetrace.forensics.mlcli:profile_group
- ``ui``                   -> stagetrace.ui.cli:ui_cmd
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

import click

from . import __version__, astguard
from .errors import UserError
from . import semconv

_COMMANDS: dict[str, tuple[str, str, str]] = {
    "collector": ("stagetrace.collector.cli", "collector_cmd", "Run the embedded OTLP receiver and store."),
    "trace": ("stagetrace.forensics.cli", "trace_cmd", "Show one trace: waterfall, critical path, logs, metrics."),
    "investigate": ("stagetrace.forensics.cli", "investigate_group", "Explain slow requests or cluster errors."),
    "demo": ("stagetrace.demo.cli", "demo_cmd", "Run an instrumented ML service with injected faults and investigate it."),
    "watch": ("stagetrace.incidents.cli", "watch_group", "Evaluate alert rules continuously; alerts carry their root cause."),
    "postmortem": ("stagetrace.incidents.cli", "postmortem_cmd", "Write a blameless post-mortem draft from the telemetry."),
    "profile": ("stagetrace.forensics.mlcli", "profile_group", "Build reference profiles of a model's inputs (for drift)."),
    "ui": ("stagetrace.ui.cli", "ui_cmd", "Serve the local web UI: search, trace view, investigate from the plot."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr, short_help = spec
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            # Keep `--help` usable while a part is missing, and say what is missing.
            # (`exc` is unbound once the except block ends, so keep its text.)
            reason = str(exc)
            @click.command(cmd_name, help=short_help, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise UserError(f"'{cmd_name}' is unavailable: {reason}")
            return unavailable
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stagetrace")
def cli() -> None:
    """stagetrace: find out why an ML inference endpoint is slow or failing."""


# --- options shared by every forensics command --------------------------------

def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` and the backend selection (embedded store by default)."""
    opts = [
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help=f"Embedded store directory (default: ${semconv.ENV_DATA_DIR}, "
                          "else $XDG_DATA_HOME/stagetrace, else ~/.local/share/stagetrace)."),
        click.option("--backend", type=click.Choice(["embedded", "grafana"]), default=None,
                     envvar=semconv.ENV_BACKEND, show_envvar=True,
                     help="Where to read telemetry from (default: embedded)."),
        click.option("--tempo", "tempo_url", default=None, envvar=semconv.ENV_TEMPO_URL, show_envvar=True,
                     help="Tempo base URL, e.g. http://127.0.0.1:3200."),
        click.option("--loki", "loki_url", default=None, envvar=semconv.ENV_LOKI_URL, show_envvar=True,
                     help="Loki base URL, e.g. http://127.0.0.1:3100."),
        click.option("--prometheus", "prometheus_url", default=None, envvar=semconv.ENV_PROMETHEUS_URL,
                     show_envvar=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090."),
        click.option("--tenant", default=None, envvar="STAGETRACE_TENANT", show_envvar=True,
                     help="Tenant sent as X-Scope-OrgID to Tempo and Loki."),
        click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
                     help="Extra HTTP header for remote backends (repeatable), e.g. Authorization=Bearer x."),
        click.option("--backend-config", type=click.Path(dir_okay=False), default=None,
                     envvar="STAGETRACE_BACKEND_CONFIG", show_envvar=True,
                     help="TOML file with a [backend] table (kind, tempo, loki, prometheus, tenant, headers)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--format`` and ``--output`` for every report."""
    func = click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                        help="Write the report to FILE instead of standard output.")(func)
    func = click.option("--format", "fmt", type=click.Choice(["text", "md", "json", "html"]),
                        default="text", show_default=True, help="Report format.")(func)
    return func


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and an exit code."""
    astguard.serialize_ast_parse()  # our threads parse (.npy headers, tracebacks): gh-106905
    try:
        cli.main(args=argv, prog_name="stagetrace", standalone_mode=False)
    except UserError as exc:
        click.echo(f"stagetrace: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("stagetrace: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line, like every other error: click's own form is three (usage, hint, error)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        click.echo(f"stagetrace: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("stagetrace: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # `stagetrace trace ... | head` is normal use.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
