"""The query layer: :class:`EmbeddedBackend`, the :class:`stagetrace.backend.Backend`
over the embedded store.

Reads never block or disturb the collector: blocks are immutable files read with
pyarrow (trace-by-id) and DuckDB (scans, in an in-memory connection over
``read_parquet``; no database file is ever opened, so any number of reader
processes can run beside the writer). Records acknowledged but not yet in a block
are decoded from the write-ahead log, incrementally and cached per segment, so a
new reader sees everything the moment the collector acknowledged it.

Hot paths:

- trace-by-id (:meth:`get_trace`, :meth:`get_traces`, logs by trace id): the
  ``.tids.npy`` sidecar of each block says whether it holds the id; the Parquet
  row-group statistics (blocks are sorted by trace id) say which row group; one
  small row group is read. No scan.
- time-window scans (:meth:`find_spans`, :meth:`search_traces`, :meth:`find_logs`,
  :meth:`metric_series`): DuckDB with filter push-down on the indexed columns;
  attribute filters are applied to the decoded records after that.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import gc
import json
import math
import os
import sys
import time
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from stagetrace import astguard, semconv
from stagetrace.backend import (LogQuery, MetricQuery, SpanColumns, TraceQuery, attributes_match, log_in_query,
                                span_columns)
from stagetrace.config import normalize_trace_id, trace_id_or_empty
from stagetrace.errors import BackendError, UserError
from stagetrace.traceids import HexIds, id_keys
from stagetrace.model import (SPAN_KINDS, STATUS_CODES, LogRecord, MetricPoint, MetricSeries, Span, SpanEvent,
                              SpanLink, Trace, TraceSummary)

from . import integrity, otlp, quarantine, store, wal
from .store import LOGS, METRICS, SCHEMAS, SPANS
from .tailindex import TailIndex, keys_of

_STATUS_OF = {"unset": 0, "ok": 1, "error": 2}
_RETRIES = 12  # ~1.5 s of back-off in total before giving up
_REST_CACHE_MAX = 200_000  # distinct span bodies kept decoded per reader
_TAIL_SEARCH_MAX_IDS = 8  # trace-by-id for at most this many ids decodes only their WAL records
_INDEX_COLUMNS = ["trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "duration_ns",
                  "status_code", "service"]


class _Block:
    """Cached read handles of one immutable block."""

    __slots__ = ("ref", "pf", "rg_min", "rg_max", "tids", "ino", "_sidecars", "_start_ranges", "_pf_bodies")

    def __init__(self, ref: store.BlockRef) -> None:
        self.ref = ref
        self.ino = os.stat(ref.path).st_ino
        schema = SCHEMAS[ref.table]
        self.pf = pq.ParquetFile(ref.path, memory_map=True, read_dictionary=[
            c for c in store.DICT_COLUMNS if c in schema.names and schema.field(c).type in (pa.string(), pa.binary())])
        md = self.pf.metadata
        self.rg_min: list[bytes] = []
        self.rg_max: list[bytes] = []
        if ref.table in (SPANS, LOGS):
            col = md.schema.names.index("trace_id")
            for i in range(md.num_row_groups):
                st = md.row_group(i).column(col).statistics
                self.rg_min.append(st.min if st is not None and st.has_min_max else b"")
                self.rg_max.append(st.max if st is not None and st.has_min_max else b"\xff" * 17)
            self.tids = np.load(ref.tids_path, mmap_mode="r") if ref.tids_path.exists() else None
        else:
            self.tids = None
        self._sidecars: dict[str, tuple[Path, int] | None] = {}  # "entries"/"errors" -> intact sidecar, once looked at
        self._start_ranges: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pf_bodies: Any = None

    def source(self, entries: bool, errors: bool = False) -> tuple[Path, bool]:
        """(file to scan, whether it is a sidecar): the entry-span sidecar when asked for
        (``entries``), the error-span one (``errors``), the smaller of the two when both
        are (the caller's conditions then include both: either holds every row that can
        match, and errors are mostly far fewer than requests), when intact (its checksum
        as the block's check file records it); else the block itself, which holds the
        same rows among others."""
        found = [got for want, on in (("entries", entries), ("errors", errors)) if on
                 and (got := self._sidecar(want)) is not None]
        if not found:
            return self.ref.path, False
        return min(found, key=lambda x: x[1])[0], True

    def _sidecar(self, want: str) -> tuple[Path, int] | None:
        """(path, bytes) of the intact ``entries`` or ``errors`` sidecar, checked once."""
        if want not in self._sidecars:
            self._sidecars[want] = None
            path = self.ref.entries_path if want == "entries" else self.ref.errors_path
            try:
                doc = integrity.read_check(self.ref.path) or {}
                crc, size = integrity.file_crc32(path)
                if f"{want}_crc32" in doc and crc == doc[f"{want}_crc32"]:
                    self._sidecars[want] = (path, size)
            except (OSError, ValueError):
                pass
        return self._sidecars[want]

    def start_ranges(self, path: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first start_ns, last start_ns, rows) of each row group of the block, or of
        its sidecar at ``path``, from the footer's statistics, read once per reader.

        Why cached: a search over a big window asks for them on every request, and
        walking ~10k row groups' statistics objects in Python took ~75 ms of CPU per
        search at 10M spans (the files are immutable, so the answer never changes).
        A row group without statistics gets the widest range (it always overlaps)."""
        path = self.ref.path if path is None else path
        got = self._start_ranges.get(path)
        if got is None:
            md = self.pf.metadata if path == self.ref.path else pq.ParquetFile(path).metadata
            ci = md.schema.names.index("start_ns")
            n = md.num_row_groups
            lo = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
            hi = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
            rows = np.zeros(n, dtype=np.int64)
            for i in range(n):
                rg = md.row_group(i)
                rows[i] = rg.num_rows
                st = rg.column(ci).statistics
                if st is not None and st.has_min_max:
                    lo[i], hi[i] = st.min, st.max
            got = self._start_ranges[path] = (lo, hi, rows)
        return got

    def bodies_file(self) -> Any:
        """The block opened with its span bodies (``rest``) read as dictionaries too,
        for scans that match the bodies' bytes: each row group's few distinct bodies
        are matched once, and no column of every row's body is materialised. (The footer
        is the one already parsed: a first search opens every block.)"""
        if self._pf_bodies is None:
            names = SCHEMAS[self.ref.table].names
            self._pf_bodies = pq.ParquetFile(self.ref.path, memory_map=True, metadata=self.pf.metadata,
                                             read_dictionary=[c for c in (*store.DICT_COLUMNS, "rest") if c in names])
        return self._pf_bodies

    def row_groups_for(self, tid: bytes) -> Iterator[int]:
        i = bisect.bisect_right(self.rg_min, tid) - 1
        while i >= 0 and self.rg_max[i] >= tid:
            yield i
            i -= 1

    def holds(self, prefixes: np.ndarray) -> np.ndarray:
        """Boolean mask over ``prefixes`` (uint64) of ids this block may hold."""
        if self.tids is None:
            return np.ones(len(prefixes), dtype=bool)
        if len(self.tids) == 0:
            return np.zeros(len(prefixes), dtype=bool)
        pos = np.searchsorted(self.tids, prefixes)
        pos = np.minimum(pos, len(self.tids) - 1)
        return self.tids[pos] == prefixes


class _Tail:
    """Rows of one table still in the write-ahead log, decoded incrementally."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.segments: dict[tuple[int, int], tuple[Path, int, list[pa.Table]]] = {}

    def refresh(self, segments: list[tuple[int, Path]]) -> pa.Table:
        keyed = [((seq, os.stat(path).st_ino), path) for seq, path in segments]  # FileNotFoundError -> retry
        keep = {key for key, _ in keyed}
        for key in list(self.segments):
            if key not in keep:
                del self.segments[key]
        for key, path in keyed:
            _, offset, parts = self.segments.get(key, (path, 0, []))
            payloads = []
            for end, payload in wal.read_records(path, offset):  # FileNotFoundError -> caller retries
                payloads.append(payload)
                offset = end
            if payloads:
                parts = parts + [store.build_table_safe(self.table, payloads)[0]]
            self.segments[key] = (path, offset, parts)
        tables = [t for _, _, parts in self.segments.values() for t in parts]
        if not tables:
            return pa.Table.from_batches([], SCHEMAS[self.table])
        return pa.concat_tables(tables)


class _TailIds:
    """Which write-ahead-log records may hold each trace id, per segment, built incrementally.

    Why: a trace-by-id lookup needs a handful of records, and decoding every record of
    the log into columns (:class:`_Tail`) to find them costs seconds and the log's size
    in memory while the log is long (docs/benchmarks.md, 20M-span ingest). Parsing each
    new record with the protobuf parser just for its ids was still most of a lookup
    served during ingest (0.1-0.2 s of CPU, up to 1.4 s behind the receivers' threads:
    the p99), so the ids are found in the bytes instead (:func:`_id_keys_in`, numpy,
    ~10x less), as 64-bit keys of the 16 bytes, a superset; the lookup then decodes only
    the records that may hold its ids, and the caller keeps the rows of the exact ids."""

    def __init__(self, table: str) -> None:
        self.tag = _ID_TAG[table]
        # per segment: (offset indexed up to, record (start, end) pairs, id keys, record number of each key)
        self.segments: dict[tuple[int, int], tuple[int, list[tuple[int, int]], np.ndarray, np.ndarray]] = {}

    def records(self, segments: list[tuple[int, Path]], want: Sequence[bytes]) -> list[bytes]:
        """Payloads of the records of ``segments`` that may hold an id of ``want``, in log order."""
        keyed = [((seq, os.stat(path).st_ino), path) for seq, path in segments]  # FileNotFoundError -> retry
        live = {key for key, _ in keyed}
        for key in [k for k in self.segments if k not in live]:
            del self.segments[key]
        wanted = keys_of(want)
        out: list[bytes] = []
        for key, path in keyed:
            offset, spans, keys, owner = self.segments.get(key, (0, [], _NO_IDS, _NO_IDS.astype(np.int64)))
            data, found = wal.scan_records(path, offset)  # checksummed; stops at a torn tail
            if found:
                # one numpy pass over all new records, not one per record: under ingest every
                # numpy call gives the GIL to the receivers' threads and waits to get it back
                new_keys, new_owner = _id_keys_in(data, found, self.tag)
                keys, owner = np.concatenate([keys, new_keys]), np.concatenate([owner, new_owner + len(spans)])
                spans.extend((offset + a, offset + b) for a, b in found)
                offset += found[-1][1]
            self.segments[key] = (offset, spans, keys, owner)
            hits = np.unique(owner[np.isin(keys, wanted)])
            if len(hits):
                with open(path, "rb") as fh:
                    out.extend(os.pread(fh.fileno(), spans[i][1] - spans[i][0], spans[i][0]) for i in hits)
        return out


# the key and length protobuf writes before a 16-byte trace id: Span field 1, LogRecord field 9
_ID_TAG = {SPANS: b"\x0a\x10", LOGS: b"\x4a\x10"}
_NO_IDS = np.zeros(0, dtype=np.uint64)
_BIG_BATCH = 1 << 20  # rows per Arrow batch where every row is only turned into a prefix
_PREFIX_ROOTS = 10_000  # roots with distinct prefixes before prefixes stand for traces (rootless_trace_ids)


def _missing_mask(a: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Which values of ``a`` are not in ``present`` (sorted uint64): a binary search per
    value, where ``np.isin`` sorts both arrays together."""
    if not len(present):
        return np.ones(len(a), dtype=bool)
    pos = np.minimum(np.searchsorted(present, a), len(present) - 1)
    return present[pos] != a


def _missing(a: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The values of ``a`` not in ``present`` (both sorted uint64)."""
    return a[_missing_mask(a, present)]


def _id_keys_in(data: bytes, records: list[tuple[int, int]], tag: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(keys, record numbers): the key (:func:`stagetrace.traceids.id_keys`) of the 16 bytes after every
    occurrence of ``tag`` inside a record's payload (``records``: (start, end) in
    ``data``), and which record it is in. Every trace id of the records' spans (or log
    records) is among them, since protobuf writes each as ``tag`` + 16 bytes; other
    bytes that happen to look the same only cost a needless decode of their record.
    Kept with repeats (no sort): ~16 bytes per span of the log, 30 MB at its 256 MiB cap."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = len(a)
    if n < 18:
        return _NO_IDS, _NO_IDS.astype(np.int64)
    at = np.flatnonzero((a[:n - 17] == tag[0]) & (a[1:n - 16] == tag[1]))
    bounds = np.array(records, dtype=np.int64)
    rec = np.searchsorted(bounds[:, 0], at, side="right") - 1
    inside = (rec >= 0) & (at + 18 <= bounds[np.maximum(rec, 0), 1])
    at, rec = at[inside], rec[inside]
    return id_keys(a[at[:, None] + np.arange(2, 18)]), rec


def _load_block(ref: store.BlockRef) -> _Block | str:
    """The block opened, or why it is corrupt (its checksum, then its footer). Raises
    FileNotFoundError when it was deleted meanwhile. Touches nothing: safe on a thread."""
    problem = ref.verify()
    if problem is not None:
        return problem
    try:
        return _Block(ref)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        if not ref.path.exists():
            raise FileNotFoundError(str(ref.path)) from None
        return f"unreadable: {str(exc).splitlines()[0][:200]}"


_LOAD_THREADS = 2  # the machine this was measured on has 2 cores; reading files gains little beyond


def _load_blocks(refs: Sequence[store.BlockRef]) -> dict[Path, _Block | str]:
    """:func:`_load_block` of each ref, on threads when there are several. Why: a reader
    checksums every block it opens, whole (issue 11): ~0.4 s of CPU for a 10M-span
    store, paid by every ``investigate``; zlib and Arrow release the GIL, so on two
    threads it takes about half the time."""
    if len(refs) < 2:
        return {ref.path: _load_block(ref) for ref in refs}
    from concurrent.futures import ThreadPoolExecutor

    astguard.serialize_ast_parse()  # np.load parses each .npy header: two threads at once (gh-106905)

    with ThreadPoolExecutor(max_workers=_LOAD_THREADS, thread_name_prefix="stagetrace-open") as pool:
        return dict(zip([ref.path for ref in refs], pool.map(_load_block, refs)))  # re-raises FileNotFoundError


@dataclass(slots=True)
class _View:
    blocks: list[_Block]
    tail: pa.Table  # the WAL tail decoded (empty when the view was taken without it)
    segments: list[tuple[int, Path]]  # the WAL segments not yet in a block


class EmbeddedBackend:
    """Read-only access to a collector data dir (see module docstring).

    Safe to open while a collector writes, from any number of processes; not
    thread-safe (use one per thread). Unknown or empty data dirs read as empty.
    """

    name = "embedded"

    def __init__(self, data_dir: str | Path, *, tail_index: "TailIndex | None" = None) -> None:
        self.data_dir = Path(data_dir).expanduser()
        # in the collector's process: its receivers' index of the WAL records they appended
        # (tailindex.py), so a trace-by-id lookup reads no log bytes to find its records
        self._tail_index = tail_index
        self._blocks: dict[Path, _Block] = {}
        self._tails = {t: _Tail(t) for t in store.TABLES}
        self._tail_ids = {t: _TailIds(t) for t in (SPANS, LOGS)}
        self._con: Any = None  # duckdb.DuckDBPyConnection, made on the first scan
        self._lock = threading.RLock()
        self._resource_cache: dict[bytes, tuple[dict, str]] = {}
        self._scope_cache: dict[bytes, tuple[str, str]] = {}
        self._rest_cache: dict[bytes, tuple[str, dict, list, list]] = {}

    # --- plumbing ---------------------------------------------------------------

    @property
    def con(self) -> Any:
        if self._con is None:
            import duckdb  # ~0.1-0.2 s to import: only scans need it, not trace-by-id

            self._con = duckdb.connect(":memory:")
            # no progress bar: DuckDB draws one on stdout for scans over ~2 s (10M spans),
            # into the middle of `investigate --format json` output
            for setting in ("SET enable_object_cache = true", "SET enable_progress_bar = false"):
                try:
                    self._con.execute(setting)
                except duckdb.Error:
                    pass
        return self._con

    def _view(self, table: str, *, decode_tail: bool = True) -> _View:
        snap = store.snapshot(self.data_dir, table)
        fresh = []
        for ref in snap.blocks:
            b = self._blocks.get(ref.path)
            if b is None or b.ino != os.stat(ref.path).st_ino:  # same name, new file (seq reuse)
                fresh.append(ref)
        loaded = _load_blocks(fresh)
        blocks = []
        live = set()
        for ref in snap.blocks:
            live.add(ref.path)
            if ref.path in loaded:
                b = self._open_block(ref, loaded[ref.path])
                if b is None:
                    continue  # corrupt: quarantined, every other block keeps serving
                self._blocks[ref.path] = b
            blocks.append(self._blocks[ref.path])
        for p in [p for p in self._blocks if p.parent == store.block_dir(self.data_dir, table) and p not in live]:
            del self._blocks[p]
        tail = self._tails[table].refresh(snap.tail) if decode_tail else pa.Table.from_batches([], SCHEMAS[table])
        return _View(blocks, tail, snap.tail)

    def _open_block(self, ref: store.BlockRef, loaded: "_Block | str") -> _Block | None:
        """A block this reader meets for the first time, as :func:`_load_block` opened it
        (checksum, then footer): a corrupt one is quarantined (logged once, by whichever
        process moves it) and ``None`` is returned."""
        if isinstance(loaded, _Block):
            return loaded
        ref.quarantine(self.data_dir, loaded)
        return None

    def quarantined(self, *, start_ns: int | None = None, end_ns: int | None = None,
                    tables: Sequence[str] | None = None) -> list[quarantine.QuarantinedBlock]:
        """Blocks set aside as corrupt whose time range meets ``[start_ns, end_ns)``:
        rows missing from every answer over that window (see
        :func:`stagetrace.collector.quarantine.missing_data_note`)."""
        return quarantine.list_quarantined(self.data_dir, start_ns=start_ns, end_ns=end_ns, tables=tables)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Run a read; if compaction or a cut removed a file under it, re-read the catalogue."""
        with self._lock:
            last: Exception | None = None
            for attempt in range(_RETRIES):
                try:
                    return fn()
                except Exception as exc:
                    if not _vanished_file_error(exc):
                        if _data_error(exc):
                            raise self._damaged(exc) from None
                        raise
                    # most likely a block deleted by compaction/retention after we listed it
                    # (FileNotFoundError; DuckDB: "No files found that match the pattern ...").
                    # Re-list: cached handles may name deleted files. A real I/O
                    # problem fails the same way every time and is reported below.
                    last = exc
                self._forget_changed_blocks()
                time.sleep(min(0.2, 0.005 * 2 ** attempt))  # compaction of a big block takes a while
            if last is not None and not isinstance(last, OSError):  # the same Arrow/DuckDB read error every time
                raise self._damaged(last) from None
            raise BackendError(f"cannot read the store in {self.data_dir}: {last}")

    def _forget_changed_blocks(self) -> None:
        """Drop the cached blocks whose file is gone or was replaced; keep the rest.

        Why not all: a retry follows every cut or merge that removed a file under a
        read, and reopening every block verifies each one's checksum again (the whole
        file): with ~200 blocks during a busy ingest that made one lookup take 19 s."""
        for path, b in list(self._blocks.items()):
            try:
                same = os.stat(path).st_ino == b.ino
            except OSError:
                same = False
            if not same:
                del self._blocks[path]

    def _damaged(self, exc: BaseException) -> "StoreDamaged":
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return StoreDamaged(f"cannot read the store in {self.data_dir}: {first} "
                            f"(run `stagetrace collector check --data-dir {self.data_dir}`)")

    def _rows_by_trace(self, table: str, tids: Sequence[bytes], columns: list[str] | None = None) -> pa.Table:
        def run() -> pa.Table:
            want = sorted(set(tids))
            # a few ids: find their WAL records in the tail's trace-id index and decode
            # only those (_TailIds); many: decoding the whole tail once is cheaper
            by_bytes = len(want) <= _TAIL_SEARCH_MAX_IDS and table in (SPANS, LOGS)
            view = self._view(table, decode_tail=not by_bytes)
            prefixes = np.array([store.prefix_of(t) for t in want], dtype=np.uint64)
            parts = []
            for b in view.blocks:
                mask = b.holds(prefixes)
                if not mask.any():
                    continue
                rgs: set[int] = set()
                for t, hit in zip(want, mask):
                    if hit:
                        rgs.update(b.row_groups_for(t))
                if not rgs:
                    continue
                t = b.pf.read_row_groups(sorted(rgs), columns=columns)
                parts.extend(_sorted_runs(t, want))
            tail = view.tail
            if by_bytes:
                payloads = self._tail_records(table, view.segments, want)
                tail = store.build_table_safe(table, payloads)[0] if payloads else tail
            tail = tail if columns is None else tail.select(columns)
            if tail.num_rows:
                import pyarrow.compute as pc

                parts.append(tail.filter(pc.is_in(tail.column("trace_id"), value_set=_binary_array(want))))
            schema = SCHEMAS[table] if columns is None else pa.schema([SCHEMAS[table].field(c) for c in columns])
            parts = [p.replace_schema_metadata(None) for p in parts]
            if len({p.schema for p in parts}) > 1:  # blocks read dictionary columns as dictionaries, the WAL tail not
                parts = [p.cast(schema) for p in parts]  # (casting imports pyarrow.compute: only when needed)
            return pa.concat_tables(parts) if parts else pa.Table.from_batches([], schema)
        return self._retry(run)

    def _tail_records(self, table: str, segments: list[tuple[int, Path]], want: Sequence[bytes]) -> list[bytes]:
        """Payloads of the WAL records of ``segments`` that may hold an id of ``want``:
        from the receivers' index where this process has one (:mod:`.tailindex`), else
        (and for segments it does not cover) from a scan of the log's bytes (:class:`_TailIds`)."""
        indexed: list[bytes] = []
        if self._tail_index is not None:
            indexed, segments = self._tail_index.records(table, segments, want)
        return (self._tail_ids[table].records(segments, want) if segments else []) + indexed

    def _sql(self, table: str, select: str, where: list[str], params: list[Any], tail_order: str = "",
             batch_rows: int = 8192, *, entries: bool = False, errors: bool = False) -> Iterator[pa.RecordBatch]:
        """Run ``SELECT {select} FROM <blocks + WAL tail of table> WHERE ...`` (with
        ``tail_order`` = ORDER/LIMIT clause) and yield Arrow record batches.

        ``entries``: only entry spans can match (roots, SERVER/CONSUMER spans:
        ``store.ENTRY_SQL`` is added to ``where``), so each block's entry-span sidecar
        is read in its place where there is one. ``errors``: likewise, only spans with
        ERROR status or logs of severity ERROR and above can match (``store.ERROR_SQL``),
        read from the blocks' error sidecars."""
        yield from self._sql_many(table, [(select, tail_order)], where, params, batch_rows, entries=entries,
                                  errors=errors)[0]

    def _sql_many(self, table: str, statements: Sequence[tuple[str, str]], where: list[str], params: list[Any],
                  batch_rows: int = 8192, *, entries: bool = False,
                  errors: bool = False) -> list[list[pa.RecordBatch]]:
        """:meth:`_sql` for several (select, order/limit/group clause) pairs over one
        snapshot of the table: every statement sees the same rows."""
        entries = entries and table == SPANS
        errors = errors and table in store.ERROR_SQL
        if entries:
            where = [*where, store.ENTRY_SQL]
        if errors:
            where = [*where, store.ERROR_SQL[table]]

        def run() -> list[list[pa.RecordBatch]]:
            view = self._view(table)
            return self._sql_over(table, view, view.blocks, True, statements, where, params, batch_rows,
                                  entries=entries, errors=errors)
        return self._retry(run)

    def _sql_over(self, table: str, view: _View, blocks: Sequence[_Block], with_tail: bool,
                  statements: Sequence[tuple[str, str]], where: list[str], params: list[Any],
                  batch_rows: int = 8192, *, entries: bool = False, errors: bool = False) -> list[list[pa.RecordBatch]]:
        """:meth:`_sql_many`'s statements over ``blocks`` of ``view`` (and its WAL tail if
        ``with_tail``), inside a caller's :meth:`_retry`; ``where`` already holds the
        sidecars' conditions."""
        sources = []
        if blocks:
            files = ", ".join("'" + str(b.source(entries, errors)[0]).replace("'", "''") + "'" for b in blocks)
            sources.append(f"SELECT * FROM read_parquet([{files}])")
        tail_name = f"tail_{table}"
        with_tail = with_tail and view.tail.num_rows > 0
        if with_tail:
            self.con.register(tail_name, view.tail)
            sources.append(f"SELECT * FROM {tail_name}")
        if not sources:
            return [[] for _ in statements]
        cond = " AND ".join(where) if where else "TRUE"
        out = []
        try:
            for select, tail_order in statements:
                sql = f"SELECT {select} FROM ({' UNION ALL '.join(sources)}) WHERE {cond} {tail_order}"
                reader = self.con.sql(sql, params=params).to_arrow_reader(batch_rows)
                out.append(list(reader))  # materialise inside the retry (files may vanish later)
            return out
        finally:
            if with_tail:
                self.con.unregister(tail_name)

    def _resource(self, blob: bytes, table: str) -> tuple[dict, str]:
        hit = self._resource_cache.get(blob)
        if hit is None:
            cls = {SPANS: trace_pb2.ResourceSpans, LOGS: logs_pb2.ResourceLogs, METRICS: metrics_pb2.ResourceMetrics}[table]
            msg = cls.FromString(blob)
            hit = self._resource_cache[blob] = (otlp.attributes(msg.resource.attributes), msg.schema_url)
        return hit

    def _scope(self, blob: bytes, table: str) -> tuple[str, str]:
        hit = self._scope_cache.get(blob)
        if hit is None:
            cls = {SPANS: trace_pb2.ScopeSpans, LOGS: logs_pb2.ScopeLogs, METRICS: metrics_pb2.ScopeMetrics}[table]
            msg = cls.FromString(blob)
            hit = self._scope_cache[blob] = (msg.scope.name, msg.scope.version)
        return hit

    # --- rows -> model --------------------------------------------------------------

    def _rest(self, blob: bytes) -> tuple[str, dict, list, list]:
        """(status message, attributes, events, links) of a span's stored protobuf,
        decoded once per distinct blob (spans of one endpoint mostly share it)."""
        hit = self._rest_cache.get(blob)
        if hit is None:
            rest = trace_pb2.Span.FromString(blob)
            hit = (rest.status.message, otlp.attributes(rest.attributes),
                   [(e.name, e.time_unix_nano, otlp.attributes(e.attributes)) for e in rest.events],
                   [(l.trace_id.hex(), l.span_id.hex(), otlp.attributes(l.attributes)) for l in rest.links])
            if len(self._rest_cache) >= _REST_CACHE_MAX:
                self._rest_cache.clear()
            self._rest_cache[blob] = hit
        return hit

    def _spans(self, rows: pa.Table | pa.RecordBatch) -> Iterator[Span]:
        d = rows.to_pydict()
        n_kinds = len(SPAN_KINDS)
        for tid, sid, pid, name, kind, start, dur, code, rest_blob, res_blob, scope_blob in zip(
                d["trace_id"], d["span_id"], d["parent_span_id"], d["name"], d["kind"], d["start_ns"],
                d["duration_ns"], d["status_code"], d["rest"], d["resource"], d["scope"]):
            message, attrs, events, links = self._rest(rest_blob)
            resource, _ = self._resource(res_blob, SPANS)
            scope_name, scope_version = self._scope(scope_blob, SPANS)
            yield Span(
                trace_id=tid.hex(), span_id=sid.hex(), parent_span_id=pid.hex(), name=name,
                kind=SPAN_KINDS[kind] if 0 <= kind < n_kinds else "UNSPECIFIED",
                start_ns=start, end_ns=start + dur,
                status_code=STATUS_CODES[code] if 0 <= code < 3 else "UNSET",
                status_message=message, attributes=dict(attrs),
                events=[SpanEvent(n, t, dict(a)) for n, t, a in events] if events else [],
                links=[SpanLink(t, s, dict(a)) for t, s, a in links] if links else [],
                resource=dict(resource), scope_name=scope_name, scope_version=scope_version)

    def _logs(self, rows: pa.Table | pa.RecordBatch) -> Iterator[LogRecord]:
        d = rows.to_pydict()
        for i in range(rows.num_rows):
            rest = logs_pb2.LogRecord.FromString(d["rest"][i])
            resource, _ = self._resource(d["resource"][i], LOGS)
            scope_name, _ = self._scope(d["scope"][i], LOGS)
            yield LogRecord(
                time_ns=d["time_ns"][i], observed_time_ns=d["observed_ns"][i],
                severity_number=d["severity_number"][i], severity_text=d["severity_text"][i],
                body=otlp.any_value(rest.body) if rest.HasField("body") else None,
                attributes=otlp.attributes(rest.attributes),
                # an all-zero id (accepted by the receiver: 16 bytes) means "no trace"
                trace_id=trace_id_or_empty(d["trace_id"][i].hex()), span_id=d["span_id"][i].hex(),
                resource=dict(resource), scope_name=scope_name)

    # --- Backend API ----------------------------------------------------------------

    def get_trace(self, trace_id: str, *, start_ns: int | None = None, end_ns: int | None = None) -> Trace | None:
        tid = normalize_trace_id(trace_id)
        return self.get_traces([tid], start_ns=start_ns, end_ns=end_ns).get(tid)

    def get_traces(self, trace_ids: Sequence[str], *, start_ns: int | None = None, end_ns: int | None = None,
                   with_logs: bool = True) -> dict[str, Trace]:
        """Spans (oldest first) and logs of each known id. The window is only a hint
        for remote backends; the embedded store finds a trace without it."""
        ids = [normalize_trace_id(t) for t in trace_ids]
        if not ids:
            return {}
        raw = [bytes.fromhex(t) for t in ids]
        by_trace: dict[str, list[Span]] = {}
        for sp in self._spans(self._rows_by_trace(SPANS, raw)):
            by_trace.setdefault(sp.trace_id, []).append(sp)
        logs_by: dict[str, list[LogRecord]] = {}
        if with_logs and by_trace:
            for lr in self._logs(self._rows_by_trace(LOGS, [bytes.fromhex(t) for t in by_trace])):
                logs_by.setdefault(lr.trace_id, []).append(lr)
        out = {}
        for tid in ids:
            spans = by_trace.get(tid)
            if not spans:
                continue
            spans.sort(key=lambda s: (s.start_ns, s.end_ns))
            logs = sorted(logs_by.get(tid, []), key=lambda r: r.time_ns)
            out[tid] = Trace(trace_id=tid, spans=spans, logs=logs)
        return out

    def _span_where(self, q: TraceQuery) -> tuple[list[str], list[Any], dict[str, Any]]:
        where, params = [], []
        attrs = dict(q.attributes)
        service = q.service
        if service is None and semconv.SERVICE_NAME in attrs and isinstance(attrs[semconv.SERVICE_NAME], str):
            service = attrs.pop(semconv.SERVICE_NAME)
        if service is not None:
            where.append("service = ?")
            params.append(service)
        if q.span_name is not None:
            where.append("name = ?")
            params.append(q.span_name)
        if q.status is not None:
            code = _STATUS_OF.get(q.status.lower())
            if code is None:
                raise BackendError(f"unknown status {q.status!r}: use error, ok or unset")
            where.append("status_code = ?")
            params.append(code)
        if q.min_duration_ns is not None:
            where.append("duration_ns >= ?")
            params.append(int(q.min_duration_ns))
        if q.max_duration_ns is not None:
            where.append("duration_ns <= ?")
            params.append(int(q.max_duration_ns))
        if q.start_ns is not None:
            where.append("start_ns >= ?")
            params.append(int(q.start_ns))
        if q.end_ns is not None:
            where.append("start_ns < ?")
            params.append(int(q.end_ns))
        if q.root_only:
            where.append("octet_length(parent_span_id) = 0")
        if q.kind is not None:
            k = q.kind.upper()
            if k not in SPAN_KINDS:
                raise BackendError(f"unknown span kind {q.kind!r}: use one of {', '.join(x.lower() for x in SPAN_KINDS)}")
            where.append("kind = ?")
            params.append(SPAN_KINDS.index(k))
        return where, params, attrs

    def find_spans(self, query: TraceQuery) -> list[Span]:
        """Spans matching every condition, oldest first, at most ``query.limit``.
        A span matches the window when it starts inside it."""
        where, params, attrs = self._span_where(query)
        if query.read_only:
            shared = self._shared_spans(where, params, attrs, query.limit, entries=query.root_only,
                                        errors=_errors_only(query))
            if shared is not None:
                return shared
        return self._matching(SPANS, self._spans, where, params, "ORDER BY start_ns, trace_id, span_id", attrs,
                              query.limit, entries=query.root_only, errors=_errors_only(query))

    _BLOBS = ("rest", "resource", "scope")

    def _hashed_rows(self, where: list[str], params: list[Any], order: str, entries: bool,
                     errors: bool = False) -> tuple[list[pa.RecordBatch], tuple[dict, dict, dict]] | None:
        """The matching rows with a 64-bit hash of their body, resource and scope instead
        of the blobs, and each distinct blob decoded once ((bodies, resources, scopes) by
        hash), over one snapshot. None if two different blobs share a hash."""
        hashes = ", ".join(f"hash({c}) AS h_{c}" for c in self._BLOBS)
        rows_sql = "trace_id, span_id, parent_span_id, name, kind, start_ns, duration_ns, status_code, " + hashes
        # the distinct bodies per hash, grouped in SQL (one more scan), over the same snapshot
        group = ", ".join(f"hash({c}) AS h_{c}, min({c}) AS {c}, min({c}) <> max({c}) AS clash_{c}"
                          for c in self._BLOBS)
        rows, distinct = self._sql_many(SPANS, [(rows_sql, order), (group, "GROUP BY ALL")], where, params,
                                        batch_rows=1 << 16, entries=entries, errors=errors)
        decoded: dict[str, dict[int, Any]] = {c: {} for c in self._BLOBS}
        for batch in distinct:
            d = batch.to_pydict()
            for c in self._BLOBS:
                if any(d[f"clash_{c}"]):
                    return None
                seen = decoded[c]
                for h, blob in zip(d[f"h_{c}"], d[c]):
                    if seen.setdefault(h, blob) != blob:
                        return None
        bodies: dict[int, tuple[str, dict, list, list]] = {}
        for h, blob in decoded["rest"].items():
            message, a, events, links = self._rest(blob)
            bodies[h] = (message, a, [SpanEvent(n, t, x) for n, t, x in events] if events else [],
                         [SpanLink(t, s_, x) for t, s_, x in links] if links else [])
        resources = {h: self._resource(b, SPANS)[0] for h, b in decoded["resource"].items()}
        scopes = {h: self._scope(b, SPANS) for h, b in decoded["scope"].items()}
        return rows, (bodies, resources, scopes)

    def _shared_spans(self, where: list[str], params: list[Any], attrs: dict[str, Any],
                      limit: int | None, entries: bool = False, errors: bool = False) -> list[Span] | None:
        """:meth:`find_spans` for a read-only caller: the rows carry 64-bit hashes of
        their body, resource and scope, and each distinct one is fetched and decoded
        once, so Python never holds a copy of every row's protobuf (at 1.4M requests
        that copy alone is ~0.5 GB) and spans share their decoded dicts. None (use the
        plain path) if two different bodies share a hash."""
        order = "ORDER BY start_ns, trace_id, span_id"
        if not attrs and limit is not None:
            order += f" LIMIT {int(limit)}"
        got = self._hashed_rows(where, params, order, entries, errors)
        if got is None:
            return None
        rows, (bodies, resources, scopes) = got
        out: list[Span] = []
        # Millions of long-lived objects: the cyclic GC would rescan the growing list on
        # every collection (measured: 12 s instead of 1.6 s for 1.4M spans).
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for batch in rows:
                out.extend(self._shared_batch(batch, bodies, resources, scopes, attrs))
                if limit is not None and len(out) >= limit:
                    return out[:limit]
        finally:
            if gc_was:
                gc.enable()
        return out

    def find_span_columns(self, query: TraceQuery) -> SpanColumns:
        """:meth:`find_spans` as :class:`stagetrace.backend.SpanColumns` (same rows, same
        order): ids, times and status as columns, one prototype Span per distinct
        (body, resource, scope, name, kind). At 1.4M requests this builds a few thousand
        Span objects instead of 1.4M."""
        where, params, attrs = self._span_where(query)
        order = "ORDER BY start_ns, trace_id, span_id"
        if not attrs and query.limit is not None:
            order += f" LIMIT {int(query.limit)}"
        got = self._hashed_rows(where, params, order, query.root_only, errors=_errors_only(query))
        if got is None:  # a hash clash (never seen): the plain rows
            return span_columns(self.find_spans(dataclasses.replace(query, read_only=True)))
        rows, (bodies, resources, scopes) = got
        import pyarrow.compute as pc

        names = [c for c in ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "duration_ns",
                             "status_code", "h_rest", "h_resource", "h_scope")]
        # left in DuckDB's batches: each column is made contiguous only where it is read whole
        # (combining the whole table copied ~150 MB at 1.4M requests, 0.6-1 s of CPU measured)
        t = pa.Table.from_batches(rows) if rows else pa.table({n: [] for n in names})
        n = t.num_rows
        if n == 0:
            return span_columns([])
        name_enc = pc.dictionary_encode(t.column("name").combine_chunks())
        col = t.column
        cols = [_numpy(col("h_rest")), _numpy(col("h_resource")), _numpy(col("h_scope")), _numpy(name_enc.indices),
                _numpy(col("kind"))]
        inv, values = _factorize(cols)
        protos: list[Span] = []
        n_kinds = len(SPAN_KINDS)
        name_dict = name_enc.dictionary.to_pylist()
        for h_rest, h_res, h_scope, name_i, kind in values:
            message, a, events, links = bodies[h_rest]
            scope_name, scope_version = scopes[h_scope]
            protos.append(Span("", "", "", name_dict[name_i], SPAN_KINDS[kind] if 0 <= kind < n_kinds else "UNSPECIFIED",
                               0, 0, "UNSET", message, a, events, links, resources[h_res], scope_name, scope_version))
        if attrs:  # decided once per prototype
            ok = np.array([attributes_match(attrs, p.attributes, p.resource) for p in protos], bool)
            keep = np.flatnonzero(ok[inv])
            if query.limit is not None:
                keep = keep[: int(query.limit)]
            if len(keep) < n:
                t, inv, n = t.take(pa.array(keep)), inv[keep], len(keep)
        status = _numpy(t.column("status_code")).astype(np.int8)
        status[(status < 0) | (status > 2)] = 0
        return SpanColumns(_trace_ids(t.column("trace_id")), _HexIds(t.column("span_id")),
                           _HexIds(t.column("parent_span_id")), _numpy(t.column("start_ns")).astype(np.int64),
                           _numpy(t.column("duration_ns")).astype(np.int64), status, inv.astype(np.int32), protos)

    @staticmethod
    def _shared_batch(batch: pa.RecordBatch, bodies: dict[int, tuple[str, dict, list, list]],
                      resources: dict[int, dict], scopes: dict[int, tuple[str, str]],
                      attrs: dict[str, Any]) -> Iterator[Span]:
        """Spans of one batch of :meth:`_shared_spans` rows, column by column (no per-row
        tuple unpacking or dict lookups by blob)."""
        col = batch.column
        h_rest, h_res = _numpy(col("h_rest")), _numpy(col("h_resource"))
        if attrs:  # decided once per distinct (body, resource)
            pairs, inv = np.unique(np.stack([h_rest, h_res], axis=1), axis=0, return_inverse=True)
            ok = np.array([attributes_match(attrs, bodies[int(r)][1], resources[int(s)]) for r, s in pairs], bool)
            mask = ok[inv.reshape(-1)]
            if not mask.all():
                batch = batch.filter(pa.array(mask))
                col = batch.column
                h_rest, h_res = h_rest[mask], h_res[mask]
        n = batch.num_rows
        if n == 0:
            return iter(())
        body = [bodies[h] for h in h_rest.tolist()]
        scope = [scopes[h] for h in _numpy(col("h_scope")).tolist()]
        kinds = [SPAN_KINDS[k] if 0 <= k < len(SPAN_KINDS) else "UNSPECIFIED" for k in col("kind").to_pylist()]
        codes = [STATUS_CODES[c] if 0 <= c < 3 else "UNSET" for c in col("status_code").to_pylist()]
        start = _numpy(col("start_ns"))
        return map(Span, _hex_list(col("trace_id")), _hex_list(col("span_id")), _hex_list(col("parent_span_id")),
                   col("name").to_pylist(), kinds, start.tolist(), (start + _numpy(col("duration_ns"))).tolist(),
                   codes, [b[0] for b in body], [b[1] for b in body], [b[2] for b in body], [b[3] for b in body],
                   [resources[h] for h in h_res.tolist()], [s[0] for s in scope], [s[1] for s in scope])

    def _matching(self, table: str, decode: Callable[[pa.RecordBatch], Iterator[Any]], where: list[str],
                  params: list[Any], order: str, attrs: dict[str, Any], limit: int | None,
                  entries: bool = False, errors: bool = False) -> list[Any]:
        """Rows matching ``where`` (in SQL) and ``attrs`` (on the decoded records), at most ``limit``.
        The limit goes into the SQL only when no attribute filter follows it."""
        if not attrs and limit is not None:
            order += f" LIMIT {int(limit)}"
        out: list[Any] = []
        for batch in self._sql(table, "*", where, params, order, entries=entries, errors=errors):
            for rec in decode(batch):
                if attrs and not attributes_match(attrs, rec.attributes, rec.resource):
                    continue
                out.append(rec)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def rootless_trace_ids(self, query: TraceQuery) -> list[str]:
        """See :func:`stagetrace.backend.rootless_trace_ids`: a DuckDB aggregate over the
        trace and parent ids of the window's spans, not a span decoded.

        Over a bare window, the blocks whose spans all lie in it are not scanned whole:
        their traces are their ``.tids.npy`` prefixes, the traces with a root in the window
        come from the entry-span sidecars, and only the blocks holding a trace with no root
        among those go through the aggregate (with the blocks the window cuts and the WAL
        tail). At 10M spans the full scan and GROUP BY of 16-byte ids took ~2 s of CPU,
        this ~0.4 s. Prefixes stand for traces only where they are evidently random: at
        least :data:`_PREFIX_ROOTS` roots in the window, no two with one prefix (64-bit
        ids padded with zeros, or a time in the first bytes, share them); else the full
        aggregate, as before."""
        where, params, _ = self._span_where(dataclasses.replace(query, attributes={}))
        rootless = "GROUP BY trace_id HAVING bool_and(octet_length(parent_span_id) > 0) ORDER BY trace_id"
        bare = dataclasses.replace(query, start_ns=None, end_ns=None, limit=None, read_only=False) == TraceQuery(limit=None)

        def ids(blocks: Sequence[_Block], view: _View) -> list[bytes]:
            return [t for batch in self._sql_over(SPANS, view, blocks, True, [("trace_id", rootless)], where, params)[0]
                    for t in batch.column(0).to_pylist()]

        def run() -> list[bytes]:
            view = self._view(SPANS)
            lo = query.start_ns if query.start_ns is not None else np.iinfo(np.int64).min
            hi = query.end_ns if query.end_ns is not None else np.iinfo(np.int64).max
            inside, cut = [], []
            for b in view.blocks:
                first, last, rows = b.start_ranges()
                if not rows.sum() or last.max() < lo or first.min() >= hi:
                    continue  # no span in the window
                (inside if bare and b.tids is not None and first.min() >= lo and last.max() < hi else cut).append(b)
            if not inside:
                return ids(cut, view)
            roots = np.concatenate([_NO_IDS, *(store.id_prefixes(batch.column(0)) for batch in self._sql_over(
                SPANS, view, view.blocks, True, [("trace_id", "")],
                [*where, store.ENTRY_SQL, "octet_length(parent_span_id) = 0"], params, _BIG_BATCH, entries=True)[0])])
            rooted = store.sorted_unique(roots)
            if len(rooted) < _PREFIX_ROOTS or len(rooted) < len(roots):
                return ids(inside + cut, view)  # too few roots to tell, or prefixes shared
            seen = [np.asarray(b.tids) for b in inside]
            seen += [store.trace_prefixes(batch.column(0)) for batch in self._sql_over(
                SPANS, view, cut, True, [("DISTINCT trace_id", "")], where, params, _BIG_BATCH)[0]]
            unrooted = _missing(store.sorted_unique(np.concatenate(seen)), rooted)
            if not len(unrooted):
                return []
            # a trace rooted in a block left out reads as rootless here: keep the unrooted only
            found = ids([b for b in inside if b.holds(unrooted).any()] + cut, view)
            keep = ~_missing_mask(np.array([store.prefix_of(t) for t in found], dtype=np.uint64), unrooted)
            return [t for t, k in zip(found, keep.tolist()) if k]

        out = [t.hex() for t in self._retry(run)]
        return out[:query.limit] if query.limit is not None else out

    def search_traces(self, query: TraceQuery) -> list[TraceSummary]:
        """Traces with at least one span matching every condition (Tempo spanset
        semantics), newest first by the matching span's start, at most ``query.limit``."""
        where, params, attrs = self._span_where(query)
        limit = query.limit
        tids: list[bytes] = []
        if not attrs:
            lim = f" LIMIT {int(limit)}" if limit is not None else ""
            for batch in self._sql(SPANS, "trace_id, max(start_ns) AS t", where, params,
                                   f"GROUP BY trace_id ORDER BY t DESC, trace_id{lim}", entries=query.root_only):
                tids.extend(batch.column(0).to_pylist())
        else:
            seen: set[bytes] = set()
            for batch in self._sql(SPANS, "*", where, params, "ORDER BY start_ns DESC", entries=query.root_only):
                for sp in self._spans(batch):
                    tid = bytes.fromhex(sp.trace_id)
                    if tid in seen or not attributes_match(attrs, sp.attributes, sp.resource):
                        continue
                    seen.add(tid)
                    tids.append(tid)
                    if limit is not None and len(tids) >= limit:
                        break
                if limit is not None and len(tids) >= limit:
                    break
        if not tids:
            return []
        order = {t: i for i, t in enumerate(tids)}
        summaries = self._summaries(tids)
        summaries.sort(key=lambda s: order[bytes.fromhex(s.trace_id)])
        return summaries

    def _summaries(self, tids: list[bytes]) -> list[TraceSummary]:
        rows = self._rows_by_trace(SPANS, tids, columns=_INDEX_COLUMNS + ["rest", "resource", "scope"])
        d = rows.select(_INDEX_COLUMNS).to_pydict()
        groups: dict[bytes, list[int]] = {}
        for i, t in enumerate(d["trace_id"]):
            groups.setdefault(t, []).append(i)
        out = []
        for tid, idx in groups.items():
            starts = [d["start_ns"][i] for i in idx]
            ends = [d["start_ns"][i] + d["duration_ns"][i] for i in idx]
            roots = [i for i in idx if not d["parent_span_id"][i]]
            root = min(roots or idx, key=lambda i: (d["start_ns"][i], -d["duration_ns"][i]))
            root_span = next(self._spans(rows.slice(root, 1)))
            t0 = min(starts)
            out.append(TraceSummary(
                trace_id=tid.hex(), root_service=root_span.service_name if roots else root_span.service_name,
                root_name=root_span.name, start_ns=t0, duration_ns=max(0, max(ends) - t0), span_count=len(idx),
                error=any(d["status_code"][i] == 2 for i in idx), root_attributes=root_span.attributes))
        return out

    def find_logs(self, query: LogQuery) -> list[LogRecord]:
        """Log records oldest first (by event time, else observed time), at most ``query.limit``."""
        attrs = dict(query.attributes)
        service = query.service
        if service is None and semconv.SERVICE_NAME in attrs and isinstance(attrs[semconv.SERVICE_NAME], str):
            service = attrs.pop(semconv.SERVICE_NAME)
        limit = query.limit
        if query.trace_ids is not None:
            ids = [bytes.fromhex(normalize_trace_id(t)) for t in query.trace_ids]
            if not ids:
                return []
            recs = list(self._logs(self._rows_by_trace(LOGS, ids)))
            recs = [r for r in recs if _log_match(r, query, service, attrs)]
            recs.sort(key=_log_order)
            return recs[:limit] if limit is not None else recs
        where, params = [], []
        if query.start_ns is not None:
            where.append("time_ns >= ?")
            params.append(int(query.start_ns))
        if query.end_ns is not None:
            where.append("time_ns < ?")
            params.append(int(query.end_ns))
        if query.min_severity is not None:
            where.append("severity_number >= ?")
            params.append(int(query.min_severity))
        if service is not None:
            where.append("service = ?")
            params.append(service)
        # ERROR and above only: every block's error sidecar holds them all
        errors = query.min_severity is not None and query.min_severity >= store.ERROR_SEVERITY
        return self._matching(LOGS, self._logs, where, params, _LOG_ORDER_SQL, attrs, limit, errors=errors)

    def metric_series(self, query: MetricQuery) -> list[MetricSeries]:
        """One series per (metric, point attributes, resource), points oldest first:
        two instances of a service are two series, as Prometheus keeps them apart
        by their instance labels. ``attributes`` must all be present on the point
        (or its resource)."""
        where, params = _metric_where(query.name, query.service, query.start_ns, query.end_ns)
        series: dict[tuple[str, str, str, bytes], MetricSeries] = {}
        keep: dict[tuple[str, str, str, bytes], bool] = {}
        for batch in self._sql(METRICS, "*", where, params, "ORDER BY name, service, series, resource, time_ns"):
            d = batch.to_pydict()
            for i in range(batch.num_rows):
                key = (d["name"][i], d["series"][i], d["service"][i], d["resource"][i])
                if key not in keep:
                    resource, _ = self._resource(d["resource"][i], METRICS)
                    point_attrs = json.loads(d["series"][i])
                    keep[key] = attributes_match(query.attributes, point_attrs, resource) if query.attributes else True
                    if keep[key]:
                        series[key] = MetricSeries(name=key[0], kind=d["kind"][i], attributes=point_attrs,
                                                   resource=dict(resource), unit=d["unit"][i])
                if not keep[key]:
                    continue
                s = series[key]
                s.points.append(_metric_point(d, i, s))
        out = list(series.values())
        for s in out:
            s.points.sort(key=lambda p: p.time_ns)
        return out

    def metric_names(self, *, start_ns: int | None = None, end_ns: int | None = None,
                     service: str | None = None) -> list[str]:
        where, params = _metric_where(None, service, start_ns, end_ns)
        names: set[str] = set()
        for batch in self._sql(METRICS, "DISTINCT name", where, params):
            names.update(batch.column(0).to_pylist())
        return sorted(names)

    def stats(self) -> dict[str, int]:
        """Row counts per table (blocks + WAL tail), and ``quarantined_blocks`` /
        ``quarantined_rows``: data set aside as corrupt, missing from every answer."""
        out = {}
        for table in store.TABLES:
            n = 0
            for batch in self._sql(table, "count(*)", [], []):
                n += batch.column(0)[0].as_py()
            out[table] = n
        out.update(quarantine.quarantine_stats(self.data_dir))
        return out

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
            self._blocks.clear()
            self._tails = {t: _Tail(t) for t in store.TABLES}
        self._tail_ids = {t: _TailIds(t) for t in (SPANS, LOGS)}

    def __enter__(self) -> "EmbeddedBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreDamaged(UserError):
    """Stored data cannot be decoded (a block without a checksum, damaged on disk):
    one line, exit 2, and the command that finds and quarantines it."""

    exit_code = 2


def _data_error(exc: BaseException) -> bool:
    """A read that failed on the data itself (DuckDB decoding a damaged page)."""
    duckdb = sys.modules.get("duckdb")  # a malformed query is our bug: let that one show
    return duckdb is not None and isinstance(exc, duckdb.Error) and not isinstance(
        exc, (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException, duckdb.SyntaxException))


def _vanished_file_error(exc: BaseException) -> bool:
    """An error a file deleted under a read produces (or a real I/O error, which
    repeats and is reported after the retries)."""
    if isinstance(exc, (OSError, pa.ArrowException)):
        return True
    duckdb = sys.modules.get("duckdb")  # not imported at all on the trace-by-id path
    return duckdb is not None and isinstance(exc, duckdb.IOException)


def _binary_array(values: Sequence[bytes]) -> pa.Array:
    """``pa.array(values, pa.binary())`` built from buffers: converting Python objects
    makes pyarrow probe for pandas, a 0.3-0.5 s import ``stagetrace trace`` avoids."""
    offsets = array.array("i", [0])
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(b"".join(values))])


def _numpy(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-width column as NumPy, from its data buffer: pyarrow's ``to_numpy``
    imports pandas (0.4-0.6 s), which nothing else on the investigate path needs."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    if a.null_count or not pa.types.is_primitive(a.type) or pa.types.is_boolean(a.type):
        return a.to_numpy(zero_copy_only=False)
    dtype = np.dtype(a.type.to_pandas_dtype())
    return np.frombuffer(a.buffers()[1], dtype=dtype, count=len(a), offset=a.offset * dtype.itemsize)


def _hex_list(ids: pa.Array) -> list[str]:
    """Lower-case hex of each id (``b"".hex()`` is ""): one ``hex()`` over the column's
    data buffer, sliced at the offsets, instead of one call per row."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if ids.null_count:
        return [b.hex() if b is not None else "" for b in ids.to_pylist()]
    n = len(ids)
    width = 8 if pa.types.is_large_binary(ids.type) else 4
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64 if width == 8 else np.int32, count=n + 1,
                            offset=ids.offset * width)
    base = int(offsets[0])
    data = ids.buffers()[2]
    text = bytes(memoryview(data)[base:int(offsets[-1])]).hex() if data is not None else ""
    pos = ((offsets - base) * 2).tolist()
    return [text[a:b] for a, b in zip(pos, pos[1:])]


def _trace_ids(ids: pa.Array | pa.ChunkedArray) -> Sequence[str]:
    """Hex of each id, as :class:`stagetrace.traceids.HexIds` over the column's bytes when
    every id is 16 bytes (the hex of a million ids is made only for the few read), else
    as a list (:func:`_hex_list`)."""
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    if ids.null_count or not pa.types.is_binary(ids.type) or not len(ids):
        return _hex_list(ids)
    views = []
    for c in chunks:
        if not len(c):
            continue
        offsets = np.frombuffer(c.buffers()[1], dtype=np.int32, count=len(c) + 1, offset=c.offset * 4)
        if not bool((np.diff(offsets) == 16).all()):
            return _hex_list(ids)
        views.append(np.frombuffer(c.buffers()[2], dtype=np.uint8, count=16 * len(c), offset=int(offsets[0])))
    return HexIds((np.concatenate(views) if len(views) > 1 else views[0]).reshape(-1, 16))


def _factorize(cols: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
    """Group rows by the tuple of their values in ``cols`` (equal-length integer arrays):
    (group of each row, each group's values as Python ints), groups in ascending order of
    their value tuples. Each column and then the combined code are dictionary-encoded by
    hashing (Arrow), so only the few thousand distinct values are sorted, not the rows:
    at 1.4M requests six sorts of every row were ~0.7 s of CPU (``np.unique(axis=0)``
    was slower still: 1.2 s for 200k rows)."""
    import pyarrow.compute as pc

    def encode(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values ascending, each row's index into them)."""
        c = np.ascontiguousarray(c)  # wrapped, not converted: pa.array(ndarray) imports pandas too
        enc = pc.dictionary_encode(pa.Array.from_buffers(pa.from_numpy_dtype(c.dtype), len(c), [None, pa.py_buffer(c)]))
        u = _numpy(enc.dictionary)
        order = np.argsort(u, kind="stable")
        rank = np.empty(len(u), dtype=np.int64)
        rank[order] = np.arange(len(u))
        return u[order], rank[_numpy(enc.indices)]

    combined = np.zeros(len(cols[0]), dtype=np.int64)
    size = 1
    uniques = []
    for c in cols:
        u, code = encode(c)
        uniques.append(u)
        if size * len(u) >= 1 << 62:  # more distinct tuples than an int64 holds: regroup first
            _, combined = encode(combined)
            size = int(combined.max()) + 1
        combined = combined * len(u) + code
        size *= len(u)
    groups, inv = encode(combined)
    # each group's value in each column: its first row's (all rows of a group agree)
    first = np.zeros(len(groups), dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv) - 1, -1, -1)
    values = [tuple(int(v) for v in row) for row in zip(*(c[first] for c in cols))]
    return inv, values


# find_logs' order: by time, then a total order over the rest of the row. Ordering by time
# alone left ties (records of one nanosecond: frequent in bulk-loaded or replicated data)
# in whatever order DuckDB's parallel scan met them, and reports listed different example
# lines from run to run.
_LOG_ORDER_SQL = "ORDER BY time_ns, observed_ns, trace_id, span_id, severity_number, rest, resource, scope"


def _log_order(r: LogRecord) -> tuple:
    """:data:`_LOG_ORDER_SQL` on decoded records (lower-case hex sorts as the bytes do);
    records equal on all of it keep their order in the blocks, fixed for a store."""
    return (r.time_ns, r.observed_time_ns, r.trace_id, r.span_id, r.severity_number)


def _errors_only(q: TraceQuery) -> bool:
    """Only spans with ERROR status can match: the error-span sidecars hold them all."""
    return q.status is not None and q.status.lower() == "error"


class _HexIds(Sequence[str]):
    """Hex of each id of a binary column, made per item (a request's span id is read
    only for the few sampled ones)."""

    __slots__ = ("ids",)

    def __init__(self, ids: pa.Array | pa.ChunkedArray) -> None:
        self.ids = ids  # a chunked column stays in chunks: an item is found by bisection

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return _hex_list(self.ids[i])
        v = self.ids[int(i)].as_py()
        return v.hex() if v is not None else ""


_BISECT_ROWS = 16384  # up to this many rows read, find the wanted ids by bisection (no compute import)


def _sorted_runs(t: pa.Table, want: list[bytes]) -> list[pa.Table]:
    """The rows of ``t`` (sorted by trace id: a block's row groups) whose id is in
    ``want`` (sorted), as zero-copy slices for a small read (a trace lookup needs no
    compute kernel, no Python-object array); one filter for a bulk one."""
    if t.num_rows > _BISECT_ROWS or len(want) > 64:
        # a bulk read (a sample of hundreds of traces): one C++ filter, not a Python list of
        # every row's id; each trace's rows stay in block order, which is all callers need
        import pyarrow.compute as pc

        return [t.filter(pc.is_in(t.column("trace_id"), value_set=_binary_array(want)))]
    ids = t.column("trace_id").to_pylist()
    if any(a > b for a, b in zip(ids, ids[1:])):  # not sorted (never written so; be safe)
        import pyarrow.compute as pc

        return [t.filter(pc.is_in(t.column("trace_id"), value_set=_binary_array(want)))]
    out = []
    for tid in want:
        lo = bisect.bisect_left(ids, tid)
        hi = bisect.bisect_right(ids, tid, lo)
        if hi > lo:
            out.append(t.slice(lo, hi - lo))
    return out


def _metric_where(name: str | None, service: str | None, start_ns: int | None,
                  end_ns: int | None) -> tuple[list[str], list[Any]]:
    where, params = [], []
    if name is not None:
        where.append("name = ?")
        params.append(name)
    if service is not None:
        where.append("service = ?")
        params.append(service)
    if start_ns is not None:
        where.append("time_ns >= ?")
        params.append(int(start_ns))
    if end_ns is not None:
        where.append("time_ns < ?")
        params.append(int(end_ns))
    return where, params


def _log_match(r: LogRecord, q: LogQuery, service: str | None, attrs: dict[str, Any]) -> bool:
    return log_in_query(r, q, service) and (not attrs or attributes_match(attrs, r.attributes, r.resource))


_TEMPORALITY = {1: "DELTA", 2: "CUMULATIVE"}
_POINT_TYPES = {"gauge": metrics_pb2.NumberDataPoint, "sum": metrics_pb2.NumberDataPoint,
                "histogram": metrics_pb2.HistogramDataPoint,
                "exponential_histogram": metrics_pb2.ExponentialHistogramDataPoint,
                "summary": metrics_pb2.SummaryDataPoint}


def _metric_point(d: dict[str, list], i: int, s: MetricSeries) -> MetricPoint:
    kind = d["kind"][i]
    p = _POINT_TYPES[kind].FromString(d["point"][i])
    mp = MetricPoint(name=s.name, kind=kind, time_ns=d["time_ns"][i], value=d["value"][i],
                     attributes=s.attributes, resource=s.resource, start_time_ns=d["start_ns"][i], unit=s.unit,
                     is_monotonic=d["monotonic"][i],
                     temporality=_TEMPORALITY.get(d["temporality"][i], "") if kind != "gauge" else "")
    if kind == "histogram":
        mp.count, mp.sum = p.count, p.sum if p.HasField("sum") else None
        mp.bucket_counts, mp.explicit_bounds = list(p.bucket_counts), list(p.explicit_bounds)
    elif kind == "exponential_histogram":
        mp.count, mp.sum = p.count, p.sum if p.HasField("sum") else None
        mp.explicit_bounds, mp.bucket_counts = exponential_to_explicit(p)
    elif kind == "summary":
        mp.count, mp.sum = p.count, p.sum
    return mp


def _pow(x: float, y: float) -> float:
    """``x ** y``, infinite past the float range: a scale outside OTLP's [-10, 20] or a
    huge bucket offset (a sender's bug) made the whole metric query an OverflowError."""
    try:
        return x ** y
    except OverflowError:
        return math.inf


def exponential_to_explicit(p: Any) -> tuple[list[float], list[int]]:
    """Convert an exponential histogram point to explicit bounds, losslessly in counts:
    bucket ``i`` of scale ``s`` is ``(base**i, base**(i+1)]`` with ``base = 2**(2**-s)``;
    negative buckets mirror it and the zero bucket ends at ``zero_threshold``."""
    base = _pow(2.0, _pow(2.0, -p.scale))
    pairs: list[tuple[float, int]] = []  # (upper bound, count), ascending
    neg = p.negative
    for k in range(len(neg.bucket_counts) - 1, -1, -1):
        idx = neg.offset + k
        pairs.append((-_pow(base, idx), int(neg.bucket_counts[k])))
    pairs.append((float(p.zero_threshold), int(p.zero_count)))
    pos = p.positive
    for k in range(len(pos.bucket_counts)):
        idx = pos.offset + k
        pairs.append((_pow(base, idx + 1), int(pos.bucket_counts[k])))
    bounds = [ub for ub, _ in pairs]
    counts = [c for _, c in pairs] + [0]  # (last bound, +inf) is empty by construction
    return bounds, counts
