"""Suite-wide pytest setup.

Python 3.11.0-3.11.7 and 3.12.0-3.12.1 keep the AST constructor's recursion counter
in interpreter-global state (CPython gh-106905, fixed in 3.11.8 and 3.12.2 by
python/cpython#113035). If a garbage collection during ``ast.parse`` runs a finalizer
and the GIL passes to a thread that also calls ``ast.parse``, the first call ends
with ``SystemError: AST constructor recursion depth mismatch``. pytest parses test
sources with ``ast.parse`` while it formats a failure, and Python 3.11's traceback
module parses source lines too, for its ``^^^^`` markers. So a failing test whose
server thread formats a traceback at the same moment (an exception in a request
handler) crashed the whole session with an INTERNALERROR instead of reporting the
failure. The interpreter here is 3.11.7, so ``ast.parse`` calls are taken one at a
time on the affected versions; the lock costs nothing measurable (parses are rare and
short) and it is not installed where CPython is fixed.
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
    """Wrap ``ast.parse`` in a re-entrant lock (re-entrant: a finalizer may parse
    while its own thread holds it). Returns whether it was installed."""
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


serialize_ast_parse()
