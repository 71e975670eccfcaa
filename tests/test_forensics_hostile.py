"""Hostile inputs for the statistics helpers, the miners, the incident locator and whole
investigations (issue 17: an investigation always writes its report). Property-based
(Hypothesis) where the input space is large; each property is one that a past crash broke
(``fisher_exact`` on a template logged by several services got more hits than requests)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagetrace.forensics import incident, investigate_errors, investigate_slow, logmining, stats
from stagetrace.model import LogRecord, Span, Trace

from telemetry_gen import MemoryBackend

S = 1_000_000_000
counts = st.integers(min_value=-5, max_value=10_000)


@given(counts, counts, counts, counts)
@settings(deadline=None)  # the first call imports scipy (1.9 s at load 7): no timing here, only answers
def test_share_test_answers_any_counts(a_hit, a_n, b_hit, b_n):
    p = stats.share_test(a_hit, a_n, b_hit, b_n)
    assert 0.0 <= p <= 1.0 and not math.isnan(p)


@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), max_size=50))
def test_bh_adjust_is_bounded_and_monotone_in_p(ps):
    adj = stats.bh_adjust(ps)
    assert len(adj) == len(ps) and all(0.0 <= x <= 1.0 for x in adj)


@given(st.lists(st.tuples(st.integers(0, 10**12), st.booleans()), max_size=400))
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_locate_never_raises_and_keeps_its_bounds(points):
    times = [t for t, _ in points]
    flags = [f for _, f in points]
    inc = incident.locate(times, flags)
    if inc is not None:
        assert min(times) <= inc.start_ns < inc.end_ns <= max(times) + 1
        assert inc.frame[0] <= inc.start_ns and inc.end_ns <= inc.frame[1]
        assert 0.0 <= inc.p <= 1.0


def test_locate_finds_a_short_burst_in_a_long_quiet_day():
    """Three minutes of 40% slow requests in 24 h of 2% background: located, wherever the day starts."""
    import random
    rnd = random.Random(3)
    times, flags = [], []
    for i in range(0, 24 * 3600, 4):  # a request every 4 s for a day
        t = i * S
        burst = 20 * 3600 <= i < 20 * 3600 + 180
        times.append(t)
        flags.append(rnd.random() < (0.4 if burst else 0.02))
    inc = incident.locate(times, flags)
    assert inc is not None and inc.significant
    assert abs(inc.start_ns - 20 * 3600 * S) <= 240 * S and inc.end_ns - inc.start_ns <= 600 * S
    clean = incident.locate(times, [rnd.random() < 0.02 for _ in times])
    assert clean is None or not clean.significant


def _span(tid, sid, parent, svc, start, dur, kind="SERVER", name="op"):
    return Span(trace_id=tid, span_id=sid, parent_span_id=parent, name=name, kind=kind, start_ns=start,
                end_ns=start + dur, resource={"service.name": svc})


def _log(t, body, sev, tid, sid, svc):
    return LogRecord(time_ns=t, observed_time_ns=t, severity_number=sev, severity_text="ERROR" if sev >= 17 else "INFO",
                     body=body, trace_id=tid, span_id=sid, resource={"service.name": svc})


def test_template_logged_by_several_services_does_not_crash_over_represented():
    """The crash from issue 17: the template's main service is reached by fewer traces than log it."""
    sel, base = [], []
    for i in range(40):
        tid = f"{i:032x}"
        spans = [_span(tid, f"{i:08x}a0000000", "", "gw", i * S, 10 * S if i < 20 else S)]
        if i % 4 == 0:
            spans.append(_span(tid, f"{i:08x}b0000000", spans[0].span_id, "db", i * S, S // 2))
        # every trace logs the same line from gw, but db logs it more often
        logs = [_log(i * S, "cache miss for key 42", 9, tid, spans[-1].span_id, svc)
                for svc in (["db"] * 3 if i % 4 == 0 else ["gw"])]
        (sel if i < 20 else base).append(Trace(tid, spans, logs))
    out = logmining.over_represented(sel, base)
    for s in out:
        assert s.sel_traces <= s.sel_n and s.base_traces <= s.base_n


def _odd_backend(kind: str) -> MemoryBackend:
    spans, logs = [], []
    for i in range(60):
        tid = f"{i + 1:032x}"
        root = f"{i + 1:016x}"
        dur = 0 if kind == "zero" else (5 * S if i > 45 else S // 10)
        start = i * S
        if kind == "no-entry":  # every span has a parent that was never received
            spans.append(_span(tid, root, "f" * 16, "api", start, dur))
            continue
        spans.append(_span(tid, root, "", "api", start, dur))
        child_start = start - 30 * S if kind == "skew" else start
        spans.append(_span(tid, f"{i + 1:015x}c", root, "model", child_start, dur // 2, kind="INTERNAL"))
        if kind == "dup":
            spans.append(_span(tid, root, "", "api", start, dur))
        logs.append(_log(start, "12:00:00.000 ERROR c.x.Svc#12 TraceID: %s boom" % tid, 17, tid, root,
                         "model" if i % 2 else "api"))
    return MemoryBackend(spans, logs, [])


def test_investigations_write_a_report_on_odd_data():
    for kind in ("zero", "no-entry", "skew", "dup"):
        b = _odd_backend(kind)
        for fn in (investigate_slow, investigate_errors):
            rep = fn(b, start_ns=0, end_ns=3600 * S)
            assert rep.verdict, (kind, fn.__name__)
    empty = MemoryBackend([], [], [])
    assert investigate_slow(empty, start_ns=0, end_ns=S).verdict
    assert investigate_errors(empty, start_ns=0, end_ns=S).verdict


def test_a_services_own_header_format_is_learned_and_cut():
    """A format no regex knows ("04:36:54.821 |W| worker-5 rid=<hex> message"): the constant
    prefix is learned from the service's own lines; plain sentences learn nothing."""
    import random

    from stagetrace.forensics.logtext import learn_prefix, strip_learned
    rnd = random.Random(1)
    msgs = ["cache miss for key 42", "upstream timed out after 30 s", "payment declined by issuer"]
    lines = [f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randint(0, 999):03d} "
             f"|{rnd.choice('WEI')}| worker-{rnd.randint(1, 9)} rid={rnd.getrandbits(64):016x} {rnd.choice(msgs)}"
             for _ in range(60)]
    prefix = learn_prefix(lines)
    assert all(strip_learned(ln, prefix) in msgs for ln in lines), [strip_learned(ln, prefix) for ln in lines[:3]]
    assert learn_prefix([rnd.choice(["Failed to connect to db", "Retrying request 3 of 5", "user 42 logged in"])
                         for _ in range(60)]) == []


def test_adjacent_waves_are_one_incident():
    """One fault ends as another begins (the demo's slow shard, then CPU-bound preprocessing):
    the second wave must not sit in the normal data the first is compared with."""
    import random
    rnd = random.Random(5)
    times, flags = [], []
    for i in range(0, 2700):  # 45 min, a request a second: 20 min of recovery after the waves
        rate = 0.8 if 900 <= i < 1200 else 0.12 if 1200 <= i < 1500 else 0.02
        times.append(i * S)
        flags.append(rnd.random() < rate)
    one = incident.locate(times, flags)
    both = incident.locate_merged(times, flags)
    assert one.significant and both.significant
    assert one.end_ns <= 1210 * S  # one scan alone stops at the louder wave
    assert abs(both.start_ns - 900 * S) <= 30 * S and abs(both.end_ns - 1500 * S) <= 30 * S, (both.start_ns, both.end_ns)


def test_learned_prefix_and_a_varying_logger_leave_the_message():
    """Train-Ticket's lines: the learned prefix (time, level) is constant, the logger#line after
    it is not (one per class); the framework rules must still cut it (templates were
    'f.c.FoodController#<NUM> TraceID: <HEX> SpanID: <HEX> [createFoodOrder]…')."""
    import random

    from stagetrace.forensics.logtext import learn_prefix, strip_learned
    rnd = random.Random(2)
    msgs = ["[createFoodOrder][Try to Create a FoodOrder!]", "[getAllFood][Get Food Request!]",
            "[verifyCode][Get image code warn][Code not found]"]
    loggers = ["f.c.FoodController", "f.s.FoodServiceImpl", "f.mq.RabbitSend", "v.s.i.VerifyCodeServiceImpl"]
    lines = [f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randint(0, 999):03d} "
             f"{rnd.choice(['INFO ', 'ERROR'])} {rnd.choice(loggers)}#{rnd.randint(10, 400)} "
             f"TraceID: {rnd.getrandbits(128):032x} SpanID: {rnd.getrandbits(64):016x} {rnd.choice(msgs)}"
             for _ in range(60)]
    prefix = learn_prefix(lines)
    assert prefix, "a constant time + level prefix is learned"
    assert all(strip_learned(ln, prefix) in msgs for ln in lines), [strip_learned(ln, prefix) for ln in lines[:3]]


def test_a_catch_all_gateway_route_is_refined_by_where_it_forwarded():
    """Behind a gateway whose route is '/*' every request would be one operation (a checkout
    'slow' next to a health check): the operation is refined by the first SERVER span of
    another service in the trace. Other routes are left as they are."""
    from stagetrace.forensics.window import entry_ops, is_catch_all

    def span(tid, sid, parent, svc, name, kind, t, attrs):
        return Span(tid, sid, parent, name, kind, t, t + 10_000_000, "UNSET", "", attrs, [], [],
                    {"service.name": svc})
    spans = []
    for i, (route, callee) in enumerate([("/api/v1/orders", "order"), ("/api/v1/foods", "food"), ("", "")]):
        tid = f"{i + 1:032x}"
        spans.append(span(tid, f"{i + 1:016x}", "", "gateway", "/*", "SERVER", i * S, {"http.route": "/*"}))
        if callee:
            spans.append(span(tid, f"{i + 100:016x}", f"{i + 1:016x}", "gateway", "GET", "CLIENT", i * S + 1, {}))
            spans.append(span(tid, f"{i + 200:016x}", f"{i + 100:016x}", callee, route, "SERVER", i * S + 2,
                              {"http.route": route}))
    spans.append(span(f"{9:032x}", f"{9:016x}", "", "web", "GET /", "SERVER", 5 * S, {"http.route": "/"}))
    b = MemoryBackend(spans, [], [])
    roots = [s for s in spans if not s.parent_span_id]
    ops = entry_ops(b, roots)
    assert ops[f"{1:032x}"] == "gateway: /* -> order: /api/v1/orders"
    assert ops[f"{2:032x}"] == "gateway: /* -> food: /api/v1/foods"
    assert ops[f"{3:032x}"] == "gateway: /*"  # forwarded nowhere the traces show
    assert ops[f"{9:032x}"] == "web: /"
    assert is_catch_all(roots[0]) and not is_catch_all(roots[-1])
    assert all(is_catch_all(Span("t", "s", "", "x", "SERVER", 0, 1, attributes={"http.route": r}))
               for r in ("/**", "/api/{*rest}", "/{path:.*}"))


def test_a_cluster_that_begins_late_is_new_and_a_steady_one_is_not():
    """The exact test on the first occurrence: five failures with none in the 130 requests
    before the first of them is new; the same five spread over the window are not."""
    import numpy as np

    from stagetrace.forensics.errorclusters import late_start_p
    entries = np.arange(0, 184) * S
    late = [int(t) for t in entries[130:155:5]]
    spread = [int(t) for t in entries[5::37]]
    assert late_start_p(late, entries) < 0.01  # stats.ALPHA
    assert late_start_p(spread, entries) > 0.5
    assert late_start_p([], entries) == 1.0 and late_start_p(late, entries[:0]) == 1.0
