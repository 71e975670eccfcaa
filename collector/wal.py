"""The write-ahead log: acknowledged requests, in order, one segment file at a time.

Layout: ``<data_dir>/wal/<signal>/<seq:016d>.wal``. A segment is a sequence of
records ``[u32 length][u32 crc32][payload]`` where the payload is one validated
OTLP export request in protobuf. A record is handed to the kernel with a single
``write(2)`` before the receiver acknowledges it, so it survives ``kill -9`` of the
collector (``fsync=True`` also makes it survive power loss, at a throughput cost).

Segments are closed by size or age, then cut into Parquet blocks by
:mod:`stagetrace.collector.store` and deleted. Readers in other processes read the
segments not yet covered by a block directly (:func:`read_records`), which is what
makes data visible the moment it is acknowledged. A torn record at the end of a
segment (the writer died mid-write, so it was never acknowledged) ends the segment.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

# Test hook (tests/test_chaos.py, where no tmpfs can be mounted): with "wal_enospc" in
# STAGETRACE_FAILPOINTS, appends write half a record and fail with ENOSPC while
# DATA_DIR/failpoint.wal_enospc exists, as a full disk does. Never set in production.
_FAIL_ENOSPC = "wal_enospc" in os.environ.get("STAGETRACE_FAILPOINTS", "")

_HEADER = struct.Struct("<II")
HEADER_BYTES = _HEADER.size
_NAME_RE = re.compile(r"^(\d{16})\.wal$")
MAX_RECORD = 1 << 30


def segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segments in ``directory`` by sequence number."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME_RE.match(name)
        if m:
            out.append((int(m.group(1)), directory / name))
    out.sort()
    return out


def unpack_header(data: bytes) -> tuple[int, int]:
    """(payload length, CRC-32) from the first HEADER_BYTES of a record."""
    return _HEADER.unpack_from(data, 0)


def read_records(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(end_offset, payload)`` for each complete, checksummed record from ``start``.

    Stops quietly at a torn or corrupt tail: such a record was never acknowledged.
    Raises FileNotFoundError if the segment is gone (cut into a block meanwhile).
    """
    data, spans = scan_records(path, start)
    for a, b in spans:
        yield start + b, data[a:b]


def scan_records(path: Path, start: int = 0) -> tuple[bytes, list[tuple[int, int]]]:
    """The segment's bytes from ``start`` and the (start, end) of each complete,
    checksummed record's payload in them, up to a torn or corrupt tail (as
    :func:`read_records`, for readers that look at all payloads at once)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    spans = []
    pos = 0
    n = len(data)
    view = memoryview(data)
    while pos + _HEADER.size <= n:
        length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length > MAX_RECORD or end > n:
            break
        if zlib.crc32(view[pos + _HEADER.size:end]) != crc:
            break
        spans.append((pos + _HEADER.size, end))
        pos = end
    return data, spans


class WalWriter:
    """Appends records to the active segment of one signal; thread-safe."""

    def __init__(self, directory: Path, first_seq: int, *, segment_bytes: int = 8 << 20,
                 segment_age_s: float = 2.0, fsync: bool = False) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self.fsync = fsync
        self._lock = threading.Lock()
        self._seq = first_seq
        self._fd = -1
        self._size = 0
        self._opened = 0.0
        self._reopen_seq: int | None = None  # set while a new segment could not be created
        self._open(first_seq)

    def _open(self, seq: int) -> None:
        path = self.directory / segment_name(seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seq = seq
        self._size = 0
        self._opened = time.monotonic()
        if self.fsync:  # make the new name durable too
            _fsync_dir(self.directory)

    @property
    def active_seq(self) -> int:
        return self._seq

    def append(self, payload: bytes) -> tuple[int, int, int]:
        """Write one record; returns (segment seq, payload start, payload end) in that
        segment's file, for an index of what is where (:mod:`.tailindex`)."""
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._fd < 0:
                if self._reopen_seq is None:
                    raise RuntimeError("write-ahead log is closed")
                self._open(self._reopen_seq)  # OSError again while the disk is still full
                self._reopen_seq = None
            view = memoryview(record)
            try:
                if _FAIL_ENOSPC and (self.directory.parent.parent / "failpoint.wal_enospc").exists():
                    os.write(self._fd, view[: len(view) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                while view:  # one write(2) in practice; loop only on a short write
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError:
                # e.g. ENOSPC after a short write: part of this (unacknowledged) record is in
                # the segment. Later records appended after it would be unreadable (readers
                # stop at the first bad record), so cut the part off, or if that fails too,
                # continue in a new segment (the part is then a torn tail, ignored).
                self._undo_partial_locked()
                raise
            where = (self._seq, self._size + _HEADER.size, self._size + len(record))
            self._size += len(record)
            if self._size >= self.segment_bytes:
                try:
                    self._rotate_locked()
                except OSError:  # the record is written (and will be acknowledged); the next append retries
                    pass
            return where

    def _undo_partial_locked(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            return
        except OSError:
            pass
        next_seq = self._seq + 1
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = -1
        try:
            self._open(next_seq)
        except OSError:  # cannot even create a segment: the next append tries again
            self._reopen_seq = next_seq

    def rotate_if_due(self) -> bool:
        """Close the active segment if it is non-empty and old enough; True if rotated."""
        with self._lock:
            if self._fd >= 0 and self._size and time.monotonic() - self._opened >= self.segment_age_s:
                self._rotate_locked()
                return True
        return False

    def rotate(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._size:
                self._rotate_locked()

    def _rotate_locked(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            self._open(self._seq + 1)
        except OSError:  # e.g. no space for a new file: the next append tries again
            self._reopen_seq = self._seq + 1
            raise

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if not self._size:  # leave no empty segment behind
                    try:
                        os.unlink(self.directory / segment_name(self._seq))
                    except FileNotFoundError:
                        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
