"""``stagetrace collector``: run the embedded OTLP receiver and store in the foreground."""

from __future__ import annotations

import logging
import re
import signal
import sys

import click

from stagetrace import semconv
from stagetrace.config import data_dir as resolve_data_dir
from stagetrace.config import parse_duration_ns
from stagetrace.errors import UserError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_MULT = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6, "mb": 10**6, "mi": 1 << 20,
              "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gi": 1 << 30, "gib": 1 << 30, "t": 10**12, "tb": 10**12,
              "ti": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``16MiB``, ``10GB``, ``1048576`` -> bytes."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UserError(f"invalid size {text!r}: use a number of bytes with an optional KiB/MiB/GiB/KB/MB/GB suffix")
    return int(float(m.group(1)) * _SIZE_MULT[(m.group(2) or "").lower()])


def _env(name: str) -> dict:
    return {"envvar": name, "show_envvar": True}


@click.group("collector", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, **_env(semconv.ENV_COLLECTOR_HOST),
              help="Address to listen on. A non-loopback address also needs --allow-remote.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=4317, show_default=True,
              **_env(semconv.ENV_COLLECTOR_GRPC_PORT), help="OTLP/gRPC port; 0 picks a free port.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=4318, show_default=True,
              **_env(semconv.ENV_COLLECTOR_HTTP_PORT), help="OTLP/HTTP port; 0 picks a free port.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Store directory (default: ${semconv.ENV_DATA_DIR}, else $XDG_DATA_HOME/stagetrace, "
                   "else ~/.local/share/stagetrace).")
@click.option("--token", default=None, **_env(semconv.ENV_COLLECTOR_TOKEN),
              help="Require 'Authorization: Bearer TOKEN' on both protocols.")
@click.option("--allow-remote", is_flag=True, default=False, **_env(semconv.ENV_COLLECTOR_ALLOW_REMOTE),
              help="Allow --host to be a non-loopback address.")
@click.option("--tls-cert-file", type=click.Path(dir_okay=False), default=None, **_env("STAGETRACE_TLS_CERT_FILE"),
              help="Serve TLS on both receivers and the query endpoint with this PEM certificate (chain); "
                   "the OTel Collector's tls.cert_file.")
@click.option("--tls-key-file", type=click.Path(dir_okay=False), default=None, **_env("STAGETRACE_TLS_KEY_FILE"),
              help="The PEM private key of --tls-cert-file (the OTel Collector's tls.key_file).")
@click.option("--insecure", is_flag=True, default=False, **_env("STAGETRACE_INSECURE"),
              help="Allow --token on a non-loopback address without TLS (the token then travels in clear text).")
@click.option("--max-request-bytes", default="16MiB", show_default=True, **_env(semconv.ENV_COLLECTOR_MAX_REQUEST_BYTES),
              help="Largest request accepted, after decompression (413 / RESOURCE_EXHAUSTED above).")
@click.option("--max-inflight", type=click.IntRange(1, 1024), default=16, show_default=True,
              **_env(semconv.ENV_COLLECTOR_MAX_INFLIGHT),
              help="Concurrent export requests per protocol before 429 / RESOURCE_EXHAUSTED with a retry hint.")
@click.option("--max-backlog-bytes", default="256MiB", show_default=True, **_env(semconv.ENV_COLLECTOR_MAX_BACKLOG_BYTES),
              help="Write-ahead log not yet stored in blocks before 503 / UNAVAILABLE with a retry hint.")
@click.option("--max-lag", default="2s", show_default=True, **_env(semconv.ENV_COLLECTOR_MAX_LAG),
              help="503 / UNAVAILABLE with a retry hint while acknowledged data has waited longer than this to be "
                   "stored in blocks (over 16MiB of write-ahead log); 0 turns it off.")
@click.option("--retention", default="7d", show_default=True, **_env(semconv.ENV_COLLECTOR_RETENTION),
              help="Delete data older than this (e.g. 24h, 7d); 0 keeps everything.")
@click.option("--retention-bytes", default="10GiB", show_default=True, **_env(semconv.ENV_COLLECTOR_RETENTION_BYTES),
              help="Delete the oldest data when the store is larger than this; 0 means no limit.")
@click.option("--fsync", is_flag=True, default=False, **_env(semconv.ENV_COLLECTOR_FSYNC),
              help="fsync the write-ahead log before every acknowledgement (survives power loss; slower). "
                   "Without it acknowledged data survives a crash or kill -9 of the collector.")
@click.option("--wal-segment-age", default="1s", show_default=True,
              help="Close the write-ahead log segment after this long and store it as a Parquet block.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Stop when this process dies (set by stagetrace.collector.process.start_collector).")
@click.option("--pdeathsig", is_flag=True, default=False, hidden=True,
              help="With --parent-pid: also ask Linux for PR_SET_PDEATHSIG.")
@click.pass_context
def collector_cmd(ctx: click.Context, host: str, grpc_port: int, http_port: int, data_dir: str | None,
                  token: str | None, allow_remote: bool, tls_cert_file: str | None, tls_key_file: str | None,
                  insecure: bool, max_request_bytes: str, max_inflight: int, max_backlog_bytes: str,
                  max_lag: str, retention: str, retention_bytes: str, fsync: bool, wal_segment_age: str, log_level: str,
                  parent_pid: int | None, pdeathsig: bool) -> None:
    """Run the embedded OTLP receiver (gRPC + HTTP) and telemetry store.

    Prints one line when ready, then serves until SIGINT/SIGTERM:
    ``stagetrace collector ready grpc=HOST:PORT http=HOST:PORT data_dir=PATH``.

    ``stagetrace collector check --data-dir D`` verifies a store instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    from .receiver import Limits, TLSFiles
    from .server import Collector, CollectorConfig, DataDirLocked, is_loopback
    from .store import StoreConfig

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(host) and not allow_remote:
        raise UserError(f"refusing to listen on non-loopback address {host!r} without --allow-remote "
                        f"(or {semconv.ENV_COLLECTOR_ALLOW_REMOTE}=1)")
    if token is not None and not token.strip():
        raise UserError("--token must not be empty")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise UserError("--tls-cert-file and --tls-key-file go together: give both or neither")
    tls = TLSFiles(tls_cert_file, tls_key_file) if tls_cert_file and tls_key_file else None
    if token is not None and tls is None and not is_loopback(host) and not insecure:
        raise UserError(f"refusing to accept a token on non-loopback address {host!r} without TLS: it would travel "
                        "in clear text; give --tls-cert-file and --tls-key-file (or --insecure to accept that)")
    retention_ns = 0 if retention.strip() in ("0", "off", "none") else parse_duration_ns(retention, default_unit="s")
    limits = Limits(max_request_bytes=parse_size(max_request_bytes), max_inflight=max_inflight,
                    max_backlog_bytes=parse_size(max_backlog_bytes),
                    max_lag_s=parse_duration_ns(max_lag, default_unit="s") / 1e9)
    if limits.max_request_bytes < 1024:
        raise UserError("--max-request-bytes must be at least 1KiB")
    cfg = CollectorConfig(data_dir=resolve_data_dir(data_dir), host=host, grpc_port=grpc_port, http_port=http_port,
                          token=token, allow_remote=allow_remote, tls=tls, fsync=fsync, limits=limits,
                          store=StoreConfig(retention_ns=retention_ns, retention_bytes=parse_size(retention_bytes)),
                          segment_age_s=parse_duration_ns(wal_segment_age, default_unit="s") / 1e9)
    collector = Collector(cfg)
    try:
        collector.start()
    except DataDirLocked as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(str(exc)) from None

    def _on_signal(signum: int, frame: object) -> None:
        collector.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if parent_pid is not None:  # after the handlers: the parent's death is a graceful SIGTERM
        from .process import exit_with_parent
        exit_with_parent(parent_pid, use_prctl=pdeathsig)
    h = f"[{host}]" if ":" in host else host
    sys.stdout.write(f"stagetrace collector ready grpc={h}:{collector.grpc_port} http={h}:{collector.http_port} "
                     f"data_dir={collector.data_dir}\n")
    sys.stdout.flush()
    try:
        collector.wait()
    finally:
        collector.stop()
        logging.getLogger("stagetrace.collector").info("stopped")



@collector_cmd.command("check")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Store directory (default: ${semconv.ENV_DATA_DIR}, else $XDG_DATA_HOME/stagetrace).")
def check_cmd(data_dir: str | None) -> None:
    """Verify every block and write-ahead-log segment of a store.

    Bad blocks are moved to DATA_DIR/quarantine/ (what they held is listed in
    quarantine.jsonl, which the store's stats and reports read). Prints one line per
    problem and a summary; exits 1 if anything was bad, 0 if all is sound. Safe
    beside a running collector and idempotent: a second run finds nothing new to move,
    and reports the same quarantined blocks again.
    """
    from pathlib import Path

    from .integrity import check_store

    root = resolve_data_dir(data_dir)
    if not Path(root).is_dir():
        raise UserError(f"no store at {root}: the directory does not exist")
    report = check_store(Path(root))
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)
