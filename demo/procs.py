"""Child processes the demo starts, and the guarantee that none outlives it.

Each child gets its own process group (so uvicorn's workers and anything they
spawn go down with it), its output goes to a log file in the run directory,
and on Linux it receives SIGTERM if the demo itself dies (PR_SET_PDEATHSIG).
:class:`ProcessSet` stops every group on exit: SIGTERM, a grace period, then
SIGKILL, whether the demo ends normally, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from stagetrace.errors import UserError


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: ask Linux to SIGTERM this child when the demo exits."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    own_group: bool = True  # started by us in its own process group
    stopper: Callable[[], object] | None = None  # how to stop a child somebody else started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def last_error_line(self) -> str:
        """The most telling line of the child's log, for a one-line message."""
        tail = self.log_tail(40).splitlines()
        for line in reversed(tail):
            if any(k in line for k in ("Error", "error", "address already in use", "No module")):
                return line.strip()
        return tail[-1].strip() if tail else "no output"


class ProcessSet:
    """Starts children in their own process groups and stops them all on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: str | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as out:
            try:
                proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            except OSError as exc:
                raise UserError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def adopt(self, name: str, proc: subprocess.Popen, log_path: Path, stopper: Callable[[], object]) -> Child:
        """Track a process somebody else started (the collector), so it is stopped too."""
        child = Child(name, proc, log_path, own_group=False, stopper=stopper)
        self.children.append(child)
        return child

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def stop(self, child: Child, grace_s: float = 8.0) -> None:
        """SIGTERM the child's group (a graceful shutdown flushes telemetry), then SIGKILL."""
        if not child.own_group:
            try:
                if child.stopper is not None:
                    child.stopper()
            finally:
                if child.proc.poll() is None:
                    child.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=3)
            return
        _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if child.proc.poll() is not None and not _group_alive(child.pid):
                break
            time.sleep(0.05)
        _signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=3)

    def stop_many(self, children: Sequence[Child], grace_s: float = 8.0) -> None:
        """Stop several of our own children at once: SIGTERM to every group, then
        wait for all of them together, then SIGKILL whatever is left."""
        own = [c for c in children if c.own_group]
        for c in own:
            _signal_group(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(c.alive() or _group_alive(c.pid) for c in own):
            time.sleep(0.05)
        for c in own:
            self.stop(c, grace_s=0)
        for c in children:
            if not c.own_group:
                self.stop(c, grace_s)

    def stop_all(self, grace_s: float = 8.0) -> None:
        # Services first (they flush to the collector on the way out), the collector last.
        live = [c for c in self.children if c.alive() or (c.own_group and _group_alive(c.pid))]
        self.stop_many([c for c in live if c.own_group], grace_s)
        self.stop_many([c for c in live if not c.own_group], grace_s)

    def __enter__(self) -> "ProcessSet":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # A second Ctrl-C (or a SIGTERM) during shutdown must not leave children
        # behind: finish the job first. After a failure or an interrupt nobody
        # waits for their telemetry, so be quick.
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs} if main else {}
        try:
            self.stop_all(grace_s=8.0 if exc_type is None else 2.0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = "127.0.0.1", what: str = "port") -> None:
    """A clear one-line error when a requested port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{what} {host}:{port} is already in use; choose another or use 0 for a free one") from None
            raise UserError(f"cannot bind {what} {host}:{port}: {exc.strerror}") from None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_http_ready(child: Child, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail fast if the child exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise UserError(f"{child.name} exited with code {child.proc.returncode} during start-up: "
                            f"{child.last_error_line()} (log: {child.log_path})")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise UserError(f"{child.name} did not become ready within {timeout_s:.0f} s (log: {child.log_path})")
