"""Trace ids of a million requests without a million Python strings.

A 10M-span window holds ~1.4M requests, and an analysis reads the hex id of a few
thousand of them (its samples, the failing ones). Making every id's hex string
(0.7 s of CPU at 1.4M) and a dict of id -> row (0.8 s) up front was a fifth of
``investigate errors`` at that size, for lookups of a few thousand ids. Here the ids
stay one fixed-width byte array; hex is made for the items read, and the id -> row
map is a sorted array of 64-bit keys, searched per lookup.

Only the embedded store's columnar answer builds these (NumPy is loaded by then);
every other source of ids gives plain lists and dicts, which behave the same.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

_CHUNK = 1 << 16  # rows turned into hex at once when iterating
_MIX = 0x9E3779B97F4A7C15  # the key mixes both halves, so sequential ids keep distinct keys
_U64 = (1 << 64) - 1


class HexIds(Sequence[str]):
    """Fixed-width ids (an (n, width) uint8 NumPy array), read as lower-case hex: a
    list of ``bytes.hex()`` strings, built per item read."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return list(_hex_rows(self.raw[i]))
        return self.raw[i].tobytes().hex()

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self.raw), _CHUNK):
            yield from _hex_rows(self.raw[a:a + _CHUNK])

    def take(self, idx: Any) -> "HexIds":
        """The ids at ``idx`` (an integer array), in that order."""
        return HexIds(self.raw[idx])


def _hex_rows(raw: Any) -> Iterator[str]:
    """Hex of each row: one ``hex()`` over the rows' bytes, sliced (not one call per row)."""
    step = 2 * raw.shape[1]
    text = raw.tobytes().hex()
    return (text[k:k + step] for k in range(0, len(text), step))


class RowIndex(Mapping[str, int]):
    """Trace id (hex) -> row, over 16-byte ids with one row per id (see :func:`row_index`):
    the same answers as ``dict(zip(ids, range(n)))``. Each id's 64-bit key (both halves
    mixed) is sorted once; a lookup binary-searches the key and compares the whole id."""

    __slots__ = ("_raw", "_keys", "_order", "_u64")

    def __init__(self, raw: Any, keys: Any, order: Any) -> None:
        import numpy as np

        self._raw, self._keys, self._order = raw, keys, order  # not .keys: a Mapping method
        self._u64 = np.uint64  # a Python int key over 2**63 would make NumPy search as objects (O(n))

    def get(self, tid: Any, default: Any = None) -> Any:
        if not isinstance(tid, str) or len(tid) != 32:
            return default
        try:
            b = bytes.fromhex(tid)
        except ValueError:
            return default
        if b.hex() != tid:  # upper case or spaces: not a key of the dict this stands for
            return default
        key = (int.from_bytes(b[:8], "big") * _MIX + int.from_bytes(b[8:], "big")) & _U64
        keys, n = self._keys, len(self._keys)
        j = int(keys.searchsorted(self._u64(key)))
        while j < n and int(keys[j]) == key:
            row = int(self._order[j])
            if self._raw[row].tobytes() == b:
                return row
            j += 1
        return default

    def rows(self, tids: Sequence[str]) -> list[int | None]:
        """``[self.get(t) for t in tids]``, searched for all ids at once (a lookup one by
        one costs microseconds, and the errors analysis looks up tens of thousands)."""
        import numpy as np

        tids = list(tids)
        if not len(self._keys):
            return [None] * len(tids)
        if not tids or not all(isinstance(t, str) and len(t) == 32 for t in tids):
            return [self.get(t) for t in tids]
        joined = "".join(tids)
        try:
            raw = np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(-1, 16)
        except ValueError:  # not hex, or spaces inside
            return [self.get(t) for t in tids]
        if raw.shape[0] != len(tids) or raw.tobytes().hex() != joined:  # upper case: not keys
            return [self.get(t) for t in tids]
        keys = id_keys(raw)
        pos = np.minimum(self._keys.searchsorted(keys), len(self._keys) - 1)
        rows = self._order[pos]
        hit = (self._keys[pos] == keys) & (self._raw[rows] == raw).all(axis=1)
        out: list[int | None] = [r if h else None for r, h in zip(rows.tolist(), hit.tolist())]
        clash = np.flatnonzero((self._keys[pos] == keys) & ~hit)  # an equal key, another id: walk the run
        for i in clash.tolist():
            out[i] = self.get(tids[i])
        return out

    def __getitem__(self, tid: str) -> int:
        row = self.get(tid)
        if row is None:
            raise KeyError(tid)
        return row

    def __contains__(self, tid: object) -> bool:
        return self.get(tid) is not None

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[str]:
        return iter(HexIds(self._raw))


def rows_of(index: Mapping[str, int], tids: Sequence[str]) -> list[int | None]:
    """The row of each id in ``index`` (None where absent): all at once for a :class:`RowIndex`."""
    if isinstance(index, RowIndex):
        return index.rows(tids)
    return [index.get(t) for t in tids]


def row_index(ids: Sequence[str]) -> Mapping[str, int] | None:
    """Trace id -> row of ``ids``, or None when an id repeats (callers then pick one
    row per trace first). A :class:`RowIndex` for 16-byte :class:`HexIds`, else a dict."""
    if isinstance(ids, HexIds) and ids.raw.ndim == 2 and ids.raw.shape[1] == 16:
        keys = id_keys(ids.raw)
        order = keys.argsort()  # equal keys are all walked, so their order does not matter
        keys = keys[order]
        if bool((keys[1:] == keys[:-1]).any()):  # equal keys: a repeated id, or (rarely) a key clash
            rows = order[_equal_runs(keys)].tolist()
            if len({ids.raw[r].tobytes() for r in rows}) < len(rows):
                return None  # an id repeats (equal ids have equal keys, so they are in these runs)
        return RowIndex(ids.raw, keys, order)
    index = dict(zip(ids, range(len(ids))))
    return index if len(index) == len(ids) else None


def id_keys(ids: Any) -> Any:
    """One uint64 per 16-byte id (rows of a (k, 16) uint8 NumPy array), mixing both
    halves: ids that differ only in their second half (sequential ones) keep distinct keys."""
    import numpy as np

    halves = np.ascontiguousarray(ids).view(">u8").astype(np.uint64).reshape(-1, 2)
    return halves[:, 0] * np.uint64(_MIX) + halves[:, 1]


def _equal_runs(keys: Any) -> Any:
    """Positions of the sorted ``keys`` that belong to a run of two or more equal keys."""
    import numpy as np

    eq = keys[1:] == keys[:-1]
    mask = np.zeros(len(keys), dtype=bool)
    mask[1:] |= eq
    mask[:-1] |= eq
    return np.flatnonzero(mask)
