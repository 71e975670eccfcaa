"""Trace ids of the write-ahead-log records this collector process appended, kept as
the receivers write them, so a trace-by-id lookup served by the same process finds
its records in the log without reading the log.

Why: while clients send, a lookup served by the collector had to find its trace's
records among everything acknowledged since the last block was cut. Scanning the
log's new bytes for ids on each lookup (``query._TailIds``) was still most of a
lookup's time during ingest (22 of 29 s of lookup time at 6M spans, p99 ~1 s:
docs/benchmarks.md, issue 19 session 7), and the receivers already read every
span's trace id when they validate a request. Here each appended record's ids go
into a per-segment index (64-bit keys, :func:`id_keys`) under a short lock; a lookup
matches its few keys against it and reads only the records that may hold them
(a superset: the caller keeps the rows of the exact ids).

Only segments this process's writers created are covered (from their first byte):
older segments (left by a previous run) are read by the caller's scan, as before.
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from stagetrace.traceids import id_keys

from . import wal

_NO_KEYS = np.zeros(0, dtype=np.uint64)


def keys_of(ids: Sequence[bytes]) -> np.ndarray:
    """:func:`id_keys` of the 16-byte ids among ``ids`` (others are no trace id)."""
    raw = b"".join(t for t in ids if len(t) == 16)
    return id_keys(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)) if raw else _NO_KEYS


class _Segment:
    """The indexed records of one segment: (payload start, end) each, and the key and
    record number of every id, appended in parts and joined when a lookup needs them."""

    __slots__ = ("records", "keys", "owners", "parts")

    def __init__(self) -> None:
        self.records: list[tuple[int, int]] = []
        self.keys = _NO_KEYS
        self.owners = np.zeros(0, dtype=np.int64)
        self.parts: list[tuple[np.ndarray, int]] = []  # (keys, record number) not joined yet

    def joined(self) -> tuple[np.ndarray, np.ndarray]:
        if self.parts:
            self.keys = np.concatenate([self.keys, *(k for k, _ in self.parts)])
            self.owners = np.concatenate([self.owners, *(np.full(len(k), r, dtype=np.int64) for k, r in self.parts)])
            self.parts = []
        return self.keys, self.owners


class TailIndex:
    """Per table, per segment: which records may hold each trace id (see module docstring).

    ``first_seq``: per table, the first segment this process's writer created (the
    index covers that one and later ones); ``directories``: each table's WAL directory,
    to forget segments once they are cut into blocks and deleted."""

    def __init__(self, first_seq: dict[str, int], directories: dict[str, Path]) -> None:
        self._first_seq = dict(first_seq)
        self._dirs = dict(directories)
        self._lock = threading.Lock()
        self._segments: dict[str, dict[int, _Segment]] = {t: {} for t in first_seq}

    def add(self, table: str, seq: int, start: int, end: int, ids: Sequence[bytes]) -> None:
        """Record that the payload at ``[start, end)`` of segment ``seq`` holds ``ids``
        (called after the record is written and before it is acknowledged)."""
        segments = self._segments.get(table)
        if segments is None:
            return
        keys = keys_of(ids)
        with self._lock:
            seg = segments.get(seq)
            if seg is None:
                self._forget_deleted(table, segments)  # a new segment: earlier ones may be cut by now
                seg = segments[seq] = _Segment()
            seg.parts.append((keys, len(seg.records)))
            seg.records.append((start, end))

    def _forget_deleted(self, table: str, segments: dict[int, _Segment]) -> None:
        for seq in [s for s in segments if not (self._dirs[table] / wal.segment_name(s)).exists()]:
            del segments[seq]

    def records(self, table: str, segments: list[tuple[int, Path]],
                want: Sequence[bytes]) -> tuple[list[bytes], list[tuple[int, Path]]]:
        """(payloads of the records of ``segments`` that may hold an id of ``want``, in
        log order; the segments of ``segments`` this index does not cover, for the
        caller to scan). A record whose checksum does not match (never expected: this
        process wrote it) leaves its segment to the caller's scan too.
        Raises FileNotFoundError when a segment was deleted meanwhile (the caller re-lists)."""
        mine = self._segments.get(table)
        if mine is None:
            return [], list(segments)
        wanted = keys_of(want)
        out: list[bytes] = []
        other: list[tuple[int, Path]] = []
        for seq, path in segments:
            if seq < self._first_seq[table]:
                other.append((seq, path))
                continue
            with self._lock:
                seg = mine.get(seq)
                if seg is None:  # listed, nothing acknowledged in it yet
                    continue
                keys, owners = seg.joined()
                spans = [seg.records[i] for i in np.unique(owners[np.isin(keys, wanted)])]
            if not spans:
                continue
            got = _read_payloads(path, spans)
            if got is None:
                other.append((seq, path))
            else:
                out.extend(got)
        return out, other


def _read_payloads(path: Path, spans: list[tuple[int, int]]) -> list[bytes] | None:
    """The payloads at ``spans`` of a segment, each checked against its record's
    checksum; None if one does not match."""
    out = []
    with open(path, "rb") as fh:
        for start, end in spans:
            head = start - wal.HEADER_BYTES
            data = os.pread(fh.fileno(), end - head, head)
            length, crc = wal.unpack_header(data)
            payload = data[wal.HEADER_BYTES:]
            if length != end - start or len(payload) != length or zlib.crc32(payload) != crc:
                return None
            out.append(payload)
    return out
