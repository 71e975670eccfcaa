"""The compact input/output profile of one inference call, shared by the
instrumentation (which writes it on the span) and the forensics (which reads it).

Privacy rule: no feature value leaves the process finer than its *bin*. A numeric
value is recorded as a bin code: the top 14 bits of its IEEE-754 double (sign,
exponent, two leading mantissa bits), i.e. one of 4 linear sub-bins of its power
of two. A bin is 12.5-25 % of the value wide (50 falls in [48, 56)), and batch
min/max are bins too, so the min/max of a one-row batch is a bin, never the raw
value. A categorical value is a 15-bit hash of its text: a sketch of the category
set that shows a new or vanished category, but guessable for a small known domain,
so sensitive fields go on the redaction list (kind ``r``: only their missing count).
Drift is measured on these bins (PSI and chi-square): fine enough for a 0.5 sigma
shift of a feature whose spread is at least ~1/5 of its magnitude. A feature
packed tightly around a large offset (a year, an epoch time) moves inside one bin:
that is the documented price of not recording values.

Encoding: one string attribute, ``ml.input.profile``, so the SDK cleans one value
instead of one per element::

    1|rows|sampled|kinds|codes|missing|lo|hi|distinct

``kinds`` has one letter per feature (``n`` numeric, ``c`` categorical, ``r``
redacted); the arrays are base64 little-endian: ``codes`` int16[sampled*d]
row-major (sampled rows x features), then, only when ``codes`` is a sample of a
bigger batch, ``missing`` uint32[d] and ``distinct`` uint32[d] over all rows and
``lo``/``hi`` int16[d] (bin codes of the batch min/max); when every row is
sampled they are empty and derived from ``codes``.

Version ``2`` (the fast path of an all-numeric batch of at most 256 rows, written
without a numpy call beyond ``tobytes``: the two top bytes of each little-endian
double are sliced out and the bits below the bin masked off) has the same fields,
every kind ``n``, and ``codes`` planar: the low bytes of all values, then their high
bytes; together they are the top 16 bits of the double with the lowest two zeroed,
i.e. the bin code shifted left by 2, which the reader shifts back. Readers accept 1
and 2.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

VERSION = "1"
VERSION_FAST = "2"  # numeric codes stored as (code << 2): the masked top 16 bits of the double
# A numeric bin is the top 14 bits of the IEEE-754 double: sign, the 11-bit exponent
# and the 2 leading mantissa bits, i.e. 4 linear sub-bins per power of two. One shift
# of the float's bits computes it for a whole batch (the cost budget is a few us).
MANTISSA_BITS = 2
SHIFT = 52 - MANTISSA_BITS
MAG_MASK = (1 << (11 + MANTISSA_BITS)) - 1  # 0x1FFF
_INF_MAG = 2047 << MANTISSA_BITS  # exponent all ones, leading mantissa bits 0
MISSING_CODE = -(2 ** 15)  # categorical missing (numeric missing is the NaN bin)


def bin_codes(x: Any) -> np.ndarray:
    """int16 bin code of each value (NaN keeps a NaN code: see :func:`is_missing`)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    return (a.view(np.int64) >> SHIFT).astype(np.int16)


def is_missing(codes: np.ndarray) -> np.ndarray:
    """NaN (numeric) or the missing marker (categorical)."""
    c = np.asarray(codes).astype(np.int32)
    return ((c & MAG_MASK) > _INF_MAG) | (c == MISSING_CODE)


def bin_order(codes: np.ndarray) -> np.ndarray:
    """A value-ordered integer per code (codes of negative values run backwards)."""
    c = np.asarray(codes).astype(np.int32)
    mag = c & MAG_MASK
    return np.where(c < 0, -mag, mag)


def bin_edges(code: int) -> tuple[float, float]:
    """The value range [lo, hi) a numeric bin code stands for."""
    c = int(code)
    mag = c & MAG_MASK
    e, sub = divmod(mag, 1 << MANTISSA_BITS)
    if e == 0:
        lo, hi = 0.0, 2.0 ** -1022
    elif mag >= _INF_MAG:
        lo, hi = math.inf, math.inf
    else:
        scale = 2.0 ** (e - 1023)
        lo, hi = scale * (1 + sub / 4), scale * (1 + (sub + 1) / 4)
    return (-hi, -lo) if c < 0 else (lo, hi)


def bin_label(code: int) -> str:
    lo, hi = bin_edges(code)
    return f"[{lo:.4g}, {hi:.4g})"


def category_code(v: Any) -> int:
    """15-bit hash of a category's text (stable across processes, unlike hash())."""
    if v is None or (isinstance(v, float) and v != v):
        return MISSING_CODE
    data = v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")
    return zlib.crc32(data) & 0x7FFF


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode("ascii")


def _unb64(s: str, dtype: Any) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype) if s else np.zeros(0, dtype=dtype)


@dataclass(slots=True)
class InputProfile:
    """The decoded ``ml.input.profile`` of one call. When every row was sampled the
    per-feature summaries are derived from ``codes`` (they are not sent)."""

    rows: int
    kinds: str  # one letter per feature: n numeric, c categorical, r redacted
    codes: np.ndarray  # int16[sampled, d]: bin code (numeric) or category hash
    missing: np.ndarray  # int[d], over all rows
    lo: np.ndarray  # int16[d]: bin code of the batch minimum (numeric)
    hi: np.ndarray  # int16[d]: bin code of the batch maximum (numeric)
    distinct: np.ndarray  # int[d]: category-set size in the batch (categorical)

    @property
    def sampled(self) -> int:
        return int(self.codes.shape[0])

    @property
    def width(self) -> int:
        return len(self.kinds)


def encode_input(rows: int, kinds: str, codes: np.ndarray, missing: Any = None, lo: Any = None, hi: Any = None,
                 distinct: Any = None) -> str:
    """``ml.input.profile`` text; pass the summaries only when ``codes`` is a sample."""
    def opt(a: Any, dt: str) -> str:
        return "" if a is None else _b64(np.asarray(a).astype(dt))
    return "|".join((VERSION, str(rows), str(codes.shape[0]), kinds, _b64(codes.astype("<i2", copy=False)),
                     opt(missing, "<u4"), opt(lo, "<i2"), opt(hi, "<i2"), opt(distinct, "<u4")))


def decode_input(text: Any) -> InputProfile | None:
    """Parse ``ml.input.profile``; None if it is not a profile this version reads."""
    try:
        parts = str(text).split("|")
        if len(parts) != 9 or parts[0] not in (VERSION, VERSION_FAST):
            return None
        rows, sampled, kinds = int(parts[1]), int(parts[2]), parts[3]
        d = len(kinds)
        if parts[0] == VERSION_FAST:
            raw = _unb64(parts[4], np.uint8)
            if raw.size != 2 * sampled * d or kinds.strip("n"):
                return None
            m = sampled * d
            top = (raw[m:].astype(np.uint16) << 8) | raw[:m]
            codes = top.view(np.int16) >> 2
        else:
            codes = _unb64(parts[4], "<i2")
        if codes.size != sampled * d:
            return None
        codes = codes.reshape(sampled, d)
        miss = is_missing(codes)
        cat = np.array([k == "c" for k in kinds], dtype=bool)
        num = np.array([k == "n" for k in kinds], dtype=bool)
        missing = _unb64(parts[5], "<u4") if parts[5] else miss.sum(axis=0)
        if parts[6] and parts[7]:
            lo, hi = _unb64(parts[6], "<i2"), _unb64(parts[7], "<i2")
        else:
            lo, hi = _range_codes(codes, miss, num)
        if parts[8]:
            distinct = _unb64(parts[8], "<u4")
        else:
            distinct = np.array([len(set(codes[~miss[:, j], j].tolist())) if cat[j] else 0 for j in range(d)],
                                dtype=np.uint32)
        if not (len(missing) == len(lo) == len(hi) == len(distinct) == d):
            return None
        return InputProfile(rows, kinds, codes, missing, lo, hi, distinct)
    except (ValueError, TypeError, binascii.Error):
        return None


def _range_codes(codes: np.ndarray, miss: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin codes of the smallest and largest non-missing value per numeric column
    (``MISSING_CODE`` where there is none)."""
    d = codes.shape[1]
    lo = np.full(d, MISSING_CODE, dtype=np.int16)
    hi = np.full(d, MISSING_CODE, dtype=np.int16)
    order = bin_order(codes)
    for j in range(d):
        if not num[j]:
            continue
        ok = ~miss[:, j]
        if ok.any():
            col, o = codes[ok, j], order[ok, j]
            lo[j], hi[j] = col[np.argmin(o)], col[np.argmax(o)]
    return lo, hi


@dataclass(slots=True)
class OutputProfile:
    """The decoded ``ml.output.profile``: per-row score and class of the first rows."""

    rows: int
    classes: list[str]  # class labels; index = class code
    scores: np.ndarray  # float32[k]: positive-class probability / regression value / NaN
    predicted: np.ndarray  # int16[k]: index into classes, -1 when unknown
    confidence: np.ndarray  # float32[k]: top-class probability, NaN when unknown

    def encode(self) -> str:
        labels = "\x1f".join(self.classes)
        return "|".join((VERSION, str(self.rows), base64.b64encode(labels.encode()).decode("ascii"),
                         _b64(self.scores.astype("<f4")), _b64(self.predicted.astype("<i2")),
                         _b64(self.confidence.astype("<f4"))))


def decode_output(text: str) -> OutputProfile | None:
    try:
        parts = str(text).split("|")
        if len(parts) != 6 or parts[0] != VERSION:
            return None
        labels = base64.b64decode(parts[2]).decode()
        classes = labels.split("\x1f") if labels else []
        scores, predicted, conf = _unb64(parts[3], "<f4"), _unb64(parts[4], "<i2"), _unb64(parts[5], "<f4")
        k = max(len(scores), len(predicted), len(conf))  # an array not recorded is empty
        if len(classes) == 2 and len(scores) == k and not len(predicted):  # binary: derived from the score
            predicted = (scores > 0.5).astype(np.int16)
            conf = np.maximum(scores, 1 - scores).astype(np.float32)
        scores = scores if len(scores) else np.full(k, np.nan, dtype=np.float32)
        conf = conf if len(conf) else np.full(k, np.nan, dtype=np.float32)
        predicted = predicted if len(predicted) else np.full(k, -1, dtype=np.int16)
        if not (len(scores) == len(predicted) == len(conf)):
            return None
        # an infinite score or confidence (a model's or a sender's bug) is no value: unknown,
        # as NaN already is, so no analysis subtracts inf from inf
        scores = np.where(np.isfinite(scores), scores, np.float32(np.nan)).astype(np.float32)
        conf = np.where(np.isfinite(conf), conf, np.float32(np.nan)).astype(np.float32)
        return OutputProfile(int(parts[1]), classes, scores, predicted, conf)
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        return None


def prediction_id(trace_id: str, span_id: str, row: int | None = None) -> str:
    """The default ``ml.prediction.id``: ``<trace id>-<span id>``, ``-<row>`` for a batch row."""
    base = f"{trace_id}-{span_id}"
    return base if row is None else f"{base}-{row}"


def split_prediction_id(pid: str) -> tuple[str, str, int] | None:
    """(trace id, span id, row) of a default prediction id; None for a custom one."""
    parts = pid.strip().lower().split("-")
    if len(parts) not in (2, 3) or len(parts[0]) != 32 or len(parts[1]) != 16:
        return None
    try:
        int(parts[0], 16), int(parts[1], 16)
        row = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        return None
    return parts[0], parts[1], row


def feature_list(names: Sequence[str]) -> str:
    """``ml.input.features``: names joined by the ASCII unit separator (one string attribute)."""
    return "\x1f".join(names)


def parse_feature_list(text: Any) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(x) for x in text]
    return str(text).split("\x1f") if text else []
