"""Where the incident is inside the window: the period when the per-operation slow (or
failure) rate rose, and when it ended.

Users type a window ("the last hour", "the last day"); incidents last minutes. Comparing
the window's top 5 % with the rest dilutes a three-minute incident in an hour of normal
traffic until it looks like the natural tail. So an investigation first locates the
incident, then compares its requests with normal ones of the same operations, taken
from a *frame* around it. Nothing here depends on how long the window is:

- the rate is binned at a resolution set by the data (its extent and request count),
  never by the window's bounds;
- the incident is the one contiguous period whose rate is highest against the rest
  (the binomial scan statistic, "epidemic" change-point model: low, high, low again
  or still high at the end), kept when Fisher's test on inside vs outside counts is
  significant after a Bonferroni correction for every period scanned (or, for a period
  that lasts to the end of the data, for every such period: an incident still going on
  in a short window keeps its power), and the rate at least doubled;
- the frame is the incident plus up to twice its length of data on each side: the
  normal periods it is compared with. Any window that holds the frame gives the same
  analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import stats

MAX_BUCKETS = 720  # O(m^2) periods scanned; 720 buckets of a day are 2 minutes each
MIN_BUCKET_NS = 1_000_000_000
MIN_OUTSIDE = 20  # normal requests needed to call a period different from them
FRAME_FACTOR = 2.0  # normal data taken on each side of the incident, in incident lengths
MIN_FRAME_NS = 120_000_000_000  # ...and at least two minutes each side


@dataclass(slots=True)
class Incident:
    start_ns: int
    end_ns: int  # exclusive; the data's end when it is still going on
    p: float
    rate_in: float
    rate_out: float
    hits_in: int
    n_in: int
    hits_out: int
    n_out: int
    significant: bool
    ongoing: bool
    frame: tuple[int, int]  # [start, end) of the data it is compared with
    by: str = "rate"  # "rate": the requests' slow/failure rate; "component": one component's own time stepped up
    key: tuple[str, str, str] | None = None  # with by="component": the operation or call edge
    service: str | None = None  # with by="component": the service it blames (a starved caller for an edge)
    key_ms: tuple[float, float] | None = None  # with by="component": median time per call before, after
    # with by="component": the slow share of the sampled requests through the key, before and after
    key_slow: tuple[float, float] | None = None

    @property
    def made_slower(self) -> bool:
        """Whether the requests got slower inside: all of them, or (located by a component)
        the ones through that component. A rarely called service that stepped up makes its
        own requests slow without moving the whole system's slow rate."""
        return self.rate_in > self.rate_out or (self.key_slow is not None and self.key_slow[1] > self.key_slow[0])


    def evidence(self) -> dict[str, Any]:
        return {"onset_ns": self.start_ns, "end_ns": self.end_ns, "ongoing": self.ongoing,
                "rate_before": self.rate_out, "rate_after": self.rate_in, "rate_inside": self.rate_in,
                "rate_outside": self.rate_out, "requests_inside": self.n_in, "hits_inside": self.hits_in,
                "requests_outside": self.n_out, "hits_outside": self.hits_out, "p_value": self.p,
                "frame_start_ns": self.frame[0], "frame_end_ns": self.frame[1], "located_by": self.by,
                "key": list(self.key) if self.key else None, "service": self.service,
                "key_ms": list(self.key_ms) if self.key_ms else None,
                "key_slow": list(self.key_slow) if self.key_slow else None}


def resolution(times_ns: np.ndarray, max_buckets: int = MAX_BUCKETS) -> tuple[int, int, int]:
    """(first, end, bucket width) for the scan: over the data's own extent, at least 1 s,
    at most ``max_buckets`` buckets."""
    lo, hi = int(times_ns.min()), int(times_ns.max()) + 1
    width = max(MIN_BUCKET_NS, -(-(hi - lo) // max_buckets))
    return lo, hi, width


def _ll(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Binomial log-likelihood at the MLE rate, elementwise (0 for empty cells)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / np.maximum(n, 1), 0.0)
        a = np.where(k > 0, k * np.log(np.where(p > 0, p, 1.0)), 0.0)
        b = np.where(n - k > 0, (n - k) * np.log(np.where(p < 1, 1.0 - p, 1.0)), 0.0)
    return a + b


def locate(times_ns: Sequence[int], flags: Sequence[bool], *, min_ratio: float = 2.0, min_diff: float = 0.02,
           alpha: float = stats.ALPHA, min_hits: int = stats.MIN_SUPPORT) -> Incident | None:
    """The period of highest hit rate (slow or failed requests) against the rest of the data.

    None when there is too little data to scan; an :class:`Incident` with
    ``significant=False`` when the best period does not stand out."""
    t = np.asarray(times_ns, dtype=np.int64)
    f = np.asarray(flags, dtype=bool)
    if t.size < MIN_OUTSIDE + min_hits or f.sum() < min_hits:
        return None
    lo, hi, width = resolution(t)
    m = max(1, -(-(hi - lo) // width))
    idx = np.clip((t - lo) // width, 0, m - 1)
    n = np.bincount(idx, minlength=m).astype(float)
    k = np.bincount(idx, weights=f.astype(float), minlength=m)
    ck = np.concatenate([[0.0], np.cumsum(k)])
    cn = np.concatenate([[0.0], np.cumsum(n)])
    K, N = ck[-1], cn[-1]
    # every period [a, b) of whole buckets: hits and requests inside
    a = np.arange(m)[:, None]
    b = np.arange(1, m + 1)[None, :]
    valid = b > a
    kin = np.where(valid, ck[b] - ck[a], 0.0)
    nin = np.where(valid, cn[b] - cn[a], 0.0)
    kout, nout = K - kin, N - nin
    with np.errstate(divide="ignore", invalid="ignore"):
        rin = np.where(nin > 0, kin / np.maximum(nin, 1), 0.0)
        rout = np.where(nout > 0, kout / np.maximum(nout, 1), 0.0)
    # An incident needs normal time before it: a period the data opens with (a start-up ramp)
    # has no "before" to have risen from. At least MIN_OUTSIDE requests, over at least a
    # quarter of the period's own length.
    nbefore = np.broadcast_to(cn[a], valid.shape)
    span_before = np.broadcast_to(a.astype(float), valid.shape)
    span_in = (b - a).astype(float)
    ok = (valid & (kin >= min_hits) & (nout >= MIN_OUTSIDE) & (rin > rout) & (nbefore >= MIN_OUTSIDE)
          & (span_before >= 0.25 * span_in))
    if not ok.any():
        return None
    gain = np.where(ok, _ll(kin, nin) + _ll(kout, nout), -np.inf)

    def test(ai: int, bi: int, scanned: int) -> float:
        c = (ai, bi - 1)
        return min(1.0, stats.share_test(int(kin[c]), int(nin[c]), int(kout[c]), int(nout[c])) * scanned)

    # Two families, each Bonferroni-corrected for what it scanned, the better one kept (x2):
    # any period (an incident that began and ended), and periods that last to the end of the
    # data (one still going on: far fewer candidates, so a short window keeps its power).
    j = int(np.argmax(gain))
    ai, bi = divmod(j, m)
    bi += 1
    p = test(ai, bi, int(ok.sum()))
    last = ok[:, m - 1]
    if last.any():
        a2 = int(np.argmax(np.where(last, gain[:, m - 1], -np.inf)))
        p2 = test(a2, m, int(last.sum()))
        if p2 < p:
            ai, bi, p = a2, m, p2
    p = min(1.0, 2 * p)
    ki, ni, ko, no = int(kin[ai, bi - 1]), int(nin[ai, bi - 1]), int(kout[ai, bi - 1]), int(nout[ai, bi - 1])
    ri, ro = ki / max(ni, 1), ko / max(no, 1)
    # The period's bounds: its first and last request, not the buckets' edges.
    inside = (idx >= ai) & (idx < bi)
    start = int(t[inside].min())
    end = int(t[inside].max()) + 1
    ongoing = bi == m
    if ongoing:
        end = hi
    if not ongoing and hi - end < end - start:
        # It "ended" too close to the end of the data to tell a recovery from a lull (or the next
        # wave): what follows it is not normal time. It is still going on.
        ongoing, end = True, hi
        inside = t >= start
        ki, ni, ko, no = int(f[inside].sum()), int(inside.sum()), int(f[~inside].sum()), int((~inside).sum())
        ri, ro = ki / max(ni, 1), ko / max(no, 1)
    sig = p < alpha and ri >= min_ratio * max(ro, 1e-9) and ri - ro >= min_diff
    return Incident(start, end, p, ri, ro, ki, ni, ko, no, sig, ongoing, frame_of(start, end, lo, hi))


def frame_of(start: int, end: int, lo: int, hi: int) -> tuple[int, int]:
    """The incident and the normal data around it that it is compared with."""
    pad = max(int(FRAME_FACTOR * (end - start)), MIN_FRAME_NS)
    return max(lo, start - pad), min(hi, end + pad)


def locate_merged(times_ns: Sequence[int], flags: Sequence[bool], max_parts: int = 3, **kw) -> Incident | None:
    """:func:`locate`, then again on the data outside what was found: trouble that comes in
    adjacent waves (one fault ends as another begins) is one incident, as long as each wave is
    significant on its own and lies inside the frame of the first. Otherwise the second wave
    would sit in the "normal" data the first is compared with."""
    t = np.asarray(times_ns, dtype=np.int64)
    f = np.asarray(flags, dtype=bool)
    first = locate(t, f, **kw)
    if first is None or not first.significant:
        return first
    lo, hi = int(t.min()), int(t.max()) + 1
    start, end = first.start_ns, first.end_ns
    # Did the trouble begin earlier, in a quieter wave that runs into this one? The data
    # before it, scanned for a period that lasts up to its start.
    before = t < start
    if before.any():
        earlier = locate(t[before], f[before], **kw)
        if earlier is not None and earlier.significant and earlier.ongoing:
            start = earlier.start_ns
    for _ in range(max_parts - 1):
        keep = (t < start) | (t >= end)
        nxt = locate(t[keep], f[keep], **kw)
        if nxt is None or not nxt.significant:
            break
        f_lo, f_hi = frame_of(start, end, lo, hi)
        if nxt.end_ns <= f_lo or nxt.start_ns >= f_hi:
            break  # another incident, far away: not this one
        start, end = min(start, nxt.start_ns), max(end, nxt.end_ns)
    if (start, end) == (first.start_ns, first.end_ns):
        return first
    inside = (t >= start) & (t < end)
    ki, ni, ko, no = int(f[inside].sum()), int(inside.sum()), int(f[~inside].sum()), int((~inside).sum())
    p = min(first.p, 1.0)
    return Incident(start, end, p, ki / max(ni, 1), ko / max(no, 1), ki, ni, ko, no, True, end >= hi,
                    frame_of(start, end, lo, hi))
