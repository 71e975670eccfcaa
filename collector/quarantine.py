"""The quarantine ledger: which stored data was set aside as corrupt, and what it held.

A block that fails its checksum is moved to ``DATA_DIR/quarantine/<table>/`` (see
:mod:`.integrity`) and one JSON line is appended to ``DATA_DIR/quarantine/ledger.jsonl``
with the range of the store it covered: table, WAL sequence range, row count and
time range. Readers keep serving every other block; this ledger is how they (and
reports) know that a window is missing rows, as Tempo and Loki report a block
they could not read instead of failing the query.

Standard library only: :mod:`.client` (the lean reader) lists it too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

QUARANTINE_DIR = "quarantine"
LEDGER = "ledger.jsonl"


@dataclass(frozen=True, slots=True)
class QuarantinedBlock:
    """Data set aside as corrupt. ``kind`` is ``block`` (a whole Parquet block: its rows
    and time range are known from its checksum sidecar or footer) or ``wal`` (the
    unreadable end of a write-ahead-log segment: rows and times unknown)."""

    kind: str
    table: str
    lo: int
    hi: int
    rows: int | None
    min_time_ns: int | None
    max_time_ns: int | None
    reason: str
    original: str  # where it was
    moved_to: str  # where it is now
    at_ns: int  # when it was set aside

    def overlaps(self, start_ns: int | None, end_ns: int | None) -> bool:
        """Does it cover any of ``[start_ns, end_ns)``? Unknown times overlap everything."""
        if self.min_time_ns is None or self.max_time_ns is None:
            return True
        if start_ns is not None and self.max_time_ns < start_ns:
            return False
        return end_ns is None or self.min_time_ns < end_ns

    def describe(self) -> str:
        """One line for logs, ``collector check`` and reports."""
        rows = f"{self.rows:,} rows" if self.rows is not None else "an unknown number of rows"
        what = f"{self.table} block" if self.kind == "block" else f"{self.table} write-ahead-log segment"
        return (f"{what} {self.original} ({rows}, {time_range(self.min_time_ns, self.max_time_ns)}) "
                f"moved to {self.moved_to}: {self.reason}")


def time_range(lo_ns: int | None, hi_ns: int | None) -> str:
    if lo_ns is None or hi_ns is None or not (lo_ns or hi_ns):
        return "time range unknown"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return f"{time.strftime(fmt, time.gmtime(lo_ns / 1e9))} to {time.strftime(fmt, time.gmtime(hi_ns / 1e9))}"


def quarantine_dir(data_dir: Path, table: str | None = None) -> Path:
    d = Path(data_dir) / QUARANTINE_DIR
    return d / table if table else d


def record(data_dir: Path, entry: QuarantinedBlock) -> None:
    """Append ``entry`` to the ledger: one ``write(2)`` with O_APPEND, so concurrent
    writers (a reader and the maintainer) never interleave lines."""
    d = quarantine_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
    fd = os.open(d / LEDGER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def list_quarantined(data_dir: str | os.PathLike[str], *, start_ns: int | None = None, end_ns: int | None = None,
                     tables: Iterable[str] | None = None) -> list[QuarantinedBlock]:
    """Quarantined data, oldest first, one entry per (kind, table, range, original path);
    filtered to what overlaps ``[start_ns, end_ns)`` and to ``tables`` when given."""
    try:
        text = (quarantine_dir(Path(data_dir)) / LEDGER).read_text(errors="replace")
    except OSError:
        return []
    want = set(tables) if tables is not None else None
    seen: dict[tuple[str, str, int, int, str], QuarantinedBlock] = {}
    for line in text.splitlines():
        try:
            e = QuarantinedBlock(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line torn by a crash: the others still count
        key = (e.kind, e.table, e.lo, e.hi, e.original)
        if key in seen:
            continue
        if want is not None and e.table not in want:
            continue
        if e.overlaps(start_ns, end_ns):
            seen[key] = e
    return list(seen.values())


def quarantine_stats(data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """``quarantined_blocks`` / ``quarantined_rows`` (rows of blocks; WAL ends count
    as blocks with no known rows): what ``Backend.stats()`` adds."""
    entries = list_quarantined(data_dir)
    return {"quarantined_blocks": len(entries), "quarantined_rows": sum(e.rows or 0 for e in entries)}


_SIGNAL_TABLES = {"traces": ("spans",), "spans": ("spans",), "logs": ("logs",), "metrics": ("metrics",)}


def missing_data_note(backend: Any, start_ns: int | None, end_ns: int | None,
                      signals: Iterable[str] = ("spans", "logs", "metrics")) -> str | None:
    """The sentence a report over ``[start_ns, end_ns)`` should carry when stored data in
    that window was quarantined as corrupt, else ``None``.

    ``backend`` is any :class:`stagetrace.backend.Backend`; only the embedded store
    has a ``quarantined`` method (remote backends report their own gaps), so others
    give ``None``. Example: "1 spans block in this window is missing (quarantined as
    corrupt; it held 12,345 rows, 2026-12-05T10:00:00Z to 2026-12-05T10:05:00Z).
    Results may be incomplete; see `stagetrace collector check`." """
    lister = getattr(backend, "quarantined", None)
    if lister is None:
        return None
    tables = sorted({t for s in signals for t in _SIGNAL_TABLES.get(s, (s,))})
    try:
        entries = lister(start_ns=start_ns, end_ns=end_ns, tables=tables)
    except Exception:  # a note must never break the report it annotates
        return None
    if not entries:
        return None
    parts = []
    for e in entries:
        rows = f"it held {e.rows:,} rows" if e.rows is not None else "its row count is unknown"
        parts.append(f"{e.table} ({rows}, {time_range(e.min_time_ns, e.max_time_ns)})")
    n = len(entries)
    return (f"{n} stored block{'s' if n != 1 else ''} in this window {'are' if n != 1 else 'is'} missing "
            f"(quarantined as corrupt: {'; '.join(parts)}). Results may be incomplete; "
            "see `stagetrace collector check`.")
