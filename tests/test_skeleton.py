"""The package layout and CLI contract every other part builds on."""

import subprocess
import sys
from pathlib import Path

import pytest

from stagetrace import config
from stagetrace.errors import UserError


def test_subpackages_import_from_their_folders():
    import stagetrace.collector
    import stagetrace.forensics
    import stagetrace.instrumentation

    assert stagetrace.instrumentation.__file__.replace("\\", "/").endswith("instrumentation/__init__.py")
    assert stagetrace.collector.__file__.replace("\\", "/").endswith("collector/__init__.py")
    assert stagetrace.forensics.__file__.replace("\\", "/").endswith("forensics/__init__.py")


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "stagetrace.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("collector", "trace", "investigate", "demo"):
        assert name in out.stdout


def test_data_dir_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("STAGETRACE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config.data_dir() == tmp_path / "xdg" / "stagetrace"
    monkeypatch.setenv("STAGETRACE_DATA_DIR", str(tmp_path / "env"))
    assert config.data_dir() == tmp_path / "env"
    assert config.data_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("STAGETRACE_DATA_DIR")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.data_dir() == tmp_path / "home" / ".local" / "share" / "stagetrace"


@pytest.mark.parametrize("text,ns", [("500ms", 500_000_000), ("1.5s", 1_500_000_000), ("1h", 3_600_000_000_000), ("250", 250_000_000)])
def test_parse_duration(text, ns):
    assert config.parse_duration_ns(text) == ns


@pytest.mark.parametrize("bad", ["", "abc", "5 parsecs", "-1s"])
def test_parse_duration_rejects(bad):
    with pytest.raises(UserError):
        config.parse_duration_ns(bad)


def test_trace_id_normalisation():
    assert config.normalize_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert config.normalize_trace_id("abc") == "0" * 29 + "abc"  # Tempo search drops leading zeros
    for bad in ["nothex", "0" * 32, "1" * 33, ""]:
        with pytest.raises(UserError):
            config.normalize_trace_id(bad)


def test_query_attribute_semantics_shared_by_backends():
    from stagetrace.backend import attributes_match, value_equals

    assert value_equals(500, "500") and value_equals(True, "true") and not value_equals(True, "1")
    assert attributes_match({"ml.model.version": "v2"}, {"ml.model.version": "v2"}, {})
    # span attributes win over resource attributes of the same name
    assert not attributes_match({"k": "a"}, {"k": "b"}, {"k": "a"})
    assert attributes_match({"service.name": "api"}, {}, {"service.name": "api"})
    assert not attributes_match({"missing": "x"}, {"k": "x"}, {})


def test_a_missing_subcommand_module_is_one_line_not_a_traceback(monkeypatch, capsys):
    from stagetrace import cli

    monkeypatch.setitem(cli._COMMANDS, "ghost", ("stagetrace.no_such_module", "cmd", "A part that is not installed."))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ghost", "--anything"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ghost' is unavailable" in err[0] and "no_such_module" in err[0]


def test_every_test_marked_alone_is_in_the_makefiles_alone_run():
    """`make test` runs the `alone` tests by file after the parallel run (collecting the whole
    suite again for one test costs ~10 s of imports). A marked test in a file the Makefile
    does not list would run in neither pass."""
    import re
    root = Path(__file__).resolve().parent
    listed = re.search(r"^ALONE_FILES\s*=\s*(.*)$", (root.parent / "Makefile").read_text(), re.M)
    assert listed, "the Makefile has no ALONE_FILES line"
    files = {Path(f).name for f in listed.group(1).split()}
    marked = {p.name for p in root.glob("test_*.py") if re.search(r"^\s*@pytest\.mark\.alone\b", p.read_text(), re.M)}
    assert marked == files, (sorted(marked), sorted(files))
