"""The demo's load generator: card-payment clients calling ``POST /predict``,
split between the API and its canary the way an ingress would.

It is the client side of the traces: ``requests`` is instrumented with
opentelemetry-instrumentation-requests in this process and exported over
OTLP/HTTP, so every request starts with a client span and the W3C
``traceparent`` it sends ties the API's spans to it. The trace id of each
request is read back from that header, which is how the demo knows the ids of
a slow and of a failed request without any tracing code in the services.

Each request comes from one of a few clients (its User-Agent). Every transaction
has a ground truth (fraud or not, drawn from :mod:`.truth` with its real amount),
and :class:`LabelFeed` sends it back to the collector's labels endpoint a few
seconds after the prediction, joined by the ``prediction_id`` the API returned,
as a chargeback system does hours later. Under ``silent-drift`` the
point-of-sale gateway sends ``amount`` in cents; the truth does not change.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import requests

from .scenarios import CENTS, CLIENTS, DRIFT_CLIENT, LEGACY_CLIENT_SHARE, MODEL_ERRORS, SILENT_DRIFT, Schedule
from .truth import N_USERS, account_rows, fraud_probability

CLIENT_SERVICE_NAME = "loadgen"
N_ACCOUNTS = N_USERS
LABEL_DELAY_S = 3.0  # stands in for the hours a chargeback takes


@dataclass(slots=True)
class Outcome:
    trace_id: str | None
    status: int | None  # HTTP status, None when the request never got an answer
    latency_s: float
    started: float
    error: str | None = None


@dataclass(slots=True)
class Request:
    """One request: the body sent, the client that sends it, and the eventual label of
    each of its transactions (what the client learns later, not what it sends)."""

    body: dict
    client: str
    labels: list[int]
    cents: bool = False  # amounts sent in cents (silent-drift)


@dataclass
class LoadStats:
    outcomes: list[Outcome] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # LabelFeed.close() counts
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, o: Outcome) -> None:
        with self._lock:
            self.outcomes.append(o)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        return sum(1 for o in list(self.outcomes) if o.status is None or o.status >= 500)

    def p95_ms(self, last: int = 200) -> float:
        lat = sorted(o.latency_s for o in list(self.outcomes)[-last:])
        return 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else 0.0


class Workload:
    """Random but reproducible requests shaped like a card-payment backend's."""

    def __init__(self, schedule: Schedule, seed: int = 42) -> None:
        self.schedule = schedule
        self.rng = random.Random(seed)
        # Clients and labels draw from their own generator: the request bodies are the
        # same stream with or without them.
        self.world_rng = random.Random(seed + 1)
        self._accounts: dict[int, tuple] | None = None
        self._lock = threading.Lock()

    def next_request(self) -> dict:
        with self._lock:
            r = self.rng
            large = r.random() < 0.18
            n = r.randint(32, 64) if large else min(1 + int(r.expovariate(0.35)), 12)
            # An old mobile client that does not send device_age_days (v1 imputes it).
            legacy = r.random() < LEGACY_CLIENT_SHARE
            txns = []
            for _ in range(n):
                t = {"amount": round(r.lognormvariate(3.5, 1.0), 2), "hour": r.randint(0, 23),
                     "merchant_risk": round(r.betavariate(2, 8), 3), "distance_km": round(r.expovariate(1 / 20), 1)}
                if not legacy:
                    t["device_age_days"] = round(r.expovariate(1 / 200), 1)
                txns.append(t)
            return {"account_id": r.randrange(N_ACCOUNTS), "transactions": txns}

    def next(self, now: float | None = None) -> Request:
        """The next request with its client and labels; amounts in cents when the
        drift client sends it under silent-drift."""
        body = self.next_request()
        with self._lock:
            if self._accounts is None:
                self._accounts = {uid: vals for uid, *vals in account_rows(N_ACCOUNTS)}
            w = self.world_rng
            x, client = w.random(), CLIENTS[-1][0]
            for name, share in CLIENTS:
                if x < share:
                    client = name
                    break
                x -= share
            avg_amount, _, _, chargebacks = self._accounts[body["account_id"]]
            labels = []
            for t in body["transactions"]:
                # a legacy client does not send the device's age, but the device has one
                device_age = t.get("device_age_days", w.expovariate(1 / 200))
                p = fraud_probability(t["amount"], t["hour"], t["merchant_risk"], t["distance_km"], device_age,
                                      avg_amount, chargebacks)
                labels.append(int(w.random() < p))
        cents = client == DRIFT_CLIENT and self.schedule.active(SILENT_DRIFT, now)
        if cents:
            for t in body["transactions"]:
                t["amount"] = round(t["amount"] * CENTS)
        return Request(body, client, labels, cents)


def _trace_id_of(resp: requests.Response | None) -> str | None:
    """The trace id the instrumented client put in ``traceparent``."""
    if resp is None:
        return None
    tp = resp.request.headers.get("traceparent", "")
    parts = tp.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class LabelFeed:
    """Sends each prediction's label ``delay_s`` after the prediction was made, in batches,
    from its own thread: as JSON lines to ``POST /stagetrace/v1/labels`` of a stagetrace
    collector, or (``otlp``) as the ``ml.label`` OTLP log records that endpoint makes of
    them (:func:`stagetrace.collector.labels.parse_lines`: one place for the convention),
    to any OTLP/HTTP receiver's ``/v1/logs`` - an OpenTelemetry Collector that sends logs
    to Loki, in the compose stack. Over plain urllib, which nothing instruments: the
    labels are not traffic of the system under test, and their requests must not appear
    among its traces."""

    MAX_LINES = 5000  # per request: well under the endpoint's 4 MiB (and the Collector's default limits)

    def __init__(self, collector_http: str, delay_s: float = LABEL_DELAY_S, period_s: float = 0.5, *,
                 otlp: bool = False) -> None:
        from stagetrace.collector.labels import PATH

        self.otlp = otlp
        self.url = collector_http.rstrip("/") + ("/v1/logs" if otlp else PATH)
        self.delay_s = delay_s
        self.period_s = period_s
        self._pending: list[tuple[float, dict]] = []  # (due, line), in due order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = {"queued": 0, "accepted": 0, "rejected": 0, "failed_posts": 0}
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="label-feed", daemon=True)
        self._thread.start()

    def add(self, lines: list[dict], made_at: float) -> None:
        with self._lock:
            self._pending.extend((made_at + self.delay_s, line) for line in lines)
            self.counts["queued"] += len(lines)

    def _due(self, now: float) -> list[dict]:
        with self._lock:
            self._pending.sort(key=lambda x: x[0])  # requests finish out of order
            n = 0
            while n < len(self._pending) and n < self.MAX_LINES and self._pending[n][0] <= now:
                n += 1
            out = [line for _, line in self._pending[:n]]
            del self._pending[:n]
            return out

    def _post(self, lines: list[dict]) -> bool:
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        if self.otlp:
            return self._post_otlp(body)
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                doc = json.loads(resp.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._failed(exc)
            return False
        self.counts["accepted"] += int(doc.get("accepted", 0))
        self.counts["rejected"] += int(doc.get("rejected", 0))
        self._note(str(e) for e in doc.get("errors", []))
        return True

    def _post_otlp(self, body: bytes) -> bool:
        """OTLP/HTTP protobuf; a line that is no label is refused here, as the labels
        endpoint would, and the receiver's partial success counts as rejected."""
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

        from stagetrace.collector.labels import parse_lines

        payload, n, bad, errors = parse_lines(body)
        self.counts["rejected"] += bad
        self._note(errors)
        if payload is None:
            return True
        req = urllib.request.Request(self.url, data=payload, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
            refused = logs_service_pb2.ExportLogsServiceResponse.FromString(raw).partial_success.rejected_log_records
        except (urllib.error.URLError, OSError) as exc:
            self.counts["rejected"] -= bad  # the lines are tried again with the batch
            self._failed(exc)
            return False
        except DecodeError:  # a 2xx whose body is no OTLP response: accepted
            refused = 0
        self.counts["accepted"] += n - int(refused)
        self.counts["rejected"] += int(refused)
        return True

    def _failed(self, exc: Exception) -> None:
        self.counts["failed_posts"] += 1
        self._note([f"{type(exc).__name__}: {exc}"])

    def _note(self, errors) -> None:
        for e in errors:
            if len(self.errors) >= 5:
                return
            self.errors.append(str(e))

    def _loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            lines = self._due(time.time())
            if lines and not self._post(lines):
                with self._lock:  # the collector is busy or restarting: try again next round
                    self._pending[:0] = [(0.0, line) for line in lines]
                if stopping:
                    return  # closing: one more failure means it is gone
            with self._lock:
                empty = not self._pending
            if stopping and empty:
                return
            if not lines or len(lines) < self.MAX_LINES:
                time.sleep(self.period_s)

    def close(self, timeout_s: float = 15.0, *, drop: bool = False) -> dict[str, int]:
        """Wait until every label has been sent (each once due), then stop; ``drop``
        forgets the pending ones (interrupted). Returns the counts."""
        if drop:
            with self._lock:
                self._pending.clear()
        self._stop.set()
        self._thread.join(timeout_s)
        with self._lock:
            self.counts["unsent"] = len(self._pending)
        return dict(self.counts)


def _label_lines(req: Request, resp: requests.Response) -> list[dict]:
    """One label per transaction, for the prediction id the API returned (row ``-<i>``)."""
    try:
        pid = resp.json().get("prediction_id")
    except ValueError:
        return []
    if not isinstance(pid, str) or not pid:
        return []  # the API runs without stagetrace: nothing to join the labels on
    return [{"prediction_id": f"{pid}-{i}", "label": y} for i, y in enumerate(req.labels)]


def canary_for(account_id: int, schedule: Schedule) -> bool:
    """Sticky canary split, as an ingress does it: the same accounts go to v2
    while it is rolled out (scenario ``model-errors``)."""
    return (schedule.active(MODEL_ERRORS)
            and zlib.crc32(str(account_id).encode()) % 100 < schedule.canary_share * 100)


def run_load(api_url: str, schedule: Schedule, *, rate: float, canary_url: str | None = None, concurrency: int = 24,
             stop: threading.Event | None = None, on_tick: Callable[[LoadStats, str], None] | None = None,
             timeout_s: float = 10.0, labels: LabelFeed | None = None) -> LoadStats:
    """Send Poisson-timed requests at ``rate``/s from ``schedule.start`` to
    ``schedule.end`` (or until ``stop`` is set). At most ``concurrency`` are in
    flight; beyond that the generator waits, as a real client pool would. The
    labels of answered predictions go to ``labels`` (which sends them later)."""
    stats = LoadStats()
    workload = Workload(schedule)
    stop = stop or threading.Event()
    slots = threading.BoundedSemaphore(concurrency)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    url = api_url.rstrip("/") + "/predict"
    canary = (canary_url or api_url).rstrip("/") + "/predict"
    rng = random.Random(7)

    def one(req: Request) -> None:
        t0 = time.time()
        resp = None
        err = None
        try:
            target = canary if canary_for(req.body["account_id"], schedule) else url
            resp = session.post(target, json=req.body, headers={"User-Agent": req.client}, timeout=timeout_s)
        except requests.RequestException as exc:
            err = type(exc).__name__
        finally:
            slots.release()
        stats.add(Outcome(_trace_id_of(resp), resp.status_code if resp is not None else None,
                          time.time() - t0, t0, err))
        if labels is not None and resp is not None and resp.status_code == 200:
            labels.add(_label_lines(req, resp), t0)

    last_tick = 0.0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="loadgen") as pool:
        next_at = max(time.time(), schedule.start)
        while not stop.is_set():
            now = time.time()
            if now >= schedule.end:
                break
            if on_tick and now - last_tick >= 0.25:
                on_tick(stats, schedule.phase(now))
                last_tick = now
            if now < next_at:
                stop.wait(min(next_at - now, 0.05))
                continue
            if not slots.acquire(timeout=0.1):
                continue
            pool.submit(one, workload.next(now))
            next_at += rng.expovariate(rate)
    session.close()
    if on_tick:
        on_tick(stats, "done")
    return stats


def warm_up(urls: list[str], requests_per_url: int = 16, timeout_s: float = 30.0) -> None:
    """A few requests to each backend before the measured load, as a rollout's
    readiness traffic would: the first requests of a fresh Python worker are
    slow (lazy imports, first model call, new connections; here also the
    client's first span export) and would otherwise look like an incident in
    the clean period. Sent before the schedule starts, so they are outside the
    investigated window."""
    workload = Workload(Schedule(start=0.0, end=0.0), seed=1)
    with requests.Session() as session, ThreadPoolExecutor(max_workers=6) as pool:
        def one(url: str) -> None:
            try:
                session.post(url.rstrip("/") + "/predict", json=workload.next_request(), timeout=timeout_s)
            except requests.RequestException:
                pass  # the load itself reports a backend that does not answer
        list(pool.map(one, [u for u in urls for _ in range(requests_per_url)]))


def instrument_client(otlp_http_endpoint: str, schedule_delay_ms: int = 500) -> Callable[[bool], None]:
    """Instrument ``requests`` in this process, exporting client spans over
    OTLP/HTTP; returns ``shutdown(flush=True)``, which un-instruments and flushes."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Stable HTTP semantic conventions, like the services (read once, at instrumentation).
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    provider = TracerProvider(resource=Resource.create({"service.name": CLIENT_SERVICE_NAME}), shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=otlp_http_endpoint.rstrip("/") + "/v1/traces", timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms))
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    def shutdown(flush: bool = True) -> None:
        instrumentor.uninstrument()
        if flush:  # else: interrupted, drop what is queued rather than retry a dead collector
            provider.force_flush(timeout_millis=5000)
            provider.shutdown()

    return shutdown
