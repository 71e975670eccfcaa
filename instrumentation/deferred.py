"""Log messages from places that must never block: import hooks and fork handlers.

Why: a post-import hook runs while the import system holds the module's import
lock (and the locks of every module being imported around it). A logging call
there takes the logging module's lock (a logger's level cache) and each
handler's lock. If another thread holds one of those and needs that same import
(the OTLP log handler exporting, a handler or formatter importing lazily), each
waits for the other and the worker never starts (issue 19). In a forked child,
a lock held by a thread of the parent is never released at all.

So those places call :func:`log`. Outside an import it logs at once, as before.
Inside one (or while earlier messages are still queued, to keep their order)
it only appends to a deque, which takes no lock, and starts a short-lived
thread with the low-level ``_thread`` module (no ``threading`` lock either).
That thread holds no import lock; it logs the queued messages and exits. If it
has to wait for a handler lock, only it waits, and the import goes on. An
``atexit`` hook logs whatever is left when the interpreter exits first.
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import sys
import time
from collections import deque

# (logger, level, msg, args, exc_info, (file, line, function) of the caller, time.time())
_Item = tuple[logging.Logger, int, str, tuple, object, tuple[str, int, str], float]


class _State:
    queue: deque[_Item] = deque()
    # True while a drain thread is (or is about to be) running. Read and written
    # without a lock: the drain thread clears it, then looks at the queue again,
    # and a producer appends, then reads it, so a message is never left behind.
    draining = False
    atexit_registered = False
    drained = 0  # messages logged from the queue (tests)


_state = _State()

_BOOTSTRAP_FILES = ("<frozen importlib._bootstrap>", os.path.join("importlib", "_bootstrap.py"))


def in_import() -> bool:
    """Whether the calling thread is inside the import system (and so holds an import lock).

    Any import, however it started (``import``, ``importlib.import_module``,
    ``importlib.reload``), runs through ``importlib._bootstrap``: one of its
    frames on our stack means a module lock is held. Only called on the rare
    paths that log, never on a wrapped call.
    """
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.endswith(_BOOTSTRAP_FILES):
            return True
        frame = frame.f_back
    return False


def log(logger: logging.Logger, level: int, msg: str, *args, exc_info: bool = False, defer: bool = False) -> None:
    """``logger.log(level, msg, *args)``, deferred to a helper thread when the caller is
    inside an import (or ``defer`` is true: fork handlers). Never raises, never blocks.

    ``exc_info=True`` captures the exception being handled now, so a deferred message
    still carries its traceback; the record names the caller's file, line and
    function and the time of the call, as a direct logging call would.
    """
    _log(logger, level, msg, args, exc_info, defer)


def warning(logger: logging.Logger, msg: str, *args, exc_info: bool = False, defer: bool = False) -> None:
    _log(logger, logging.WARNING, msg, args, exc_info, defer)


def debug(logger: logging.Logger, msg: str, *args, exc_info: bool = False, defer: bool = False) -> None:
    _log(logger, logging.DEBUG, msg, args, exc_info, defer)


def _log(logger: logging.Logger, level: int, msg: str, args: tuple, exc_info: bool, defer: bool) -> None:
    try:
        exc = sys.exc_info() if exc_info else None
        if exc is not None and exc[0] is None:
            exc = None
        f = sys._getframe(2)  # the caller of log()/warning()/debug()
        item = (logger, level, msg, args, exc, (f.f_code.co_filename, f.f_lineno, f.f_code.co_name), time.time())
        del f
        if not (defer or _state.draining or _state.queue or in_import()):
            _emit(item)
            return
        _state.queue.append(item)
        if not _state.atexit_registered:
            _state.atexit_registered = True
            atexit.register(_at_exit)
        if not _state.draining:
            _state.draining = True
            try:
                _thread.start_new_thread(_drain_thread, ())
            except RuntimeError:  # cannot start threads (interpreter shutting down): atexit drains
                _state.draining = False
    except Exception:  # logging must never break the app, least of all at start-up
        pass


def _emit(item: _Item) -> None:
    logger, level, msg, args, exc, (path, line, func), created = item
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, path, line, msg, args, exc, func)
    record.created = created  # when it happened, not when the queue got to it
    record.msecs = (created - int(created)) * 1000
    logger.handle(record)


def drain() -> None:
    """Log every queued message now, on the calling thread (atexit; tests)."""
    q = _state.queue
    while True:
        try:
            item = q.popleft()
        except IndexError:
            return
        try:
            _emit(item)
        except Exception:
            pass
        _state.drained += 1


def _at_exit() -> None:
    # Log what is left, then give a helper that is still writing a moment to finish:
    # a thread writing to stderr while the interpreter finalises can crash it.
    drain()
    flush(1.0)


def _drain_thread() -> None:
    while True:
        drain()
        _state.draining = False
        if not _state.queue:
            return
        _state.draining = True  # a message arrived after drain() returned: stay on


def flush(timeout: float = 5.0) -> bool:
    """Wait until every queued message has been logged (tests, and callers that want
    the warnings before they go on). Call it outside an import. True if done in time."""
    deadline = time.monotonic() + timeout
    while _state.queue or _state.draining:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _after_fork_in_child() -> None:
    # The parent logs what it queued; its drain thread does not exist here.
    _state.queue.clear()
    _state.draining = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
