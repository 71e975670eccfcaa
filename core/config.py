"""Shared settings: the data-dir rule and small parsing helpers used by every command."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import BackendError, UserError
from .semconv import ENV_DATA_DIR


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the store directory: ``--data-dir``, else ``$STAGETRACE_DATA_DIR``,
    else ``$XDG_DATA_HOME/stagetrace``, else ``~/.local/share/stagetrace``.

    Every command uses this one rule so a collector in one terminal and a query in
    another agree without flags.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "stagetrace"


def path_exists(path: str | os.PathLike[str], what: str) -> bool:
    """``Path.exists()``, except that a path below a directory this user may not enter is
    one clear error (``cannot read {what}: Permission denied``, exit 3) rather than the
    PermissionError Python 3.11's ``exists()`` raises: it says False only when missing."""
    try:
        return Path(path).exists()
    except OSError as exc:
        raise BackendError(f"cannot read {what}: {exc.strerror or exc}") from None


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def parse_duration_ns(text: str, default_unit: str = "ms") -> int:
    """Parse ``500ms``, ``1.5s``, ``1h``, ``250`` (default unit) into nanoseconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise UserError(f"invalid duration {text!r}: use a number with ns/us/ms/s/m/h/d, e.g. 500ms or 1h")
    ns = int(float(m.group(1)) * _UNIT_NS[m.group(2) or default_unit])
    if ns > MAX_TIME_NS:  # the store, NumPy and Arrow keep nanoseconds in int64
        raise UserError(f"invalid duration {text!r}: longer than the 292 years nanoseconds can count")
    return ns


TRACE_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")
# the last instant the store can hold (int64 Unix nanoseconds: 2262-04-11); OTLP times
# are unsigned, so nothing before 1970 exists either
MAX_TIME_NS = (1 << 63) - 1


def parse_time_ns(text: str, option: str) -> int:
    """A point in time as users and pages give it: ISO 8601 (UTC unless an offset is
    given), or Unix time in s / ms / ns told apart by magnitude."""
    import datetime as _dt
    import math
    t = text.strip()
    if t.isdigit() and int(t) > 10**17:  # Unix ns (Loki returns ml.label.time so): exact, not through a float
        return _in_range(int(t), text, option)
    try:
        x = float(t)
    except ValueError:
        try:
            d = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"invalid {option} {text!r}: use ISO 8601 (2024-05-01T14:00:00Z) or Unix seconds") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        return _in_range(int(d.timestamp() * 1e9), text, option)
    if not math.isfinite(x) or x < 0:
        raise UserError(f"invalid {option} {text!r}")
    if x > 1e17:
        return _in_range(int(x), text, option)
    if x > 1e11:
        return _in_range(int(x * 1e6), text, option)
    return _in_range(int(x * 1e9), text, option)


def _in_range(ns: int, text: str, option: str) -> int:
    """``ns`` if the store can hold that instant; else one clear line (an int64
    overflow further on would otherwise read as a window in another century)."""
    if not 0 <= ns <= MAX_TIME_NS:
        raise UserError(f"invalid {option} {text!r}: outside 1970-01-01 .. 2262-04-11, the times telemetry can carry")
    return ns


def normalize_trace_id(text: str) -> str:
    """Validate a trace id given by a user: 32 hex characters, returned lower-case.

    Tempo search may drop leading zeros; ids of 1-31 hex digits are left-padded.
    """
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if not t or len(t) > 32 or not re.fullmatch(r"[0-9a-f]+", t):
        raise UserError(f"invalid trace id {text!r}: expected 32 hexadecimal characters")
    if int(t, 16) == 0:
        raise UserError(f"invalid trace id {text!r}: the all-zero id is not a valid trace id")
    return t.rjust(32, "0")


_ZERO_TRACE_ID = "0" * 32


def trace_id_or_empty(text: str) -> str:
    """A trace id carried by telemetry (a log record's, a backend's label), lower-case;
    ``""`` when it is not one (all zero, wrong length, not hex).

    Why not :func:`normalize_trace_id`: that one judges what a user typed and fails
    with a UserError; an id from the data is not the user's mistake, and one bad log
    record must not end an investigation. OTLP reads an all-zero id as "no trace"."""
    t = text.strip().lower()
    if len(t) != 32 or t == _ZERO_TRACE_ID or not TRACE_ID_RE.match(t):
        return ""
    return t
