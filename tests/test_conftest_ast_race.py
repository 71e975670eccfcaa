"""The guard in conftest.py against CPython gh-106905 (see its docstring).

The race is made deterministic here: a garbage cycle whose finalizer hands the GIL to
a second thread is collected while the main thread's ``ast.parse`` builds its AST, and
the second thread parses in that window. On an affected CPython this raises the same
``SystemError`` that crashed pytest's failure reporting; with the guard the second
parse waits for the first. Each case runs in a fresh interpreter (a few tenths of a
second) so the suite's own guard does not hide the bug.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ast_race_affected

TESTS_DIR = Path(__file__).resolve().parent

REPRO = r"""
import ast, gc, sys, threading
if sys.argv[1] == "guard":
    sys.path.insert(0, sys.argv[2])
    import conftest  # installs the guard
elif sys.argv[1] == "cli":  # what the console script installs before running any command
    from stagetrace import cli
    try:
        cli.main(["--version"])
    except SystemExit:
        pass
elif sys.argv[1] == "store":  # what the store's reader installs before opening blocks on threads
    from stagetrace.collector import query
    query._load_blocks([])  # one block or none: no threads, no guard yet
    assert not getattr(ast.parse, "_stagetrace_serialized", False)
    try:
        query._load_blocks([None, None])  # two: the guard first, then the (here failing) opens
    except Exception:
        pass
started, done = threading.Event(), threading.Event()

def other():
    started.wait()
    ast.parse("x = [1, 2, 3]")
    done.set()

class HandOff:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it, in the middle of the parse below
    def __del__(self):
        started.set()
        done.wait(1.0)  # releases the GIL; with the guard the other parse cannot run now

t = threading.Thread(target=other)
t.start()
source = "\n".join(f"def f{i}(a, b):\n    return [(a + b) * {i} for _ in range(3) if a]" for i in range(200))
gc.collect()
gc.set_threshold(200)
HandOff()
try:
    ast.parse(source)
    print("ok")
except SystemError as exc:
    print("SystemError:", exc)
started.set()
t.join()
"""


def _run(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", REPRO, mode, str(TESTS_DIR)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_affected_versions():
    assert ast_race_affected((3, 11, 7)) and ast_race_affected((3, 12, 1))
    assert not ast_race_affected((3, 11, 8)) and not ast_race_affected((3, 12, 2))
    assert not ast_race_affected((3, 10, 14)) and not ast_race_affected((3, 13, 0))


def test_reproducer_shows_the_race_where_cpython_has_it():
    """Without the guard: SystemError on an affected CPython, a clean parse elsewhere.
    This is what makes the next test able to fail."""
    got = _run("bare")
    if ast_race_affected():
        assert got.startswith("SystemError: AST constructor recursion depth mismatch"), got
    else:
        assert got == "ok", got


@pytest.mark.parametrize("mode", ["guard", "cli", "store"])
def test_guard_makes_concurrent_parses_safe(mode):
    """The suite's guard, and the product's: the console script and the store's threaded
    block reader (NumPy parses each .npy header with ``ast.literal_eval``) install it."""
    assert _run(mode).splitlines()[-1] == "ok"


def test_guard_is_installed_in_this_session():
    import ast

    assert getattr(ast.parse, "_stagetrace_serialized", False) == ast_race_affected()
    assert ast.parse("a + 1").body  # still the real parser underneath
