"""Flush telemetry when SIGTERM (or a SIG_DFL SIGINT) ends the process.

Why: uvicorn, and gunicorn's uvicorn workers, catch SIGTERM/SIGINT, shut down
gracefully, then put back the handler that was there before they started and
re-raise the signal. When that handler is ``SIG_DFL`` the kernel ends the
process on the spot: ``atexit`` never runs, so the SDK's batch span and log
processors and its periodic metric reader never export what they hold (up to
one schedule delay of telemetry, on every worker, on every deploy).

So, where a signal's handler is ``SIG_DFL`` (never over a handler the app or
server set), we install one that force-flushes the tracer, logger and meter
providers, bounded in time, then restores ``SIG_DFL`` and re-raises the signal:
the process still dies of the same signal, with the same exit status. uvicorn
chains to it because it re-raises to the handler it found. gunicorn's
``UvicornWorker`` resets its signals to ``SIG_DFL`` after the fork, so in forked
children we also install (same rule) when a uvicorn ``Server`` starts capturing
signals.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from types import ModuleType

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry._logs import get_logger_provider

from stagetrace import semconv

from . import importhook

DEFAULT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 30.0
# SIGQUIT is left alone: its default (core dump) is for debugging a stuck process.
_SIGNAL_NAMES = ("SIGTERM", "SIGINT")


def flush_timeout() -> float:
    """Seconds to spend flushing on a signal (``STAGETRACE_SIGNAL_FLUSH_TIMEOUT``); 0 = off."""
    raw = os.environ.get(semconv.ENV_SIGNAL_FLUSH_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    if value != value or value <= 0:  # NaN or off
        return 0.0
    return min(value, MAX_TIMEOUT_S)


def flush_providers(timeout_s: float) -> bool:
    """Force-flush the global tracer, logger and meter providers; wait at most ``timeout_s``.

    The flush runs in a helper thread because the SDK's batch processors ignore
    their ``timeout_millis`` and an exporter may retry: a dead collector or a lock
    held by the interrupted main thread costs ``timeout_s``, never a hang.
    True if every flush finished in time.

    Called from a signal handler, which runs on the main thread between two of its
    bytecodes, wherever it was: maybe inside ``threading.Thread.start`` holding
    ``threading``'s own non-reentrant bookkeeping lock. So the helper is started and
    awaited with the low-level ``_thread`` module, which takes no lock the main
    thread could be holding.
    """
    providers = [trace_api.get_tracer_provider(), get_logger_provider(), metrics_api.get_meter_provider()]
    deadline = time.monotonic() + timeout_s
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            for provider in providers:
                flush = getattr(provider, "force_flush", None)
                if not callable(flush):
                    continue  # a no-op/proxy provider: the SDK is not configured
                try:
                    flush(max(1, int((deadline - time.monotonic()) * 1000)))
                except Exception:  # pragma: no cover - an exporter's bug must not stop the others
                    pass
        finally:
            done.release()

    try:
        _thread.start_new_thread(run, ())
    except RuntimeError:  # no new threads (interpreter shutting down)
        return False
    return done.acquire(True, max(0.0, timeout_s))


class _State:
    timeout_s: float = DEFAULT_TIMEOUT_S


def _on_signal(signum: int, frame) -> None:
    # Restore SIG_DFL first: a second signal during the flush ends the process at once.
    try:
        signal.signal(signum, signal.SIG_DFL)
    except Exception:
        pass
    try:
        flush_providers(_State.timeout_s)
    except Exception:
        pass
    # What SIG_DFL would have done: the same death, the same exit status.
    signal.raise_signal(signum)


def installed(sig: int) -> bool:
    return signal.getsignal(sig) is _on_signal


def install() -> list[int]:
    """Install the flushing handler on SIGTERM/SIGINT where their handler is SIG_DFL.

    Main thread only (Python's rule for signal handlers); returns the signals now
    handled by us. Never raises.
    """
    try:
        timeout_s = flush_timeout()
        if timeout_s <= 0 or threading.current_thread() is not threading.main_thread():
            return []
        _State.timeout_s = timeout_s
        done = []
        for name in _SIGNAL_NAMES:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                current = signal.getsignal(sig)
                if current is _on_signal:
                    done.append(sig)
                elif current == signal.SIG_DFL:
                    signal.signal(sig, _on_signal)
                    done.append(sig)
            except (ValueError, OSError, RuntimeError):
                pass
        return done
    except Exception:
        return []


def uninstall() -> None:
    """Put SIG_DFL back wherever our handler is still installed (tests)."""
    for name in _SIGNAL_NAMES:
        sig = getattr(signal, name, None)
        if sig is not None and installed(sig):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (ValueError, OSError):
                pass


def patch_uvicorn_server(module: ModuleType) -> None:
    """Post-import hook for ``uvicorn.server``: install (same rule) when a Server starts
    capturing signals, i.e. after gunicorn's ``UvicornWorker.init_signals`` set SIG_DFL."""
    server_cls = getattr(module, "Server", None)
    original = getattr(server_cls, "capture_signals", None)
    if original is None or getattr(original, "_stagetrace_wrapped", False):
        return

    def capture_signals(self, *args, **kwargs):
        install()
        return original(self, *args, **kwargs)

    capture_signals.__wrapped__ = original  # type: ignore[attr-defined]
    capture_signals._stagetrace_wrapped = True  # type: ignore[attr-defined]
    capture_signals.__name__ = original.__name__
    capture_signals.__qualname__ = getattr(original, "__qualname__", "capture_signals")
    capture_signals.__doc__ = original.__doc__
    server_cls.capture_signals = capture_signals


class _Fork:
    registered = False


def _after_fork_in_child() -> None:
    # gunicorn's master imported the worker class (and uvicorn.server) before forking.
    # when_imported takes importhook's registry lock, which a thread of the parent may
    # have held: importhook's own fork handler (registered when it was imported, so it
    # runs before this one) has made a fresh one.
    try:
        module = sys.modules.get("uvicorn.server")
        if module is not None:
            patch_uvicorn_server(module)
        else:
            importhook.when_imported("uvicorn.server", patch_uvicorn_server)
    except Exception:
        pass


def setup() -> None:
    """Called by the configurator once the SDK is configured: install where SIGTERM is
    SIG_DFL now, and in forked workers when their uvicorn Server starts."""
    install()
    if hasattr(os, "register_at_fork") and not _Fork.registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _Fork.registered = True
