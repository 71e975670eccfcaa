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
from .attributes import scalar_value

MIN_BUCKET_NS = 1_000_000_000  # finer than a metric export interval is pointless
MIN_PER_BUCKET = 20  # requests per bucket on average, so a bucket's rate means something
NEAR_MIN_NS = 5_000_000_000  # "near the onset" never narrower than this, however fine the buckets


def bucket_width(start_ns: int, end_ns: int, buckets: int = 60, n_requests: int | None = None,
                 min_per_bucket: int = MIN_PER_BUCKET) -> int:
    """Up to ``buckets`` buckets over the window, but never under 1 s nor, when
    ``n_requests`` is known, so narrow that a bucket holds fewer than
    ``min_per_bucket`` requests on average: a 40 s run at 20 req/s gets 40
    one-second buckets (enough for an onset and a metric correlation), a sparse
    one gets fewer, wider buckets. Without ``n_requests`` the old 10 s floor holds."""
    span = max(0, end_ns - start_ns)
    width = max(MIN_BUCKET_NS, span // buckets + 1)
    if n_requests is None:
        return max(width, 10 * MIN_BUCKET_NS)
    return max(width, span * min_per_bucket // max(n_requests, 1) + 1)


def analysis_width(start_ns: int, end_ns: int, times_ns: Sequence[int], buckets: int = 60,
                   max_buckets: int = 240) -> int:
    """Bucket width for a window whose requests are ``times_ns``: sized on the span
    the requests actually cover (a window that runs on past the last request, as
    ``--until`` often does, must not dilute the buckets), at most ``max_buckets``
    over the whole window."""
    t = np.asarray(times_ns, dtype=np.int64)
    if t.size == 0:
        return bucket_width(start_ns, end_ns, buckets, n_requests=0)
    lo, hi = max(start_ns, int(t.min())), min(end_ns, int(t.max()) + 1)
    if hi <= lo:
        lo, hi = start_ns, end_ns
    return max(bucket_width(lo, hi, buckets, n_requests=int(t.size)), (end_ns - start_ns) // max_buckets + 1)


def near_ns(width: int) -> int:
    """How close to an onset a version change counts as "near" it (3 buckets, at least 5 s)."""
    return max(3 * width, NEAR_MIN_NS)


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


def weighted_counts(times_ns: Sequence[int], flags: Sequence[bool], weights: Sequence[float],
                    e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket: (Σ weight of hits, Σ weight): estimated counts for tail-sampled data."""
    t = np.asarray(times_ns, dtype=np.int64)
    f = np.asarray(flags, dtype=bool)
    w = np.asarray(weights, dtype=float)
    idx = np.clip(np.searchsorted(e, t, side="right") - 1, 0, len(e) - 2)
    return (np.bincount(idx, weights=w * f, minlength=len(e) - 1),
            np.bincount(idx, weights=w, minlength=len(e) - 1))


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
                 alpha: float = stats.ALPHA, weighted: tuple[np.ndarray, np.ndarray] | None = None) -> Onset | None:
    """``weighted`` = per-bucket (Σ w of hits, Σ w) for tail-sampled data: the split
    and its p-value come from the stored counts (a valid test: with a keep
    probability that does not change over time, the stored rate changes only if
    the real one does), the rates and the effect floor from the weighted ones."""
    # An onset must hold for a tenth of the window at least: a burst in the last few
    # buckets is a blip (a busy neighbour's tail), not the start of an incident.
    split, p, rb, ra = stats.binomial_split(k, n, min_side=max(2, len(k) // 10))
    if split < 0:
        return None
    if weighted is not None:
        kw, nw = np.asarray(weighted[0], float), np.asarray(weighted[1], float)
        nb, na = nw[:split].sum(), nw[split:].sum()
        rb = float(kw[:split].sum() / nb) if nb > 0 else 0.0
        ra = float(kw[split:].sum() / na) if na > 0 else 0.0
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
        v = scalar_value(v)  # an array or map value (e.g. a version sent as ["1", "2"]) is a dict key
        if v is None:
            continue
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
    return versions_first_seen_groups(span_groups(spans), keys)


def span_groups(spans: Iterable[Any]) -> list[list]:
    """[attributes, resource, first start, count] per distinct (attributes, resource)
    dict pair, in the order the pairs first appear."""
    # Spans of a read-only backend answer share their attribute and resource dicts: group
    # by those first (one dict lookup per span), then read the keys once per group.
    groups: dict[tuple[int, int], list] = {}
    held = []  # keeps every grouped dict alive, so no id() is reused during the pass
    for s in spans:
        a, r, t = s.attributes, s.resource, s.start_ns
        g = groups.get((id(a), id(r)))
        if g is None:
            groups[(id(a), id(r))] = [a, r, t, 1]
            held.append(s)
        else:
            g[3] += 1
            if t < g[2]:
                g[2] = t
    return list(groups.values())


def request_groups(req: Any, rows: np.ndarray) -> list[list]:
    """:func:`span_groups` of the requests ``rows`` of a :class:`stagetrace.backend.SpanColumns`,
    one group per prototype in the order the prototypes first appear (the same first-seen
    answer: values are merged across groups)."""
    if not len(rows):
        return []
    proto = req.proto[rows]
    start = req.start_ns[rows]
    # prototype codes are small integers: counted and reduced per code, no sort of the rows
    n_protos = len(req.protos)
    count = np.bincount(proto, minlength=n_protos)
    first = np.full(n_protos, len(proto), dtype=np.int64)
    np.minimum.at(first, proto, np.arange(len(proto)))
    t_min = np.full(n_protos, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(t_min, proto, start)
    used = np.flatnonzero(count)
    out = []
    for j in used[np.argsort(first[used], kind="stable")].tolist():
        p = req.protos[j]
        out.append([p.attributes, p.resource, int(t_min[j]), int(count[j])])
    return out


def versions_first_seen_groups(groups: Iterable[Sequence], keys: Sequence[str]) -> list[FirstSeen]:
    """:func:`versions_first_seen` of :func:`span_groups` (attributes, resource, first
    start, count)."""
    seen: dict[tuple[str, str], FirstSeen] = {}
    for a, r, t, n in groups:
        for k in keys:
            v = a.get(k)
            if v is None:
                v = r.get(k)
                if v is None:
                    continue
            v = scalar_value(v)
            if v is None:
                continue
            fs = seen.get((k, v))
            if fs is None:
                seen[(k, v)] = FirstSeen(k, str(v), t, n)
            else:
                fs.count += n
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


def request_timeline(e, k, n, errk, t0, dur, weights=None) -> dict[str, Any]:
    """Per bucket: requests, slow (``k``), errors and p95 latency, for the timeline chart.
    With ``weights`` (tail-sampled data) the counts passed in are estimates and are
    rounded, and the p95 is the weighted one."""
    idx = np.clip(np.searchsorted(e, t0, side="right") - 1, 0, len(e) - 2)
    w = None if weights is None else np.asarray(weights, float)
    # rows grouped by bucket once (stable: each bucket's rows keep their order), not one
    # mask over every request per bucket (240 buckets x 1.4M requests at 10M spans)
    order = np.argsort(idx, kind="stable")
    cuts = np.searchsorted(idx[order], np.arange(len(e)))
    d_all = np.asarray(dur)[order]
    w_all = None if w is None else w[order]
    p95 = []
    for b in range(len(e) - 1):
        lo, hi = cuts[b], cuts[b + 1]
        d = d_all[lo:hi]
        p95.append(float(stats.weighted_quantile(d, 95, None if w_all is None else w_all[lo:hi]) / 1e6)
                   if d.size else None)
    as_int = (lambda a: [int(round(x)) for x in np.asarray(a, float)]) if w is not None else (lambda a: a.tolist())
    return {"bucket_start_ns": [int(x) for x in e[:-1]], "bucket_width_ns": int(e[1] - e[0]),
            "requests": as_int(n), "slow": as_int(k), "errors": as_int(errk), "p95_ms": p95}
