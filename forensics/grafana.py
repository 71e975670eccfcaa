"""The Tempo + Loki + Prometheus backend: the same query interface as the embedded
store, answered by the engines a team already runs at scale.

Tempo gives traces (``/api/v2/traces/<id>``, falling back to ``/api/traces/<id>``)
and TraceQL search (``/api/search``); Loki gives the logs of a trace
(``/loki/api/v1/query_range`` filtering the ``trace_id`` structured metadata,
always bounded by the trace's window); Prometheus gives metric series
(``/api/v1/query_range`` plus the label/series APIs).

The response parsers follow the shapes of real servers (recorded in
``shared/samples``): ids are base64 in Tempo's trace JSON but hex (with leading
zeros dropped) in search results, span kinds and status codes are enum names, int
attribute values are strings, an unknown trace is a 404 with an empty body, and
Loki flattens attribute names (``host.name`` -> ``host_name``) and merges index
labels with structured metadata unless asked for the ``categorize-labels``
encoding, which this client always asks for.

What a remote backend cannot give back exactly (documented in docs/scale-out.md):
Loki returns every attribute as a string with dots turned into underscores, so
names are restored only for known semantic-convention names; Tempo search
reports trace durations in whole milliseconds; Prometheus answers
``query_range`` at step times, not at the original sample times.

Every HTTP call has a timeout and a response-size cap; any failure (down, slow,
4xx/5xx, bad JSON, partial result) is a :class:`stagetrace.errors.BackendError`
with a one-line message.
"""

from __future__ import annotations

import base64
import functools
import binascii
import json
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import requests

from stagetrace import semconv
from stagetrace.backend import LogQuery, MetricQuery, TraceQuery, attributes_match, log_in_query, value_equals
from stagetrace.config import normalize_trace_id, trace_id_or_empty
from stagetrace.errors import BackendError, UserError
from stagetrace.model import (SPAN_KINDS, Attributes, LogRecord, MetricPoint, MetricSeries, Span, SpanEvent,
                              SpanLink, Trace, TraceSummary)

log = logging.getLogger("stagetrace.forensics.grafana")

DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one trace or one page of logs; larger is refused, not buffered
SEARCH_CAP = 5000  # traces per TraceQL search when the caller sets no limit
LOKI_PAGE = 1000  # log lines per query_range call (Loki's default max is 5000)
LOKI_MAX_PAGES = 50
LOG_WINDOW_PAD_NS = 60 * 1_000_000_000  # logs of a span may be stamped by another host's clock
DEFAULT_LOG_LOOKBACK_NS = 3600 * 1_000_000_000  # Loki's own default when no window is known
MAX_POINTS_PER_SERIES = 1000
FETCH_WORKERS = 8
TEMPO_NO_ROOT = "<root span not yet received>"  # a search hit's rootServiceName (Tempo's search.RootSpanNotYetReceivedText)
LOG_TRACES_PER_QUERY = 50  # trace ids per LogQL regex filter
# Trace documents fetched by one backend (one CLI run): an investigation reads the same
# traces several times. Kept briefly, since a recent trace may still be growing.
TRACE_CACHE_SIZE = 20_000
TRACE_CACHE_TTL_S = 120.0

TENANT_HEADER = "X-Scope-OrgID"
LOKI_ENCODING_HEADER = "X-Loki-Response-Encoding-Flags"
LOKI_CATEGORIZE = "categorize-labels"

_KIND_BY_NAME = {f"SPAN_KIND_{k}": k for k in SPAN_KINDS}
_STATUS_BY_NAME = {"STATUS_CODE_UNSET": "UNSET", "STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR"}
_STATUS_BY_INT = {0: "UNSET", 1: "OK", 2: "ERROR"}
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")

# Loki's own additions to a record, not attributes of it.
_LOKI_INTERNAL = {"detected_level", "__error__", "__error_details__", "__stream_shard__"}
# Resource attribute namespaces (OTel semantic conventions): a flattened name under
# one of these came from the resource.
_RESOURCE_PREFIXES = ("service.", "deployment.", "host.", "k8s.", "container.", "cloud.", "process.", "os.",
                      "telemetry.", "faas.", "device.", "webengine.")
# OTel names a Loki label or structured-metadata key may stand for, besides the
# ones in stagetrace.semconv. Loki turns every non [a-zA-Z0-9_] character into "_".
_EXTRA_KNOWN_NAMES = (
    "deployment.environment", "service.namespace", "host.id", "host.arch", "os.type", "process.pid",
    "process.runtime.name", "process.runtime.version", "process.command", "process.executable.name",
    "telemetry.sdk.name", "telemetry.sdk.language", "telemetry.sdk.version", "telemetry.auto.version",
    "container.id", "container.name", "k8s.pod.name", "k8s.pod.uid", "k8s.namespace.name",
    "k8s.deployment.name", "k8s.node.name", "k8s.container.name", "cloud.provider", "cloud.region",
    "code.filepath", "code.lineno", "code.namespace", "code.file.path", "code.line.number",
    "thread.id", "thread.name", "log.logger", "logger.name", "event.name",
)


def _flat(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _known_names() -> dict[str, str]:
    names = [v for k, v in vars(semconv).items()
             if k.isupper() and isinstance(v, str) and "." in v and not k.startswith(("ENV_", "METRIC_"))]
    return {_flat(n): n for n in (*names, *_EXTRA_KNOWN_NAMES)}


_UNFLATTEN = _known_names()


# --- HTTP --------------------------------------------------------------------------

class _Http:
    """One base URL of one engine: timeouts, headers, bounded bodies, one-line errors."""

    def __init__(self, engine: str, base_url: str, session: requests.Session, headers: dict[str, str],
                 timeout_s: float) -> None:
        self.engine = engine
        self.base = base_url.rstrip("/")
        if not re.match(r"^https?://[^/]", self.base):
            raise UserError(f"invalid {engine} URL {_redact(base_url)!r}: expected http(s)://host[:port]")
        self.shown = _redact(self.base)  # for messages: never print credentials from the URL
        self.session = session
        self.headers = headers
        self.timeout_s = timeout_s

    def get(self, path: str, params: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None,
            ok_404: bool = False) -> tuple[int, bytes]:
        url = self.base + path
        hdrs = {**self.headers, **(headers or {})}
        try:
            with self.session.get(url, params=params, headers=hdrs, timeout=self.timeout_s, stream=True) as resp:
                body = self._read(resp, path)
                status = resp.status_code
        except requests.Timeout:
            raise BackendError(f"{self.engine} at {self.shown} did not answer within {self.timeout_s:g} s "
                               f"({path})") from None
        except requests.ConnectionError as exc:
            raise BackendError(f"{self.engine} at {self.shown} is unreachable: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise BackendError(f"{self.engine} request {path} failed: {_reason(exc)}") from None
        if status == 404 and ok_404:
            return status, body
        if status >= 400:
            raise BackendError(f"{self.engine} answered HTTP {status} for {path}: {_first_line(body)}")
        return status, body

    def get_json(self, path: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        status, body = self.get(path, params, **kw)
        if status == 404:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise BackendError(f"{self.engine} returned a body that is not JSON for {path}: "
                               f"{_first_line(body)}") from None

    def _read(self, resp: requests.Response, path: str) -> bytes:
        # `timeout` bounds the connect and each read; this bounds a server that drips.
        deadline = time.monotonic() + 3 * self.timeout_s
        chunks, size = [], 0
        for chunk in resp.iter_content(chunk_size=256 * 1024):
            if time.monotonic() > deadline:
                raise BackendError(f"{self.engine} at {self.shown} did not finish its answer within "
                                   f"{3 * self.timeout_s:g} s ({path})")
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise BackendError(f"{self.engine} response for {path} exceeds {MAX_RESPONSE_BYTES >> 20} MiB; "
                                   "narrow the time window or the query")
            chunks.append(chunk)
        return b"".join(chunks)


def _redact(url: str) -> str:
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", url)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for pat in (r"\[Errno -?\d+\] ([^'\")]+)", r"(Connection refused)", r"(Name or service not known)",
                r"(timed out)"):
        m = re.search(pat, text)
        if m:
            return m.group(1).strip()
    return _first_line(text.encode())


def _first_line(body: bytes | str, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            text = str(obj.get("error") or obj.get("message") or text)
        except (ValueError, AttributeError):
            pass
    line = text.splitlines()[0] if text else "(empty body)"
    return line if len(line) <= limit else line[:limit] + "..."


# --- OTLP/JSON as Tempo returns it ----------------------------------------------------

def _id_hex(value: Any, nbytes: int) -> str:
    """Tempo's trace JSON has base64 ids (proto3 JSON mapping); OTLP/JSON has hex."""
    if not value:
        return ""
    s = str(value)
    if len(s) == 2 * nbytes and _HEX_RE.match(s):
        return s.lower()
    try:
        raw = binascii.a2b_base64(s)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != nbytes:
        raise BackendError(f"Tempo returned an id that is neither hex nor base64: {s[:40]!r}")
    if raw == bytes(nbytes):
        return ""
    return raw.hex().rjust(2 * nbytes, "0")


def _any_value(v: dict[str, Any] | None) -> Any:
    if not v:
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])  # int64 is a JSON string in the proto3 mapping
    if "doubleValue" in v:
        return float(v["doubleValue"])  # also "NaN", "Infinity"
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_any_value(x) for x in (v["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _any_value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values", [])}
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"]).hex()
    return None


def _attrs(kvs: Iterable[dict[str, Any]] | None) -> Attributes:
    return {kv["key"]: _any_value(kv.get("value")) for kv in kvs or ()}


def _kind(v: Any) -> str:
    if isinstance(v, int):
        return SPAN_KINDS[v] if 0 <= v < len(SPAN_KINDS) else "UNSPECIFIED"
    return _KIND_BY_NAME.get(str(v), "UNSPECIFIED")


def _status(st: dict[str, Any] | None) -> tuple[str, str]:
    st = st or {}
    code = st.get("code", 0)
    name = _STATUS_BY_INT.get(code, "UNSET") if isinstance(code, int) else _STATUS_BY_NAME.get(str(code), "UNSET")
    return name, st.get("message", "") or ""


def _readable(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a parser of a remote answer fail as one BackendError when the document's shape
    is not the one documented (a field of the wrong type or missing: a proxy, another
    version, another product on that port). Only the errors of reading a JSON tree of the
    wrong shape are turned; a bug elsewhere still shows as itself."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def parse(doc: Any) -> Any:
            try:
                return fn(doc)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise BackendError(f"{what} this version cannot read: {type(exc).__name__}: {exc}"[:300]) from None
        return parse
    return wrap


@_readable("Tempo returned a trace document")
def parse_tempo_trace(doc: Any) -> list[Span]:
    """Spans of a Tempo trace-by-id answer, v1 (``batches``) or v2 (``trace.resourceSpans``),
    oldest first (ties by end), as the embedded store orders them."""
    if not isinstance(doc, dict):
        raise BackendError("Tempo returned an unexpected trace document (not a JSON object)")
    if "trace" in doc:
        status = str(doc.get("status", "")).upper()
        if status == "PARTIAL" or status == "TRACE_TOO_LARGE":
            raise BackendError(f"Tempo returned a partial trace ({status.lower()}): "
                               f"{doc.get('message') or 'some blocks could not be read'}")
        doc = doc.get("trace") or {}
    batches = doc.get("batches")
    if batches is None:
        batches = doc.get("resourceSpans", [])
    spans: list[Span] = []
    for rs in batches:
        resource = _attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
            for sp in ss.get("spans", []):
                code, message = _status(sp.get("status"))
                spans.append(Span(
                    trace_id=_id_hex(sp.get("traceId"), 16), span_id=_id_hex(sp.get("spanId"), 8),
                    parent_span_id=_id_hex(sp.get("parentSpanId"), 8), name=sp.get("name", ""),
                    kind=_kind(sp.get("kind", 0)),
                    start_ns=int(sp.get("startTimeUnixNano", 0)), end_ns=int(sp.get("endTimeUnixNano", 0)),
                    status_code=code, status_message=message, attributes=_attrs(sp.get("attributes")),
                    events=[SpanEvent(e.get("name", ""), int(e.get("timeUnixNano", 0)), _attrs(e.get("attributes")))
                            for e in sp.get("events", [])],
                    links=[SpanLink(_id_hex(l.get("traceId"), 16), _id_hex(l.get("spanId"), 8),
                                    _attrs(l.get("attributes"))) for l in sp.get("links", [])],
                    resource=dict(resource), scope_name=scope.get("name", ""),
                    scope_version=scope.get("version", "")))
    spans.sort(key=lambda s: (s.start_ns, s.end_ns))
    return spans


def _search_trace_id(raw: Any) -> str:
    """A search hit's trace id, left-padded (Tempo's search drops leading zeros); not
    :func:`normalize_trace_id`, whose UserError would blame the user for Tempo's answer."""
    t = str(raw).strip().lower()
    padded = trace_id_or_empty(t.rjust(32, "0")) if 0 < len(t) <= 32 else ""
    if not padded:
        raise BackendError(f"Tempo returned a search hit whose trace id is not one: {t[:40]!r}")
    return padded


@_readable("Tempo returned a search document")
def parse_tempo_search(doc: Any) -> list[tuple[TraceSummary, list[tuple[str, int]]]]:
    """Search hits: a summary per trace plus the (span id, start) of its matched spans."""
    if not isinstance(doc, dict):
        raise BackendError("Tempo returned an unexpected search document (not a JSON object)")
    out = []
    for t in doc.get("traces") or []:
        stats = t.get("serviceStats") or {}
        matched: list[tuple[str, int]] = []
        for ss in t.get("spanSets") or ([t["spanSet"]] if t.get("spanSet") else []):
            for sp in ss.get("spans") or []:
                matched.append((str(sp.get("spanID", "")).rjust(16, "0"), int(sp.get("startTimeUnixNano", 0))))
        out.append((TraceSummary(
            trace_id=_search_trace_id(t["traceID"]),
            root_service=t.get("rootServiceName", ""), root_name=t.get("rootTraceName", ""),
            start_ns=int(t.get("startTimeUnixNano", 0)),
            duration_ns=int(t.get("durationMs", 0)) * 1_000_000,  # whole ms only in search results
            span_count=sum(int(s.get("spanCount", 0)) for s in stats.values()) if stats else None,
            error=any(int(s.get("errorCount", 0)) > 0 for s in stats.values()) if stats else None,
        ), matched))
    return out


# --- Loki -----------------------------------------------------------------------------

def _unflatten(key: str) -> str:
    return _UNFLATTEN.get(key, key)


def _severity_number(text: str) -> int:
    t = text.upper()
    for prefix, num in (("FATAL", 21), ("CRIT", 21), ("ERR", 17), ("WARN", 13), ("INFO", 9), ("DEBUG", 5),
                        ("TRACE", 1)):
        if t.startswith(prefix):
            return num
    return 0


def _int_or(value: Any, default: int | None) -> int | None:
    """An integer label or field as Loki gives it (a string), else ``default``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _log_record(ts: str, line: str, labels: dict[str, str], metadata: dict[str, str]) -> LogRecord:
    """One Loki entry back into the OTLP log model. ``labels`` are index labels (always
    from resource attributes), ``metadata`` is structured metadata (trace context,
    severity, scope, log attributes and the other resource attributes)."""
    fields = {**labels, **metadata}
    time_ns = _int_or(ts, None)
    if time_ns is None:  # Loki's own field: not Loki, or a proxy rewrote the answer
        raise BackendError(f"Loki returned an entry whose time is not Unix nanoseconds: {str(ts)[:40]!r}")
    sev_text = fields.pop("severity_text", "")
    sev_num = _int_or(fields.pop("severity_number", None), None)  # a shipper's label: may be any text
    level = fields.get("detected_level", "")
    rec = LogRecord(
        time_ns=time_ns, observed_time_ns=_int_or(fields.pop("observed_timestamp", time_ns), time_ns),
        severity_number=sev_num if sev_num is not None else _severity_number(sev_text or level),
        severity_text=sev_text, body=line,
        trace_id=trace_id_or_empty(fields.pop("trace_id", "")), span_id=fields.pop("span_id", "").lower(),
        scope_name=fields.pop("scope_name", ""))
    fields.pop("scope_version", None)
    fields.pop("flags", None)
    for key, value in fields.items():
        if key in _LOKI_INTERNAL:
            continue
        name = _unflatten(key)
        if key in labels or name.startswith(_RESOURCE_PREFIXES):
            rec.resource[name] = value
        else:
            rec.attributes[name] = value
    return rec


@_readable("Loki returned a streams document")
def parse_loki_streams(doc: Any) -> list[LogRecord]:
    """Records of a Loki ``query_range`` streams answer, either encoding, oldest first."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error") if isinstance(doc, dict) else None
        raise BackendError(f"Loki query failed: {err or 'unexpected answer'}")
    data = doc.get("data") or {}
    if not isinstance(data, dict) or data.get("resultType") != "streams":
        kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise BackendError(f"Loki returned {kind!r} where log streams were expected")
    categorized = LOKI_CATEGORIZE in (data.get("encodingFlags") or [])
    out = []
    for stream in data.get("result") or []:
        if not isinstance(stream, dict) or not isinstance(stream.get("values") or [], list):
            raise BackendError("Loki returned a log stream that is not a JSON object with a list of values")
        labels = dict(stream.get("stream") or {})
        for value in stream.get("values") or []:
            if not isinstance(value, list) or len(value) < 2:
                raise BackendError(f"Loki returned a log entry that is not [time, line]: {str(value)[:60]}")
            meta: dict[str, str] = {}
            if len(value) > 2 and isinstance(value[2], dict):
                meta = {**(value[2].get("structuredMetadata") or {}), **(value[2].get("parsed") or {})}
            if categorized:
                out.append(_log_record(value[0], value[1], labels, meta))
            else:
                # Plain encoding merges labels and metadata; resource-ness is decided by name.
                out.append(_log_record(value[0], value[1], {}, {**labels, **meta}))
    out.sort(key=lambda r: (r.time_ns, r.observed_time_ns))
    return out


def _logql_str(s: str) -> str:
    return json.dumps(s)  # a LogQL string literal has Go/JSON escaping


# --- TraceQL --------------------------------------------------------------------------

def _traceql_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and math.isfinite(v):
        return repr(v)
    return json.dumps(str(v))


def _traceql_attr(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        return "." + name
    return "." + json.dumps(name)


def traceql(q: TraceQuery) -> str:
    """The TraceQL spanset filter for a :class:`TraceQuery` (every condition on one span)."""
    conds = []
    attrs = dict(q.attributes)
    service = q.service
    if service is None and isinstance(attrs.get(semconv.SERVICE_NAME), str):
        service = attrs.pop(semconv.SERVICE_NAME)
    if service is not None:
        conds.append(f"resource.service.name = {json.dumps(service)}")
    if q.span_name is not None:
        conds.append(f"name = {json.dumps(q.span_name)}")
    if q.status is not None:
        st = q.status.lower()
        if st not in ("error", "ok", "unset"):
            raise UserError(f"unknown status {q.status!r}: use error, ok or unset")
        conds.append(f"status = {st}")
    if q.min_duration_ns is not None:
        conds.append(f"duration >= {int(q.min_duration_ns)}ns")
    if q.max_duration_ns is not None:
        conds.append(f"duration <= {int(q.max_duration_ns)}ns")
    if q.root_only:
        conds.append("nestedSetParent = -1")
    if q.kind is not None:
        k = q.kind.lower()
        if k.upper() not in SPAN_KINDS:
            raise UserError(f"unknown span kind {q.kind!r}: use one of {', '.join(x.lower() for x in SPAN_KINDS)}")
        conds.append(f"kind = {k}")
    for k, v in attrs.items():
        conds.append(f"{_traceql_attr(k)} = {_traceql_value(v)}")
    return "{ " + " && ".join(conds) + " }" if conds else "{ }"


def span_matches(sp: Span, q: TraceQuery) -> bool:
    """The exact condition, checked on the fetched span (the embedded store's semantics:
    a span is in the window when it starts inside it)."""
    attrs = dict(q.attributes)
    service = q.service
    if service is None and isinstance(attrs.get(semconv.SERVICE_NAME), str):
        service = attrs.pop(semconv.SERVICE_NAME)
    if service is not None and sp.service_name != service:
        return False
    if q.span_name is not None and sp.name != q.span_name:
        return False
    if q.status is not None and sp.status_code != q.status.upper():
        return False
    if q.min_duration_ns is not None and sp.duration_ns < q.min_duration_ns:
        return False
    if q.max_duration_ns is not None and sp.duration_ns > q.max_duration_ns:
        return False
    if q.start_ns is not None and sp.start_ns < q.start_ns:
        return False
    if q.end_ns is not None and sp.start_ns >= q.end_ns:
        return False
    if q.root_only and sp.parent_span_id:
        return False
    if q.kind is not None and sp.kind != q.kind.upper():
        return False
    return not attrs or attributes_match(attrs, sp.attributes, sp.resource)


# --- Prometheus -----------------------------------------------------------------------

_PROM_RESERVED = {"__name__", "job", "instance", "le"}
_UNIT_SUFFIXES = ("seconds", "milliseconds", "microseconds", "nanoseconds", "bytes", "kilobytes", "megabytes",
                  "ratio", "percent", "celsius", "hertz", "meters", "volts", "amperes", "joules", "grams")


def prom_name(name: str) -> str:
    """An OTLP metric name as Prometheus' OTLP / remote-write translation spells it
    (before unit and type suffixes)."""
    n = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    n = re.sub(r"__+", "_", n)
    return ("_" + n) if n[:1].isdigit() else n


def _prom_str(s: str) -> str:
    return json.dumps(s)


# --- the backend ----------------------------------------------------------------------

class GrafanaBackend:
    """Read traces from Tempo, logs from Loki and metrics from Prometheus.

    Any of the three URLs may be omitted. Without Tempo, trace queries raise
    :class:`~stagetrace.errors.UserError` naming the flag to pass; without Loki or
    Prometheus, log or metric queries return nothing and a one-line warning says so
    (once per backend), so an investigation still runs on the evidence it has. ``tenant`` is sent
    as ``X-Scope-OrgID`` (Tempo, Loki and Prometheus-compatible stores such as
    Mimir); ``headers`` (e.g. ``Authorization``) go to every engine.
    """

    name = "grafana"

    def __init__(self, *, tempo_url: str | None = None, loki_url: str | None = None,
                 prometheus_url: str | None = None, tenant: str | None = None,
                 headers: dict[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 search_cap: int = SEARCH_CAP) -> None:
        if not (tempo_url or loki_url or prometheus_url):
            raise UserError("the grafana backend needs at least one of --tempo, --loki, --prometheus "
                            f"(or ${semconv.ENV_TEMPO_URL}, ${semconv.ENV_LOKI_URL}, ${semconv.ENV_PROMETHEUS_URL})")
        if timeout_s <= 0:
            raise UserError("the backend timeout must be positive")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "stagetrace"
        hdrs = dict(headers or {})
        if tenant:
            hdrs[TENANT_HEADER] = tenant
        self.timeout_s = timeout_s
        self.search_cap = search_cap
        self._tempo = _Http("Tempo", tempo_url, self.session, hdrs, timeout_s) if tempo_url else None
        self._loki = _Http("Loki", loki_url, self.session, hdrs, timeout_s) if loki_url else None
        self._prom = _Http("Prometheus", prometheus_url, self.session, hdrs, timeout_s) if prometheus_url else None
        self._v2 = True  # Tempo serves /api/v2/traces (>= 2.6); cleared after a 404 fallback that works
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._warned: set[str] = set()

    # -- engines --------------------------------------------------------------------

    def _need(self, http: _Http | None, flag: str, env: str) -> _Http:
        if http is None:
            raise UserError(f"this query needs {flag} URL (or ${env})")
        return http

    def _missing(self, engine: str, flag: str, env: str, what: str) -> None:
        """Traces are the core; logs and metrics are evidence. A run without Loki or
        Prometheus goes on without that evidence and says so once, on stderr."""
        if engine not in self._warned:
            self._warned.add(engine)
            log.warning("stagetrace: no %s URL (%s or $%s): %s skipped", engine, flag, env, what)

    @property
    def tempo(self) -> _Http:
        return self._need(self._tempo, "--tempo", semconv.ENV_TEMPO_URL)

    @property
    def loki(self) -> _Http:
        return self._need(self._loki, "--loki", semconv.ENV_LOKI_URL)

    @property
    def prometheus(self) -> _Http:
        return self._need(self._prom, "--prometheus", semconv.ENV_PROMETHEUS_URL)

    # -- traces ---------------------------------------------------------------------

    def _trace_doc(self, tid: str, start_ns: int | None, end_ns: int | None) -> Any:
        params: dict[str, Any] = {}
        if start_ns is not None and end_ns is not None:
            params = {"start": start_ns // 1_000_000_000, "end": -(-end_ns // 1_000_000_000) + 1}
        if self._v2:
            status, body = self.tempo.get(f"/api/v2/traces/{tid}", params, ok_404=True)
            if status != 404:
                return self._json(body, "Tempo", "/api/v2/traces")
        # Tempo < 2.6 has no v2 route; both answer an unknown id with 404 (empty body).
        status, body = self.tempo.get(f"/api/traces/{tid}", params, ok_404=True)
        if status == 404:
            return None
        if self._v2 and body.strip():
            self._v2 = False
        return self._json(body, "Tempo", "/api/traces")

    @staticmethod
    def _json(body: bytes, engine: str, path: str) -> Any:
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            raise BackendError(f"{engine} returned a body that is not JSON for {path}: {_first_line(body)}") from None

    def _spans_of(self, tid: str, start_ns: int | None, end_ns: int | None) -> list[Span]:
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(tid)
            if hit is not None and now - hit[0] < TRACE_CACHE_TTL_S:
                self._cache.move_to_end(tid)
                doc = hit[1]
            else:
                doc = None
        if doc is None:
            doc = self._trace_doc(tid, start_ns, end_ns)
            if doc is None:
                return []
            with self._cache_lock:
                self._cache[tid] = (now, doc)
                while len(self._cache) > TRACE_CACHE_SIZE:
                    self._cache.popitem(last=False)
        spans = parse_tempo_trace(doc)  # fresh objects on every call, as the embedded store gives
        bad = {s.trace_id for s in spans} - {tid}
        if bad:
            raise BackendError(f"Tempo returned spans of another trace ({sorted(bad)[0]}) for {tid}")
        return spans

    def get_trace(self, trace_id: str, *, start_ns: int | None = None,
                  end_ns: int | None = None) -> Trace | None:
        tid = normalize_trace_id(trace_id)
        return self.get_traces([tid], start_ns=start_ns, end_ns=end_ns).get(tid)

    def get_traces(self, trace_ids: Sequence[str], *, start_ns: int | None = None, end_ns: int | None = None,
                   with_logs: bool = True) -> dict[str, Trace]:
        ids = list(dict.fromkeys(normalize_trace_id(t) for t in trace_ids))
        if not ids:
            return {}
        if len(ids) == 1:
            results = [self._spans_of(ids[0], start_ns, end_ns)]
        else:
            with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(ids))) as pool:
                results = list(pool.map(lambda t: self._spans_of(t, start_ns, end_ns), ids))
        out: dict[str, Trace] = {}
        for tid, spans in zip(ids, results):
            if spans:
                out[tid] = Trace(trace_id=tid, spans=spans)
        if with_logs and out and self._loki is None:
            self._missing("Loki", "--loki", semconv.ENV_LOKI_URL, "log evidence")
        if with_logs and out and self._loki is not None:
            # One Loki query per 50 traces close in time (bounded by their joint window),
            # not one per trace: an investigation reads hundreds of sample traces.
            ordered = sorted(out.values(), key=lambda t: t.start_ns)
            chunks = [ordered[i:i + LOG_TRACES_PER_QUERY] for i in range(0, len(ordered), LOG_TRACES_PER_QUERY)]

            def logs_of(chunk: list[Trace]) -> list[LogRecord]:
                return self._logs_for_traces([t.trace_id for t in chunk], min(t.start_ns for t in chunk),
                                             max(t.end_ns for t in chunk))
            if len(chunks) == 1:
                found = logs_of(chunks[0])
            else:
                with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(chunks))) as pool:
                    found = [r for part in pool.map(logs_of, chunks) for r in part]
            by_trace: dict[str, list[LogRecord]] = {}
            for r in found:
                by_trace.setdefault(r.trace_id, []).append(r)
            for tr in out.values():
                tr.logs = sorted(by_trace.get(tr.trace_id, []), key=lambda r: (r.time_ns, r.observed_time_ns))
        return out

    def _search(self, q: TraceQuery, limit: int, spss: int) -> list[tuple[TraceSummary, list[tuple[str, int]]]]:
        params: dict[str, Any] = {"q": traceql(q), "limit": limit, "spss": spss}
        if q.start_ns is not None:
            params["start"] = q.start_ns // 1_000_000_000
        if q.end_ns is not None:
            params["end"] = -(-q.end_ns // 1_000_000_000)
        if "start" in params and "end" not in params:
            params["end"] = int(time.time()) + 1
        if "end" in params and "start" not in params:
            params["start"] = 0
        doc = self.tempo.get_json("/api/search", params)
        hits = parse_tempo_search(doc)
        metrics = (doc or {}).get("metrics") or {}
        done, total = metrics.get("completedJobs"), metrics.get("totalJobs")
        # Tempo stops early once it has `limit` traces; fewer hits *and* unfinished jobs is a partial answer.
        if done is not None and total is not None and int(done) < int(total) and len(hits) < limit:
            raise BackendError(f"Tempo search was partial ({done} of {total} jobs completed); "
                               "retry, or narrow the time window")
        return hits

    def rootless_trace_ids(self, query: TraceQuery) -> list[str]:
        """See :func:`stagetrace.backend.rootless_trace_ids`: one search of the window, one
        span per hit; Tempo names a trace whose root span it never received by
        :data:`TEMPO_NO_ROOT` in place of its root service. Tempo answers at most
        ``search_cap`` traces, so in a larger window these are the rootless ones among them."""
        q = TraceQuery(start_ns=query.start_ns, end_ns=query.end_ns)
        limit = min(query.limit, self.search_cap) if query.limit is not None else self.search_cap
        hits = self._search(q, self.search_cap, spss=1)
        return sorted(h[0].trace_id for h in hits if h[0].root_service == TEMPO_NO_ROOT)[:limit]

    def search_traces(self, query: TraceQuery) -> list[TraceSummary]:
        """Summaries from Tempo's search, newest first by the matching span's start.
        Durations are whole milliseconds (Tempo's ``durationMs``)."""
        limit = min(query.limit, self.search_cap) if query.limit is not None else self.search_cap
        hits = self._search(query, limit, spss=3)
        hits.sort(key=lambda h: (-max((st for _, st in h[1]), default=h[0].start_ns), h[0].trace_id))
        return [s for s, _ in hits[:limit]]

    def find_spans(self, query: TraceQuery) -> list[Span]:
        """Matching spans, oldest first. Tempo finds the traces; their full spans are then
        fetched and every condition is checked on them, so the spans carry all their
        attributes (a search hit only has the queried ones)."""
        limit = min(query.limit, self.search_cap) if query.limit is not None else self.search_cap
        hits = self._search(query, limit, spss=100)
        if not hits:
            return []
        lo = min(h[0].start_ns for h in hits)
        hi = max(h[0].start_ns + h[0].duration_ns for h in hits) + 1_000_000  # search durations are whole ms
        traces = self.get_traces([h[0].trace_id for h in hits], start_ns=lo, end_ns=hi, with_logs=False)
        out = [sp for tr in traces.values() for sp in tr.spans if span_matches(sp, query)]
        out.sort(key=lambda s: (s.start_ns, s.trace_id, s.span_id))
        return out[:query.limit] if query.limit is not None else out

    # -- logs -----------------------------------------------------------------------

    def _loki_range(self, logql: str, start_ns: int, end_ns: int, limit: int | None) -> list[LogRecord]:
        """query_range, forward, paged until ``limit`` or the end of the window."""
        out: list[LogRecord] = []
        cursor = start_ns
        at_cursor: Counter = Counter()  # lines of the previous page stamped `cursor`
        for _ in range(LOKI_MAX_PAGES):
            page = LOKI_PAGE if limit is None else min(LOKI_PAGE, limit - len(out))
            params = {"query": logql, "start": cursor, "end": end_ns, "limit": page, "direction": "forward"}
            doc = self.loki.get_json("/loki/api/v1/query_range", params,
                                     headers={LOKI_ENCODING_HEADER: LOKI_CATEGORIZE})
            recs = parse_loki_streams(doc)
            # The next page starts at the last timestamp (inclusive), so the lines already
            # read at that timestamp come again: skip them once each, keep true duplicates.
            skip = Counter(at_cursor)
            for r in recs:
                key = _entry_key(r)
                if r.time_ns == cursor and skip[key] > 0:
                    skip[key] -= 1
                    continue
                out.append(r)
            if len(recs) < page or (limit is not None and len(out) >= limit):
                break
            if recs[-1].time_ns == cursor and recs[0].time_ns == cursor:
                raise BackendError(f"Loki has more than {page} lines at one timestamp for {logql}; "
                                   "add filters")
            cursor = recs[-1].time_ns
            at_cursor = Counter(_entry_key(r) for r in recs if r.time_ns == cursor)
        else:
            raise BackendError(f"Loki returned more than {LOKI_MAX_PAGES * LOKI_PAGE} lines for {logql}; "
                               "narrow the window or add filters")
        out.sort(key=lambda r: (r.time_ns, r.observed_time_ns))
        return out[:limit] if limit is not None else out

    def _logs_for_traces(self, trace_ids: Sequence[str], start_ns: int, end_ns: int,
                         service: str | None = None, limit: int | None = None) -> list[LogRecord]:
        ids = [normalize_trace_id(t) for t in trace_ids]
        # Every service, not only those with spans in the trace: a service whose spans were
        # lost (broken trace) still logged with the trace id, and its logs fill that gap.
        selector = f"{{service_name={_logql_str(service)}}}" if service else '{service_name=~".+"}'
        out: list[LogRecord] = []
        for i in range(0, len(ids), LOG_TRACES_PER_QUERY):  # keep the LogQL (and URL) short
            chunk = ids[i:i + LOG_TRACES_PER_QUERY]
            filt = (f"| trace_id={_logql_str(chunk[0])}" if len(chunk) == 1
                    else f"| trace_id=~{_logql_str('|'.join(chunk))}")
            out.extend(self._loki_range(f"{selector} {filt}", start_ns - LOG_WINDOW_PAD_NS,
                                        end_ns + LOG_WINDOW_PAD_NS, limit))
        wanted = set(ids)
        return [r for r in out if r.trace_id in wanted]

    def find_logs(self, query: LogQuery) -> list[LogRecord]:
        """Log records oldest first, at most ``query.limit``. Every Loki query is bounded:
        by the given window, else by the traces' windows (looked up in Tempo), else by
        the last hour (Loki's own default). Without a Loki URL: none (warned once)."""
        if self._loki is None:
            self._missing("Loki", "--loki", semconv.ENV_LOKI_URL, "log evidence")
            return []
        attrs = dict(query.attributes)
        service = query.service
        if service is None and isinstance(attrs.get(semconv.SERVICE_NAME), str):
            service = attrs.pop(semconv.SERVICE_NAME)
        start, end = query.start_ns, query.end_ns
        if query.trace_ids is not None:
            ids = [normalize_trace_id(t) for t in query.trace_ids]
            if not ids:
                return []
            if start is None or end is None:
                traces = self.get_traces(ids, start_ns=start, end_ns=end, with_logs=False)
                if traces:
                    lo = min(t.start_ns for t in traces.values())
                    hi = max(t.end_ns for t in traces.values())
                    start = lo if start is None else start
                    end = hi if end is None else end
                else:  # Tempo has no span of them (a trace only logs carry): Loki's own default window
                    start, end = self._window(start, end)
            recs = self._logs_for_traces(ids, start, end, service)
        else:
            now = time.time_ns()
            end = end if end is not None else now
            start = start if start is not None else end - DEFAULT_LOG_LOOKBACK_NS
            selector = f"{{service_name={_logql_str(service)}}}" if service else '{service_name=~".+"}'
            filters = "".join(f" | {_flat(k)}={_logql_str(str(v))}" for k, v in attrs.items()
                              if not isinstance(v, (bool, float)))
            recs = self._loki_range(selector + filters, start, end - 1,
                                    None if (query.min_severity or attrs) else query.limit)
        out = [r for r in recs if _log_matches(r, query, service, attrs)]
        return out[:query.limit] if query.limit is not None else out

    # -- metrics --------------------------------------------------------------------

    def _prom_data(self, path: str, params: dict[str, Any]) -> Any:
        """The ``data`` of a Prometheus API answer; any other answer is a BackendError that
        says what was wrong with it in words (the report shows it as the reason metrics
        were skipped), never a Python exception's text."""
        doc = self.prometheus.get_json(path, params)
        if doc is None:  # get_json's 404
            raise BackendError(f"Prometheus answered HTTP 404 for {path} (is --prometheus a Prometheus API?)")
        if not isinstance(doc, dict):
            raise BackendError(f"Prometheus answered {path} with {_json_kind(doc)}, not an API object")
        if doc.get("status") != "success":
            err = doc.get("error")
            raise BackendError(f"Prometheus query failed ({path}): "
                               + (_json_text(err) if err else f"status {_json_text(doc.get('status'))}"))
        warnings = doc.get("warnings")
        if warnings:
            first = warnings[0] if isinstance(warnings, list) else warnings
            raise BackendError(f"Prometheus returned a partial result for {path}: {_json_text(first)}")
        return doc.get("data")

    def query_range(self, promql: str, start_ns: int, end_ns: int, step_s: float | None = None) -> list[dict]:
        """The ``/api/v1/query_range`` matrix for a PromQL expression (for callers that
        want PromQL, e.g. span-metric rates), checked: each series is ``{"metric": labels,
        "values": [(t_s, value), ...]}`` with string labels and float times and values."""
        step = step_s or max(1.0, math.ceil((end_ns - start_ns) / 1e9 / MAX_POINTS_PER_SERIES))
        path = "/api/v1/query_range"
        data = self._prom_data(path, {"query": promql, "start": f"{start_ns / 1e9:.3f}",
                                      "end": f"{end_ns / 1e9:.3f}", "step": f"{step:g}"})
        if not isinstance(data, dict):
            raise BackendError(f"Prometheus answered {path} with {_json_kind(data)} as its data, not an object")
        if data.get("resultType") != "matrix":
            raise BackendError(f"Prometheus answered {path} with result type {_json_text(data.get('resultType'))}, "
                               "not a matrix")
        return _matrix(data.get("result"), path)

    def _window(self, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
        end = end_ns if end_ns is not None else time.time_ns()
        start = start_ns if start_ns is not None else end - DEFAULT_LOG_LOOKBACK_NS
        return start, end

    @staticmethod
    def _service_matcher(service: str | None) -> str:
        # job is "<service.namespace>/<service.name>" or "<service.name>" in the OTLP translation.
        return f', job=~{_prom_str("(.+/)?" + re.escape(service))}' if service else ""

    def _resolve_names(self, name: str, start: int, end: int, service: str | None) -> dict[str, str]:
        """Prometheus base names (suffix-free) for one requested name -> its kind."""
        base = prom_name(name)
        units = "|".join(_UNIT_SUFFIXES)
        regex = f"{re.escape(base)}(_({units}))?(_total|_bucket|_sum|_count)?"
        matcher = f'{{__name__=~{_prom_str(regex)}{self._service_matcher(service)}}}'
        names = self._label_values({"match[]": matcher, "start": f"{start / 1e9:.3f}", "end": f"{end / 1e9:.3f}"})
        return _group_names(names)

    def _label_values(self, params: dict[str, Any]) -> list[str]:
        path = "/api/v1/label/__name__/values"
        names = self._prom_data(path, params)
        if names is None:
            return []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BackendError(f"Prometheus answered {path} with {_json_kind(names)} where a list of metric names "
                               "was expected")
        return names

    def metric_series(self, query: MetricQuery) -> list[MetricSeries]:
        """Series from ``query_range`` at a step that keeps at most 1000 points per
        series. Points are Prometheus' evaluation at step times (latest sample within
        the look-back), so timestamps are step-aligned, not the original ones.
        Without a Prometheus URL: none (warned once)."""
        if self._prom is None:
            self._missing("Prometheus", "--prometheus", semconv.ENV_PROMETHEUS_URL, "metric evidence")
            return []
        start, end = self._window(query.start_ns, query.end_ns)
        if query.name is None:
            names = {}
            for n in self.metric_names(start_ns=start, end_ns=end, service=query.service):
                names.update(self._resolve_names(n, start, end, query.service))
        else:
            names = self._resolve_names(query.name, start, end, query.service)
        out: list[MetricSeries] = []
        for full, kind in sorted(names.items()):
            display = query.name if query.name is not None else full
            out.extend(self._series(full, kind, display, query, start, end))
        return out

    def _series(self, full: str, kind: str, display: str, q: MetricQuery, start: int, end: int) -> list[MetricSeries]:
        # Attribute equality as label matchers too (Prometheus filters; the exact check follows).
        svc = self._service_matcher(q.service) + "".join(
            f", {prom_name(k)}={_prom_str(str(v))}" for k, v in q.attributes.items()
            if isinstance(v, (str, int)) and not isinstance(v, bool) and k != semconv.SERVICE_NAME)
        if kind == "histogram":
            raw = {suffix: self.query_range(f'{{__name__="{full}_{suffix}"{svc}}}', start, end)
                   for suffix in ("bucket", "sum", "count")}
            return _histogram_series(display, raw, q.attributes, _unit_of(full))
        metric = full + "_total" if kind == "sum" else full
        out = []
        for r in self.query_range(f'{{__name__="{metric}"{svc}}}', start, end):
            attrs, resource = _prom_labels(r["metric"])
            if q.attributes and not attributes_match(q.attributes, attrs, resource):
                continue
            s = MetricSeries(name=display, kind=kind, attributes=attrs, resource=resource, unit=_unit_of(full))
            for t, v in r.get("values") or []:
                s.points.append(MetricPoint(name=display, kind=kind, time_ns=int(round(float(t) * 1e9)),
                                            value=float(v), attributes=attrs, resource=resource, unit=s.unit,
                                            is_monotonic=kind == "sum",
                                            temporality="CUMULATIVE" if kind == "sum" else ""))
            out.append(s)
        return out

    def metric_names(self, *, start_ns: int | None = None, end_ns: int | None = None,
                     service: str | None = None) -> list[str]:
        """Prometheus metric names (histogram and counter suffixes folded), e.g.
        ``ml_stage_duration_seconds`` for the OTLP ``ml.stage.duration``; either
        spelling is accepted by :meth:`metric_series`."""
        if self._prom is None:
            self._missing("Prometheus", "--prometheus", semconv.ENV_PROMETHEUS_URL, "metric evidence")
            return []
        start, end = self._window(start_ns, end_ns)
        params: dict[str, Any] = {"start": f"{start / 1e9:.3f}", "end": f"{end / 1e9:.3f}"}
        if service:
            params["match[]"] = f'{{__name__=~".+"{self._service_matcher(service)}}}'
        return sorted(_group_names(self._label_values(params)))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "GrafanaBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry_key(r: LogRecord) -> tuple:
    return (r.time_ns, r.trace_id, r.span_id, str(r.body), r.severity_number,
            tuple(sorted((k, str(v)) for k, v in r.attributes.items())),
            tuple(sorted((k, str(v)) for k, v in r.resource.items())))


def _log_attrs_match(want: Attributes, r: LogRecord) -> bool:
    """Like the span match, but a name Loki flattened and we could not restore
    (``my.attr`` stored as ``my_attr``) is found under its flattened spelling."""
    for k, v in want.items():
        for key in (k, _flat(k)):
            if key in r.attributes:
                have = r.attributes[key]
                break
            if key in r.resource:
                have = r.resource[key]
                break
        else:
            return False
        if not value_equals(have, v):
            return False
    return True


def _log_matches(r: LogRecord, q: LogQuery, service: str | None, attrs: Attributes) -> bool:
    return log_in_query(r, q, service) and (not attrs or _log_attrs_match(attrs, r))


def _json_kind(x: Any) -> str:
    """What a JSON value is, in words, for messages about answers of another shape."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, list):
        return "a list" if x else "an empty list"
    return "an object"


def _json_text(x: Any) -> str:
    """A value from an answer, as its first line of text: strings as they are, the rest as
    JSON (never a Python repr such as ``{'a': 1}``)."""
    return _first_line(x if isinstance(x, str) else json.dumps(x))


def _matrix(result: Any, path: str) -> list[dict]:
    """A range query's ``result`` checked and converted: string labels, float pairs."""
    if result is None:
        return []
    if not isinstance(result, list):
        raise BackendError(f"Prometheus answered {path} with {_json_kind(result)} as its result, not a list of series")
    out = []
    for r in result:
        labels = r.get("metric") if isinstance(r, dict) else None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BackendError(f"Prometheus answered {path} with a series whose labels are not an object of strings")
        values = r.get("values") or []
        try:
            pairs = [(float(t), float(v)) for t, v in values]
        except (TypeError, ValueError):
            raise BackendError(f"Prometheus answered {path} with series values that are not [time, number] "
                               "pairs") from None
        out.append({"metric": labels, "values": pairs})
    return out


def _group_names(names: Iterable[str]) -> dict[str, str]:
    """Fold Prometheus series names into base name -> kind (histogram | sum | gauge)."""
    names = set(names)
    out: dict[str, str] = {}
    for n in names:
        if n.endswith("_bucket") and n[:-7] + "_count" in names:
            out[n[:-7]] = "histogram"
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if base in out:
            continue
        if n.endswith("_total"):
            out[n[:-6]] = "sum"
        else:
            out.setdefault(n, "gauge")
    return out


def _unit_of(name: str) -> str:
    m = re.search(r"_(" + "|".join(_UNIT_SUFFIXES) + r")$", name)
    return {"seconds": "s", "milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns",
            "bytes": "By"}.get(m.group(1), m.group(1)) if m else ""


def _prom_labels(labels: dict[str, str]) -> tuple[Attributes, Attributes]:
    """Series labels -> (point attributes, resource). The OTLP translation puts
    service.namespace/service.name in ``job`` and service.instance.id in ``instance``."""
    attrs: Attributes = {}
    resource: Attributes = {}
    job = labels.get("job", "")
    if job:
        ns, _, svc = job.rpartition("/")
        resource[semconv.SERVICE_NAME] = svc
        if ns:
            resource[semconv.SERVICE_NAMESPACE] = ns
    if labels.get("instance"):
        resource[semconv.SERVICE_INSTANCE_ID] = labels["instance"]
    for k, v in labels.items():
        if k in _PROM_RESERVED:
            continue
        name = _unflatten(k)
        (resource if name.startswith(_RESOURCE_PREFIXES) else attrs)[name] = v
    return attrs, resource


def _histogram_series(display: str, raw: dict[str, list[dict]], want: Attributes, unit: str) -> list[MetricSeries]:
    """Rebuild OTLP-style histogram points (per-bucket counts, bounds) from the
    cumulative ``_bucket{le=...}``, ``_sum`` and ``_count`` series."""
    groups: dict[tuple, dict[str, Any]] = {}

    def key_of(metric: dict[str, str]) -> tuple:
        return tuple(sorted((k, v) for k, v in metric.items() if k not in ("__name__", "le")))

    for r in raw["bucket"]:
        g = groups.setdefault(key_of(r["metric"]), {"labels": r["metric"], "buckets": {}, "sum": {}, "count": {}})
        try:
            le = float(r["metric"].get("le", "+Inf"))
        except ValueError:
            raise BackendError("Prometheus answered a histogram bucket series whose le label is not a number") from None
        for t, v in r.get("values") or []:
            g["buckets"].setdefault(float(t), {})[le] = float(v)
    for part in ("sum", "count"):
        for r in raw[part]:
            g = groups.get(key_of(r["metric"]))
            if g is not None:
                for t, v in r.get("values") or []:
                    g[part][float(t)] = float(v)
    out = []
    for g in groups.values():
        attrs, resource = _prom_labels(g["labels"])
        if want and not attributes_match(want, attrs, resource):
            continue
        s = MetricSeries(name=display, kind="histogram", attributes=attrs, resource=resource, unit=unit)
        for t in sorted(g["buckets"]):
            cum = sorted(g["buckets"][t].items())
            bounds = [le for le, _ in cum if math.isfinite(le)]
            counts, prev = [], 0.0
            for _, c in cum:
                counts.append(int(round(c - prev)))
                prev = c
            count = g["count"].get(t, cum[-1][1] if cum else 0.0)
            total = g["sum"].get(t)
            s.points.append(MetricPoint(
                name=display, kind="histogram", time_ns=int(round(t * 1e9)),
                value=(total / count) if (total is not None and count) else 0.0,
                attributes=attrs, resource=resource, unit=unit, is_monotonic=True, temporality="CUMULATIVE",
                count=int(round(count)), sum=total, bucket_counts=counts, explicit_bounds=bounds))
        out.append(s)
    return out
