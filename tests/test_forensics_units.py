"""Forensics pieces on hand-made data: broken traces render, the statistics
refuse to call noise a cause, and the report schema holds."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import telemetry_gen as gen
from stagetrace import semconv
from stagetrace.errors import NotFound, UserError
from stagetrace.forensics import render, stats, trace_report
from stagetrace.forensics.attributes import compare
from stagetrace.forensics.cli import parse_time_ns, resolve_window
from stagetrace.model import LogRecord, Span, SpanEvent, Trace

MS = 1_000_000
T = "cd" * 16


def _span(sid, parent, start, end, name, service="api", **attrs):
    return Span(T, sid.rjust(16, "0"), parent.rjust(16, "0") if parent else "", name, "INTERNAL", start * MS, end * MS,
                attributes=attrs, resource={semconv.SERVICE_NAME: service})


def test_broken_trace_renders_in_every_format_with_orphans_shown():
    spans = [_span("1", "", 0, 100, "root"), _span("2", "1", 5, 30, "fetch", **{semconv.ML_STAGE: "feature_fetch"}),
             _span("7", "99", 40, 90, "lost-parent", service="worker"),
             _span("8", "1", 90, 140, "skewed")]  # overflows the root: clamped
    spans[2].events.append(SpanEvent("exception", 80 * MS, {semconv.EXCEPTION_TYPE: "ValueError",
                                                             semconv.EXCEPTION_MESSAGE: "bad input"}))
    logs = [LogRecord(50 * MS, 50 * MS, 13, "WARN", "slow worker", trace_id=T, span_id="7".rjust(16, "0"),
                      resource={semconv.SERVICE_NAME: "worker"}),
            LogRecord(10 * MS, 10 * MS, 9, "INFO", "no span id", trace_id=T, resource={semconv.SERVICE_NAME: "api"})]
    b = gen.MemoryBackend(spans, logs, [])
    rep = trace_report(b, T)
    d = rep.data
    assert d["broken"] and d["orphans"] == ["7".rjust(16, "0")]
    assert "0000000000000008" in d["clamped"]
    orphan = next(s for s in d["spans"] if s["name"] == "lost-parent")
    assert orphan["orphan"] and orphan["logs"][0]["body"] == "slow worker" and orphan["logs"][0]["marked"]
    assert d["unattached_logs"][0]["body"] == "no span id"
    text = render(rep, "text")
    assert "orphan" in text and "slow worker" in text and "ValueError" in text and "Broken trace" in text
    assert "(orphan)" in render(rep, "md") and "(orphan)" in render(rep, "html")
    assert json.loads(render(rep, "json"))["data"]["broken"] is True


def test_unknown_and_invalid_trace_ids():
    b = gen.MemoryBackend([], [], [])
    with pytest.raises(NotFound):
        trace_report(b, "ab" * 16)
    with pytest.raises(UserError):
        trace_report(b, "not-a-trace")


def test_noise_is_not_significant():
    rnd = random.Random(1)
    traces = []
    for i in range(400):
        sp = Span(f"{i:032x}", "1".rjust(16, "0"), "", "op", "SERVER", 0, 1,
                  attributes={"region": rnd.choice("abcd"), "batch": rnd.randint(1, 500)},
                  resource={semconv.SERVICE_NAME: "svc"})
        traces.append(Trace(sp.trace_id, [sp]))
    res = compare(traces[:40], traces[40:])
    assert res and not any(r.significant for r in res)


def test_real_difference_is_significant_and_small_samples_are_not():
    def tr(i, region):
        sp = Span(f"{i:032x}", "1".rjust(16, "0"), "", "op", "SERVER", 0, 1, attributes={"region": region},
                  resource={semconv.SERVICE_NAME: "svc"})
        return Trace(sp.trace_id, [sp])
    sel = [tr(i, "eu") for i in range(30)]
    base = [tr(100 + i, "eu" if i % 10 == 0 else "us") for i in range(300)]
    top = compare(sel, base)[0]
    assert (top.attribute, top.value, top.significant) == ("region", "eu", True)
    # 2 of 2 vs 1 of 10 is a big share difference, but not evidence
    small = compare(sel[:2], base[:10])
    assert not any(r.significant for r in small)


def test_bh_adjust_and_change_point():
    assert stats.bh_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    k = [0] * 20 + [8] * 10
    n = [50] * 30
    split, p, rb, ra = stats.binomial_split(k, n)
    assert split == 20 and p < 1e-6 and rb == 0 and ra == pytest.approx(0.16)
    flat = stats.binomial_split([2] * 30, [50] * 30)
    assert flat[1] > 0.01


def test_time_window_options():
    assert parse_time_ns("2024-05-01T14:00:00Z", "--from") == 1714572000 * 10**9
    assert parse_time_ns("1714572000", "--from") == 1714572000 * 10**9
    with pytest.raises(UserError):
        parse_time_ns("yesterday-ish", "--from")
    with pytest.raises(UserError):
        resolve_window("1h", "2024-05-01T14:00:00Z", None)
    with pytest.raises(UserError):
        resolve_window(None, "2024-05-01T15:00:00Z", "2024-05-01T14:00:00Z")
    s, e = resolve_window("30m", None, None)
    assert e - s == 30 * 60 * 10**9


def test_errors_without_span_status_are_found_from_logs_and_origin_is_deepest():
    """The failing span has no status (a library that only logs); its ERROR log
    fills the gap, so the origin is that span, not the API span that returned 500."""
    from stagetrace.forensics import investigate_errors
    spans, logs = [], []
    for i in range(60):
        tid = f"{i + 1:032x}"
        root = Span(tid, f"{1:016x}", "", "POST /predict", "SERVER", i * 10**9, i * 10**9 + 50 * MS,
                    resource={semconv.SERVICE_NAME: "api"}, attributes={"tenant": "acme" if i % 3 == 0 else "other"})
        child = Span(tid, f"{2:016x}", f"{1:016x}", "score", "INTERNAL", i * 10**9 + 5 * MS, i * 10**9 + 40 * MS,
                     resource={semconv.SERVICE_NAME: "api"}, attributes={semconv.ML_STAGE: "inference"})
        if i % 3 == 0 and i >= 30:  # fails from t=30s on, for tenant acme only
            root.status_code = "ERROR"
            logs.append(LogRecord(i * 10**9 + 30 * MS, 0, 17, "ERROR", f"model crashed on row {i}", trace_id=tid,
                                  span_id=f"{2:016x}", resource={semconv.SERVICE_NAME: "api"}))
        spans += [root, child]
    b = gen.MemoryBackend(spans, logs, [])
    rep = investigate_errors(b)
    top = rep.findings[0]
    assert top.kind == "error_cluster"
    assert (top.service, top.operation, top.stage) == ("api", "score", "inference")
    assert top.evidence["propagated"][0]["operation"] == "POST /predict"
    assert top.evidence["failed_requests"] == 10
    assert top.template and "model crashed on row" in top.template


def test_findings_are_in_rank_order_and_progress_is_quiet_when_piped(capsys):
    b, _ = gen.memory_backend("cpu_burn", minutes=10, per_minute=60)
    from stagetrace.forensics import investigate_slow
    rep = investigate_slow(b, progress=True)  # pytest's stderr is not a terminal
    assert capsys.readouterr().err == ""
    keys = [(not f.significant, -f.score) for f in rep.findings]
    assert keys == sorted(keys)
    assert rep.findings[0].stage == semconv.STAGE_PREPROCESS


def test_error_logs_without_trace_ids_merge_by_burst():
    """Two log-only error messages (no trace context) that burst together form one
    incident; a steady unrelated one stays apart."""
    from stagetrace.forensics import investigate_errors
    spans, logs = [], []
    for i in range(300):  # 5 minutes of requests, one per second
        tid = f"{i + 1:032x}"
        spans.append(Span(tid, f"{1:016x}", "", "GET /", "SERVER", i * 10**9, i * 10**9 + 5 * MS,
                          resource={semconv.SERVICE_NAME: "api"}))
    svc = {semconv.SERVICE_NAME: "worker"}
    for i in range(200, 260):  # burst of two co-occurring messages
        logs.append(LogRecord(i * 10**9, 0, 17, "ERROR", f"connection reset by peer 10.0.0.{i % 7}", resource=svc))
        logs.append(LogRecord(i * 10**9 + MS, 0, 17, "ERROR", f"retry budget exhausted after {i % 5} tries", resource=svc))
    for i in range(0, 300, 30):  # steady background
        logs.append(LogRecord(i * 10**9, 0, 17, "ERROR", "disk almost full", resource=svc))
    rep = investigate_errors(gen.MemoryBackend(spans, sorted(logs, key=lambda r: r.time_ns), []))
    clusters = rep.data["clusters"]
    burst = next(c for c in clusters if any("connection reset" in f["template"] for f in c["fingerprints"]))
    assert any("retry budget" in f["template"] for f in burst["fingerprints"])
    assert not any("disk almost full" in f["template"] for f in burst["fingerprints"])


def test_exceedance_test_is_exact_when_nothing_changed():
    """How many values of A lie above B's maximum: the p-value must equal the share of all
    splits of the pooled values (A's size kept) that put at least as many there, the
    permutation distribution it claims to compute in closed form."""
    from itertools import combinations

    pooled = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 8.5]
    for a_idx in [(4, 5, 7, 8), (0, 1, 2, 3), (5, 8, 0, 1), (6, 7, 8, 5)]:
        a = [pooled[i] for i in a_idx]
        b = [v for i, v in enumerate(pooled) if i not in a_idx]
        k = sum(x > max(b) for x in a)
        splits = list(combinations(range(len(pooled)), len(a)))
        as_extreme = sum(sum(pooled[i] > max(pooled[j] for j in range(len(pooled)) if j not in s) for i in s) >= k
                         for s in splits)
        assert stats.exceedance_test(a, b) == pytest.approx(as_extreme / len(splits)), a_idx
    assert stats.exceedance_test([], [1.0]) == stats.exceedance_test([1.0], []) == 1.0


def _costs(rnd, n, shard_slow=0, batch_slow=0, tag="b"):
    """Requests of an ML service (the demo's shape): a feature fetch and a preprocess step
    with a natural tail (2 % of calls 3-8x), the first ``shard_slow`` with a slow fetch
    (+60 ms), the next ``batch_slow`` with a CPU-bound preprocess (20-40 ms against ~0.5 ms)."""
    from stagetrace.forensics import blame

    fetch, prep = ("operation", "feature-store", "OnlineStore.get"), ("operation", "fraud-api", "preprocess")
    out = []
    for i in range(n):
        f = rnd.lognormvariate(0, 0.4) * MS + (60 * MS if i < shard_slow else 0)
        p = rnd.lognormvariate(-0.7, 0.6) * MS * (rnd.uniform(3, 8) if rnd.random() < 0.02 else 1)  # natural tail
        if shard_slow <= i < shard_slow + batch_slow:
            p = rnd.uniform(20, 40) * MS
        out.append(blame.TraceCost(f"{tag}{i:04d}", int(f + p + 5 * MS), {fetch: int(f), prep: int(p)},
                                   {fetch: 1, prep: 1}, {fetch: "feature_fetch", prep: "preprocess"}, {}))
    return out


def test_a_cause_in_a_tenth_of_the_incident_beyond_anything_the_baseline_held_is_significant():
    """Two concurrent causes, as in `stagetrace demo`: a slow shard behind a fifth of the
    incident's requests and CPU-bound preprocessing of large batches behind a tenth, every one
    of those far beyond the longest preprocess of a small baseline (114 requests). Both are
    causes; with preprocessing unchanged, only the shard is."""
    from stagetrace.forensics import blame

    for seed in range(5):
        rnd = random.Random(seed)
        base = _costs(rnd, 114, tag="b")
        for batch in (21, 0):
            after = _costs(rnd, 262, shard_slow=22, batch_slow=batch, tag=f"a{batch}-")
            sel = [tc for tc in after if tc.duration_ns > 30 * MS]
            grown = blame.keys_grown(base, after)
            bl = blame.blame(sel, base, after=after, stepped=grown)
            named = {c.service for c in bl.components if c.significant}
            assert named == ({"feature-store", "fraud-api"} if batch else {"feature-store"}), (seed, batch, named)


def test_a_call_off_the_critical_path_is_no_zero_in_its_keys_series():
    """A handful of calls into a service (one every 20 s), ~3 ms each, then ~90 ms each
    after a fault (Train-Ticket's case-90 with a span lost), among 200 steady keys. In one early request the call ran off the critical path (its span lost,
    or beside a longer sibling): its critical-path time is 0. That request says nothing of
    how long the call took; read as 0 on a log scale it hid the jump. Another key that
    never changed is not named."""
    from stagetrace.forensics.blame import TraceCost, key_jumps

    edge = ("edge", "food", "gateway->food")
    steady = [("operation", f"svc{k}", "GET /") for k in range(200)]  # the rest of a system: the tests scanned
    rng = np.random.default_rng(3)
    costs, start_of = [], {}
    for i in range(12):
        ms = 90.0 * rng.uniform(0.9, 1.1) if i >= 5 else rng.uniform(1, 10)
        own = 0 if i == 1 else int(ms * 1e6)  # request 1: the call is off the critical path
        tid = f"{i:032x}"
        self_ns = {edge: own} | {k: int(rng.uniform(4, 6) * 1e6) for k in steady}
        costs.append(TraceCost(tid, sum(self_ns.values()), self_ns, {k: 1 for k in self_ns}, {}, {}))
        start_of[tid] = i * 20_000_000_000
    found = key_jumps(costs, start_of)
    assert [j.key for j in found] == [edge], found
    assert found[0].time_ns == 5 * 20_000_000_000


def test_the_rootless_count_read_beside_the_analysis_hands_back_its_answer_and_its_error():
    """The rootless-trace count's read runs on a thread beside the investigation
    (window.rootless_ids_beside): its answer reaches the note, and a failing read is
    skipped evidence in the report, as when it ran in line, not a lost thread's traceback."""
    import microservice_gen as mgen
    from stagetrace.forensics import investigate_errors, investigate_slow

    b, res = mgen.generate(seconds=60, slow_work="cart", background_errors=True, seed=2)
    rootless = [s for s in b.spans if s.trace_id == b.spans[-1].trace_id]
    tid = rootless[0].trace_id
    b.spans[:] = [s for s in b.spans if s.trace_id != tid or s.parent_span_id]  # its root is lost
    b.by_trace[tid] = [s for s in b.by_trace[tid] if s.parent_span_id]
    for fn in (investigate_slow, investigate_errors):
        rep = fn(b, start_ns=res.start_ns, end_ns=res.end_ns)
        assert any("1 trace(s) in the window were skipped beside" in n and tid in n for n in rep.notes), rep.notes

    def fail(query):
        raise ValueError("store went away")
    b.rootless_trace_ids = fail
    for fn in (investigate_slow, investigate_errors):
        rep = fn(b, start_ns=res.start_ns, end_ns=res.end_ns)
        assert "the rootless-trace count was skipped: ValueError: store went away" in " ".join(rep.notes), rep.notes


def test_a_re_split_onset_says_rose_only_when_the_slow_rate_rose():
    """A second wave's re-split can run to the frame's end and take in more ordinary requests
    than slow ones; its verdict said "the slow rate rose from 9.4% to 6.5%" (window sweep,
    Online Boutique case-00, session 11)."""
    from stagetrace.forensics.slow import _rate_change

    assert "rose from 1.0% to 5.0%" in _rate_change(0.01, 0.05, 1_700_000_000 * 10**9)
    fell = _rate_change(0.094, 0.065, 1_700_000_000 * 10**9)
    assert "rose" not in fell and "9.4% before, 6.5% from then on" in fell
