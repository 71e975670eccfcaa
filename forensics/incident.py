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
  significant after a Bonferroni correction for every period scanned, and the rate at
  least doubled;
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


    def evidence(self) -> dict[str, Any]:
        return {"onset_ns": self.start_ns, "end_ns": self.end_ns, "ongoing": self.ongoing,
                "rate_before": self.rate_out, "rate_after": self.rate_in, "rate_inside": self.rate_in,
                "rate_outside": self.rate_out, "requests_inside": self.n_in, "hits_inside": self.hits_in,
                "requests_outside": self.n_out, "hits_outside": self.hits_out, "p_value": self.p,
                "frame_start_ns": self.frame[0], "frame_end_ns": self.frame[1], "located_by": self.by,
                "key": list(self.key) if self.key else None}


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
    ok = valid & (kin >= min_hits) & (nout >= MIN_OUTSIDE) & (rin > rout)
    if not ok.any():
        return None
    gain = np.where(ok, _ll(kin, nin) + _ll(kout, nout), -np.inf)
    j = int(np.argmax(gain))
    ai, bi = divmod(j, m)
    bi += 1
    ki, ni, ko, no = int(kin[ai, bi - 1]), int(nin[ai, bi - 1]), int(kout[ai, bi - 1]), int(nout[ai, bi - 1])
    scanned = int(ok.sum())
    p = min(1.0, stats.share_test(ki, ni, ko, no) * scanned)
    ri, ro = ki / max(ni, 1), ko / max(no, 1)
    # The period's bounds: its first and last request, not the buckets' edges.
    inside = (idx >= ai) & (idx < bi)
    start = int(t[inside].min())
    end = int(t[inside].max()) + 1
    ongoing = bi == m
    if ongoing:
        end = hi
    sig = p < alpha and ri >= min_ratio * max(ro, 1e-9) and ri - ro >= min_diff
    return Incident(start, end, p, ri, ro, ki, ni, ko, no, sig, ongoing, frame_of(start, end, lo, hi))


def frame_of(start: int, end: int, lo: int, hi: int) -> tuple[int, int]:
    """The incident and the normal data around it that it is compared with."""
    pad = max(int(FRAME_FACTOR * (end - start)), MIN_FRAME_NS)
    return max(lo, start - pad), min(hi, end + pad)
