"""The query interface: the one seam between storage and analyses.

:class:`Backend` is implemented by the embedded store
(``stagetrace.collector.query.EmbeddedBackend``) and by the Tempo + Loki +
Prometheus backend (``stagetrace.forensics.grafana.GrafanaBackend``).
Forensics reads only through it, so either can be swapped in.

Time windows are half-open ``[start_ns, end_ns)`` in Unix nanoseconds; ``None``
means unbounded on that side. Results are ordered by time unless stated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from .model import STATUS_CODES, Attributes, LogRecord, MetricSeries, Span, Trace, TraceSummary
from .traceids import HexIds


@dataclass(slots=True)
class TraceQuery:
    """Find traces that contain at least one span matching every given condition
    (Tempo's spanset semantics). ``duration`` bounds apply to the matching span;
    with ``root_only`` the matching span must be the trace's root."""

    service: str | None = None
    span_name: str | None = None
    status: str | None = None  # "error" | "ok" | "unset"
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    attributes: Attributes = field(default_factory=dict)  # span or resource attribute equality
    start_ns: int | None = None
    end_ns: int | None = None
    root_only: bool = False
    kind: str | None = None  # span kind, e.g. "server" (TraceQL's ``kind`` intrinsic)
    limit: int | None = 20  # None = no limit (embedded store only; remote backends cap it)
    # The caller only reads the spans: a backend may then share one attribute dict,
    # event list and resource dict among every span that has the same values (the
    # embedded store decodes each distinct span body once; a 10M-span window's
    # requests fit in memory). Mutating a span of such an answer changes others.
    read_only: bool = False


@dataclass(slots=True)
class LogQuery:
    trace_ids: Sequence[str] | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    min_severity: int | None = None  # OTLP SeverityNumber, e.g. 13 = WARN, 17 = ERROR
    service: str | None = None
    attributes: Attributes = field(default_factory=dict)
    limit: int | None = 1000


@dataclass(slots=True)
class MetricQuery:
    name: str | None = None  # None = every metric
    attributes: Attributes = field(default_factory=dict)
    service: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None



@dataclass(slots=True)
class SpanColumns:
    """The answer of :meth:`Backend.find_span_columns`: matching spans as columns, oldest
    first, for analyses that read every request of a window (10M-span stores hold over
    a million) but need whole :class:`Span` objects for only a few hundred of them.

    Rows that share a body (name, kind, status message, attributes, events, links,
    resource, scope) share one *prototype* span: ``protos[proto[i]]``; anything that
    depends only on those (an operation name, a sampling weight, a version) is computed
    once per prototype. Numeric columns are NumPy arrays (imported by the backend that
    builds them; this module stays light for the CLI's trace-by-id path)."""

    trace_ids: Sequence[str]  # a list, or ids made per item read (stagetrace.traceids.HexIds)
    span_ids: Sequence[str]
    parent_span_ids: Sequence[str]
    start_ns: Any  # np.ndarray[int64]
    duration_ns: Any  # np.ndarray[int64]: end - start as stored (Span.duration_ns clamps it at 0)
    status: Any  # np.ndarray[int8]: index into model.STATUS_CODES
    proto: Any  # np.ndarray[int32]: index into protos
    protos: list[Span]

    def __len__(self) -> int:
        return len(self.trace_ids)

    def span(self, i: int) -> Span:
        """Row ``i`` as a Span; it shares the prototype's dicts (read-only, as in a
        ``TraceQuery(read_only=True)`` answer)."""
        p = self.protos[int(self.proto[i])]
        start = int(self.start_ns[i])
        return Span(self.trace_ids[i], self.span_ids[i], self.parent_span_ids[i], p.name, p.kind, start,
                    start + int(self.duration_ns[i]), STATUS_CODES[int(self.status[i])], p.status_message,
                    p.attributes, p.events, p.links, p.resource, p.scope_name, p.scope_version)

    def take(self, idx: Any) -> "SpanColumns":
        """The rows at ``idx`` (an integer array), in that order."""
        ids = self.trace_ids
        return SpanColumns(ids.take(idx) if isinstance(ids, HexIds) else [ids[i] for i in idx.tolist()], _Taken(self.span_ids, idx),
                           _Taken(self.parent_span_ids, idx), self.start_ns[idx], self.duration_ns[idx],
                           self.status[idx], self.proto[idx], self.protos)


class _Taken(Sequence[str]):
    """A lazy selection of a sequence of ids (hex is made for the few rows read)."""

    __slots__ = ("inner", "idx")

    def __init__(self, inner: Sequence[str], idx: Any) -> None:
        self.inner, self.idx = inner, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.inner[int(j)] for j in self.idx[i]]
        return self.inner[int(self.idx[i])]


def span_columns(spans: Sequence[Span]) -> SpanColumns:
    """:class:`SpanColumns` of spans already built (the default of
    :meth:`Backend.find_span_columns` for backends without a columnar path)."""
    import numpy as np

    protos: list[Span] = []
    key_of: dict[tuple, int] = {}
    proto = np.empty(len(spans), dtype=np.int32)
    held = []  # keeps each keyed dict alive, so no id() is reused meanwhile
    for i, s in enumerate(spans):
        key = (id(s.attributes), id(s.resource), id(s.events), id(s.links), s.name, s.kind, s.status_message,
               s.scope_name, s.scope_version)
        j = key_of.get(key)
        if j is None:
            j = key_of[key] = len(protos)
            protos.append(s)
            held.append(s)
        proto[i] = j
    return SpanColumns([s.trace_id for s in spans], [s.span_id for s in spans], [s.parent_span_id for s in spans],
                       np.array([s.start_ns for s in spans], dtype=np.int64),
                       np.array([s.end_ns - s.start_ns for s in spans], dtype=np.int64),
                       np.array([STATUS_CODES.index(s.status_code) if s.status_code in STATUS_CODES else 0
                                 for s in spans], dtype=np.int8), proto, protos)


def find_span_columns(backend: "Backend", query: TraceQuery) -> SpanColumns:
    """``backend.find_span_columns(query)`` where the backend has a columnar path,
    else the same rows from :meth:`Backend.find_spans`: every backend answers it."""
    fn = getattr(backend, "find_span_columns", None)
    if fn is not None:
        return fn(query)
    return span_columns(backend.find_spans(query))


def rootless_trace_ids(backend: "Backend", query: TraceQuery) -> list[str]:
    """Ids of the traces with spans matching ``query`` (its window) none of which is a root
    (all have a parent id), sorted, at most ``query.limit``: traces an investigation cannot
    count as requests. ``backend.rootless_trace_ids(query)`` where the backend has one
    (the embedded store: one aggregate over two id columns), else from the spans."""
    fn = getattr(backend, "rootless_trace_ids", None)
    if fn is not None:
        return fn(query)
    cols = find_span_columns(backend, dataclasses.replace(query, limit=None, read_only=True))
    has_root: dict[str, bool] = {}
    for tid, parent in zip(cols.trace_ids, cols.parent_span_ids):
        has_root[tid] = has_root.get(tid, False) or not parent
    out = sorted(t for t, rooted in has_root.items() if not rooted)
    return out[:query.limit] if query.limit is not None else out


def value_equals(have: Any, want: Any) -> bool:
    """Attribute equality as every backend applies it to ``*Query.attributes``:
    exact, else by text (a CLI gives ``"500"`` for an int 500), booleans case-blind
    (``"true"`` matches ``True``, as TraceQL and LogQL spell them)."""
    if isinstance(have, bool) or isinstance(want, bool):
        return str(have).lower() == str(want).lower()
    return have == want or str(have) == str(want)


def attributes_match(want: Attributes, attrs: Attributes, resource: Attributes) -> bool:
    """Every wanted key equals the record's attribute, else its resource attribute."""
    for k, v in want.items():
        if k in attrs:
            have = attrs[k]
        elif k in resource:
            have = resource[k]
        else:
            return False
        if not value_equals(have, v):
            return False
    return True



def log_in_query(r: LogRecord, q: LogQuery, service: str | None) -> bool:
    """The window, severity and service conditions of a :class:`LogQuery` (attribute
    equality is checked separately: remote backends may have renamed attributes)."""
    if q.start_ns is not None and r.time_ns < q.start_ns:
        return False
    if q.end_ns is not None and r.time_ns >= q.end_ns:
        return False
    if q.min_severity is not None and r.severity_number < q.min_severity:
        return False
    return service is None or r.service_name == service


@runtime_checkable
class Backend(Protocol):
    """Read access to traces, logs and metrics."""

    name: str  # "embedded" | "grafana"

    def get_trace(self, trace_id: str, *, start_ns: int | None = None,
                  end_ns: int | None = None) -> Trace | None:
        """Spans of one trace plus the logs carrying its id; ``None`` if unknown.
        A known window makes remote backends faster; it is never required."""
        ...

    def get_traces(self, trace_ids: Sequence[str], *, start_ns: int | None = None,
                   end_ns: int | None = None, with_logs: bool = True) -> dict[str, Trace]:
        """Bulk form of :meth:`get_trace`; unknown ids are absent from the result."""
        ...

    def search_traces(self, query: TraceQuery) -> list[TraceSummary]:
        """Trace summaries, newest first, at most ``query.limit``."""
        ...

    def find_spans(self, query: TraceQuery) -> list[Span]:
        """The matching spans themselves (not whole traces), oldest first."""
        ...

    # Optional: find_span_columns(query) -> SpanColumns, the rows of find_spans as columns.
    # Callers use the module function find_span_columns(), which falls back to find_spans.
    # Optional: rootless_trace_ids(query) -> list[str]; callers use the module function of that name.

    def find_logs(self, query: LogQuery) -> list[LogRecord]:
        """Log records, oldest first, at most ``query.limit``."""
        ...

    def metric_series(self, query: MetricQuery) -> list[MetricSeries]:
        """One series per (metric, point attributes, resource: e.g. one per service
        instance, as Prometheus labels keep them apart), points oldest first."""
        ...

    def metric_names(self, *, start_ns: int | None = None, end_ns: int | None = None,
                     service: str | None = None) -> list[str]:
        ...

    def close(self) -> None:
        ...


_BACKEND_KEYS = ("kind", "data_dir", "tempo", "loki", "prometheus", "tenant")


def _backend_table(doc: dict, path: str) -> dict:
    """The ``[backend]`` table of a config file, its types checked: a number where a URL
    belongs failed later as an AttributeError deep in the HTTP client."""
    from .errors import UserError

    cfg = doc.get("backend", {})
    if not isinstance(cfg, dict):
        raise UserError(f"backend config {path}: 'backend' must be a table ([backend]), not {type(cfg).__name__}")
    for key in _BACKEND_KEYS:
        if key in cfg and not isinstance(cfg[key], str):
            raise UserError(f"backend config {path}: [backend] {key} must be a string, not {cfg[key]!r}")
    hdrs = cfg.get("headers", {})
    if not isinstance(hdrs, dict) or not all(isinstance(v, str) for v in hdrs.values()):
        raise UserError(f"backend config {path}: [backend] headers must be a table of strings (Name = \"value\")")
    return cfg


def open_backend(*, kind: str | None = None, data_dir: str | None = None,
                 tempo_url: str | None = None, loki_url: str | None = None,
                 prometheus_url: str | None = None, tenant: str | None = None,
                 headers: Sequence[str] = (), backend_config: str | None = None) -> Backend:
    """Build the backend the CLI options (or env vars / config file) name.

    Default: the embedded store under :func:`stagetrace.config.data_dir`.
    Raises :class:`stagetrace.errors.UserError` for a bad selection.
    """
    from .errors import UserError

    cfg: dict = {}
    if backend_config:
        import tomllib
        try:
            with open(backend_config, "rb") as fh:
                cfg = _backend_table(tomllib.load(fh), backend_config)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read backend config {backend_config}: {exc}") from None
    kind = kind or cfg.get("kind") or "embedded"
    if kind == "embedded":
        # served by the running collector when there is one (warm, no pyarrow here)
        from stagetrace.collector.client import open_embedded
        from .config import data_dir as resolve_data_dir
        return open_embedded(resolve_data_dir(data_dir or cfg.get("data_dir")))
    if kind == "grafana":
        hdrs = dict(cfg.get("headers", {}))
        for h in headers:
            name, sep, value = h.partition("=")
            if not sep or not name.strip():
                raise UserError(f"invalid --header {h!r}: expected NAME=VALUE")
            hdrs[name.strip()] = value.strip()
        from stagetrace.forensics.grafana import GrafanaBackend
        return GrafanaBackend(tempo_url=tempo_url or cfg.get("tempo"), loki_url=loki_url or cfg.get("loki"),
                              prometheus_url=prometheus_url or cfg.get("prometheus"),
                              tenant=tenant or cfg.get("tenant"), headers=hdrs)
    raise UserError(f"unknown backend {kind!r}: use 'embedded' or 'grafana'")
