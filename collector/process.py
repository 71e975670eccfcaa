"""Run ``stagetrace collector`` as a subprocess (tests, the demo, benchmarks).

>>> with start_collector(tmp_path) as c:          # free ports on 127.0.0.1
...     export_to(c.grpc_endpoint)                # "127.0.0.1:PORT"
...     export_to(c.http_endpoint + "/v1/traces") # "http://127.0.0.1:PORT"
...     EmbeddedBackend(c.data_dir).get_trace(tid) # visible as soon as acknowledged
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

_READY_RE = re.compile(r"^stagetrace collector ready grpc=(\S+):(\d+) http=(\S+):(\d+) data_dir=(.+)$")


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent_pid: int, *, sig: int = signal.SIGTERM, use_prctl: bool = True,
                     hard_exit_after_s: float = 10.0, poll_s: float = 0.2) -> None:
    """Make this process leave when ``parent_pid`` (the process that started it) dies.

    Why both mechanisms: ``PR_SET_PDEATHSIG`` (Linux) signals us the moment the parent
    dies, but it fires when the parent's *thread* that forked us exits, so it is only
    asked for (``use_prctl``) when that thread is the parent's main thread; a watcher
    thread polling ``getppid()`` covers every other case and other platforms. ``sig``
    goes through this process's own handler (a graceful stop); if that has not ended
    the process ``hard_exit_after_s`` later, it exits hard (the WAL and the
    rename-into-place blocks make that safe)."""
    if use_prctl and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still works

    def _watch() -> None:
        while os.getppid() == parent_pid:  # re-parented (to init or a subreaper) = parent gone
            time.sleep(poll_s)
        try:
            os.kill(os.getpid(), sig)
        finally:
            time.sleep(hard_exit_after_s)
            os._exit(1)

    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()


class CollectorStartError(RuntimeError):
    """The collector subprocess exited or stayed silent before printing its ready line."""


class CollectorProcess:
    """A running collector subprocess. Use as a context manager or call :meth:`stop`."""

    def __init__(self, proc: subprocess.Popen, host: str, grpc_port: int, http_port: int, data_dir: Path,
                 stderr_path: Path) -> None:
        self.proc = proc
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.data_dir = data_dir
        self._stderr_path = stderr_path
        self._stderr_cache: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def grpc_endpoint(self) -> str:
        """``host:port`` for OTLPSpanExporter(endpoint=..., insecure=True)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """``http://host:port``; append ``/v1/traces`` etc. for the HTTP exporters."""
        return f"http://{self.host}:{self.http_port}"

    def stderr_text(self) -> str:
        """What the collector wrote to stderr (kept after it stopped)."""
        if self._stderr_cache is not None:
            return self._stderr_cache
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the collector closes its WAL, cuts it into blocks and stops its
        maintainer), then SIGKILL to the whole process group: nothing is left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(10)
        self._killpg()  # a maintainer that outlived a collector killed meanwhile
        self._close()
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL without warning to the collector and its maintainer (the process
        group): what the durability guarantee is about."""
        if self.proc.poll() is None:
            self._killpg()
            self.proc.wait(10)
        self._close()

    def _killpg(self) -> None:
        # the collector leads its own process group (start_new_session); the group
        # id stays reserved while any member lives, so this cannot hit a stranger
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr_cache is None:
            self._stderr_cache = self.stderr_text()
            self._stderr_path.unlink(missing_ok=True)

    def __enter__(self) -> "CollectorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"CollectorProcess(pid={self.pid}, grpc={self.grpc_endpoint}, http={self.http_endpoint}, data_dir={self.data_dir})"


def start_collector(data_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", grpc_port: int = 0,
                    http_port: int = 0, token: str | None = None, extra_args: Sequence[str] = (),
                    env: Mapping[str, str] | None = None, timeout: float = 30.0) -> CollectorProcess:
    """Start ``python -m stagetrace.cli collector`` and wait for its ready line.

    Port 0 (the default) picks free ports. Raises :class:`CollectorStartError` with
    the collector's stderr if it exits first (e.g. a port in use) or times out.
    ``env`` is added to (not substituted for) the current environment.
    """
    data_dir = Path(data_dir).resolve()
    args = [sys.executable, "-m", "stagetrace.cli", "collector", "--host", host, "--grpc-port", str(grpc_port),
            "--http-port", str(http_port), "--data-dir", str(data_dir)]
    if token is not None:
        args += ["--token", token]
    # die with us: parent watch always, PR_SET_PDEATHSIG only from the main thread (see exit_with_parent)
    args += ["--parent-pid", str(os.getpid())]
    if threading.current_thread() is threading.main_thread():
        args.append("--pdeathsig")
    args += list(extra_args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    fd, stderr_name = tempfile.mkstemp(prefix="stagetrace-collector-", suffix=".stderr")
    stderr_path = Path(stderr_name)
    with os.fdopen(fd, "wb") as stderr_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL,
                                env=full_env, text=True, start_new_session=True)
    line_box: list[str] = []

    def _read() -> None:
        assert proc.stdout is not None
        line_box.append(proc.stdout.readline())

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    reader.join(timeout)
    timed_out = reader.is_alive()
    line = line_box[0].strip() if line_box else ""
    m = _READY_RE.match(line)
    if not m:
        exited = proc.poll()
        if exited is None:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        err = stderr_path.read_text(errors="replace").strip()
        stderr_path.unlink(missing_ok=True)
        if timed_out and exited is None:
            why = f"printed no ready line within {timeout:.0f}s (killed)"
        else:
            why = f"exited with code {proc.returncode}"
        if line:
            why += f"; unexpected output {line!r}"
        raise CollectorStartError(f"stagetrace collector {why}: {err.splitlines()[-1] if err else '(no stderr)'}")
    gh, gp, hh, hp, dd = m.groups()
    return CollectorProcess(proc, gh.strip("[]"), int(gp), int(hp), Path(dd), stderr_path)
