"""``stagetrace demo``: the whole promise in one command.

Starts the embedded collector, a feature service and a fraud-scoring API (no
tracing code, run under ``opentelemetry-instrument``), drives load while
injecting faults, then investigates what the telemetry says and writes
``report.html``, ``report.md`` and ``report.json``.
"""

from __future__ import annotations

from pathlib import Path

import click

from stagetrace.config import parse_duration_ns
from stagetrace.errors import UserError

from .scenarios import DESCRIPTIONS, SCENARIOS, parse_scenarios

_SCENARIO_HELP = "; ".join(f"{i + 1}/{name}: {DESCRIPTIONS[name]}" for i, name in enumerate(SCENARIOS))


@click.command("demo")
@click.option("--scenario", default="all", show_default=True, metavar="NAME[,NAME]",
              help=f"Which faults to inject: all (staggered after a clean period), or a list of {_SCENARIO_HELP}.")
@click.option("--duration", default="35s", show_default=True,
              help="How long to drive load (start-up and analysis add ~20-40 s).")
@click.option("--out", type=click.Path(file_okay=False), default="./stagetrace-demo", show_default=True,
              help="Directory for report.html, report.md, report.json (and run/ with the store and logs).")
@click.option("--rate", type=click.FloatRange(1, 500), default=20.0, show_default=True,
              help="Requests per second sent to the API.")
@click.option("--api-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port for the fraud API on 127.0.0.1 (0 = a free one).")
@click.option("--keep-running", is_flag=True, help="Keep the services and collector up after the report, until Ctrl-C.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
def demo_cmd(scenario: str, duration: str, out: str, rate: float, api_port: int, keep_running: bool,
             progress: bool | None) -> None:
    """Run an instrumented ML service with injected faults and investigate it.

    \b
    Example:
      stagetrace demo                          # all faults, about 60-80 s
      stagetrace demo --scenario slow-shard --duration 20s
    """
    from .runner import DemoOptions, run_demo

    duration_s = parse_duration_ns(duration, default_unit="s") / 1e9
    if not 5 <= duration_s <= 3600:
        raise UserError(f"--duration {duration} is out of range: use 5s to 1h")
    run_demo(DemoOptions(scenarios=parse_scenarios(scenario), duration_s=duration_s, out=Path(out),
                         rate=rate, api_port=api_port, keep_running=keep_running, progress=progress))
