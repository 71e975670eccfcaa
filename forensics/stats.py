"""Significance tests shared by the analyses.

One bar for every finding, so "significant" means the same thing everywhere:
a Benjamini-Hochberg adjusted p-value below :data:`ALPHA` *and* an effect size
above a floor set per analysis. The effect floor is what keeps a large sample
from calling a 1-point difference a cause; the p-value is what keeps a small
sample from producing confident nonsense.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Sequence

import numpy as np
import scipy  # scipy.stats itself is imported on first use (see prefetch)

ALPHA = 0.01
# A difference carried by fewer requests than this is an anecdote, whatever its p-value
# (2 of 6 slow requests vs 0 of 114 clears Fisher + BH, and is a healthy tail's noise).
MIN_SUPPORT = 5


def prefetch() -> None:
    """Start importing ``scipy.stats`` on a thread, if nobody has yet.

    Why: the import costs ~1 s of CPU (it rewrites hundreds of docstrings), and an
    investigation uses the tests only after reading its requests, a read spent mostly
    in DuckDB and Arrow with the GIL released; on a thread the import overlaps that
    read instead of preceding it. The first test waits for it if it is still running
    (Python's import lock); a failed import fails again there, with its message."""
    if "scipy.stats" not in sys.modules:
        threading.Thread(target=_import_stats, name="stagetrace-scipy-stats").start()


def _import_stats() -> None:
    try:
        import scipy.stats  # noqa: F401
    except Exception:  # reported by the first use, in the caller's thread
        pass


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg false-discovery-rate adjustment (monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    n = p.size
    if n == 0:
        return []
    p = np.where(np.isnan(p), 1.0, p)
    order = np.argsort(p)
    ranked = p[order] * n / (np.arange(n) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 1.0)
    return out.tolist()


def share(hits: int, n: int, weighted: tuple[float, float] | None = None) -> float:
    """Share of a group holding a value: ``hits / n``, or Σweight(hits) / Σweight(group)
    on tail-sampled data (``weighted``), 0 for an empty group."""
    if weighted is not None:
        return weighted[0] / weighted[1] if weighted[1] else 0.0
    return hits / n if n else 0.0


def share_test(a_hit: int, a_n: int, b_hit: int, b_n: int) -> float:
    """One-sided p-value that the share in group A exceeds the share in group B
    (Fisher's exact test; chi-square once every cell is large, where Fisher gets slow)."""
    if a_n <= 0 or b_n <= 0:
        return 1.0
    # Counts from callers can be inconsistent (hits outside the group they are counted in);
    # a test must still answer, so clamp to what a 2x2 table can hold.
    a_n, b_n = int(a_n), int(b_n)
    a_hit, b_hit = min(max(int(a_hit), 0), a_n), min(max(int(b_hit), 0), b_n)
    table = [[a_hit, a_n - a_hit], [b_hit, b_n - b_hit]]
    if min(a_hit, a_n - a_hit, b_hit, b_n - b_hit) >= 1000:
        chi2, p, _, _ = scipy.stats.chi2_contingency(table, correction=True)
        return p / 2 if a_hit / a_n > b_hit / b_n else 1.0
    return float(scipy.stats.fisher_exact(table, alternative="greater")[1])


def greater_test(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that values in A tend to be larger than in B."""
    if len(a) < 3 or len(b) < 3:
        return 1.0
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if np.all(a_arr == a_arr[0]) and np.all(b_arr == a_arr[0]):
        return 1.0
    return float(scipy.stats.mannwhitneyu(a_arr, b_arr, alternative="greater").pvalue)


def exceedance_test(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that more values of A lie above B's maximum than chance allows.

    Under exchangeability (no change) the k values of A above B's maximum are the top k
    of the pooled sample, all drawn from A: probability C(m, k) / C(m + n, k), exact and
    free of any distribution. It is the test for a fault that makes a share of calls far
    slower than anything seen before (one batch size, one shard) when the baseline is
    small: a tail cut at B's 99th percentile then sits on B's own few outliers."""
    m, n = len(a), len(b)
    if m < 1 or n < 1:
        return 1.0
    top = float(np.max(np.asarray(b, float)))
    k = int(np.sum(np.asarray(a, float) > top))
    if k == 0:
        return 1.0
    lg = math.lgamma
    return float(min(1.0, math.exp(lg(m + 1) - lg(m - k + 1) - lg(m + n + 1) + lg(m + n - k + 1))))


def distribution_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (statistic D, p-value). D is the largest gap
    between the two CDFs, a scale-free effect size for numeric attributes."""
    if len(a) < 3 or len(b) < 3:
        return 0.0, 1.0
    r = scipy.stats.ks_2samp(np.asarray(a, float), np.asarray(b, float))
    return float(r.statistic), float(r.pvalue)


def correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation and its p-value; robust to the skew of latency
    and gauge series. (nan, 1) when either side is constant."""
    if len(x) < 6:
        return float("nan"), 1.0
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan"), 1.0
    r = scipy.stats.spearmanr(xa, ya)
    rho, p = float(r.statistic), float(r.pvalue)
    return (rho, p) if not math.isnan(rho) else (float("nan"), 1.0)


def binomial_split(k: Sequence[int], n: Sequence[int], min_side: int = 2) -> tuple[int, float, float, float]:
    """Best single change point in a rate series (``k`` hits out of ``n`` per bucket).

    Scans every split, keeps the one with the largest binomial log-likelihood
    gain, and tests it with Fisher's exact test (rate after > rate before),
    Bonferroni-corrected for the number of splits scanned. Returns
    ``(index of first bucket after the change, p, rate_before, rate_after)``;
    index -1 when the series is too short.
    """
    k_arr, n_arr = np.asarray(k, float), np.asarray(n, float)
    m = k_arr.size
    if m < 2 * min_side or n_arr.sum() == 0:
        return -1, 1.0, 0.0, 0.0
    ck, cn = np.cumsum(k_arr), np.cumsum(n_arr)
    K, N = ck[-1], cn[-1]

    def ll(kk, nn):
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(nn > 0, kk / np.maximum(nn, 1), 0)
            a = np.where(kk > 0, kk * np.log(np.where(p > 0, p, 1)), 0)
            b = np.where(nn - kk > 0, (nn - kk) * np.log(np.where(p < 1, 1 - p, 1)), 0)
        return a + b

    idx = np.arange(min_side, m - min_side + 1)
    kb, nb = ck[idx - 1], cn[idx - 1]
    gain = ll(kb, nb) + ll(K - kb, N - nb)
    # only increases matter: an onset, not a recovery
    rate_b = np.where(nb > 0, kb / np.maximum(nb, 1), 0)
    rate_a = np.where(N - nb > 0, (K - kb) / np.maximum(N - nb, 1), 0)
    gain = np.where(rate_a > rate_b, gain, -np.inf)
    if not np.isfinite(gain).any():
        return -1, 1.0, float(K / N), float(K / N)
    j = int(np.argmax(gain))
    split = int(idx[j])
    kb_, nb_ = int(kb[j]), int(nb[j])
    p = share_test(int(K) - kb_, int(N) - nb_, kb_, nb_)
    p = min(1.0, p * len(idx))
    return split, p, float(rate_b[j]), float(rate_a[j])


# --- Tail-sampled data: Horvitz-Thompson weights ------------------------------------------
# Behind the gateway Collector's tail sampling, a stored trace stands for
# ``sampling.adjusted_count`` traces (1 / keep probability; absent = 1). Estimates
# (quantiles, shares, rates, means) use these weights; significance tests use the
# Kish effective sample size, so a weighted sample never looks bigger than it is.
# With uniform weights (unsampled data) every helper reduces exactly to the
# unweighted computation, so the embedded store's results do not change.


def is_uniform(weights: Sequence[float] | np.ndarray | None) -> bool:
    if weights is None:
        return True
    w = np.asarray(weights, float)
    return w.size == 0 or bool(np.all(w == w.flat[0]))


def weighted_quantile(values: Sequence[float], q: float, weights: Sequence[float] | None = None) -> float:
    """The ``q``-th percentile (0-100) of the population the weighted sample
    stands for: the inverted weighted CDF (the smallest value whose cumulative
    weight reaches q %). Uniform weights give numpy's default (linear) percentile,
    i.e. exactly what an unweighted analysis computes."""
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan")
    if is_uniform(weights):
        return float(np.percentile(v, q))
    return float(np.percentile(v, q, weights=np.asarray(weights, float), method="inverted_cdf"))


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan")
    if is_uniform(weights):
        return float(v.mean())
    return float(np.average(v, weights=np.asarray(weights, float)))


def effective_n(weights: Sequence[float]) -> float:
    """Kish's effective sample size (Σw)² / Σw²: n for equal weights, less when
    a few heavy traces carry the estimate."""
    w = np.asarray(weights, float)
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def weighted_share_test(a_share: float, a_neff: float, b_share: float, b_neff: float) -> float:
    """One-sided p-value that share A exceeds share B, for weighted shares:
    :func:`share_test` on effective counts (share x Kish n, rounded). Equal
    weights give the raw counts back, hence the same p-value as before."""
    an, bn = int(round(a_neff)), int(round(b_neff))
    return share_test(int(round(a_share * an)), an, int(round(b_share * bn)), bn)


def ks_pvalue(d: float, n_a: float, n_b: float) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov p-value for statistic ``d`` at
    (effective) sample sizes ``n_a``, ``n_b`` (used for weighted ECDFs, where
    ``ks_2samp`` does not apply)."""
    if n_a < 3 or n_b < 3 or d <= 0:
        return 1.0
    from scipy.special import kolmogorov
    en = n_a * n_b / (n_a + n_b)
    return float(min(1.0, kolmogorov(np.sqrt(en) * d)))


def pettitt_increase(x: Sequence[float]) -> tuple[int, float]:
    """Pettitt's non-parametric change-point test, one-sided for an increase: the split
    ``j`` (first index after the change) that maximises how much lower the ranks before
    it sit, and its approximate p-value ``exp(-6K² / (n³ + n²))``. (-1, 1.0) when too short."""
    a = np.asarray(x, float)
    n = a.size
    if n < 10:
        return -1, 1.0
    r = scipy.stats.rankdata(a)
    u = 2 * np.cumsum(r) - np.arange(1, n + 1) * (n + 1)  # U_t for the first t values
    t = int(np.argmin(u[:-1])) + 1  # the first t values sit lowest
    k = -float(u[t - 1])
    if k <= 0:
        return -1, 1.0
    return t, float(min(1.0, math.exp(-6 * k * k / (n ** 3 + n ** 2))))


def log_step(values: Sequence[float], min_before: int, min_after: int, floor: float,
             var_floor: float = 0.05) -> tuple[int, float, float] | None:
    """The split of a series (in time order) with the largest t of log value after it over
    before it: ``(split, t, p_one_sided)`` for the best split, None when no split rises.

    The t uses the pooled variance (Student's changepoint test): the null is *no change at
    all*, under which both sides share one distribution, so the pooled test is exact there.
    Welch's test would judge a handful of calls after the split by their own variance, on
    about 3 degrees of freedom, and miss a small component called a few times a minute.
    ``floor`` clamps values before the log (timer or scrape resolution), and the variance
    floor keeps a flat stretch from reading as certainty. The p-value is for one split:
    callers correct for the splits and series they scanned."""
    raw = np.asarray(values, dtype=float)
    n = raw.size
    if n < min_before + min_after or n < 3:
        return None
    y = np.log(np.maximum(raw, floor))
    j = np.arange(min_before, n - min_after + 1)
    c1, c2 = np.cumsum(y), np.cumsum(y * y)
    nb, na = j.astype(float), (n - j).astype(float)
    sb, qb = c1[j - 1], c2[j - 1]
    sa, qa = c1[-1] - sb, c2[-1] - qb
    mb, ma = sb / nb, sa / na
    pooled = np.maximum(((qb - nb * mb ** 2) + (qa - na * ma ** 2)) / (n - 2), var_floor)
    t = (ma - mb) / np.sqrt(pooled * (1 / nb + 1 / na))
    i = int(np.argmax(t))
    if t[i] <= 0:
        return None
    return int(j[i]), float(t[i]), float(scipy.stats.t.sf(t[i], n - 2))


def scan_tests(n_splits: int) -> float:
    """How many tests the best of ``n_splits`` neighbouring splits counts for: 1 + ln n.
    Their statistics share all but a few points, so the maximum grows like
    sqrt(2 log log n), not like n independent tests (a Worsley-style bound)."""
    return 1.0 + math.log(max(n_splits, 1))
