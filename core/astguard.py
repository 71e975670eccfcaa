"""A guard against CPython gh-106905, for processes that parse Python on several threads.

Python 3.11.0-3.11.7 and 3.12.0-3.12.1 keep the AST constructor's recursion counter
in interpreter-global state (fixed in 3.11.8 and 3.12.2 by python/cpython#113035). If a
garbage collection during ``ast.parse`` runs a finalizer and the GIL passes to a thread
that also calls ``ast.parse``, the first call ends with ``SystemError: AST constructor
recursion depth mismatch``. Our processes parse on several threads without ever calling
``ast.parse`` themselves: NumPy reads every ``.npy`` header with ``ast.literal_eval``
(the store opens blocks on a thread pool, and the rootless-trace read runs beside the
analysis), and Python 3.11's ``traceback`` parses source lines for its ``^^^^`` markers
when a server thread formats an error. An ``investigate`` on 3.11.7 died of it
(benchmarks/accuracy.py, session 11).

So on the affected versions ``ast.parse`` is taken one call at a time: a re-entrant
lock (a finalizer may parse while its own thread holds it), which costs nothing
measurable (header parses are short and few). Installed by stagetrace's own processes
(the console script, the store's reader), never by the instrumentation inside an app.
"""

from __future__ import annotations

import ast
import functools
import sys
import threading


def ast_race_affected(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Whether this CPython has the gh-106905 race in the AST constructor."""
    return (3, 11) <= version < (3, 11, 8) or (3, 12) <= version < (3, 12, 2)


def serialize_ast_parse() -> bool:
    """Wrap ``ast.parse`` in a re-entrant lock on an affected CPython (once; ``ast.literal_eval``
    looks ``parse`` up in the module, so it is covered). Returns whether the guard is in place."""
    if getattr(ast.parse, "_stagetrace_serialized", False):
        return True
    if not ast_race_affected():
        return False
    original = ast.parse
    lock = threading.RLock()

    @functools.wraps(original)
    def parse(*args, **kwargs):
        with lock:
            return original(*args, **kwargs)

    parse._stagetrace_serialized = True  # type: ignore[attr-defined]
    ast.parse = parse
    return True
