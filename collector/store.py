"""The store layer: write-ahead-log segments -> immutable, sorted Parquet blocks.

Layout under the data dir (justified and measured in docs/architecture.md)::

    wal/<signal>/<seq>.wal                 acknowledged requests, not yet in a block
    blocks/<signal>/<lo>-<hi>.parquet      rows of WAL segments lo..hi, sorted
    blocks/<signal>/<lo>-<hi>.tids.npy     sorted unique 8-byte trace-id prefixes (uint64)

Rows keep the few columns queries filter on (ids, name, kind, times, status,
service) as Parquet columns, and everything else about the record as its own
OTLP protobuf (``rest``), so nothing is dropped and a read rebuilds the exact
record. Resource and scope are stored per row as protobuf too; Parquet's
dictionary encoding turns the repeats into a few bytes.

Spans and logs are sorted by trace id in small row groups, so trace-by-id reads
one row group of one block (the ``.tids.npy`` sidecar says which blocks hold the
id without opening them). Blocks are immutable: a reader never sees a half
written one (write to a temp name, fsync, rename), compaction writes the merged
block before deleting its inputs, and the directory listing is the catalogue.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from . import integrity, otlp, quarantine, wal

log = logging.getLogger("stagetrace.collector.store")

SPANS, LOGS, METRICS = "spans", "logs", "metrics"
# store table per OTLP signal
TABLE_OF_SIGNAL = {otlp.TRACES: SPANS, otlp.LOGS: LOGS, otlp.METRICS: METRICS}
TABLES = (SPANS, LOGS, METRICS)

SPAN_SCHEMA = pa.schema([
    ("trace_id", pa.binary()), ("span_id", pa.binary()), ("parent_span_id", pa.binary()),
    ("name", pa.string()), ("kind", pa.int32()), ("start_ns", pa.int64()), ("duration_ns", pa.int64()),
    ("status_code", pa.int32()), ("service", pa.string()),
    ("rest", pa.binary()), ("resource", pa.binary()), ("scope", pa.binary()),
])
LOG_SCHEMA = pa.schema([
    ("trace_id", pa.binary()), ("span_id", pa.binary()), ("time_ns", pa.int64()), ("observed_ns", pa.int64()),
    ("severity_number", pa.int32()), ("severity_text", pa.string()), ("service", pa.string()),
    ("rest", pa.binary()), ("resource", pa.binary()), ("scope", pa.binary()),
])
METRIC_SCHEMA = pa.schema([
    ("name", pa.string()), ("kind", pa.string()), ("unit", pa.string()), ("service", pa.string()),
    ("series", pa.string()), ("time_ns", pa.int64()), ("start_ns", pa.int64()), ("value", pa.float64()),
    ("temporality", pa.int32()), ("monotonic", pa.bool_()),
    ("point", pa.binary()), ("metric", pa.binary()), ("resource", pa.binary()), ("scope", pa.binary()),
])
SCHEMAS = {SPANS: SPAN_SCHEMA, LOGS: LOG_SCHEMA, METRICS: METRIC_SCHEMA}
SORT_KEYS = {
    SPANS: [("trace_id", "ascending"), ("start_ns", "ascending")],
    LOGS: [("trace_id", "ascending"), ("time_ns", "ascending")],
    METRICS: [("name", "ascending"), ("series", "ascending"), ("time_ns", "ascending")],
}
TIME_COLUMN = {SPANS: "start_ns", LOGS: "time_ns", METRICS: "time_ns"}
ROW_GROUP_ROWS = {SPANS: 1024, LOGS: 2048, METRICS: 16384}  # small: trace-by-id reads one
# A span block's entry spans (trace roots, SERVER and CONSUMER spans: the requests an
# investigation or the UI search starts from) are also written to a sidecar sorted by
# start time, so those scans read ~1/7 of the rows and skip row groups outside the window.
ENTRY_KINDS = (2, 5)  # OTLP SpanKind SERVER, CONSUMER
ENTRY_SQL = f"(octet_length(parent_span_id) = 0 OR kind IN {ENTRY_KINDS})"
ENTRY_ROW_GROUP_ROWS = 16384
# ...and its spans with ERROR status (a log block: its records of severity ERROR or
# above) to an error sidecar of the same layout: `investigate errors` reads those from
# every block of the window, and in the block they are spread over nearly every row
# group (a failing request has several), so a scan decoded the whole block's bodies.
ERROR_STATUS = 2  # OTLP STATUS_CODE_ERROR
ERROR_SEVERITY = 17  # OTLP SEVERITY_NUMBER_ERROR
ERROR_SQL = {"spans": f"status_code = {ERROR_STATUS}", "logs": f"severity_number >= {ERROR_SEVERITY}"}
# Columns written (and read back) dictionary-encoded: readers keep them as dictionaries
# so a row group's resources are not copied out once per row.
DICT_COLUMNS = ("name", "service", "resource", "scope", "severity_text", "unit", "metric", "series", "kind")
_BLOCK_RE = re.compile(r"^(\d{16})-(\d{16})\.parquet$")
_SERVICE = "service.name"


# --- OTLP requests -> Arrow tables -------------------------------------------

def _service(resource: Any) -> str:
    for kv in resource.attributes:
        if kv.key == _SERVICE:
            return kv.value.string_value or str(otlp.any_value(kv.value))
    return "unknown_service"


# (request field, resource wrapper, scope field, scope wrapper) per signal
_LAYOUT = {
    otlp.TRACES: ("resource_spans", trace_pb2.ResourceSpans, "scope_spans", trace_pb2.ScopeSpans),
    otlp.LOGS: ("resource_logs", logs_pb2.ResourceLogs, "scope_logs", logs_pb2.ScopeLogs),
    otlp.METRICS: ("resource_metrics", metrics_pb2.ResourceMetrics, "scope_metrics", metrics_pb2.ScopeMetrics),
}


def _scopes(signal: str, payloads: Iterable[bytes]) -> Iterator[tuple[bytes, str, bytes, Any]]:
    """(resource blob, service, scope blob, Scope* message) for every scope of every request.

    Resource and scope are stored per row as their own protobuf (the wrapper message
    without its records); Parquet's dictionary encoding turns the repeats into bytes."""
    parse = otlp.REQUEST_TYPES[signal].FromString
    res_field, res_cls, scope_field, scope_cls = _LAYOUT[signal]
    for payload in payloads:
        for r in getattr(parse(payload), res_field):
            res_blob = res_cls(resource=r.resource, schema_url=r.schema_url).SerializeToString()
            service = _service(r.resource)
            for sc in getattr(r, scope_field):
                yield res_blob, service, scope_cls(scope=sc.scope, schema_url=sc.schema_url).SerializeToString(), sc


def _span_columns(payloads: Iterable[bytes]) -> dict[str, Any]:
    # Column by column over each ScopeSpans' spans (list comprehensions, no per-span
    # appends or dicts): the per-span Python work is what bounds block building.
    tids: list[bytes] = []
    sids: list[bytes] = []
    pids: list[bytes] = []
    names: list[str] = []
    kinds: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    codes: list[int] = []
    rests: list[bytes] = []
    services: list[str] = []
    resources: list[bytes] = []
    scopes: list[bytes] = []
    for res_blob, service, scope_blob, ss in _scopes(otlp.TRACES, payloads):
        spans = list(ss.spans)
        n = len(spans)
        tids += [sp.trace_id for sp in spans]
        sids += [sp.span_id for sp in spans]
        pids += [sp.parent_span_id for sp in spans]
        names += [sp.name for sp in spans]
        kinds += [sp.kind for sp in spans]
        starts += [sp.start_time_unix_nano for sp in spans]
        ends += [sp.end_time_unix_nano for sp in spans]
        codes += [sp.status.code for sp in spans]
        # The span minus its ids and times, which live only in their columns:
        # random ids compress worst, and without ids and times the rest of a
        # span (name, kind, attributes, status) repeats across requests, so
        # it dictionary-encodes on disk and readers decode each distinct one once.
        for sp in spans:
            sp.trace_id = b""
            sp.span_id = b""
            sp.parent_span_id = b""
            sp.start_time_unix_nano = 0
            sp.end_time_unix_nano = 0
        rests += [sp.SerializeToString() for sp in spans]
        services += [service] * n
        resources += [res_blob] * n
        scopes += [scope_blob] * n
    start_a = np.array(starts, dtype=np.uint64).astype(np.int64)  # validated int64-representable
    dur_a = np.array(ends, dtype=np.uint64).astype(np.int64) - start_a  # may be negative (skewed clock): kept
    return {"trace_id": tids, "span_id": sids, "parent_span_id": pids, "name": names,
            "kind": np.array(kinds, dtype=np.int32), "start_ns": start_a, "duration_ns": dur_a,
            "status_code": np.array(codes, dtype=np.int32), "service": services, "rest": rests,
            "resource": resources, "scope": scopes}


def _log_columns(payloads: Iterable[bytes]) -> dict[str, list]:
    cols: dict[str, list] = {f.name: [] for f in LOG_SCHEMA}
    for res_blob, service, scope_blob, sl in _scopes(otlp.LOGS, payloads):
        for lr in sl.log_records:
            cols["trace_id"].append(lr.trace_id)
            cols["span_id"].append(lr.span_id)
            # the model's time: event time, else observed time (and vice versa)
            cols["time_ns"].append(lr.time_unix_nano or lr.observed_time_unix_nano)
            cols["observed_ns"].append(lr.observed_time_unix_nano or lr.time_unix_nano)
            cols["severity_number"].append(lr.severity_number)
            cols["severity_text"].append(lr.severity_text)
            cols["service"].append(service)
            lr.trace_id = b""
            lr.span_id = b""
            cols["rest"].append(lr.SerializeToString())
            cols["resource"].append(res_blob)
            cols["scope"].append(scope_blob)
    return cols


def series_key(attrs: dict[str, Any]) -> str:
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"), default=str)


def point_value(kind: str, p: Any) -> float:
    if kind in ("gauge", "sum"):
        return float(p.as_int) if p.WhichOneof("value") == "as_int" else float(p.as_double)
    if p.count:
        return float(p.sum) / p.count
    return 0.0


def _metric_columns(payloads: Iterable[bytes]) -> dict[str, list]:
    cols: dict[str, list] = {f.name: [] for f in METRIC_SCHEMA}
    for res_blob, service, scope_blob, sm in _scopes(otlp.METRICS, payloads):
        for m in sm.metrics:
            kind, points = otlp.metric_points(m)
            if kind is None:
                continue
            data = getattr(m, kind)
            temporality = getattr(data, "aggregation_temporality", 0)
            monotonic = bool(getattr(data, "is_monotonic", False))
            meta = metrics_pb2.Metric(name=m.name, description=m.description, unit=m.unit)
            meta.metadata.extend(m.metadata)
            meta_blob = meta.SerializeToString()
            for p in points:
                cols["name"].append(m.name)
                cols["kind"].append(kind)
                cols["unit"].append(m.unit)
                cols["service"].append(service)
                cols["series"].append(series_key(otlp.attributes(p.attributes)))
                cols["time_ns"].append(p.time_unix_nano)
                cols["start_ns"].append(p.start_time_unix_nano)
                cols["value"].append(point_value(kind, p))
                cols["temporality"].append(temporality)
                cols["monotonic"].append(monotonic)
                cols["point"].append(p.SerializeToString())
                cols["metric"].append(meta_blob)
                cols["resource"].append(res_blob)
                cols["scope"].append(scope_blob)
    return cols


_BUILDERS = {SPANS: _span_columns, LOGS: _log_columns, METRICS: _metric_columns}


def build_table(table: str, payloads: Iterable[bytes], *, dictionaries: bool = False) -> pa.Table:
    """Rows of the given WAL payloads (protobuf export requests) as an Arrow table.

    ``dictionaries``: build the repetitive columns (resource, scope, service, name,
    span body) as dictionary arrays, as blocks are written: sorting then moves 4-byte
    indices, not each row's resource bytes. Readers of the WAL tail want plain columns."""
    cols = _BUILDERS[table](payloads)
    if not dictionaries:
        return pa.Table.from_pydict(cols, schema=SCHEMAS[table])
    schema = _merge_schema(table)
    arrays = []
    for f in schema:
        values = cols[f.name]
        if pa.types.is_dictionary(f.type) and f.type.value_type == pa.string():
            # protobuf hands out a new str per access, so a Python dict re-hashes every
            # name (~0.4 s per 250k spans); Arrow's hash in C++ costs ~0.02 s
            arrays.append(pa.array(values, pa.string()).dictionary_encode())
        elif pa.types.is_dictionary(f.type):
            # the byte columns repeat one object per resource and scope (hash cached) or
            # are fresh bytes hashed once: a Python dict is faster here than Arrow's hash
            index: dict[Any, int] = {}
            codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32, count=len(values))
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(index), f.type.value_type)))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def build_table_safe(table: str, payloads: Sequence[bytes], *, dictionaries: bool = False) -> tuple[pa.Table, list[bytes]]:
    """:func:`build_table`, but a payload that cannot be stored (validation should
    make that impossible) is set aside and returned instead of failing the batch."""
    try:
        return build_table(table, payloads, dictionaries=dictionaries), []
    except Exception:
        good, bad = [], []
        for p in payloads:
            try:
                good.append(build_table(table, [p], dictionaries=dictionaries))
            except Exception:
                bad.append(p)
        if not good:
            return pa.Table.from_batches([], _merge_schema(table) if dictionaries else SCHEMAS[table]), bad
        t = pa.concat_tables(good)
        return (t.unify_dictionaries().combine_chunks() if dictionaries else t), bad


def _id_keys(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two big-endian uint64 halves of 16-byte ids (empty -> 0, 0): a numeric sort key
    that orders exactly like the bytes."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    import pyarrow.compute as pc  # writer side only: readers of trace-by-id never pay its import

    full = pc.fill_null(pc.equal(pc.binary_length(ids), 16), False)
    padded = pc.if_else(full, ids, pa.scalar(bytes(16), pa.binary()))
    fixed = padded.cast(pa.binary(16))
    raw = np.frombuffer(fixed.buffers()[1], dtype=">u8", count=2 * n, offset=fixed.offset * 16).reshape(n, 2)
    return raw[:, 0].astype(np.uint64), raw[:, 1].astype(np.uint64)


def sort_table(table: str, t: pa.Table) -> pa.Table:
    if t.num_rows <= 1:
        return t
    if table in (SPANS, LOGS):  # numpy lexsort: several times faster than Arrow's sort on binary
        hi, lo = _id_keys(t.column("trace_id"))
        tcol = t.column(TIME_COLUMN[table]).to_numpy()
        return t.take(pa.array(np.lexsort((tcol, lo, hi))))
    # Arrow cannot sort by several keys when one is a dictionary (the block builder's
    # name/series columns): sort on decoded copies of the keys, take from the original.
    import pyarrow.compute as pc

    keys = SORT_KEYS[table]
    decoded = pa.table({k: (pc.cast(t.column(k), t.schema.field(k).type.value_type)
                            if pa.types.is_dictionary(t.schema.field(k).type) else t.column(k)) for k, _ in keys})
    return t.take(pc.sort_indices(decoded, sort_keys=keys))


def trace_prefixes(trace_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Sorted unique uint64 big-endian prefixes of the non-empty 16-byte trace ids."""
    return sorted_unique(id_prefixes(trace_ids))


def id_prefixes(trace_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The uint64 big-endian prefix of each non-empty 16-byte trace id, in row order."""
    if len(trace_ids) == 0:
        return np.zeros(0, dtype=np.uint64)
    hi, lo = _id_keys(trace_ids)
    return hi[(hi != 0) | (lo != 0)]


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` by sorting: NumPy 2.4's ``np.unique`` hashes integers, ~100x slower
    on millions of uint64 (3.5 s against 38 ms for 2.2M on this machine)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) else s


def prefix_of(trace_id: bytes) -> int:
    return int.from_bytes(trace_id[:8], "big")


# --- fault injection (tests only) ---------------------------------------------------

def _parse_failpoints(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, secs = part.partition("=")
        try:
            out[name.strip()] = float(secs)
        except ValueError:
            pass
    return out


# STAGETRACE_FAILPOINTS="cut=0.6,compact=0.6" (tests/test_chaos.py): the block writer
# pauses that long in the named step, half before the new block is renamed into place
# and half after (before its inputs are deleted), with DATA_DIR/failpoint.<name>
# present, so a test can kill -9 it exactly there. Never set in production.
_FAILPOINTS = _parse_failpoints(os.environ.get("STAGETRACE_FAILPOINTS", ""))


def _failpoint(data_dir: Path, name: str | None) -> None:
    secs = _FAILPOINTS.get(name) if name else None
    if not secs:
        return
    marker = Path(data_dir) / f"failpoint.{name}"
    marker.write_text(f"{os.getpid()}\n")
    time.sleep(secs / 2)
    marker.unlink(missing_ok=True)


# --- blocks on disk ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockRef:
    table: str
    lo: int
    hi: int
    path: Path

    @property
    def tids_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".parquet")] + ".tids.npy")

    @property
    def check_path(self) -> Path:
        return integrity.check_path(self.path)

    @property
    def entries_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".parquet")] + ".entries.parquet")

    @property
    def errors_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".parquet")] + ".errors.parquet")

    def verify(self) -> str | None:
        """Why this block is corrupt, or ``None`` (see :mod:`.integrity`)."""
        return integrity.verify_block(self.path, self.tids_path if self.table in (SPANS, LOGS) else None)

    def quarantine(self, data_dir: Path, reason: str) -> "quarantine.QuarantinedBlock | None":
        entry = integrity.quarantine_block(Path(data_dir), self.table, self.lo, self.hi, self.path,
                                           self.tids_path if self.table in (SPANS, LOGS) else None, reason)
        if entry is not None:
            self.entries_path.unlink(missing_ok=True)  # derived from the block: nothing to keep
            self.errors_path.unlink(missing_ok=True)
        return entry


def block_dir(data_dir: Path, table: str) -> Path:
    return data_dir / "blocks" / table


def wal_dir(data_dir: Path, table: str) -> Path:
    return data_dir / "wal" / table


def list_blocks(data_dir: Path, table: str) -> list[BlockRef]:
    """The live blocks of ``table``; blocks contained in a wider one (a compaction
    that has not deleted its inputs yet) are left out so no row is counted twice."""
    d = block_dir(data_dir, table)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    refs = []
    for name in names:
        m = _BLOCK_RE.match(name)
        if m:
            refs.append(BlockRef(table, int(m.group(1)), int(m.group(2)), d / name))
    # widest first, then drop any range inside an already kept one
    refs.sort(key=lambda r: (r.lo, -r.hi))
    kept: list[BlockRef] = []
    for r in refs:
        if kept and r.lo >= kept[-1].lo and r.hi <= kept[-1].hi:
            continue
        kept.append(r)
    return kept


@dataclass(slots=True)
class Snapshot:
    blocks: list[BlockRef]
    tail: list[tuple[int, Path]]  # WAL segments not yet in any block


def snapshot(data_dir: Path, table: str) -> Snapshot:
    """A consistent view: WAL listed *before* blocks, so a segment cut meanwhile is
    either still listed (and read, or found covered) or covered by a listed block."""
    segs = wal.list_segments(wal_dir(data_dir, table))
    blocks = list_blocks(data_dir, table)
    tail = [(seq, p) for seq, p in segs if not any(b.lo <= seq <= b.hi for b in blocks)]
    return Snapshot(blocks, tail)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_block(data_dir: Path, table: str, lo: int, hi: int, t: pa.Table, *, sort: bool = True,
                failpoint: str | None = None) -> BlockRef:
    """Write one immutable block (sorted, zstd, small row groups) atomically; on failure
    (a full disk) nothing is left behind."""
    ref = BlockRef(table, lo, hi, block_dir(data_dir, table) / f"{lo:016d}-{hi:016d}.parquet")
    try:
        return _write_block(data_dir, table, ref, t, sort, failpoint)
    except BaseException:
        for p in (ref.path.with_name(ref.path.name + ".tmp"), ref.tids_path.with_name(ref.tids_path.name + ".tmp"),
                  ref.check_path.with_name(ref.check_path.name + ".tmp"),
                  ref.entries_path.with_name(ref.entries_path.name + ".tmp"),
                  ref.errors_path.with_name(ref.errors_path.name + ".tmp")):
            p.unlink(missing_ok=True)
        raise


def _write_block(data_dir: Path, table: str, ref: BlockRef, t: pa.Table, sort: bool,
                 failpoint: str | None) -> BlockRef:
    d = block_dir(data_dir, table)
    d.mkdir(parents=True, exist_ok=True)
    if sort:
        t = sort_table(table, t)
    tmp = ref.path.with_name(ref.path.name + ".tmp")
    import pyarrow.compute as pc

    tcol = t.column(TIME_COLUMN[table])
    meta = {b"stagetrace.rows": str(t.num_rows).encode(),
            b"stagetrace.min_time_ns": str(pc.min(tcol).as_py() or 0).encode(),
            b"stagetrace.max_time_ns": str(pc.max(tcol).as_py() or 0).encode()}
    t = t.replace_schema_metadata(meta)  # the sidecars carry it too
    # Plain columns into the writer: given an Arrow dictionary it writes the *whole*
    # dictionary into every row group (a merged block's span bodies: ~2 MB per
    # 1024-row group, measured), so each trace-by-id read decoded all of it. From
    # plain values Parquet builds each row group's dictionary from that group's rows.
    write_plain(
        # zstd level 1: as small as level 3 on these columns (measured), writes ~25% faster
        t, tmp, SCHEMAS[table].with_metadata(meta), row_group_size=ROW_GROUP_ROWS[table],
        use_dictionary=list(DICT_COLUMNS) + ["status_code", "severity_number"] + (["rest"] if table == SPANS else []),
        write_statistics=["trace_id", "start_ns", "time_ns", "observed_ns", "name", "service"],
    )
    _fsync_file(tmp)
    if table in (SPANS, LOGS):
        tids_tmp = ref.tids_path.with_name(ref.tids_path.name + ".tmp")
        with open(tids_tmp, "wb") as fh:
            np.save(fh, trace_prefixes(t.column("trace_id")))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tids_tmp, ref.tids_path)
    if table == SPANS:
        write_entries(ref.entries_path, t)
    if table in ERROR_SQL:
        write_errors(table, ref.errors_path, t)
    # checksums of the block and its index, with what it holds (the quarantine ledger
    # needs rows and time range even when the block's own footer is what broke)
    integrity.write_check(tmp, ref.path, ref.tids_path if table in (SPANS, LOGS) else None,
                          {k.decode().split(".", 1)[1]: int(v) for k, v in meta.items()},
                          entries_path=ref.entries_path if table == SPANS else None,
                          errors_path=ref.errors_path if table in ERROR_SQL else None)
    _failpoint(data_dir, failpoint)
    os.replace(tmp, ref.path)  # the sidecars exist before the block becomes visible
    wal._fsync_dir(d)
    return ref


# rows made plain (dictionaries decoded) at a time when writing: a multiple of every row group size
WRITE_SLICE_ROWS = 64 * 1024


def write_plain(t: pa.Table, path: Path, schema: pa.Schema, *, row_group_size: int, **options: Any) -> None:
    """Write ``t`` (dictionary columns or not) to ``path`` with plain ``schema``, a slice
    of :data:`WRITE_SLICE_ROWS` at a time (zstd level 1, 64 KiB pages).

    Why slices: the writer wants plain values (see the caller), and decoding a merged
    1M-span block's bodies, resources and scopes all at once held ~0.5 GiB more than
    its dictionaries do; slice by slice it is one slice's worth. Row groups come out
    the same (the slice is a multiple of the row-group size)."""
    assert WRITE_SLICE_ROWS % row_group_size == 0
    with pq.ParquetWriter(path, schema, compression="zstd", compression_level=1, data_page_size=64 << 10,
                          **options) as writer:
        for off in range(0, max(t.num_rows, 1), WRITE_SLICE_ROWS):
            part = t.slice(off, WRITE_SLICE_ROWS)
            writer.write_table(part.cast(schema) if part.schema != schema else part, row_group_size=row_group_size)


def entry_rows(t: pa.Table) -> pa.Table:
    """The entry spans of a span table (see ENTRY_SQL), sorted by start time."""
    if t.num_rows == 0:
        return t
    parent = t.column("parent_span_id").combine_chunks()
    lengths = np.frombuffer(parent.buffers()[1], dtype=np.int32, count=len(parent) + 1, offset=parent.offset * 4)
    mask = np.diff(lengths) == 0
    if parent.null_count:
        mask |= ~parent.is_valid().to_numpy(zero_copy_only=False)
    kind = t.column("kind").to_numpy()
    mask |= np.isin(kind, ENTRY_KINDS)
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(t.column("start_ns").to_numpy()[idx], kind="stable")]
    return t.take(pa.array(idx))


def write_entries(path: Path, t: pa.Table) -> None:
    """Write the entry-span sidecar of a (plain-column) span table, fsynced, at ``path``."""
    _write_sidecar(path, entry_rows(t))


def _write_sidecar(path: Path, rows: pa.Table, stats: Sequence[str] = ("start_ns", "duration_ns", "name", "service"),
                   dictionary: Sequence[str] = (*DICT_COLUMNS, "status_code", "rest")) -> None:
    """A block's sidecar (rows sorted by time, large row groups), fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    schema = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in rows.schema],
                       metadata=rows.schema.metadata)
    write_plain(rows, tmp, schema, row_group_size=ENTRY_ROW_GROUP_ROWS, use_dictionary=list(dictionary),
                write_statistics=list(stats))
    _fsync_file(tmp)
    os.replace(tmp, path)


def error_rows(table: str, t: pa.Table) -> pa.Table:
    """The spans with ERROR status of a span table, the records of severity ERROR or
    above of a log table (see ERROR_SQL), sorted by time."""
    if t.num_rows == 0:
        return t
    if table == SPANS:
        mask = t.column("status_code").to_numpy(zero_copy_only=False) == ERROR_STATUS
    else:
        mask = t.column("severity_number").to_numpy(zero_copy_only=False) >= ERROR_SEVERITY
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(t.column(TIME_COLUMN[table]).to_numpy()[idx], kind="stable")]
    return t.take(pa.array(idx))


def write_errors(table: str, path: Path, t: pa.Table) -> None:
    """Write the error sidecar of a (plain-column) span or log table, fsynced, at ``path``."""
    if table == SPANS:
        _write_sidecar(path, error_rows(table, t))
    else:
        _write_sidecar(path, error_rows(table, t), stats=["time_ns", "service"],
                       dictionary=list(DICT_COLUMNS) + ["severity_number"])


def delete_block(ref: BlockRef) -> None:
    for p in (ref.path, ref.tids_path, ref.check_path, ref.entries_path, ref.errors_path):  # the block first: readers list it
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def block_info(ref: BlockRef) -> tuple[int, int, int, int]:
    """(rows, min_time_ns, max_time_ns, bytes on disk) from the checksum sidecar, else the footer."""
    try:
        doc = integrity.read_check(ref.path)
    except (OSError, ValueError):
        doc = None
    if doc is not None and "rows" in doc:
        size = doc["bytes"] + doc.get("entries_bytes", 0) + doc.get("errors_bytes", 0) + (ref.tids_path.stat().st_size
                                                               if ref.tids_path.exists() else 0)
        return int(doc["rows"]), int(doc.get("min_time_ns", 0)), int(doc.get("max_time_ns", 0)), size
    md = pq.read_metadata(ref.path)
    kv = md.metadata or {}
    size = ref.path.stat().st_size + (ref.tids_path.stat().st_size if ref.tids_path.exists() else 0)
    return (int(kv.get(b"stagetrace.rows", md.num_rows)), int(kv.get(b"stagetrace.min_time_ns", 0)),
            int(kv.get(b"stagetrace.max_time_ns", 0)), size)


# --- the writer side: cut, compact, retain ------------------------------------

@dataclass(slots=True)
class StoreConfig:
    retention_ns: int = 7 * 86_400 * 10**9  # 7 days
    retention_bytes: int = 10 << 30  # 10 GiB over all blocks
    max_block_rows: int = 1_000_000  # compaction stops merging at this size
    # one cut reads at most this much WAL (at least one segment): a block is built in
    # memory, and a backlog cut in one piece cost ~1 GiB (20M-span ingest)
    max_cut_bytes: int = 64 << 20
    compact_fan_in: int = 4
    compact_max_fan_in: int = 16  # blocks one merge may take when more have piled up


class BlockStore:
    """Owns blocks/ for the collector process: the only writer."""

    def __init__(self, data_dir: Path, config: StoreConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or StoreConfig()
        self._info: dict[Path, tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()
        for table in TABLES:
            block_dir(self.data_dir, table).mkdir(parents=True, exist_ok=True)
            wal_dir(self.data_dir, table).mkdir(parents=True, exist_ok=True)
            for p in block_dir(self.data_dir, table).glob("*.tmp"):
                p.unlink(missing_ok=True)  # a writer died mid-block; its WAL is still there
            for suffix in (".entries.parquet", ".errors.parquet"):
                for p in block_dir(self.data_dir, table).glob("*" + suffix):
                    if not p.with_name(p.name[: -len(suffix)] + ".parquet").exists():
                        p.unlink(missing_ok=True)  # ...after writing the sidecar, before the block

    def next_seq(self, table: str) -> int:
        segs = wal.list_segments(wal_dir(self.data_dir, table))
        hi = max([s for s, _ in segs] + [b.hi for b in list_blocks(self.data_dir, table)] + [0]
                 + [e.hi for e in quarantine.list_quarantined(self.data_dir, tables=[table])])  # never reuse a seq
        return hi + 1

    def _info_of(self, ref: BlockRef) -> tuple[int, int, int, int]:
        info = self._info.get(ref.path)
        if info is None:
            info = self._info[ref.path] = block_info(ref)
        return info

    def verified(self, refs: Sequence[BlockRef]) -> bool:
        """Verify blocks about to be rewritten; quarantine the corrupt ones. False if any
        was: a merge must not spread a damaged block's rows (the caller re-lists)."""
        ok = True
        for r in refs:
            problem = r.verify()
            if problem is not None:
                r.quarantine(self.data_dir, problem)
                self._info.pop(r.path, None)
                ok = False
        return ok

    def cut(self, table: str, before_seq: int, pool: Any = None, parallel_bytes: int = 16 << 20) -> BlockRef | None:
        """Turn closed WAL segments (seq < ``before_seq``) into blocks and delete them.

        With an executor ``pool`` and a backlog over ``parallel_bytes``, contiguous
        halves of the segments are built in two worker processes at once (two
        blocks with adjacent ranges; compaction merges them later)."""
        snap = snapshot(self.data_dir, table)
        segs = first_segments_within(self.config.max_cut_bytes, [(s, p) for s, p in snap.tail if s < before_seq])
        if not segs:
            return None
        groups = [segs]
        if pool is not None and len(segs) >= 2:
            size = sum(p.stat().st_size for _, p in segs)
            if size >= parallel_bytes:
                half = len(segs) // 2
                groups = [segs[:half], segs[half:]]
        if len(groups) == 1:
            refs = [cut_segments(self.data_dir, table, segs, failpoint="cut")]
        else:
            futures = [pool.submit(cut_segments, self.data_dir, table, g) for g in groups]
            refs = [f.result() for f in futures]
        _failpoint(self.data_dir, "cut")
        for _, p in segs:
            p.unlink(missing_ok=True)
        self._drop_covered_segments(table)
        return refs[-1]

    def cut_all(self, table: str, before_seq: int = 1 << 62) -> int:
        """Cut every closed segment below ``before_seq``, in as many blocks as
        ``max_cut_bytes`` needs; the number of blocks written."""
        n = 0
        while self.cut(table, before_seq) is not None:
            n += 1
        return n

    def _drop_covered_segments(self, table: str) -> None:
        blocks = list_blocks(self.data_dir, table)
        for seq, p in wal.list_segments(wal_dir(self.data_dir, table)):
            if any(b.lo <= seq <= b.hi for b in blocks):
                p.unlink(missing_ok=True)

    def compact(self, table: str) -> bool:
        """Merge the first run of ``fan_in`` adjacent small blocks; True if merged
        (or if a corrupt input was quarantined instead)."""
        cfg = self.config
        blocks = list_blocks(self.data_dir, table)
        # remove inputs of a compaction that finished writing but died before deleting
        all_refs = [BlockRef(table, int(m.group(1)), int(m.group(2)), p) for p in block_dir(self.data_dir, table).iterdir()
                    if (m := _BLOCK_RE.match(p.name))]
        live = {b.path for b in blocks}
        for r in all_refs:
            # only inputs inside a wider listed block: a cut (another thread) may have
            # renamed a new block into place since the listing, and that one is live
            if r.path not in live and any(b.lo <= r.lo and r.hi <= b.hi for b in blocks):
                delete_block(r)
        tier = self._tier
        run: list[BlockRef] = []
        for i, b in enumerate(blocks):
            try:
                rows = self._info_of(b)[0]
            except FileNotFoundError:
                raise
            except Exception as exc:  # an unreadable footer: corrupt, set it aside
                b.quarantine(self.data_dir, f"unreadable footer: {str(exc).splitlines()[0][:200]}")
                return True
            if run and (not _same_tier(tier(rows), [tier(self._info_of(r)[0]) for r in run])
                        or rows >= cfg.max_block_rows):
                run = []
            if rows >= cfg.max_block_rows:
                continue
            run.append(b)
            if len(run) == cfg.compact_fan_in:
                total = sum(self._info_of(r)[0] for r in run)
                if total > cfg.max_block_rows:
                    run = run[1:]
                    continue
                run = self._extend_run(run, total, blocks[i + 1:])
                if not self.verified(run):
                    return True
                merged = read_blocks_for_merge(table, [r.path for r in run])
                new = write_block(self.data_dir, table, run[0].lo, run[-1].hi, merged, failpoint="compact")
                _failpoint(self.data_dir, "compact")
                for r in run:
                    delete_block(r)
                    self._info.pop(r.path, None)
                log.debug("compacted %d %s blocks into %s", len(run), table, new.path.name)
                return True
        return False

    def _tier(self, rows: int) -> int:
        t, cap = 0, 16384
        while rows >= cap and t < 8:
            t += 1
            cap *= self.config.compact_fan_in
        return t

    def _extend_run(self, run: list[BlockRef], total: int, following: Sequence[BlockRef]) -> list[BlockRef]:
        """``run`` (ready to merge) and the adjacent blocks after it, up to
        ``compact_max_fan_in`` blocks and ``max_block_rows`` rows, none of a higher tier.

        Why: when compaction is behind (a saturated maintainer cuts 40-80k-span blocks
        every second or two), merging four at a time rewrote each span once per tier;
        merging what has piled up at once rewrites it once (the 5M-span ingest left
        ~250 blocks behind with runs of four)."""
        cfg = self.config
        top = max(self._tier(self._info_of(r)[0]) for r in run)
        out = list(run)
        for b in following:
            try:
                rows = self._info_of(b)[0]
            except Exception:  # gone or unreadable: the next round deals with it
                break
            if (len(out) >= cfg.compact_max_fan_in or rows >= cfg.max_block_rows
                    or total + rows > cfg.max_block_rows or self._tier(rows) > top):
                break
            out.append(b)
            total += rows
        return out

    def enforce_retention(self, now_ns: int | None = None) -> int:
        """Delete whole blocks older than the age limit, then oldest-first over the size limit."""
        now_ns = now_ns or time.time_ns()
        cfg = self.config
        removed = 0
        everything: list[tuple[int, BlockRef, int]] = []
        for table in TABLES:
            for b in list_blocks(self.data_dir, table):
                try:
                    rows, tmin, tmax, size = self._info_of(b)
                except Exception:  # gone meanwhile, or corrupt (compaction quarantines it)
                    continue
                if cfg.retention_ns and tmax and tmax < now_ns - cfg.retention_ns:
                    delete_block(b)
                    self._info.pop(b.path, None)
                    removed += 1
                    continue
                everything.append((tmax, b, size))
        total = sum(s for _, _, s in everything)
        if cfg.retention_bytes and total > cfg.retention_bytes:
            for tmax, b, size in sorted(everything, key=lambda x: x[0]):
                if total <= cfg.retention_bytes:
                    break
                delete_block(b)
                self._info.pop(b.path, None)
                total -= size
                removed += 1
        return removed

    def disk_bytes(self) -> int:
        total = 0
        for root in (self.data_dir / "blocks", self.data_dir / "wal"):
            for p in root.rglob("*"):
                if p.is_file():
                    total += p.stat().st_size
        return total


def _same_tier(t: int, run_tiers: Sequence[int]) -> bool:
    """Whether a block of tier ``t`` may join a run of blocks of ``run_tiers`` (adjacent
    tiers too). Why not equal tiers only: cuts of a busy WAL make blocks of varying size
    on both sides of a tier boundary (40-80k spans, cut as soon as a segment closes,
    so that acknowledged data reaches blocks within seconds), and strict runs of one
    tier then never formed: 252 blocks stayed unmerged after a 5M-span ingest. A tier
    apart, a merge still at least doubles the smallest input (bounded rewrites)."""
    return max(run_tiers + [t]) - min(run_tiers + [t]) <= 1


def _merge_schema(table: str) -> pa.Schema:
    """The table's schema with its repetitive columns as dictionaries (see below)."""
    schema = SCHEMAS[table]
    wanted = set(DICT_COLUMNS) | ({"rest"} if table == SPANS else set())
    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in wanted and
                      f.type in (pa.string(), pa.binary()) else f for f in schema])


def read_blocks_for_merge(table: str, paths: Sequence[Path]) -> pa.Table:
    """Rows of blocks to merge, repetitive columns (resource, scope, span body, names)
    kept as dictionaries: re-sorting then moves 4-byte indices instead of copying each
    row's resource and body, and reading skips materialising them (compaction rewrites
    every row a few times, so this is most of its cost; docs/benchmarks.md)."""
    schema = _merge_schema(table)
    dict_cols = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    parts = []
    for p in paths:
        t = pq.read_table(p, read_dictionary=dict_cols).replace_schema_metadata(None)
        if t.schema != schema:  # e.g. blocks written before a column changed type: normalise
            t = t.select(schema.names).cast(schema)
        parts.append(t)
    merged = pa.concat_tables(parts)
    return merged.unify_dictionaries().combine_chunks()


def first_segments_within(max_bytes: int, segs: Sequence[tuple[int, Path]]) -> list[tuple[int, Path]]:
    """The leading segments of ``segs`` that add up to at most ``max_bytes`` (always
    the first one: a segment is never split)."""
    out: list[tuple[int, Path]] = []
    total = 0
    for seq, p in segs:
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # cut meanwhile (a second cutter): cut() finds it covered
            size = 0
        if out and total + size > max_bytes:
            break
        out.append((seq, p))
        total += size
    return out


def cut_segments(data_dir: Path, table: str, segs: Sequence[tuple[int, Path]],
                 failpoint: str | None = None) -> BlockRef:
    """Write the block of WAL segments ``segs`` (contiguous); the caller deletes them."""
    for seq, p in segs:  # damage inside a segment (not a torn tail): keep its raw bytes and say so
        scan = integrity.scan_segment(p)
        if scan.damaged:
            integrity.preserve_damaged_segment(Path(data_dir), table, seq, p, scan)
    t, bad = build_table_safe(table, [payload for _, p in segs for _, payload in wal.read_records(p)],
                              dictionaries=True)
    if bad:  # never silently: keep the raw records next to the store and say so
        qdir = Path(data_dir) / "quarantine" / table
        qdir.mkdir(parents=True, exist_ok=True)
        qpath = qdir / f"{segs[0][0]:016d}-{segs[-1][0]:016d}.bin"
        with open(qpath, "wb") as fh:
            for payload in bad:
                fh.write(len(payload).to_bytes(4, "little") + payload)
        log.error("%d %s request(s) could not be stored; raw copies kept in %s", len(bad), table, qpath)
    # an empty block is still written: it records that the range is done
    return write_block(Path(data_dir), table, segs[0][0], segs[-1][0], t, failpoint=failpoint)


def payloads_of(segments: Sequence[tuple[int, Path]]) -> Iterable[bytes]:
    for _, p in segments:
        for _, payload in wal.read_records(p):
            yield payload
