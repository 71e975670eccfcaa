"""The demo's load generator: card-payment clients calling ``POST /predict``,
split between the API and its canary the way an ingress would.

It is the client side of the traces: ``requests`` is instrumented with
opentelemetry-instrumentation-requests in this process and exported over
OTLP/HTTP, so every request starts with a client span and the W3C
``traceparent`` it sends ties the API's spans to it. The trace id of each
request is read back from that header, which is how the demo knows the ids of
a slow and of a failed request without any tracing code in the services.
"""

from __future__ import annotations

import os
import random
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import requests

from .scenarios import LEGACY_CLIENT_SHARE, MODEL_ERRORS, Schedule

CLIENT_SERVICE_NAME = "loadgen"
N_ACCOUNTS = 5000


@dataclass(slots=True)
class Outcome:
    trace_id: str | None
    status: int | None  # HTTP status, None when the request never got an answer
    latency_s: float
    started: float
    error: str | None = None


@dataclass
class LoadStats:
    outcomes: list[Outcome] = field(default_factory=list)
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


def _trace_id_of(resp: requests.Response | None) -> str | None:
    """The trace id the instrumented client put in ``traceparent``."""
    if resp is None:
        return None
    tp = resp.request.headers.get("traceparent", "")
    parts = tp.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def canary_for(account_id: int, schedule: Schedule) -> bool:
    """Sticky canary split, as an ingress does it: the same accounts go to v2
    while it is rolled out (scenario ``model-errors``)."""
    return (schedule.active(MODEL_ERRORS)
            and zlib.crc32(str(account_id).encode()) % 100 < schedule.canary_share * 100)


def run_load(api_url: str, schedule: Schedule, *, rate: float, canary_url: str | None = None, concurrency: int = 24,
             stop: threading.Event | None = None, on_tick: Callable[[LoadStats, str], None] | None = None,
             timeout_s: float = 10.0) -> LoadStats:
    """Send Poisson-timed requests at ``rate``/s from ``schedule.start`` to
    ``schedule.end`` (or until ``stop`` is set). At most ``concurrency`` are in
    flight; beyond that the generator waits, as a real client pool would."""
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

    def one(body: dict) -> None:
        t0 = time.time()
        resp = None
        err = None
        try:
            target = canary if canary_for(body["account_id"], schedule) else url
            resp = session.post(target, json=body, timeout=timeout_s)
        except requests.RequestException as exc:
            err = type(exc).__name__
        finally:
            slots.release()
        stats.add(Outcome(_trace_id_of(resp), resp.status_code if resp is not None else None,
                          time.time() - t0, t0, err))

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
            pool.submit(one, workload.next_request())
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
