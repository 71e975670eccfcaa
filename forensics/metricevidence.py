"""Metric series that move with the slow-request (or error) rate.

Each series is resampled to the analysis buckets (mean per bucket; counters as
a per-second rate; histograms as the mean of each interval's observations), then rank-correlated with the rate at lags of up to a few
buckets either way: a connection pool filling up usually *leads* latency.
The lag scan is Bonferroni-corrected, series are BH-corrected together. The
level of the series in slow periods versus baseline periods is reported
alongside, since "pool wait 410 ms vs 2 ms" is what an on-call engineer reads.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import MetricSeries

from . import stats
from .metricnames import SeriesKey, display_names

MAX_LAG = 3


@dataclass(slots=True)
class MetricStat:
    name: str
    service: str
    attributes: dict[str, Any]
    unit: str
    lag: int  # buckets; positive = the metric leads the rate
    rho: float
    p: float
    level_slow: float
    level_base: float
    p_adj: float = 1.0
    significant: bool = False
    series: list[float | None] = field(default_factory=list)
    display: str = ""  # short distinguishing name (metricnames), set by evidence()

    @property
    def label(self) -> str:
        """The full label set; summaries and tables use :attr:`display`."""
        attrs = ",".join(f"{k}={v}" for k, v in sorted(self.attributes.items()))
        return f"{self.name}{{{attrs}}}" if attrs else self.name

    def evidence(self) -> dict[str, Any]:
        return {"correlation": self.rho, "lag_buckets": self.lag, "p_value": self.p, "p_adjusted": self.p_adj,
                "level_in_slow_periods": self.level_slow, "level_in_baseline_periods": self.level_base,
                "unit": self.unit, "attributes": self.attributes, "service": self.service,
                "display_name": self.display or self.label}


_DISTRIBUTIONS = ("histogram", "exponential_histogram", "summary")


def point_values(series: MetricSeries) -> tuple[np.ndarray, np.ndarray]:
    """(time, value) per point, as a level that can be compared over time.

    - gauges, non-monotonic sums: the value;
    - monotonic CUMULATIVE sums: the per-second rate between consecutive points;
    - histograms (and summaries): the mean of the observations *in each interval*:
      Δsum / Δcount between consecutive CUMULATIVE points, sum / count of a DELTA
      point. A cumulative running mean (sum / count since start) only drifts
      towards the long-run mean and correlates with anything that trends.

    A counter reset (the count or value goes down, or the start time changes)
    starts a new run: the point after it counts from zero. Intervals without
    observations (Δcount = 0) carry no value, and neither does a point whose level is
    not a finite number (a NaN or infinite sum, inf - inf: a sender's bug)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # those are dropped just below
        t, v = _levels(series)
    ok = np.isfinite(v)
    return (t, v) if ok.all() else (t[ok], v[ok])


def _levels(series: MetricSeries) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted(series.points, key=lambda p: p.time_ns)
    t = np.array([p.time_ns for p in pts], dtype=np.int64)
    v = np.array([p.value for p in pts], dtype=float)
    delta = pts[0].temporality == "DELTA"
    if series.kind in _DISTRIBUTIONS and all(p.count is not None and p.sum is not None for p in pts):
        c = np.array([float(p.count) for p in pts])
        sm = np.array([float(p.sum) for p in pts])
        if delta:
            ok = c > 0
            return t[ok], sm[ok] / c[ok]
        if len(pts) < 2:
            return t[:0], v[:0]
        st = np.array([p.start_time_ns for p in pts], dtype=np.int64)
        dc, ds = np.diff(c), np.diff(sm)
        reset = (dc < 0) | ((st[1:] != st[:-1]) & (st[1:] > 0))  # start time 0 = unknown
        dc, ds = np.where(reset, c[1:], dc), np.where(reset, sm[1:], ds)
        ok = dc > 0
        return t[1:][ok], ds[ok] / dc[ok]
    if series.kind == "sum" and any(p.is_monotonic for p in pts) and not delta and len(pts) > 1:
        st = np.array([p.start_time_ns for p in pts], dtype=np.int64)
        dt = np.diff(t) / 1e9
        dv = np.diff(v)
        restarted = (st[1:] != st[:-1]) & (st[1:] > 0)  # start time 0 = unknown
        ok = (dt > 0) & (dv >= 0) & ~restarted  # a negative step or a new start time is a counter reset
        return t[1:][ok], dv[ok] / dt[ok]
    return t, v


def resample(series: MetricSeries, e: np.ndarray) -> np.ndarray:
    """Mean of :func:`point_values` per bucket of ``e``; NaN where no point fell."""
    if not series.points:
        return np.full(len(e) - 1, np.nan)
    t, v = point_values(series)
    out = np.full(len(e) - 1, np.nan)
    if t.size == 0:
        return out
    idx = np.searchsorted(e, t, side="right") - 1
    ok = (idx >= 0) & (idx < len(e) - 1)
    sums = np.bincount(idx[ok], weights=v[ok], minlength=len(e) - 1)
    cnt = np.bincount(idx[ok], minlength=len(e) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    return out


def _labels(s: MetricSeries) -> dict[str, Any]:
    """The series' labels plus its instance id (a resource attribute), the full set kept in the evidence."""
    inst = s.resource.get(semconv.SERVICE_INSTANCE_ID)
    return dict(s.attributes) | ({semconv.SERVICE_INSTANCE_ID: inst} if inst else {})


def evidence(series: Sequence[MetricSeries], e: np.ndarray, rate: np.ndarray, slow_mask: np.ndarray, *,
             min_rho: float = 0.5, alpha: float = stats.ALPHA, min_points: int = 8) -> list[MetricStat]:
    """``rate``: per-bucket slow (or error) rate, NaN where no requests;
    ``slow_mask``: buckets counted as slow periods for the level comparison."""
    out: list[MetricStat] = []
    # Siblings for display names are every series of the window, not only those that correlate.
    keyed = [s for s in series if s.points]
    names = dict(zip(map(id, keyed), display_names([SeriesKey(s.service_name, s.name, _labels(s)) for s in keyed])))
    for s in series:
        if not s.points:
            continue
        m = resample(s, e)
        best = None
        for lag in range(-MAX_LAG, MAX_LAG + 1):
            if lag >= 0:
                x, y = m[: len(m) - lag] if lag else m, rate[lag:]
            else:
                x, y = m[-lag:], rate[: len(rate) + lag]
            ok = ~np.isnan(x) & ~np.isnan(y)
            if ok.sum() < min_points:
                continue
            rho, p = stats.correlation(x[ok], y[ok])
            if np.isnan(rho):
                continue
            if best is None or abs(rho) > abs(best[1]):
                best = (lag, rho, p)
        if best is None:
            continue
        lag, rho, p = best
        p = min(1.0, p * (2 * MAX_LAG + 1))
        ms, mb = m[slow_mask & ~np.isnan(m)], m[~slow_mask & ~np.isnan(m)]
        out.append(MetricStat(s.name, s.service_name, _labels(s), s.unit, lag, rho, p,
                              float(ms.mean()) if ms.size else float("nan"),
                              float(mb.mean()) if mb.size else float("nan"),
                              series=[None if np.isnan(x) else float(x) for x in m], display=names.get(id(s), "")))
    for st, pa in zip(out, stats.bh_adjust([s.p for s in out])):
        st.p_adj = pa
        # A series with no points in slow or in baseline periods "moves with" the rate only
        # by appearing or vanishing with it (a canary's metrics): no level to compare, no cause.
        st.significant = (pa < alpha and abs(st.rho) >= min_rho
                          and not math.isnan(st.level_slow) and not math.isnan(st.level_base))
    out.sort(key=lambda s: (not s.significant, -abs(s.rho)))
    return out


# --- resource steps ---------------------------------------------------------------------
# What traces cannot see: a service starved of CPU, memory or threads. Its calls slow down,
# but when it is called a few times a minute the traces hold too few of them to tell; its
# own resource metrics show the step at once. Only per-service resource metrics count:
# latency and traffic series are what the traces already measure (and, on sparse traffic,
# jump by orders of magnitude for no reason), and node/host/system series are shared by
# every service placed there.
RESOURCE_NAME = re.compile(r"(cpu|memory|mem_|heap|gc_|\.gc\.|threads?|pool|file_descriptor|open_fds|throttl)",
                           re.IGNORECASE)
SHARED_NAME = re.compile(r"(^|[._])(node|host|system|machine)[._]", re.IGNORECASE)
STEP_MIN_BEFORE = 10  # scrapes of history the step is judged against
STEP_MIN_AFTER = 2  # one scrape is a spike, not a step
STEP_MIN_RATIO = 10.0  # an order of magnitude: what saturation looks like, not load


def is_resource_metric(name: str) -> bool:
    return bool(RESOURCE_NAME.search(name)) and not SHARED_NAME.search(name)


@dataclass(slots=True)
class ResourceStep:
    """A service's resource metric that stepped up by an order of magnitude and stayed up."""
    name: str
    service: str
    attributes: dict[str, Any]
    unit: str
    time_ns: int  # the first point of the step
    before: float  # median before the step
    after: float  # median from the step on
    points_after: int
    p: float  # corrected for the splits and series scanned
    display: str = ""

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else float("inf")

    def evidence(self) -> dict[str, Any]:
        return {"resource_step": True, "metric": self.name, "service": self.service, "attributes": self.attributes,
                "unit": self.unit, "step_time_ns": self.time_ns, "level_before": self.before,
                "level_after": self.after, "ratio": self.ratio, "points_after": self.points_after,
                "p_adjusted": self.p, "display_name": self.display or self.name}


def resource_steps(series: Sequence[MetricSeries], lo_ns: int, hi_ns: int, *,
                   alpha: float = stats.ALPHA) -> list[ResourceStep]:
    """Per-service resource series (:func:`is_resource_metric`) that stepped up by an order
    of magnitude at a time inside ``[lo_ns, hi_ns)``: for each candidate start (at least
    :data:`STEP_MIN_BEFORE` points of history before it), the episode is the run of
    points from there that each sit above every point before it and at ten times their
    median (points after ``hi_ns`` may confirm that it lasted); it needs
    :data:`STEP_MIN_AFTER` points and a Welch t on log level significant after correcting for
    the starts and series scanned. The earliest start that holds per series; largest step
    first."""
    from scipy import stats as _st
    cands = [s for s in series if s.points and s.service_name and is_resource_metric(s.name)]
    names = dict(zip(map(id, cands), display_names([SeriesKey(s.service_name, s.name, _labels(s)) for s in cands])))
    scanned: list[tuple[MetricSeries, np.ndarray, np.ndarray, list[int]]] = []
    for s in cands:
        t, v = point_values(s)
        ok = np.isfinite(v) & (v >= 0)
        t, v = t[ok], v[ok]
        starts = [i for i in range(STEP_MIN_BEFORE, t.size - STEP_MIN_AFTER + 1) if lo_ns <= t[i] < hi_ns]
        if starts and (v > 0).any():
            scanned.append((s, t, v, starts))
    n_tests = sum(stats.scan_tests(len(starts)) for *_, starts in scanned)
    out: list[ResourceStep] = []
    for s, t, v, starts in scanned:
        y = np.log(np.maximum(v, float(v[v > 0].min()) / 2))
        best = None
        # values near the float limit (a sender's bug, e.g. 1e308) overflow a median's mean
        # to inf, which then is no step: quietly, not a RuntimeWarning on the user's terminal
        with np.errstate(over="ignore"):
            for i in starts:
                mb = float(np.median(v[:i]))
                if mb <= 0:
                    continue
                # every point of the episode is above all history and ten times its usual level
                bar = max(float(v[:i].max()), STEP_MIN_RATIO * mb)
                run = i
                while run < v.size and v[run] > bar:
                    run += 1
                if run - i < STEP_MIN_AFTER:
                    continue
                ma = float(np.median(v[i:run]))
                tt = _st.ttest_ind(y[i:run], y[:i], equal_var=False, alternative="greater")
                # a flat series has no variance: its step is then as certain as its size says
                p = min(1.0, (float(tt.pvalue) if np.isfinite(tt.pvalue) else 0.0) * max(n_tests, 1.0))
                if p < alpha:  # the earliest start that holds is where it began
                    best = (p, i, run, mb, ma)
                    break
        if best is not None:
            p, i, run, mb, ma = best
            out.append(ResourceStep(s.name, s.service_name, _labels(s), s.unit, int(t[i]), mb, ma, run - i, p,
                                    names.get(id(s), "")))
    out.sort(key=lambda r: -r.ratio)
    return out
