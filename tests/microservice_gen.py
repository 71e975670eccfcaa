"""A seeded generator of microservice telemetry with the traps real systems set for
root-cause analysis (the ML-pipeline generator is telemetry_gen.py).

A ``frontend`` serves three routes of very different cost: ``GET /`` (catalog x3,
ads), ``GET /cart`` (cart, currency x2) and ``POST /checkout`` (cart, catalog x2,
currency x4, payment, shipping), which is always ~5x slower than the others. Each
call is a CLIENT span in the caller, a network gap, and the callee's SERVER span
with its own work. Faults start at ``onset`` (a share of the window):

- ``net_delay``: calls into that service wait 60-120 ms on the network (edge gap);
- ``cpu_starved``: that service is starved of CPU: its own work x4 and every call
  it sends waits 30-60 ms before it leaves (caller side);
- ``slow_work``: that service's own work takes 80-160 ms longer;
- ``background_errors``: payment declines 3% of checkouts, all window long;
- ``version_errors``: after the onset, ``cart`` fails for requests whose
  ``app.client.version`` (on the frontend's server span) is ``2.0``;
- ``slow_host``: that service runs on two hosts (``host.name`` host-a / host-b); after the
  onset its work on host-b takes 80-160 ms longer (a bad node);
- ``spliced_head``: that service's work is 10x shorter in the first 7% of the window, as
  when a baseline recorded at another time sits just before the incident's data (the
  Nezha cases' fault-free minute): a real level change that is not the incident;
- ``rare_jump``: ``POST /checkout`` also calls ``verify`` on one checkout in four (a
  service called a few times a minute); if True, after the onset its own work is 20x
  longer: a jump from well under a millisecond to several, which leaves the requests
  within their route's normal latency;
- ``shared_rare``: ``cart`` (on one call in 40) and ``payment`` (one in ten) each call
  ``verify`` from inside their own work: a service with two callers, each calling it a
  few times in ten minutes; if True, after the onset calls into it wait 1-2 s on the
  network (Nezha Train-Ticket case-84 with half its traces: two calls on each edge);
- ``until``: faults end at this share of the window (default: they last to its end);
- ``then_slow_work``: from ``until`` on, that service's own work takes 20-40 ms longer: a
  second fault right after the first, too small for its requests to clear the slow bar
  that the first one's tail sets (the demo's CPU-bound preprocessing after its slow shard);
- ``drop_spans``: that share of the non-root spans is lost at random (an exporter's queue
  overflowed, a collector restarted): their children are orphans; ``drop_kind``: only
  spans of that kind are lost (``"CLIENT"``: the callee's SERVER span survives without its call);
- ``java_logs``: services log with a logback header (timestamp, level, thread,
  logger#line, TraceID/SpanID) in the body, as a filelog receiver ships them.

Returns a MemoryBackend (tests/telemetry_gen.py) and what was injected.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from stagetrace.model import LogRecord, Span, SpanEvent

from telemetry_gen import MemoryBackend

MS = 1_000_000
S = 1_000_000_000
ROUTES = {
    "GET /": [("catalog", "GetProduct")] * 3 + [("ads", "GetAds")],
    "GET /cart": [("cart", "GetCart"), ("currency", "Convert"), ("currency", "Convert")],
    "POST /checkout": [("cart", "GetCart"), ("catalog", "GetProduct"), ("catalog", "GetProduct")]
    + [("currency", "Convert")] * 4 + [("payment", "Charge"), ("shipping", "ShipOrder")],
}
ROUTE_MIX = [("GET /", 0.6), ("GET /cart", 0.3), ("POST /checkout", 0.1)]
WORK_MS = {"verify": (0.3, 0.6), "catalog": (3, 6), "ads": (2, 4), "cart": (4, 8), "currency": (2, 5), "payment": (30, 60),
           "shipping": (40, 80), "frontend": (2, 5)}


@dataclass
class Result:
    start_ns: int
    end_ns: int
    onset_ns: int
    faulty: set[str] = field(default_factory=set)  # trace ids touched by a fault
    error_traces: dict[str, set[str]] = field(default_factory=dict)  # cluster name -> trace ids


def generate(*, seconds: int = 180, rate: int = 12, onset: float = 0.5, seed: int = 1,
             net_delay: str | None = None, cpu_starved: str | None = None, slow_work: str | None = None,
             background_errors: bool = False, version_errors: bool = False, slow_host: str | None = None,
             java_logs: bool = False, spliced_head: str | None = None, rare_jump: bool | None = None,
             end_ns: int | None = None, until: float | None = None,
             then_slow_work: str | None = None, drop_spans: float = 0.0,
             shared_rare: bool | None = None,
             drop_kind: str | None = None) -> tuple[MemoryBackend, Result]:
    rnd = random.Random(seed)
    end = end_ns or (1_800_000_000 * S)
    start = end - seconds * S
    res = Result(start, end, start + int(onset * seconds * S))
    until_ns = start + int(until * seconds * S) if until is not None else end + 1
    spans: list[Span] = []
    logs: list[LogRecord] = []
    n = seconds * rate
    ids = iter(range(1, 10**9))

    def sid() -> str:
        return f"{next(ids):016x}"

    def res_of(svc: str, host: str = "a") -> dict:
        return {"service.name": svc, "service.instance.id": f"{svc}-7d9f-{host}", "k8s.pod.name": f"{svc}-7d9f-{host}",
                "host.name": f"host-{host}"}

    def log(t: int, tid: str, span: str, svc: str, level: str, msg: str) -> None:
        body = msg
        if java_logs:
            ts = f"2026-12-05 10:{(t // S) % 60:02d}:{(t // S) % 60:02d}.{(t // MS) % 1000:03d}"
            body = (f"{ts} {level:5} [grpc-default-executor-{rnd.randint(1, 9)}] c.s.{svc.title()}ServiceImpl#"
                    f"{rnd.randint(40, 400)} TraceID: {tid} SpanID: {span} - {msg}")
        sev = {"INFO": 9, "WARN": 13, "ERROR": 17}[level]
        logs.append(LogRecord(t, t, sev, level, body, {}, tid, span, res_of(svc)))

    for i in range(n):
        t0 = start + int(i * S / rate) + rnd.randint(0, S // rate)
        after = res.onset_ns <= t0 < until_ns
        then = t0 >= until_ns
        route = rnd.choices([r for r, _ in ROUTE_MIX], [w for _, w in ROUTE_MIX])[0]
        tid = f"{rnd.getrandbits(128):032x}"
        version = "2.0" if rnd.random() < 0.3 else "1.9"
        root = sid()
        cur = t0 + rnd.randint(1, 3) * MS
        child: list[Span] = []
        failed = None
        calls = ROUTES[route]
        if rare_jump is not None and route == "POST /checkout" and rnd.random() < 0.25:
            calls = [*calls, ("verify", "Check")]
        for callee, op in calls:
            c_id, s_id = sid(), sid()
            gap_out = rnd.randint(200, 600) * 1000
            if after and cpu_starved == "frontend":
                gap_out += rnd.randint(30, 60) * MS
            gap_in = rnd.randint(200, 600) * 1000
            if after and net_delay == callee:
                gap_in += rnd.randint(60, 120) * MS
            lo, hi = WORK_MS[callee]
            work = rnd.uniform(lo, hi) * MS * (1 + (rnd.random() < 0.03) * rnd.uniform(1, 4))  # natural tail
            if after and cpu_starved == callee:
                work *= 4
            if spliced_head == callee and t0 < start + int(0.07 * seconds * S):
                work /= 10
            if after and rare_jump and callee == "verify":
                work *= 20
                res.faulty.add(tid)
            if after and slow_work == callee:
                work += rnd.uniform(80, 160) * MS
            if then and then_slow_work == callee:
                work += rnd.uniform(20, 40) * MS
                res.faulty.add(tid)
            nested: list[Span] = []
            if shared_rare is not None and rnd.random() < {"cart": 1 / 40, "payment": 1 / 10}.get(callee, 0):
                # callee -> verify, from inside the callee's work (which then includes the call)
                v_c, v_s = sid(), sid()
                v_out, v_work = rnd.randint(200, 600) * 1000, int(rnd.uniform(*WORK_MS["verify"]) * MS)
                v_in = rnd.randint(200, 600) * 1000 + (rnd.randint(1000, 2000) * MS if after and shared_rare else 0)
                lead = rnd.randint(1, 2) * MS  # the callee's own work before the call
                nested = [(v_c, v_s, lead, v_out, v_work, v_in)]
                work += v_out + v_work + v_in
                if after and shared_rare:
                    res.faulty.add(tid)
            host = rnd.choice("ab") if slow_host == callee else "a"
            if after and host == "b":
                work += rnd.uniform(80, 160) * MS
            s_start = cur + gap_out
            s_end = s_start + int(work)
            c_end = s_end + gap_in
            status, events = "UNSET", []
            if callee == "payment" and background_errors and rnd.random() < 0.03:
                status, failed = "ERROR", "declined"
                events = [SpanEvent("exception", s_end, {"exception.type": "CardDeclinedError",
                                                         "exception.message": "card declined by issuer"})]
                log(s_end, tid, s_id, callee, "ERROR", f"charge failed for order {rnd.randint(1, 10**6)}: card declined")
            if callee == "cart" and version_errors and after and version == "2.0":
                status, failed = "ERROR", "cart"
                events = [SpanEvent("exception", s_end, {"exception.type": "KeyError",
                                                         "exception.message": "'currency_code'"})]
                log(s_end, tid, s_id, callee, "ERROR", f"cart lookup failed for user {rnd.randint(1, 10**5)}: missing currency_code")
            if (after and (net_delay == callee or cpu_starved in (callee, "frontend") or slow_work == callee
                           or host == "b")):
                res.faulty.add(tid)
            log(s_start + MS // 2, tid, s_id, callee, "INFO", f"{op} request for user {rnd.randint(1, 10**5)}")
            child.append(Span(tid, c_id, root, f"{callee}.{op}", "CLIENT", cur, c_end, status,
                              attributes={"rpc.service": callee, "rpc.method": op}, resource=res_of("frontend")))
            child.append(Span(tid, s_id, c_id, f"{callee}.{op}", "SERVER", s_start, s_end, status, "",
                              {"rpc.method": op}, events, [], res_of(callee, host)))
            for v_c, v_s, lead, v_out, v_work, v_in in nested:
                vc0 = s_start + lead
                child.append(Span(tid, v_c, s_id, "verify.Check", "CLIENT", vc0, vc0 + v_out + v_work + v_in, "UNSET",
                                  attributes={"rpc.service": "verify", "rpc.method": "Check"}, resource=res_of(callee, host)))
                child.append(Span(tid, v_s, v_c, "verify.Check", "SERVER", vc0 + v_out, vc0 + v_out + v_work, "UNSET", "",
                                  {"rpc.method": "Check"}, [], [], res_of("verify")))
            cur = c_end + rnd.randint(100, 300) * 1000
            if status == "ERROR":
                break
        lo, hi = WORK_MS["frontend"]
        own = rnd.uniform(lo, hi) * MS * (4 if after and cpu_starved == "frontend" else 1)
        r_end = cur + int(own)
        attrs = {"http.route": route.split(" ", 1)[1], "http.request.method": route.split(" ", 1)[0],
                 "app.client.version": version}
        if failed:
            attrs["http.response.status_code"] = 500
            res.error_traces.setdefault(failed, set()).add(tid)
        spans.append(Span(tid, root, "", route, "SERVER", t0, r_end, "ERROR" if failed else "UNSET",
                          attributes=attrs, resource=res_of("frontend")))
        spans.extend(child)
    if drop_spans:
        lose = random.Random(seed + 1)
        spans = [s for s in spans if not s.parent_span_id or (drop_kind or s.kind) != s.kind
                 or lose.random() >= drop_spans]
    spans.sort(key=lambda s: s.start_ns)
    logs.sort(key=lambda r: r.time_ns)
    return MemoryBackend(spans, logs, []), res
