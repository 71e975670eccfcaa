"""Start the real Alertmanager (Debian's `prometheus-alertmanager`, which `make test`
installs) on 127.0.0.1 with a free port, a temporary storage path, clustering off
(empty --cluster.listen-address) and a minimal config: one receiver, no integrations
(the test reads the alerts back through the v2 API). Same style as prometheus_server.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prometheus_server import _free_port


def alertmanager_binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        exe = shutil.which(name)
        if exe:
            return exe
    if os.path.exists("/usr/bin/prometheus-alertmanager"):
        return "/usr/bin/prometheus-alertmanager"
    pytest.fail("the Alertmanager binary is missing: install the Debian package `prometheus-alertmanager` "
                "(`make test` does: apt-get install prometheus-alertmanager)")


@dataclass
class AlertmanagerServer:
    proc: subprocess.Popen
    url: str
    workdir: Path

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as r:
            return json.loads(r.read())

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
        return (self.workdir / "alertmanager.log").read_text(errors="replace")[-3000:]


def start_alertmanager(timeout: float = 30.0) -> AlertmanagerServer:
    exe = alertmanager_binary()
    last_err = ""
    for _ in range(3):  # the free port can be taken between probe and bind: retry
        workdir = Path(tempfile.mkdtemp(prefix="stagetrace-am-"))
        cfg = {"route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
               "receivers": [{"name": "null"}]}
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(cfg))
        port = _free_port()
        log = open(workdir / "alertmanager.log", "wb")
        proc = subprocess.Popen(
            [exe, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        server = AlertmanagerServer(proc, f"http://127.0.0.1:{port}", workdir)
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
    pytest.fail(f"alertmanager did not become ready: {last_err.strip().splitlines()[-1:] or '(no output)'}")
