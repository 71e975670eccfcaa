"""Block checksums, verification on first open, quarantine, and ``collector check``.

Why: a block is written once and read for days; a flipped page (disk, copy, a bad
sector) made DuckDB fail every scan over the block's window with a decompression
traceback, and trace lookups into it fail silently. Each block now gets a sidecar
``<lo>-<hi>.check.json`` written before the block becomes visible::

    {"crc32": ..., "bytes": ..., "tids_crc32": ..., "rows": ..., "min_time_ns": ..., "max_time_ns": ...}

A process verifies a block (CRC-32 of the whole file, ~1.3 GB/s here: ~25 ms for
a 1M-span block) the first time it opens it; readers cache open blocks, so that is
once per block per process. A block that fails is moved to ``quarantine/`` and
listed in the ledger (:mod:`.quarantine`) with the rows and time range the sidecar
recorded, logged once (the rename is the claim: only one process wins it), and every
other block keeps serving. Blocks written before checksums existed have no sidecar:
they are trusted on open and decoded in full by ``collector check``.

Standard library only at import time (the trace-by-id reader imports it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import quarantine, wal
from .quarantine import QuarantinedBlock

log = logging.getLogger("stagetrace.collector.integrity")

CHECK_SUFFIX = ".check.json"
_CHUNK = 1 << 20


def file_crc32(path: Path) -> tuple[int, int]:
    """(CRC-32, size) of a file, read in 1 MiB chunks."""
    crc = 0
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return crc, size


def check_path(block_path: Path) -> Path:
    return block_path.with_name(block_path.name[: -len(".parquet")] + CHECK_SUFFIX)


def write_check(block_tmp: Path, final_block_path: Path, tids_path: Path | None, info: dict[str, int],
                entries_path: Path | None = None, errors_path: Path | None = None) -> None:
    """Write the checksum sidecar of a block still at its temporary name (fsynced,
    renamed into place before the block itself becomes visible). ``entries_path``:
    the block's entry-span index (derived data: a reader that finds it damaged reads
    the block instead, so its checksum is recorded, not enforced here)."""
    crc, size = file_crc32(block_tmp)
    doc: dict[str, Any] = {"crc32": crc, "bytes": size, **info}
    if tids_path is not None:
        doc["tids_crc32"] = file_crc32(tids_path)[0]
    if entries_path is not None:
        doc["entries_crc32"], doc["entries_bytes"] = file_crc32(entries_path)
    if errors_path is not None:  # the error-span sidecar: the same (derived, checked by its reader)
        doc["errors_crc32"], doc["errors_bytes"] = file_crc32(errors_path)
    final = check_path(final_block_path)
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def read_check(block_path: Path) -> dict[str, Any] | None:
    """The sidecar, ``None`` if there is none (a block older than checksums);
    raises ValueError if it is there but unreadable."""
    try:
        text = check_path(block_path).read_text()
    except FileNotFoundError:
        return None
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("crc32"), int) or not isinstance(doc.get("bytes"), int):
        raise ValueError("checksum sidecar is malformed")
    return doc


def _verify_once(block_path: Path, tids_path: Path | None) -> str | None:
    try:
        doc = read_check(block_path)
    except ValueError as exc:
        # the sidecar itself is damaged: fall back to decoding the whole block
        return _decode_problem(block_path, f"{exc}; ")
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            return None
        raise
    if doc is None:
        return None  # written before checksums: trusted here, decoded in full by `collector check`
    crc, size = file_crc32(block_path)  # FileNotFoundError: deleted meanwhile (the caller re-lists)
    if size != doc["bytes"]:
        return f"size {size} bytes, written as {doc['bytes']} bytes"
    if crc != doc["crc32"]:
        return f"checksum mismatch (crc32 {crc:08x}, written as {doc['crc32']:08x})"
    want = doc.get("tids_crc32")
    if want is not None and tids_path is not None:
        try:
            got = file_crc32(tids_path)[0]
        except FileNotFoundError:
            return None  # being deleted with its block
        if got != want:
            return f"trace-id index {tids_path.name}: checksum mismatch"
    return None


def _decode_problem(block_path: Path, prefix: str = "") -> str | None:
    """Decode every page of a block (what an unchecksummed block needs to be verified)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_table(block_path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        return f"{prefix}unreadable: {str(exc).splitlines()[0][:200]}"
    return None


def verify_block(block_path: Path, tids_path: Path | None = None) -> str | None:
    """Why the block is corrupt, or ``None`` if it is sound (or gone).

    A failure is confirmed by a second look a moment later, so a block being
    replaced under the same name (sidecar renamed first, block second) is never
    mistaken for a corrupt one."""
    problem = _verify_once(block_path, tids_path)
    if problem is None:
        return None
    time.sleep(0.05)
    return _verify_once(block_path, tids_path)


def block_summary(block_path: Path) -> tuple[int | None, int | None, int | None]:
    """(rows, min_time_ns, max_time_ns) of a block for the ledger: from its sidecar,
    else its Parquet footer, else unknown."""
    try:
        doc = read_check(block_path)
        if doc is not None and "rows" in doc:
            return int(doc["rows"]), int(doc.get("min_time_ns", 0)), int(doc.get("max_time_ns", 0))
    except (OSError, ValueError, TypeError):
        pass
    try:
        import pyarrow.parquet as pq

        md = pq.read_metadata(block_path)
        kv = md.metadata or {}
        return (int(kv.get(b"stagetrace.rows", md.num_rows)), int(kv.get(b"stagetrace.min_time_ns", 0)),
                int(kv.get(b"stagetrace.max_time_ns", 0)))
    except Exception:  # the footer is what is damaged
        return None, None, None


def quarantine_block(data_dir: Path, table: str, lo: int, hi: int, block_path: Path, tids_path: Path | None,
                     reason: str) -> QuarantinedBlock | None:
    """Move a corrupt block (and its sidecars) to ``quarantine/<table>/``, record it in
    the ledger and log it once. Returns the entry, or ``None`` if another process
    moved (or compaction deleted) it first, or this process may not move it."""
    rows, tmin, tmax = block_summary(block_path)
    qdir = quarantine.quarantine_dir(data_dir, table)
    at = time.time_ns()
    stem = f"{lo:016d}-{hi:016d}.{at}"
    try:
        qdir.mkdir(parents=True, exist_ok=True)
        dest = qdir / f"{stem}.parquet"
        os.rename(block_path, dest)  # the claim: atomic, one winner
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a read-only reader: skip the block here, say why once
        log.error("corrupt %s block %s (%s) could not be moved to %s: %s; skipping it", table, block_path, reason,
                  qdir, exc.strerror or exc)
        return None
    for side, suffix in ((tids_path, ".tids.npy"), (check_path(block_path), CHECK_SUFFIX)):
        if side is not None:
            try:
                os.rename(side, qdir / f"{stem}{suffix}")
            except OSError:
                pass
    entry = QuarantinedBlock(kind="block", table=table, lo=lo, hi=hi, rows=rows, min_time_ns=tmin, max_time_ns=tmax,
                             reason=reason, original=str(block_path), moved_to=str(dest), at_ns=at)
    quarantine.record(data_dir, entry)
    log.error("quarantined corrupt %s", entry.describe())
    return entry


# --- write-ahead-log segments --------------------------------------------------------

@dataclass(slots=True)
class SegmentScan:
    records: int
    good_bytes: int  # the readable prefix
    total_bytes: int
    damaged: str | None  # why the bytes after the readable prefix are not a torn tail


def scan_segment(path: Path) -> SegmentScan:
    """Classify a segment's end: complete records, then either nothing, a torn last
    record (the writer died mid-write: never acknowledged, not damage), or damage (a
    complete record failing its CRC, or an impossible length, with data after it)."""
    data = path.read_bytes()
    n = len(data)
    pos = records = 0
    hdr = wal._HEADER
    while pos + hdr.size <= n:
        length, crc = hdr.unpack_from(data, pos)
        end = pos + hdr.size + length
        if length > wal.MAX_RECORD:
            return SegmentScan(records, pos, n, f"record {records + 1} at byte {pos} has an impossible length")
        if end > n:
            return SegmentScan(records, pos, n, None)  # torn tail
        if zlib.crc32(data[pos + hdr.size:end]) != crc:
            return SegmentScan(records, pos, n, f"record {records + 1} at byte {pos} fails its checksum")
        pos = end
        records += 1
    return SegmentScan(records, pos, n, None)


def preserve_damaged_segment(data_dir: Path, table: str, seq: int, path: Path, scan: SegmentScan) -> QuarantinedBlock | None:
    """Keep a raw copy of a damaged segment in ``quarantine/wal/<table>/`` and record it
    (once: an existing copy means it was recorded). The segment itself stays: its
    readable prefix is still served and cut into a block."""
    qdir = quarantine.quarantine_dir(data_dir, "wal") / table
    dest = qdir / path.name
    if dest.exists():
        return None
    qdir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        shutil.copyfile(path, tmp)
    except FileNotFoundError:
        return None
    os.replace(tmp, dest)
    entry = QuarantinedBlock(kind="wal", table=table, lo=seq, hi=seq, rows=None, min_time_ns=None, max_time_ns=None,
                             reason=f"{scan.damaged}; {scan.total_bytes - scan.good_bytes} bytes after "
                                    f"{scan.records} readable records are lost",
                             original=str(path), moved_to=str(dest), at_ns=time.time_ns())
    quarantine.record(data_dir, entry)
    log.error("damaged %s", entry.describe())
    return entry


# --- `stagetrace collector check` -------------------------------------------------------

@dataclass(slots=True)
class CheckReport:
    blocks: int = 0
    segments: int = 0
    newly: list[QuarantinedBlock] = field(default_factory=list)
    damaged_segments: list[str] = field(default_factory=list)
    quarantined: list[QuarantinedBlock] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.quarantined and not self.damaged_segments

    def lines(self) -> list[str]:
        out = [f"quarantined: {e.describe()}" for e in self.quarantined]
        verdict = "ok" if self.ok else "BAD"
        out.append(f"{verdict}: checked {self.blocks} blocks and {self.segments} write-ahead-log segments; "
                   f"{len(self.newly)} newly quarantined, {len(self.quarantined)} quarantined in all, "
                   f"{len(self.damaged_segments)} damaged segments")
        return out


def check_store(data_dir: Path) -> CheckReport:
    """Verify every block (checksum, or a full decode for blocks without one) and every
    WAL segment; quarantine what is bad. The answer (what is quarantined, what is
    damaged) is the same when run again."""
    from . import store

    rep = CheckReport()
    for table in store.TABLES:
        for ref in store.list_blocks(data_dir, table):
            rep.blocks += 1
            tids = ref.tids_path if table in (store.SPANS, store.LOGS) else None
            problem = verify_block(ref.path, tids)
            if problem is None and not check_path(ref.path).exists() and ref.path.exists():
                problem = _decode_problem(ref.path, "no checksum (written before checksums) and ")
            if problem is not None:
                entry = quarantine_block(data_dir, table, ref.lo, ref.hi, ref.path, tids, problem)
                if entry is not None:
                    rep.newly.append(entry)
        for seq, path in wal.list_segments(store.wal_dir(data_dir, table)):
            try:
                scan = scan_segment(path)
            except FileNotFoundError:
                continue  # cut into a block meanwhile
            rep.segments += 1
            if scan.damaged:
                preserve_damaged_segment(data_dir, table, seq, path, scan)
                rep.damaged_segments.append(f"{table} write-ahead-log segment {path}: {scan.damaged}; "
                                            f"{scan.total_bytes - scan.good_bytes} bytes after {scan.records} "
                                            "readable records cannot be read")
    rep.quarantined = quarantine.list_quarantined(data_dir)  # this run's and earlier ones: the same answer again
    return rep
