"""Forces the interleaving behind issue 19's hung worker, so a test can rely on it.

The hang: the main thread imports a module; right after the module runs, a
stagetrace post-import hook (still under that module's import lock) logs a
warning and so wants a logging handler's lock. Meanwhile another thread holds
that handler's lock (the OTLP log handler, while it emits) and needs the same
import. Each waits for the other. In a real worker the window is a few
microseconds wide (1 start in 19 in the report); here it is made certain:

* :func:`contend_then_import` starts the *contender*: it takes the OTLP log
  handler's lock, waits until the main thread is inside the module's import
  (the module's body calls :func:`inside_import`), then imports the module too,
  and only then lets the handler go;
* the main thread imports the module. Once its body has run, stagetrace's hook runs.

With a hook that logs synchronously the process hangs for good (a fault
handler prints every thread's stack and exits with status 1 after ``timeout`` s). With a
hook that defers, the import finishes, the contender's import returns, and the
warning is logged once the handler is free.

Used by tests/test_instrumentation_deadlocks.py (run under the real
``opentelemetry-instrument``) and by tests/apps/stress_entry.py (2-worker uvicorn).
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import sys
import threading

_in_body = threading.Event()


def inside_import() -> None:
    """Called from the body of the module being imported: its import lock is held now."""
    _in_body.set()


def otlp_handler() -> logging.Handler:
    """The OTLP log handler our configurator attached to the root logger."""
    for h in logging.getLogger().handlers:
        if type(h).__name__ == "OtlpLogHandler":
            return h
    raise RuntimeError("no OtlpLogHandler on the root logger: not run under opentelemetry-instrument?")


def contend_then_import(module: str, timeout: float = 20.0) -> threading.Thread:
    """Start the contender for ``module`` and return once it holds the handler's lock."""
    handler = otlp_handler()
    held = threading.Event()
    # If the process deadlocks, show where every thread waits, then exit (status 1).
    faulthandler.dump_traceback_later(timeout, exit=True)

    def contender() -> None:
        handler.acquire()  # what Handler.handle does around emit()
        try:
            held.set()
            _in_body.wait()
            importlib.import_module(module)  # waits for the main thread's import to finish
            faulthandler.cancel_dump_traceback_later()  # both imports are done: no deadlock
        finally:
            handler.release()

    t = threading.Thread(target=contender, name="contender", daemon=True)
    t.start()
    held.wait()
    return t


def main(argv: list[str]) -> int:
    """``python -m hooklock MODULE [--raising-hook] [--unsupported DIST]``: the forced
    interleaving, once, in this process. ``--raising-hook`` adds a post-import hook for
    MODULE that raises (its failure is logged); ``--unsupported DIST`` makes DIST's
    installed version fall outside the hook's supported range (a warning)."""
    module = argv[0]
    if "--raising-hook" in argv:
        from stagetrace.instrumentation import importhook

        def broken_hook(mod):
            raise RuntimeError(f"broken hook for {mod.__name__}")

        importhook.when_imported(module, broken_hook)
    if "--unsupported" in argv:
        from stagetrace.instrumentation.package import _hooked_libraries

        _hooked_libraries[argv[argv.index("--unsupported") + 1]] = "<0.0.1"
    t = contend_then_import(module)
    importlib.import_module(module)
    t.join()
    from stagetrace.instrumentation import deferred

    deferred.flush()
    from opentelemetry._logs import get_logger_provider

    get_logger_provider().force_flush()
    print(f"imported {module}", flush=True)
    return 0


if __name__ == "__main__":
    import hooklock  # the modules under test import it by that name: one copy, one event

    sys.exit(hooklock.main(sys.argv[1:]))
