"""Critical path (Jaeger/CRISP walk) on hand-made traces: sequential and
parallel children, clock-skewed overflow, orphans, and edge blame."""

from stagetrace import semconv
from stagetrace.forensics.critical_path import critical_path
from stagetrace.model import Span, Trace

MS = 1_000_000
T = "ab" * 16


def sp(sid, parent, start, end, name=None, service="api", kind="INTERNAL", stage=None, **attrs):
    a = dict(attrs)
    if stage:
        a[semconv.ML_STAGE] = stage
    return Span(T, sid.rjust(16, "0"), parent.rjust(16, "0") if parent else "", name or sid, kind,
                start * MS, end * MS, attributes=a, resource={semconv.SERVICE_NAME: service})


def ms(d):
    return {k.lstrip("0"): v // MS for k, v in d.items()}


def test_sequential_children_each_on_path():
    cp = critical_path(Trace(T, [
        sp("1", "", 0, 100),
        sp("2", "1", 10, 40, stage="feature_fetch"),
        sp("3", "1", 40, 60, stage="preprocess"),
        sp("4", "1", 60, 95, stage="inference"),
    ]))
    assert ms(cp.self_ns) == {"1": 15, "2": 30, "3": 20, "4": 35}
    assert sum(cp.self_ns.values()) == 100 * MS
    assert {k: v // MS for k, v in cp.by_stage().items()} == {"other": 15, "feature_fetch": 30, "preprocess": 20, "inference": 35}
    # segments tile the root window in order
    segs = cp.segments
    assert segs[0].start_ns == 0 and segs[-1].end_ns == 100 * MS
    assert all(a.end_ns == b.start_ns for a, b in zip(segs, segs[1:]))


def test_parallel_children_only_last_finishing_counts():
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 10, 90),   # long one: on the path
        sp("3", "1", 20, 80),   # fully hidden behind 2
        sp("4", "1", 5, 30),    # starts before 2 but ends inside it: off the path
    ])
    assert ms(cp.self_ns) == {"1": 20, "2": 80}
    assert "0000000000000003" not in cp.on_path


def test_parallel_fan_out_then_join():
    # 2 and 3 run in parallel; 4 starts after both; path = 1,2?,3,4
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 0, 30),
        sp("3", "1", 0, 50),
        sp("4", "1", 50, 100),
    ])
    assert ms(cp.self_ns) == {"3": 50, "4": 50}


def test_nested_grandchildren():
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 0, 100, stage="feature_fetch"),
        sp("3", "2", 10, 90, kind="CLIENT"),
        sp("4", "3", 20, 80, service="features", kind="SERVER"),
    ])
    assert ms(cp.self_ns) == {"2": 20, "3": 20, "4": 60}
    # stage is inherited across the service boundary
    assert cp.by_stage() == {"feature_fetch": 100 * MS}


def test_clock_skewed_child_is_clamped_to_parent():
    # the callee's clock runs 30 ms ahead: its span overflows the caller's end
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 50, 130, service="remote", kind="SERVER"),
        sp("3", "1", 10, 40),
    ])
    assert "0000000000000002" in cp.clamped
    n = cp.nodes["0000000000000002"]
    assert (n.start_ns, n.end_ns) == (50 * MS, 100 * MS)
    assert ms(cp.self_ns) == {"1": 20, "2": 50, "3": 30}
    assert sum(cp.self_ns.values()) == cp.duration_ns == 100 * MS


def test_child_entirely_outside_parent_is_dropped_not_counted():
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 150, 180),  # skewed beyond the parent
        sp("3", "2", 155, 170),  # and its subtree with it
    ])
    assert set(cp.dropped) == {"0000000000000002", "0000000000000003"}
    assert ms(cp.self_ns) == {"1": 100}


def test_orphans_are_attached_and_reported():
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "1", 0, 20),
        sp("5", "9", 40, 90),  # parent 9 was never received
        sp("6", "5", 50, 60),
    ])
    assert cp.orphans == ["0000000000000005"]
    assert cp.nodes["0000000000000005"].parent is cp.root
    assert ms(cp.self_ns) == {"1": 30, "2": 20, "5": 40, "6": 10}


def test_root_missing_uses_earliest_orphan():
    cp = critical_path([
        sp("5", "9", 0, 50),
        sp("6", "9", 10, 40),
    ])
    assert cp.root.span.span_id.endswith("5")
    assert sum(cp.self_ns.values()) == 50 * MS


def test_cycle_in_parent_ids_does_not_hang():
    cp = critical_path([
        sp("1", "", 0, 100),
        sp("2", "3", 10, 50),
        sp("3", "2", 20, 40),
    ])
    assert sum(cp.self_ns.values()) == 100 * MS


def test_edge_time_blamed_on_callee_side():
    # caller client span 100 ms, callee server span 10 ms: 90 ms on the edge
    cp = critical_path([
        sp("1", "", 0, 110, service="api", kind="SERVER"),
        sp("2", "1", 5, 105, name="GET /features", service="api", kind="CLIENT"),
        sp("3", "2", 50, 60, name="GET /features", service="features", kind="SERVER"),
    ])
    blame = {k: v // MS for k, v in cp.by_blame().items()}
    assert blame[("edge", "features", "api->features")] == 90
    assert blame[("operation", "features", "GET /features")] == 10
    assert blame[("operation", "api", "1")] == 10


def test_uninstrumented_callee_is_named_by_peer_service():
    cp = critical_path([
        sp("1", "", 0, 100, service="api", kind="SERVER"),
        sp("2", "1", 10, 90, name="SELECT", service="api", kind="CLIENT", **{semconv.PEER_SERVICE: "postgres"}),
    ])
    blame = {k: v // MS for k, v in cp.by_blame().items()}
    assert blame[("edge", "postgres", "api->postgres")] == 80


def test_orphan_of_a_lost_client_span_hangs_where_its_time_was_spent():
    """The CLIENT span of api's call to features was never received: features' SERVER
    span is an orphan. Its time lies inside api's handler span, so it hangs there (not
    beside the whole request at the root), and the handler's own time is what is left."""
    cp = critical_path([
        sp("1", "", 0, 100, name="GET /", service="gateway", kind="SERVER"),
        sp("2", "1", 10, 90, name="handler", service="api", kind="SERVER"),
        sp("4", "3", 30, 70, name="GET /features", service="features", kind="SERVER"),  # parent 3 lost
    ])
    assert cp.orphans == ["0000000000000004"]
    assert cp.nodes["0000000000000004"].parent is cp.nodes["0000000000000002"]
    assert ms(cp.self_ns) == {"1": 20, "2": 40, "4": 40}


def test_lost_server_span_leaves_its_callees_work_off_the_edge():
    """features' SERVER span was never received; its own child spans are orphans inside
    api's CLIENT span. They hang under it, name its callee, and cover the call: the edge
    (network, queueing) is the 10 ms they leave, not all 80 ms of the call."""
    from stagetrace.forensics.blame import trace_costs

    spans = [
        sp("1", "", 0, 100, name="GET /", service="api", kind="SERVER"),
        sp("2", "1", 10, 90, name="GET /features", service="api", kind="CLIENT"),
        sp("4", "3", 15, 85, name="lookup", service="features"),  # parent 3 (features' SERVER span) lost
    ]
    cp = critical_path(spans)
    assert cp.nodes["0000000000000004"].parent is cp.nodes["0000000000000002"]
    blame = {k: v // MS for k, v in cp.by_blame().items()}
    assert blame == {("operation", "api", "GET /"): 20, ("edge", "features", "api->features"): 10,
                     ("operation", "features", "lookup"): 70}
    (tc,) = trace_costs([Trace(T, spans)])
    assert tc.gaps == {("api", "features"): [10 * MS]}


def test_orphan_outside_every_span_stays_at_the_root():
    cp = critical_path([
        sp("1", "", 0, 100, service="api", kind="SERVER"),
        sp("2", "1", 10, 50, service="api"),
        sp("5", "9", 40, 120, service="other"),  # skewed: no span holds it
    ])
    assert cp.nodes["0000000000000005"].parent is cp.root


def test_skewed_callee_of_a_call_is_moved_into_it():
    """The callee's host clock is 500 ms behind: its SERVER span lies wholly before the
    caller's CLIENT span. It is moved, with its children, to the middle of the call (as
    Jaeger's clock-skew adjuster does), so the call's edge is what the callee does not
    cover (20 ms), not the whole call with the callee dropped from the path."""
    cp = critical_path([
        sp("1", "", 0, 100, name="GET /", service="api", kind="SERVER"),
        sp("2", "1", 10, 90, name="GET /x", service="api", kind="CLIENT"),
        sp("3", "2", -480, -420, name="GET /x", service="x", kind="SERVER"),
        sp("4", "3", -470, -430, name="query", service="x"),
    ])
    n3, n4 = cp.nodes["0000000000000003"], cp.nodes["0000000000000004"]
    assert (n3.start_ns, n3.end_ns, n4.start_ns, n4.end_ns) == (20 * MS, 80 * MS, 30 * MS, 70 * MS)
    assert not cp.dropped
    blame = {k: v // MS for k, v in cp.by_blame().items()}
    assert blame == {("operation", "api", "GET /"): 20, ("edge", "x", "api->x"): 20,
                     ("operation", "x", "GET /x"): 20, ("operation", "x", "query"): 40}
