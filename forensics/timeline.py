"""When it began: the change point of a rate (slow requests, or errors), and the
versions first seen near it.

The window is cut into equal buckets; the onset is the single split that best
explains the rate as "low before, higher after" (binomial likelihood), kept only
when Fisher's test on before/after counts is significant after correcting for
the number of splits scanned, and the rate at least doubled. A steady tail
yields no onset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import stats

MIN_BUCKET_NS = 10_000_000_000


def bucket_width(start_ns: int, end_ns: int, buckets: int = 60) -> int:
    return max(MIN_BUCKET_NS, (end_ns - start_ns) // buckets + 1)


def edges(start_ns: int, end_ns: int, width: int) -> np.ndarray:
    n = max(1, int(np.ceil((end_ns - start_ns) / width)))
    return start_ns + width * np.arange(n + 1, dtype=np.int64)


def counts(times_ns: Sequence[int], flags: Sequence[bool], e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket: (hits, total)."""
    t = np.asarray(times_ns, dtype=np.int64)
    f = np.asarray(flags, dtype=bool)
    idx = np.clip(np.searchsorted(e, t, side="right") - 1, 0, len(e) - 2)
    n = np.bincount(idx, minlength=len(e) - 1)
    k = np.bincount(idx, weights=f.astype(float), minlength=len(e) - 1).astype(int)
    return k, n


@dataclass(slots=True)
class Onset:
    index: int
    time_ns: int
    p: float
    rate_before: float
    rate_after: float
    significant: bool

    def evidence(self) -> dict[str, Any]:
        return {"onset_ns": self.time_ns, "rate_before": self.rate_before, "rate_after": self.rate_after,
                "p_value": self.p}


def detect_onset(k: np.ndarray, n: np.ndarray, e: np.ndarray, *, min_ratio: float = 2.0,
                 alpha: float = stats.ALPHA) -> Onset | None:
    split, p, rb, ra = stats.binomial_split(k, n)
    if split < 0:
        return None
    sig = p < alpha and ra >= min_ratio * max(rb, 1e-9) and ra - rb >= 0.02
    return Onset(split, int(e[split]), p, rb, ra, sig)


@dataclass(slots=True)
class FirstSeen:
    attribute: str
    value: Any
    first_ns: int
    count: int


def first_seen(observations: Iterable[tuple[int, str, Any]]) -> list[FirstSeen]:
    """(time, attribute, value) observations -> first time each value appears."""
    seen: dict[tuple[str, Any], FirstSeen] = {}
    for t, k, v in observations:
        fs = seen.get((k, v))
        if fs is None:
            seen[(k, v)] = FirstSeen(k, v, t, 1)
        else:
            fs.count += 1
            if t < fs.first_ns:
                fs.first_ns = t
    return sorted(seen.values(), key=lambda f: f.first_ns)


def versions_first_seen(spans: Iterable[Any], keys: Sequence[str]) -> list[FirstSeen]:
    """First time each value of ``keys`` (span attribute, else resource) appears:
    one pass, no intermediate tuples (this runs over every request of the window)."""
    seen: dict[tuple[str, str], FirstSeen] = {}
    for s in spans:
        a, r, t = s.attributes, s.resource, s.start_ns
        for k in keys:
            v = a.get(k)
            if v is None:
                v = r.get(k)
                if v is None:
                    continue
            fs = seen.get((k, v))
            if fs is None:
                seen[(k, v)] = FirstSeen(k, str(v), t, 1)
            else:
                fs.count += 1
                if t < fs.first_ns:
                    fs.first_ns = t
    merged: dict[tuple[str, str], FirstSeen] = {}
    for fs in seen.values():  # 2 and "2" are one version
        m = merged.get((fs.attribute, fs.value))
        if m is None:
            merged[(fs.attribute, fs.value)] = fs
        else:
            m.count += fs.count
            m.first_ns = min(m.first_ns, fs.first_ns)
    return sorted(merged.values(), key=lambda f: f.first_ns)


def new_in_window(entries: Sequence[FirstSeen], start_ns: int, width: int, min_count: int = 3) -> list[FirstSeen]:
    """Values that appear only after the window began (a deploy or rollout inside it)."""
    return [f for f in entries if f.first_ns >= start_ns + width and f.count >= min_count]


def request_timeline(e, k, n, errk, t0, dur) -> dict[str, Any]:
    """Per bucket: requests, slow (``k``), errors and p95 latency, for the timeline chart."""
    idx = np.clip(np.searchsorted(e, t0, side="right") - 1, 0, len(e) - 2)
    p95 = []
    for b in range(len(e) - 1):
        d = dur[idx == b]
        p95.append(float(np.percentile(d, 95) / 1e6) if d.size else None)
    return {"bucket_start_ns": [int(x) for x in e[:-1]], "bucket_width_ns": int(e[1] - e[0]),
            "requests": n.tolist(), "slow": k.tolist(), "errors": errk.tolist(), "p95_ms": p95}
