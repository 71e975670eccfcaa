"""Start a 2-worker uvicorn app many times under the real ``opentelemetry-instrument``
and require every worker to answer (issue 19: one worker of two hung at start-up).

Every worker imports an app named by broken stage entries (so stagetrace's
post-import hook warns under the app's import lock) with the OTLP log handler and
the JSON console handler attached, exporting to an in-test OTLP receiver.

* ``test_every_worker_answers``: 24 plain starts (4 at a time; the issue's 40 with
  ``STAGETRACE_STRESS_STARTS=40``: the forced test below is the one that meets the
  interleaving every time, so CI spends its minutes there). The hang needs
  another thread to be inside a logging handler at the very moment a worker's hook
  warns, a few microseconds' window: this run shows that start-up works under load,
  but it cannot be relied on to meet the interleaving by chance.
* ``test_every_worker_answers_when_the_interleaving_is_forced``: the same starts with
  ``STRESS_FORCE_INTERLEAVING=1``: each worker meets the interleaving on every start
  (tests/apps/hooklock.py). On the code before the fix no worker answered.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from otlp_sink import OtlpSink

APPS = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent
WORKERS = 2
BAD_ENTRIES = ("inference=stressapp:NoSuchScorer.score", "preprocess=stressapp:LIMIT",
               "feature_fetch=stressapp:missing_function")
STAGES = ";".join(("inference=stressapp:score",) + BAD_ENTRIES)
STARTS = int(os.environ.get("STAGETRACE_STRESS_STARTS", "24"))
READY_S = 60  # per start; a healthy start takes 2-6 s on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(sink: OtlpSink, force: bool) -> dict:
    """One start: uvicorn with 2 workers; returns the pids that answered and the output."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "OTEL_SERVICE_NAME": "stress",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.http_endpoint,
        "OTEL_BLRP_SCHEDULE_DELAY": "50",  # export threads busy during start-up
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi,requests",  # not used by the app
        "STAGETRACE_STAGES": STAGES,
        "STAGETRACE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "STRESS_FORCE_INTERLEAVING": "1" if force else "0",
    })
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "uvicorn"), "stress_entry:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(WORKERS), "--no-access-log", "--timeout-worker-healthcheck", "60"]
    with tempfile.TemporaryFile("w+") as out:  # not a pipe: nobody reads it until the end
        proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        pids: set[int] = set()
        t0 = time.monotonic()
        try:
            while len(pids) < WORKERS and time.monotonic() - t0 < READY_S and proc.poll() is None:
                try:  # a fresh connection each time: the kernel spreads them over the workers
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                        pids.add(json.loads(r.read())["pid"])
                except OSError:
                    time.sleep(0.1)  # not listening yet: poll again
            took = time.monotonic() - t0
        finally:
            if len(pids) < WORKERS:  # every thread's stack, to show where a worker waits
                for pid in _group(proc.pid):
                    try:
                        os.kill(pid, signal.SIGABRT)
                    except OSError:
                        pass
                time.sleep(1)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        return {"pids": pids, "took": took, "output": out.read()}


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def stress(starts: int, parallel: int, force: bool) -> None:
    with OtlpSink() as sink:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            results = list(pool.map(lambda _: start_once(sink, force), range(starts)))
        failed = [r for r in results if len(r["pids"]) < WORKERS]
        assert not failed, (f"{len(failed)} of {starts} starts had a worker that never answered; the first:\n"
                            + failed[0]["output"][-15000:])
        # every worker of every start warned about each bad entry, and the warnings were exported
        for r in results:
            for entry in BAD_ENTRIES:
                assert r["output"].count(repr(entry)) >= WORKERS, (entry, r["output"][-5000:])
        assert sink.wait_for(lambda s: len([lg for lg in s.logs if repr(BAD_ENTRIES[0]) in str(lg.body)])
                             >= starts * WORKERS, timeout=30)
        print(f"{starts} starts of {WORKERS} workers: every worker answered; "
              f"slowest start {max(r['took'] for r in results):.1f} s")


@pytest.mark.slow
def test_every_worker_answers():
    stress(starts=STARTS, parallel=4, force=False)


@pytest.mark.slow
def test_every_worker_answers_when_the_interleaving_is_forced():
    stress(starts=4, parallel=2, force=True)
