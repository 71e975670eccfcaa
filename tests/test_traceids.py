"""Trace ids kept as bytes (stagetrace.traceids): the lazy hex sequence and the
id -> row index must answer exactly as the list of hex strings and the dict they
replace (forensics reads them as such)."""

from __future__ import annotations

import numpy as np
import pytest

from stagetrace import traceids
from stagetrace.backend import SpanColumns, TraceQuery, find_span_columns
from stagetrace.collector.query import EmbeddedBackend
from stagetrace.forensics import window
from stagetrace.traceids import HexIds, RowIndex, row_index

from test_collector_entries import mixed_store  # noqa: F401  (fixture)

MIX = 0x9E3779B97F4A7C15
U64 = (1 << 64) - 1


def _raw(ints: list[tuple[int, int]]) -> np.ndarray:
    return np.frombuffer(b"".join(hi.to_bytes(8, "big") + lo.to_bytes(8, "big") for hi, lo in ints),
                         dtype=np.uint8).reshape(-1, 16)


def _id_sets() -> dict[str, np.ndarray]:
    rnd = np.random.default_rng(3)
    hi_clash, lo_clash = 0x1234, 0x77
    # two different ids with one 64-bit key: hi*MIX + lo equal (mod 2**64)
    clash = [(hi_clash, lo_clash), (hi_clash + 1, (lo_clash - MIX) & U64)]
    return {
        "random": rnd.integers(0, 256, (500, 16), dtype=np.uint8),
        "sequential": _raw([(0, i) for i in range(300)]),  # first halves all equal
        "same second half": _raw([(i, 5) for i in range(300)]),
        "key clash": _raw([(9, 9), *clash, (1, 2)]),
    }


@pytest.mark.parametrize("name", list(_id_sets()))
def test_hex_ids_read_as_the_list_of_hex_strings(name, monkeypatch):
    raw = _id_sets()[name]
    want = [bytes(r).hex() for r in raw]
    monkeypatch.setattr(traceids, "_CHUNK", 7)  # iteration crosses chunk boundaries
    ids = HexIds(raw)
    assert len(ids) == len(want)
    assert list(ids) == want
    assert [ids[i] for i in range(len(want))] == want
    assert ids[-1] == want[-1] and ids[2:9] == want[2:9]
    pick = np.array([3, 0, 2, 2])
    assert list(ids.take(pick)) == [want[i] for i in pick]


@pytest.mark.parametrize("name", list(_id_sets()))
def test_row_index_answers_as_the_dict(name):
    raw = _id_sets()[name]
    want = {bytes(r).hex(): i for i, r in enumerate(raw)}
    index = row_index(HexIds(raw))
    assert isinstance(index, RowIndex)
    assert len(index) == len(want) and list(index) == list(want)
    assert all(index[t] == i and index.get(t) == i and t in index for t, i in want.items())
    assert dict(index) == want
    some = next(iter(want))
    absent = ["0" * 31 + "x", "f" * 32, some.upper() if some.upper() != some else "A" * 32, some[:30],
              some + "00", f"{some[:16]} {some[17:]}", "", 7, None, bytes.fromhex(some)]
    for t in absent:
        if t not in want:
            assert t not in index and index.get(t, -1) == -1
            with pytest.raises(KeyError):
                index[t]


@pytest.mark.parametrize("name", list(_id_sets()))
def test_rows_all_at_once_equal_one_by_one(name):
    raw = _id_sets()[name]
    index = row_index(HexIds(raw))
    ids = [bytes(r).hex() for r in raw]
    rnd = np.random.default_rng(1)
    other = [bytes(r).hex() for r in rnd.integers(0, 256, (50, 16), dtype=np.uint8)]
    mixed = [ids[i] for i in rnd.integers(0, len(ids), 80)] + other + ids[::-1]
    assert traceids.rows_of(index, mixed) == [index.get(t) for t in mixed]
    assert traceids.rows_of(index, mixed) == traceids.rows_of(dict(index), mixed)
    assert [i for i in index.rows(mixed) if i is not None]  # some are found
    odd = [ids[0], ids[1].upper() if ids[1].upper() != ids[1] else "Z" * 32, ids[2][:30], "", ids[3]]
    assert index.rows(odd) == [0, None, None, None, 3]
    assert index.rows([ids[0], ids[1].upper()]) == [0, index.get(ids[1].upper())]
    assert index.rows([]) == []
    empty = row_index(HexIds(np.zeros((0, 16), dtype=np.uint8)))
    assert empty.rows(ids[:3]) == [None, None, None] and ids[0] not in empty


def test_key_clash_ids_are_both_found():
    raw = _id_sets()["key clash"]
    keys = traceids.id_keys(raw)
    assert keys[1] == keys[2]  # the construction holds: two ids, one key
    index = row_index(HexIds(raw))
    assert index[bytes(raw[1]).hex()] == 1 and index[bytes(raw[2]).hex()] == 2
    assert index.rows([bytes(raw[2]).hex(), bytes(raw[1]).hex()]) == [2, 1]


@pytest.mark.parametrize("rows", [[0, 1, 0], [1, 2, 1], [1, 2, 2, 0], [3, 3]])
def test_a_repeated_id_gives_no_index(rows):
    raw = _id_sets()["key clash"][rows]  # repeats, also with a clashing id between the copies
    assert row_index(HexIds(raw)) is None
    assert row_index([bytes(r).hex() for r in raw]) is None


def test_plain_lists_get_a_dict():
    assert row_index(["ab", "cd"]) == {"ab": 0, "cd": 1}
    assert row_index(HexIds(np.zeros((2, 8), dtype=np.uint8) + np.arange(2, dtype=np.uint8)[:, None])) == {
        "00" * 8: 0, "01" * 8: 1}


def test_store_requests_come_with_a_byte_index_equal_to_the_dict(mixed_store):  # noqa: F811
    data_dir, _, _ = mixed_store
    with EmbeddedBackend(data_dir) as b:
        cols, index = window.indexed_entry_requests(b, service=None, route=None, start_ns=None, end_ns=None)
        plain = find_span_columns(b, TraceQuery(root_only=True, limit=None, read_only=True))
    assert isinstance(cols.trace_ids, HexIds) and isinstance(index, RowIndex)
    ids = list(cols.trace_ids)
    assert len(ids) > 10 and ids == [s.trace_id for s in (plain.span(i) for i in range(len(plain)))]
    assert dict(index) == {t: i for i, t in enumerate(ids)}
    taken = cols.take(np.array([4, 1, 1]))
    assert isinstance(taken, SpanColumns) and list(taken.trace_ids) == [ids[4], ids[1], ids[1]]
