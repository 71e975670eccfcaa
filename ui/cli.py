"""``stagetrace ui``: serve the local web UI over the same backends as ``investigate``."""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from stagetrace.backend import Backend, open_backend
from stagetrace.cli import backend_options
from stagetrace.errors import UserError

ENV_UI_HOST = "STAGETRACE_UI_HOST"
ENV_UI_PORT = "STAGETRACE_UI_PORT"
ENV_UI_TOKEN = "STAGETRACE_UI_TOKEN"
ENV_UI_ALLOW_REMOTE = "STAGETRACE_UI_ALLOW_REMOTE"
DEFAULT_PORT = 4320


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, envvar=ENV_UI_HOST, show_envvar=True,
              help="Address to listen on. A non-loopback address also needs --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, envvar=ENV_UI_PORT,
              show_envvar=True, help="Port; 0 picks a free port.")
@click.option("--token", default=None, envvar=ENV_UI_TOKEN, show_envvar=True,
              help="Require this token (Bearer header, or the cookie the printed URL sets). "
                   "Made up for you when --host is not loopback and none is given.")
@click.option("--allow-remote", is_flag=True, default=False, envvar=ENV_UI_ALLOW_REMOTE, show_envvar=True,
              help="Allow --host to be a non-loopback address (a token is then always required).")
@click.option("--tls-cert-file", type=click.Path(dir_okay=False, exists=True), default=None,
              envvar="STAGETRACE_TLS_CERT_FILE", show_envvar=True,
              help="Serve HTTPS with this PEM certificate (as `stagetrace collector`); needs --tls-key-file.")
@click.option("--tls-key-file", type=click.Path(dir_okay=False, exists=True), default=None,
              envvar="STAGETRACE_TLS_KEY_FILE", show_envvar=True, help="The PEM private key of --tls-cert-file.")
@click.option("--insecure", is_flag=True, default=False, envvar="STAGETRACE_INSECURE", show_envvar=True,
              help="Accept serving a non-loopback address without TLS (the token then travels in clear text).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True)
@backend_options
def ui_cmd(host: str, port: int, token: str | None, allow_remote: bool, tls_cert_file: str | None,
           tls_key_file: str | None, insecure: bool, log_level: str, **opts) -> None:
    """Serve the web UI: search with a latency scatter plot, trace waterfall with logs
    and metrics, "why are these slow?" from the plot, and the service map.

    Prints one line when ready, then serves until Ctrl-C:
    ``stagetrace ui ready url=http://127.0.0.1:4320/``.
    """
    from stagetrace.collector.server import is_loopback

    from .server import UIConfig, UIServer

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise UserError(f"refusing to listen on non-loopback address {host!r} without --allow-remote "
                        f"(or {ENV_UI_ALLOW_REMOTE}=1)")
    if token is not None and not token.strip():
        raise UserError("--token must not be empty")
    if bool(tls_cert_file) != bool(tls_key_file):
        raise UserError("--tls-cert-file and --tls-key-file go together: give both or neither")
    if not loopback and not tls_cert_file and not insecure:
        raise UserError(f"refusing to serve {host!r} without TLS: the token would travel in clear text; "
                        "give --tls-cert-file and --tls-key-file (or --insecure to accept that)")
    if not loopback and token is None:
        token = secrets.token_urlsafe(24)
    tls = None
    if tls_cert_file:
        import ssl
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(tls_cert_file, tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise UserError(f"cannot load the TLS certificate/key: {exc}") from None
    probe = _open(opts)  # a bad backend selection fails now, as one line
    d = getattr(probe, "data_dir", None)
    probe.close()
    if d is not None and not Path(d).exists():  # the store reads a missing dir as empty: say so
        click.echo(f"stagetrace: note: no store at {d} (start `stagetrace collector`, or pass --data-dir)", err=True)
    server = UIServer(UIConfig(open_backend=lambda: _open(opts), host=host, port=port, token=token,
                               loopback_only_hosts=loopback, tls=tls))
    try:
        server.start()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown}:{server.port}/" + (f"?token={token}" if token else "")
    sys.stdout.write(f"stagetrace ui ready url={url}\n")
    sys.stdout.flush()
    try:
        while not stop.is_set():
            stop.wait(0.5)
    finally:
        server.stop()


def _open(opts: dict[str, Any]) -> Backend:
    return open_backend(kind=opts.get("backend"), data_dir=opts.get("data_dir"), tempo_url=opts.get("tempo_url"),
                        loki_url=opts.get("loki_url"), prometheus_url=opts.get("prometheus_url"),
                        tenant=opts.get("tenant"), headers=opts.get("headers") or (),
                        backend_config=opts.get("backend_config"))
