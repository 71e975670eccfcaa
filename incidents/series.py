"""What ``watch`` keeps between evaluations: per-series time buckets of request counts,
errors and latency histograms, first-seen versions, and error events.

Why buckets: an evaluation must answer "what fraction of requests was bad over the last
1 h, 5 m, 6 h ..." for many series every few seconds. Reading every span of the longest
window each time would cost as much as the window holds, so each cycle reads only the
spans that started since the previous one (plus a ``settle`` margin, because exporters
deliver a span seconds after it started, and a long request ends late) and folds them
into fixed-width buckets, like a Prometheus histogram. A window's answer is then a sum
over buckets; a latency threshold is a histogram bin edge (bins 5 % apart, so a threshold
is honoured to within 5 %).

Series:

- ``route``: server entry spans (``SpanKind.SERVER`` with ``http.route``) per service and
  route: the requests a user of the service sees;
- ``stage``: spans carrying ``ml.stage`` per service and stage (the outermost span of a
  stage in a service, so nested spans of one stage are not counted twice).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from stagetrace import semconv
from stagetrace.model import LogRecord, Span

# latency bins: 50 µs .. ~3 h, 5 % apart; index 0 = below the first edge
EDGES_NS = np.geomspace(5e4, 1e13, int(np.log(1e13 / 5e4) / np.log(1.05)) + 1)
NBINS = len(EDGES_NS) + 1
VERSION_KEYS = (semconv.SERVICE_VERSION, semconv.ML_MODEL_VERSION)


class SeriesKey(NamedTuple):
    kind: str  # route | stage
    service: str
    name: str  # the route or the stage

    def labels(self) -> dict[str, str]:
        return {"service": self.service, ("route" if self.kind == "route" else "stage"): self.name}


@dataclass(slots=True)
class Bucket:
    hist: np.ndarray  # request count per latency bin
    errors: int = 0

    @property
    def total(self) -> int:
        return int(self.hist.sum())


@dataclass(slots=True)
class Window:
    """Sums over the buckets of one series in a window."""

    hist: np.ndarray
    errors: int

    @property
    def total(self) -> int:
        return int(self.hist.sum())

    def slower_than(self, threshold_ns: float) -> int:
        """Requests in bins entirely above the threshold (bin edges are 5 % apart)."""
        i = int(np.searchsorted(EDGES_NS, threshold_ns, side="left"))
        return int(self.hist[i + 1:].sum())

    def percentile(self, q: float) -> float | None:
        n = self.total
        if n == 0:
            return None
        c = np.cumsum(self.hist)
        i = int(np.searchsorted(c, q / 100.0 * n, side="left"))
        return float(EDGES_NS[min(i, len(EDGES_NS) - 1)])  # the bin's upper edge


@dataclass(slots=True)
class ErrorEvent:
    """An error as ``investigate errors`` sees it (span status, exception event, ERROR log)."""

    time_ns: int
    trace_id: str
    service: str
    operation: str
    exc_type: str
    text: str
    frames: tuple[str, ...]
    fingerprint: str = ""
    template: str = ""


@dataclass
class Aggregates:
    resolution_ns: int
    buckets: dict[SeriesKey, dict[int, Bucket]] = field(default_factory=lambda: defaultdict(dict))
    versions: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # -> [first_ns, last_ns, count]
    errors: list[ErrorEvent] = field(default_factory=list)
    earliest_ns: int | None = None  # oldest data seen

    def bucket_of(self, t_ns: int) -> int:
        return t_ns - t_ns % self.resolution_ns

    def drop_from(self, start_ns: int) -> None:
        """Forget what was folded in from ``start_ns`` on (it is about to be re-read)."""
        b0 = self.bucket_of(start_ns)
        for per in self.buckets.values():
            for b in [b for b in per if b >= b0]:
                del per[b]
        self.errors = [e for e in self.errors if e.time_ns < b0]

    def prune(self, keep_from_ns: int) -> None:
        for per in self.buckets.values():
            for b in [b for b in per if b < keep_from_ns]:
                del per[b]
        self.errors = [e for e in self.errors if e.time_ns >= keep_from_ns]

    def add_spans(self, spans: Sequence[Span]) -> None:
        by_id = {s.span_id: s for s in spans}
        for s in spans:
            if self.earliest_ns is None or s.start_ns < self.earliest_ns:
                self.earliest_ns = s.start_ns
            key = series_key(s, by_id)
            if key is not None:
                self._fold(key, s)
            if key is not None or not s.parent_span_id:
                self._versions(s)

    def _fold(self, key: SeriesKey, s: Span) -> None:
        b = self.bucket_of(s.start_ns)
        per = self.buckets[key]
        cur = per.get(b)
        if cur is None:
            cur = per[b] = Bucket(np.zeros(NBINS, dtype=np.int64))
        cur.hist[int(np.searchsorted(EDGES_NS, s.duration_ns, side="left"))] += 1
        if is_failure(s):
            cur.errors += 1

    def _versions(self, s: Span) -> None:
        for k in VERSION_KEYS:
            v = s.attributes.get(k, s.resource.get(k))
            if v is None:
                continue
            key = (s.service_name, k, str(v))
            cur = self.versions.get(key)
            if cur is None:
                self.versions[key] = [s.start_ns, s.start_ns, 1]
            else:
                cur[0], cur[1], cur[2] = min(cur[0], s.start_ns), max(cur[1], s.start_ns), cur[2] + 1

    def window(self, key: SeriesKey, start_ns: int, end_ns: int) -> Window:
        hist = np.zeros(NBINS, dtype=np.int64)
        errors = 0
        for b, bucket in self.buckets.get(key, {}).items():
            if start_ns <= b < end_ns:
                hist += bucket.hist
                errors += bucket.errors
        return Window(hist, errors)

    def series(self, kind: str | None = None) -> list[SeriesKey]:
        return sorted(k for k, v in self.buckets.items() if v and (kind is None or k.kind == kind))

    def per_bucket(self, key: SeriesKey, start_ns: int, end_ns: int) -> list[tuple[int, Bucket]]:
        return sorted((b, x) for b, x in self.buckets.get(key, {}).items() if start_ns <= b < end_ns)


def is_failure(s: Span) -> bool:
    """A failed request: ERROR status, or an HTTP 5xx answer (a 4xx is the caller's mistake)."""
    if s.status_code == "ERROR":
        return True
    code = s.attributes.get(semconv.HTTP_RESPONSE_STATUS_CODE)
    try:
        return code is not None and int(code) >= 500
    except (TypeError, ValueError):
        return False


def series_key(s: Span, by_id: dict[str, Span]) -> SeriesKey | None:
    route = s.attributes.get(semconv.HTTP_ROUTE)
    if route is not None and (s.kind == "SERVER" or not s.parent_span_id):
        return SeriesKey("route", s.service_name, str(route))
    stage = s.stage
    if stage is not None:
        p = by_id.get(s.parent_span_id)
        # walk up while the ancestors are in the same service: the outermost span of the stage counts
        hops = 0
        while p is not None and p.service_name == s.service_name and hops < 50:
            if p.stage == stage:
                return None
            p, hops = by_id.get(p.parent_span_id), hops + 1
        return SeriesKey("stage", s.service_name, stage)
    return None


def error_events(spans: Iterable[Span], logs: Iterable[LogRecord]) -> list[ErrorEvent]:
    """The error events of ``investigate errors``, from its own extractors."""
    from stagetrace.forensics import errorclusters as ec

    out = []
    for s in spans:
        if s.is_error or s.events:
            for e in ec._span_events(s):  # the same events investigate errors builds
                out.append(ErrorEvent(e.time_ns, e.trace_id, e.service, e.operation, e.exc_type, e.message, e.frames))
    for r in logs:
        e = ec._log_event(r)
        out.append(ErrorEvent(e.time_ns, e.trace_id, e.service, e.operation, e.exc_type, e.message, e.frames))
    return out


class Fingerprinter:
    """Fingerprints exactly as ``investigate errors`` computes them: exception type +
    drain3 message template (numbers masked) + top stack frames, hashed. One miner lives
    as long as the watch, so a template that generalises re-labels its older events too."""

    def __init__(self) -> None:
        from stagetrace.forensics.logmining import LogMiner
        self.miner = LogMiner()

    def assign(self, events: Sequence[ErrorEvent]) -> None:
        cids = [self.miner.add(e.text or e.exc_type or "error") for e in events]
        tmpl = self.miner.templates()
        for e, cid in zip(events, cids):
            e.template = tmpl.get(cid, e.text)
            key = "\x1f".join((e.exc_type, e.template, *e.frames))
            e.fingerprint = hashlib.sha1(key.encode()).hexdigest()[:12]
