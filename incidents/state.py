"""Alert state and silences, kept in ``DATA_DIR/watch/`` so a restart neither re-sends
firing alerts nor forgets them, and silences outlive the process that set them.

Two JSON files, each replaced atomically (write, fsync, rename) under an ``flock``:
``state.json`` (alerts: active ones and a bounded history) is written by the watch
after every evaluation; ``silences.json`` is written by ``stagetrace watch silence``
and re-read by the watch each cycle, so a silence added from another terminal holds
from the next evaluation on.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from stagetrace.errors import BackendError, UserError

STATE_VERSION = 1
MAX_HISTORY = 500


def watch_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "watch"


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / ".lock", "w")
    except OSError as exc:  # a data dir this user may not write: one line, not a traceback
        raise BackendError(f"cannot use the watch state in {directory}: {exc.strerror or exc}") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc} (move it away to start over)") from None


def _write(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class StateStore:
    """``alerts``: identity key -> alert dict (pending or firing); ``history``: resolved ones."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = watch_dir(data_dir)
        self.path = self.dir / "state.json"

    def load(self) -> dict[str, Any]:
        with locked(self.dir):
            doc = _read(self.path, None)
        if doc is None:
            return {"version": STATE_VERSION, "alerts": {}, "history": []}
        if doc.get("version") != STATE_VERSION:
            raise UserError(f"{self.path} has state version {doc.get('version')!r}, expected {STATE_VERSION}")
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        doc["history"] = doc.get("history", [])[-MAX_HISTORY:]
        doc["saved_at_ns"] = time.time_ns()
        with locked(self.dir):
            _write(self.path, doc)

    def find_alert(self, alert_id: str) -> dict[str, Any] | None:
        doc = self.load()
        for a in list(doc["alerts"].values()) + list(reversed(doc["history"])):
            if a.get("id") == alert_id or a.get("id", "").startswith(alert_id) and len(alert_id) >= 6:
                return a
        return None


@dataclass
class Silence:
    """Mutes alerts whose labels match every matcher (``name=value``, shell-style
    wildcards allowed in the value) between ``starts_ns`` and ``ends_ns``."""

    id: str
    matchers: dict[str, str]
    starts_ns: int
    ends_ns: int
    comment: str = ""
    created_by: str = ""
    expired_ns: int | None = None

    def active(self, now_ns: int) -> bool:
        end = self.ends_ns if self.expired_ns is None else min(self.ends_ns, self.expired_ns)
        return self.starts_ns <= now_ns < end

    def matches(self, labels: dict[str, str]) -> bool:
        return all(k in labels and fnmatch.fnmatchcase(str(labels[k]), v) for k, v in self.matchers.items())


class SilenceStore:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = watch_dir(data_dir)
        self.path = self.dir / "silences.json"

    def all(self) -> list[Silence]:
        with locked(self.dir):
            doc = _read(self.path, {"silences": []})
        return [Silence(**s) for s in doc.get("silences", [])]

    def add(self, matchers: dict[str, str], starts_ns: int, ends_ns: int, comment: str = "",
            created_by: str = "") -> Silence:
        if not matchers:
            raise UserError("a silence needs at least one matcher, e.g. alertname=route-errors")
        if ends_ns <= starts_ns:
            raise UserError("a silence must end after it starts")
        s = Silence(secrets.token_hex(4), dict(matchers), starts_ns, ends_ns, comment, created_by)
        with locked(self.dir):
            doc = _read(self.path, {"silences": []})
            # expired silences older than a week are dropped: the file stays small
            keep = [x for x in doc.get("silences", []) if x["ends_ns"] > starts_ns - 7 * 86400 * 10**9]
            keep.append(asdict(s))
            _write(self.path, {"silences": keep})
        return s

    def expire(self, silence_id: str, now_ns: int) -> Silence:
        with locked(self.dir):
            doc = _read(self.path, {"silences": []})
            hit = [x for x in doc.get("silences", []) if x["id"] == silence_id]
            if not hit:
                raise UserError(f"no silence with id {silence_id!r} (see `stagetrace watch silence list`)")
            hit[0]["expired_ns"] = now_ns
            _write(self.path, doc)
        return Silence(**hit[0])

    def matching(self, labels: dict[str, str], now_ns: int) -> Silence | None:
        return next((s for s in self.all() if s.active(now_ns) and s.matches(labels)), None)


def parse_matchers(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep or not name.strip():
            raise UserError(f"invalid matcher {it!r}: expected LABEL=VALUE, e.g. alertname=route-errors")
        out[name.strip()] = value.strip()
    return out


__all__ = ["StateStore", "Silence", "SilenceStore", "parse_matchers", "watch_dir", "field"]
