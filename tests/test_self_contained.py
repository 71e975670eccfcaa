"""The suite must run from a fresh clone with nothing beside it.

A test that reads ``../shared/...`` or ``/work/...`` passes on the machine it was
written on and fails for everyone who clones the repository (issue 14). Test data
belongs in tests/data/ (provenance in tests/data/README.md), reached through a path
relative to the test file. This test greps every source under tests/ for:

- absolute paths into places that hold checkouts or data (``/work``, ``/home``,
  ``/tmp``, ``/opt``, a Windows drive, ``~``...). The machine's own interfaces
  (``/proc``, ``/usr/bin/promtool``) and URL paths (``/v1/traces``) are allowed;
- relative escapes (a string starting with ``../``) and a ``shared`` folder joined
  onto a path;
- ``Path(__file__)`` chains (``.parent``, ``.parents[N]``, ``/ "seg"``), directly or
  through a name assigned from one, that climb above the repository root.

A line that must keep such a string (say, a path-traversal input sent to a server)
ends with ``# self-contained: ok`` and a reason. This file is not scanned: it holds
planted violations on purpose, and the tests below check that each is caught.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SCANNED_SUFFIXES = {".py", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".json", ".sh", ".txt", ".md"}
ALLOW_MARK = "# self-contained: ok"

# Roots where checkouts, home folders and shared data live; a test naming one depends
# on the machine it was written on.
_HOST_PATH = re.compile(
    r"""(?<![\w.:/\-\]}])"""  # not the tail of a URL, a word or another path
    r"""(?:/(?:work|workspace|home|root|Users|mnt|media|srv|opt|tmp|var|data|shared|builds)(?=[/"'\s)]|$)"""
    r"""|[A-Za-z]:\\\\?[A-Za-z]"""  # C:\data
    r""")""")
_HOME = re.compile(r"""Path\.home\(\)|expanduser\(|["']~[/\\]""")
# A string that starts by climbing ("../x", ".."): relative to the working folder or
# joined onto a path. A ".." inside a string ("static/../ui") is a URL-path input, and
# alone it cannot leave the folder it is joined to.
_DOTDOT = re.compile(r"""(?<![\w"'])[rbfuRBFU]{0,2}["']\.\.(?:[/\\]|["'])""")
_SHARED = re.compile(r"""/\s*["']shared["']|\bshared[/\\](?:samples|schemas|datasets|hooks)\b""")
_NEG_PARENTS = re.compile(r"""\.parents\[\s*-""")

# One step of a pathlib chain: .resolve() / .absolute() / .parent / .parents[N] / "seg".
_STEP = r"""(?:\.resolve\(\)|\.absolute\(\)|\.parents\[\d+\]|\.parent\b|\s*/\s*[rbfuRBFU]*["'][^"'\n]*["'])"""
_FILE_CHAIN = re.compile(r"""Path\(\s*__file__\s*\)(?P<ops>""" + _STEP + r"""*)""")
_DIRNAME_CHAIN = re.compile(r"""(?P<dn>(?:os\.path\.dirname\(\s*)+)(?:os\.path\.(?:abspath|realpath)\(\s*)?__file__""")
_ASSIGN = re.compile(r"""^\s*(?P<name>[A-Za-z_]\w*)\s*(?::[^=]*)?=\s*(?P<base>Path\(\s*__file__\s*\)|[A-Za-z_]\w*)"""
                     r"""(?P<ops>""" + _STEP + r"""*)\s*(?:#.*)?$""")
_STEP_RE = re.compile(_STEP)


def _walk(depth: int, ops: str) -> tuple[int, int]:
    """Follow a chain from ``depth`` (path components below the repository root):
    the lowest depth it reaches, and where it ends."""
    low = depth
    for m in _STEP_RE.finditer(ops):
        step = m.group(0).strip()
        if step.startswith(".parents["):
            depth -= int(step[len(".parents["):-1]) + 1
        elif step == ".parent":
            depth -= 1
        elif step.startswith("/"):
            literal = step[1:].strip().lstrip("rbfuRBFU")[1:-1]
            for part in re.split(r"[/\\]", literal):
                depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        low = min(low, depth)
    return low, depth


def find_violations(text: str, file_depth: int = 2) -> list[str]:
    """Places in ``text`` that name an absolute path or reach outside the repository.

    ``file_depth`` is the number of path components of the scanned file below the
    repository root (tests/test_x.py is 2), so ``Path(__file__).parents[1]`` is the
    root and ``parents[2]`` is above it.
    """
    found: list[str] = []
    names: dict[str, int] = {}  # name -> depth of the path assigned to it
    for no, line in enumerate(text.splitlines(), 1):
        if ALLOW_MARK in line:
            continue
        where = f"line {no}: {line.strip()[:120]}"
        if _HOST_PATH.search(line):
            found.append(f"{where}  [absolute path into a host folder]")
        if _HOME.search(line):
            found.append(f"{where}  [home folder]")
        if _DOTDOT.search(line):
            found.append(f"{where}  [relative path climbing with ..]")
        if _SHARED.search(line):
            found.append(f"{where}  [shared/ folder outside the repository]")
        if _NEG_PARENTS.search(line):
            found.append(f"{where}  [parents[-N] counts from the filesystem root]")
        lows = [_walk(file_depth, m.group("ops"))[0] for m in _FILE_CHAIN.finditer(line)]
        lows += [file_depth - m.group("dn").count("dirname") for m in _DIRNAME_CHAIN.finditer(line)]
        for name, depth in names.items():
            for m in re.finditer(r"\b" + re.escape(name) + r"(?P<ops>" + _STEP + r"*)", line):
                lows.append(_walk(depth, m.group("ops"))[0])
        if any(low < 0 for low in lows):
            found.append(f"{where}  [path climbs above the repository root]")
        a = _ASSIGN.match(line)
        if a:
            base = a.group("base")
            start = file_depth if base.startswith("Path") else names.get(base)
            if start is not None:
                names[a.group("name")] = _walk(start, a.group("ops"))[1]
    return found


def scan(tests_dir: Path, repo_root: Path) -> list[str]:
    """Every violation in the sources under ``tests_dir``, as "path line N: ... [why]"."""
    problems = []
    for path in sorted(tests_dir.rglob("*")):
        if (not path.is_file() or path.suffix not in SCANNED_SUFFIXES
                or tests_dir / "data" in path.parents  # third-party data, kept byte for byte
                or "__pycache__" in path.parts or path == Path(__file__).resolve()):
            continue
        rel = path.relative_to(repo_root)
        problems += [f"{rel} {v}" for v in find_violations(path.read_text(), len(rel.parts))]
    return problems


def test_no_test_reads_outside_the_repository():
    assert len(list(TESTS_DIR.glob("test_*.py"))) > 20  # the scan looks at the real suite
    problems = scan(TESTS_DIR, REPO_ROOT)
    assert not problems, ("tests must not name absolute paths or read outside the repository; copy the data "
                          "into tests/data/ (with its provenance in tests/data/README.md) and reach it with "
                          "Path(__file__).parent / 'data' / ...:\n" + "\n".join(problems))


# Each of these is a way the suite has read, or could read, data beside the checkout.
PLANTED = [
    'SAMPLES = Path("/work/shared/samples/input")',
    'SAMPLES = Path("/work/main/tests/data")',
    'SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"',
    'SAMPLES = Path(__file__).resolve().parents[2] / "datasets"',
    'SAMPLES = Path(__file__).parent.parent.parent / "datasets"',
    'ROOT = Path(__file__).resolve().parents[1]\nSCHEMA = ROOT.parent / "x" / "compose-spec.json"',
    'ROOT = Path(__file__).resolve().parents[1]\nUP = ROOT / ".."\nX = UP / "y"',
    'data = open("../shared/x.json").read()',
    'data = open("../../x.json").read()',
    'data = Path(f"../{name}.json").read_text()',
    'p = os.path.join(os.path.dirname(__file__), "..", "..", "x")',
    'p = Path("data") / ".." / ".." / "elsewhere"',
    'here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))',
    'p = Path(__file__).resolve().parents[-1] / "etc"',
    'p = Path.home() / ".cache" / "x"',
    'p = Path("/tmp/fixture.json")',
    'p = Path("/home/alice/data.json")',
    'p = r"C:' + '\\data\\x.json"',
]

# Forms the suite uses legitimately: the repo root, data beside the test, system tools
# and interfaces, URL paths on local servers, paths inside a container's config.
CLEAN = [
    'SCHEMA = Path(__file__).resolve().parents[1] / "forensics" / "report.schema.json"',
    'SAMPLES = Path(__file__).resolve().parent / "data" / "samples" / "input"',
    'OTELCOL_DIR = Path(__file__).resolve().parents[1] / "collector" / "otelcol"\n'
    'c = (OTELCOL_DIR.parents[1] / "compose" / "docker-compose.yml").read_text()',
    'ROOT = Path(__file__).resolve().parents[1]\nCOMPOSE = ROOT / "compose"\nX = COMPOSE.parent / "docs"',
    'exe = shutil.which("promtool") or "/usr/bin/promtool"',
    'for d in Path("/proc").iterdir(): pass',
    'url = f"{base}/v1/traces"; other = "/api/v2/traces/" + tid',
    'assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]',
    'r = post(url + "/v1/traces", b"")',
    'srv.get("/loki/api/v1/query_range?query=x")',
    'bad = "../../etc/passwd"  ' + ALLOW_MARK + ' (path-traversal input sent to the server)',
    'def test_query_attribute_semantics_shared_by_backends(): pass',
    'for path in ("static/../ui/cli.py", "nope"): assert get(url + path).status == 404',
    'assert text.endswith("...") and x == "..."',
]


@pytest.mark.parametrize("source", PLANTED)
def test_checker_catches_a_planted_violation(source):
    assert find_violations(source), source


@pytest.mark.parametrize("source", CLEAN)
def test_checker_allows_what_the_suite_legitimately_uses(source):
    assert find_violations(source) == [], source


def test_depth_follows_the_file():
    """tests/apps/app.py is one level deeper: its parents[2] is the root, parents[3] is not."""
    assert find_violations('R = Path(__file__).resolve().parents[2] / "core"', file_depth=3) == []
    assert find_violations('R = Path(__file__).resolve().parents[3] / "x"', file_depth=3)


def test_scan_finds_a_violation_planted_in_a_file(tmp_path):
    """The scan over a tree (not only the string checker) reports the file and line,
    and skips tests/data/."""
    tests = tmp_path / "tests"
    (tests / "data").mkdir(parents=True)
    (tests / "test_ok.py").write_text('from pathlib import Path\nS = Path(__file__).parent / "data"\n')
    (tests / "data" / "recorded.json").write_text('{"path": "/work/x"}\n')
    assert scan(tests, tmp_path) == []
    (tests / "test_planted.py").write_text('from pathlib import Path\nS = Path(__file__).parents[1].parent / "x"\n')
    problems = scan(tests, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("tests/test_planted.py line 2:"), problems
