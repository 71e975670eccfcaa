"""The backend-independent telemetry model that every query returns.

Both the embedded store and the Tempo/Loki/Prometheus backend produce these
objects, so analyses in :mod:`stagetrace.forensics` never see a storage format.
Ids are lower-case hex strings (trace 32, span 16); times are Unix nanoseconds.
Attribute values keep their OTLP type (str, bool, int, float, or a list of those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import semconv

AttrValue = Any  # str | bool | int | float | list[...] ; bytes are hex-encoded strings
Attributes = dict[str, AttrValue]

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # one of SPAN_KINDS
    start_ns: int
    end_ns: int
    status_code: str = "UNSET"  # one of STATUS_CODES
    status_message: str = ""
    attributes: Attributes = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    links: list[SpanLink] = field(default_factory=list)
    resource: Attributes = field(default_factory=dict)
    scope_name: str = ""
    scope_version: str = ""

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def service_name(self) -> str:
        return str(self.resource.get(semconv.SERVICE_NAME, "unknown_service"))

    @property
    def stage(self) -> str | None:
        v = self.attributes.get(semconv.ML_STAGE)
        return str(v) if v is not None else None

    @property
    def is_error(self) -> bool:
        return self.status_code == "ERROR"


@dataclass(slots=True)
class LogRecord:
    time_ns: int  # event time; observed time when the source gave none
    observed_time_ns: int
    severity_number: int  # OTLP SeverityNumber, 0 = unspecified, 17+ = ERROR
    severity_text: str
    body: Any  # usually str; structured bodies keep their shape
    attributes: Attributes = field(default_factory=dict)
    trace_id: str = ""  # "" when the record was written outside a span
    span_id: str = ""
    resource: Attributes = field(default_factory=dict)
    scope_name: str = ""

    @property
    def service_name(self) -> str:
        return str(self.resource.get(semconv.SERVICE_NAME, "unknown_service"))

    @property
    def is_error(self) -> bool:
        return self.severity_number >= 17 or self.severity_text.upper() in ("ERROR", "CRITICAL", "FATAL")


@dataclass(slots=True)
class MetricPoint:
    """One data point. Gauges and sums fill ``value``; histograms fill
    ``count``/``sum``/``bucket_counts``/``explicit_bounds`` and set ``value`` to the
    mean, so a series of any kind can be plotted or correlated as one number.
    Exponential histograms are converted to explicit bounds at ingest (documented
    in docs/architecture.md)."""

    name: str
    kind: str  # gauge | sum | histogram | exponential_histogram
    time_ns: int
    value: float
    attributes: Attributes = field(default_factory=dict)
    resource: Attributes = field(default_factory=dict)
    start_time_ns: int = 0
    unit: str = ""
    is_monotonic: bool = False
    temporality: str = ""  # CUMULATIVE | DELTA | "" (gauges)
    count: int | None = None
    sum: float | None = None
    bucket_counts: list[int] | None = None
    explicit_bounds: list[float] | None = None

    @property
    def service_name(self) -> str:
        return str(self.resource.get(semconv.SERVICE_NAME, "unknown_service"))


@dataclass(slots=True)
class MetricSeries:
    """Points of one metric for one attribute set (labels), in time order."""

    name: str
    kind: str
    attributes: Attributes
    resource: Attributes
    points: list[MetricPoint] = field(default_factory=list)
    unit: str = ""

    @property
    def service_name(self) -> str:
        return str(self.resource.get(semconv.SERVICE_NAME, "unknown_service"))


@dataclass(slots=True)
class Trace:
    """A trace as the backend returned it: spans (possibly broken: missing
    parents, skewed clocks), the logs that carry its trace id, and its window."""

    trace_id: str
    spans: list[Span]
    logs: list[LogRecord] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0

    def __post_init__(self) -> None:
        if self.spans and not self.start_ns:
            self.start_ns = min(s.start_ns for s in self.spans)
        if self.spans and not self.end_ns:
            self.end_ns = max(s.end_ns for s in self.spans)

    @property
    def roots(self) -> list[Span]:
        """Spans with no parent, plus orphans whose parent is missing."""
        ids = {s.span_id for s in self.spans}
        return [s for s in self.spans if not s.parent_span_id or s.parent_span_id not in ids]


@dataclass(slots=True)
class TraceSummary:
    """One search hit: what Tempo's /api/search returns per trace, and what the
    embedded store computes the same way (root = the span without a parent)."""

    trace_id: str
    root_service: str
    root_name: str
    start_ns: int
    duration_ns: int
    span_count: int | None = None
    error: bool | None = None  # None when the backend cannot say cheaply
    root_attributes: Attributes = field(default_factory=dict)
