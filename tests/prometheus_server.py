"""Start the real Prometheus server (the Debian package `make test` installs) on
127.0.0.1 with a free port and a temporary storage directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def prometheus_binary() -> str:
    exe = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if not exe:
        pytest.fail("the prometheus server binary is missing: install the Debian package `prometheus` "
                    "(`make test` does: apt-get install prometheus)")
    return exe


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class PrometheusServer:
    proc: subprocess.Popen
    url: str
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]


def start_prometheus(scrape_configs: list[dict] | None = None, *, scrape_interval: str = "1s",
                     timeout: float = 30.0) -> PrometheusServer:
    exe = prometheus_binary()
    last_err = ""
    for _ in range(3):  # the free port can be taken between probe and bind: retry
        workdir = Path(tempfile.mkdtemp(prefix="stagetrace-prom-"))
        cfg = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
               "scrape_configs": scrape_configs or []}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = _free_port()
        log = open(workdir / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver",
             "--enable-feature=exemplar-storage", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        server = PrometheusServer(proc, f"http://127.0.0.1:{port}", workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(server.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return server
            except OSError:
                time.sleep(0.1)
        last_err = server.log()
        server.stop()
    pytest.fail(f"prometheus did not become ready: {last_err.strip().splitlines()[-1:] or '(no output)'}")
