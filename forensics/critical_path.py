"""Critical path of one trace, and the self time it spends per stage,
operation, service and caller->callee edge.

The algorithm is Jaeger's (after Uber's CRISP): start at the end of the root,
step into the child that finished last before the current point, recurse, and
continue in the parent from that child's start. Time on the path not covered by
any child is the span's own ("self") time on the critical path.

Real traces are messy, so before walking we repair a copy of the tree:

- clock skew: the callee's span of a call (a CLIENT span's child in another service)
  that does not fit in the call's window but could (it is no longer) is moved, with
  its subtree, to the middle of the call, as Jaeger's clock-skew adjuster does: two
  hosts' clocks disagree, the call's own durations do not. Otherwise a child that overflows its parent is
  clamped to the parent's window; one entirely outside it cannot be on the parent's
  path and is dropped from the walk (it is still shown in the waterfall);
- orphans (parent span missing): attached under the deepest span whose time holds
  theirs (the lost parent's nearest surviving ancestor, as far as times tell), else
  under the main root, so their time is still accounted for where it was spent; and
  reported so the view can flag the trace as broken;
- cycles from corrupt parent ids are cut;
- a lost call (``implied_calls``): a re-hung SERVER/CONSUMER span of another service
  whose CLIENT/PRODUCER parent was lost gets an implied call span in the caller, over
  the caller's time around it that no other call of its covers, so the network and
  queueing gap is the call edge's (the callee's side, as for a traced call), not the
  caller's own work.

Stage of a span is its own ``ml.stage``, else the nearest ancestor's, across
service boundaries: the feature service's time counts as ``feature_fetch`` of
the API request that called it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from stagetrace import semconv
from stagetrace.model import Span, Trace


@dataclass(slots=True)
class Node:
    span: Span
    start_ns: int  # after clamping into the parent
    end_ns: int
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    depth: int = 0
    orphan: bool = False
    clamped: bool = False
    outside_parent: bool = False  # entirely outside its parent: skipped by the walk
    stage: str = semconv.STAGE_OTHER
    implied: bool = False  # stands for a lost CLIENT/PRODUCER span (_imply_calls): no span was received


@dataclass(slots=True)
class Segment:
    """A piece of the critical path: ``span_id`` is on the path during [start, end)."""

    span_id: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(slots=True)
class CriticalPath:
    root: Node | None
    nodes: dict[str, Node]
    segments: list[Segment]  # in time order
    orphans: list[str]  # span ids whose parent is missing
    clamped: list[str]  # span ids clamped for clock skew
    dropped: list[str]  # span ids entirely outside their parent
    self_ns: dict[str, int]  # span id -> self time on the critical path

    @property
    def on_path(self) -> set[str]:
        return set(self.self_ns)

    @property
    def duration_ns(self) -> int:
        return (self.root.end_ns - self.root.start_ns) if self.root else 0

    def by_stage(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sid, ns in self.self_ns.items():
            st = self.nodes[sid].stage
            out[st] = out.get(st, 0) + ns
        return out

    def by_blame(self) -> dict[tuple[str, str, str], int]:
        """Self time keyed by ``(level, service, operation)``: level ``operation``
        for a span's own work, ``edge`` for a CLIENT span's time not covered by
        its callee (network, queueing, connection pools), which belongs to the
        callee's side: key ``("edge", callee, "caller->callee")``."""
        out: dict[tuple[str, str, str], int] = {}
        for sid, ns in self.self_ns.items():
            key = blame_key(self.nodes[sid])
            out[key] = out.get(key, 0) + ns
        return out


def blame_key(node: Node) -> tuple[str, str, str]:
    span = node.span
    if span.kind in ("CLIENT", "PRODUCER"):
        callee = callee_of(node)
        if callee is not None:
            return ("edge", callee, f"{span.service_name}->{callee}")
    return ("operation", span.service_name, span.name)


def callee_of(node: Node) -> str | None:
    """The service a CLIENT span called: its SERVER/CONSUMER child in another
    service if that one is traced, else ``peer.service`` / ``server.address``
    (as Tempo's service graphs name uninstrumented peers)."""
    for c in node.children:
        if c.span.kind in ("SERVER", "CONSUMER") and c.span.service_name != node.span.service_name:
            return c.span.service_name
    for c in node.children:  # its SERVER span was lost: the callee's own spans, re-hung here
        if c.orphan and c.span.service_name != node.span.service_name:
            return c.span.service_name
    attrs = node.span.attributes
    for key in (semconv.PEER_SERVICE, semconv.SERVER_ADDRESS):
        v = attrs.get(key)
        if v:
            return str(v)
    return None


def build_tree(spans: Iterable[Span], *, implied_calls: bool = False) -> tuple[Node | None, dict[str, Node], list[str]]:
    """Link spans into a tree rooted at the main root; returns (root, nodes, orphans).

    The main root is the longest span without a parent id; failing that (the
    root was lost) the earliest-starting orphan. Other roots and orphans hang
    under it. ``implied_calls``: see :func:`_imply_calls` (``nodes`` then holds the
    implied calls too, under their lost spans' ids, with ``implied`` set).
    """
    nodes: dict[str, Node] = {}
    for s in spans:
        if s.span_id in nodes:  # duplicate delivery: keep the first
            continue
        nodes[s.span_id] = Node(s, s.start_ns, max(s.start_ns, s.end_ns))
    if not nodes:
        return None, nodes, []
    true_roots = [n for n in nodes.values() if not n.span.parent_span_id]
    orphans = [n for n in nodes.values() if n.span.parent_span_id and n.span.parent_span_id not in nodes]
    if true_roots:
        root = max(true_roots, key=lambda n: (n.end_ns - n.start_ns, -n.start_ns))
    else:  # the root was lost; with no orphan either, every parent id loops (corrupt ids)
        root = min(orphans or nodes.values(), key=lambda n: (n.start_ns, -(n.end_ns - n.start_ns)))
    for n in nodes.values():
        if n is root:
            continue
        pid = n.span.parent_span_id
        parent = nodes.get(pid) if pid else None
        if parent is None or parent is n:
            parent = root
        n.parent = parent
    # Cut cycles (corrupt parent ids): any node that cannot reach the root is re-hung
    # under it, and marked as an orphan so the report says the trace is broken.
    looped: list[Node] = []
    for n in nodes.values():
        seen: set[int] = set()
        p = n
        while p is not None and p is not root:
            if id(p) in seen:
                n.parent = root
                looped.append(n)
                break
            seen.add(id(p))
            p = p.parent
    known = {id(n) for n in orphans}
    orphans += [n for n in looped if id(n) not in known]
    for n in nodes.values():
        if n.parent is not None:
            n.parent.children.append(n)
    placed = _rehang(root, [n for n in orphans if n is not root], nodes)
    orphan_ids = [n.span.span_id for n in orphans if n is not root]
    if implied_calls and placed:
        _imply_calls([n for n in orphans if n is not root], nodes)
    for sid in orphan_ids:
        nodes[sid].orphan = True
    for n in nodes.values():
        n.children.sort(key=lambda c: (c.start_ns, c.span.span_id))
    return root, nodes, orphan_ids


MAX_REHANG_WORK = 2_000_000  # orphans x spans compared; beyond it orphans stay under the root


def _rehang(root: Node, orphans: list[Node], nodes: dict[str, Node]) -> bool:
    """Move each orphan (hung under the root) under the deepest span whose time holds its
    own. A lost span's children would otherwise sit beside the whole request at the root:
    a lost CLIENT span's callee looks like the root's work, and a lost SERVER span's work
    leaves its caller's CLIENT span looking like all network. A span whose time holds no
    orphan's (clock skew) leaves it at the root, as before. False if the orphans were
    left at the root unplaced (too much work)."""
    if not orphans or len(orphans) * len(nodes) > MAX_REHANG_WORK:
        return not orphans
    depth: dict[int, int] = {}

    def set_depths(top: Node, d: int) -> None:
        depth[id(top)] = d
        for n in _subtree(top):  # parents come before their children
            if n is not top:
                depth[id(n)] = depth[id(n.parent)] + 1

    set_depths(root, 0)
    for o in orphans:
        below = {id(n) for n in _subtree(o)}
        best, best_depth = root, 0
        for n in nodes.values():
            d = depth.get(id(n), 0)
            if (d > best_depth and id(n) not in below and n.start_ns <= o.start_ns and o.end_ns <= n.end_ns
                    and n.end_ns > n.start_ns):
                best, best_depth = n, d
        if best is not o.parent and o.parent is not None:
            o.parent.children.remove(o)
            o.parent = best
            best.children.append(o)
            set_depths(o, best_depth + 1)  # the orphans still to place compare depths
    return True


_CALL_KIND = {"SERVER": "CLIENT", "CONSUMER": "PRODUCER"}  # the callee's span kind -> the lost caller span's


def _imply_calls(orphans: list[Node], nodes: dict[str, Node]) -> None:
    """Put an implied call span (the lost CLIENT/PRODUCER, under its own id) between each
    re-hung SERVER/CONSUMER orphan of another service and the caller span that holds it.

    Without it the gap between the caller's span and the callee's (network, the callee's
    queue) is the caller's own time, and a delay into the callee blames the caller too
    whenever its call span was lost. The lost span's extent is unknown: the implied one
    spans the caller's time around the callee that none of its other children covers
    (from the last one to end before the callee started to the first to start after it
    ended), which holds the lost span; the caller's own work there, if any, goes with it."""
    for o in orphans:
        p, lost = o.parent, o.span.parent_span_id
        kind = _CALL_KIND.get(o.span.kind)
        if (p is None or kind is None or lost in nodes or p.span.kind in _CALL_KIND.values()
                or p.span.service_name == o.span.service_name
                or not (p.start_ns <= o.start_ns and o.end_ns <= p.end_ns)):
            continue  # not a call into another service, held by its caller's time (or already implied)
        others = [c for c in p.children if c is not o]
        lo = max((c.end_ns for c in others if c.end_ns <= o.start_ns), default=p.start_ns)
        hi = min((c.start_ns for c in others if c.start_ns >= o.end_ns), default=p.end_ns)
        call = Node(Span(o.span.trace_id, lost, p.span.span_id, o.span.name, kind, lo, hi,
                         resource=p.span.resource), lo, hi, parent=p, children=[o], implied=True)
        p.children.remove(o)
        p.children.append(call)
        o.parent = call
        nodes[lost] = call


def _subtree(node: Node):
    """The node and everything below it, each after its parent."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


def _prepare(root: Node) -> tuple[list[str], list[str]]:
    """Depth, inherited stage and clock-skew clamping, top-down."""
    clamped: list[str] = []
    dropped: list[str] = []
    root.depth = 0
    root.stage = root.span.stage or semconv.STAGE_OTHER
    stack = [root]
    while stack:
        p = stack.pop()
        for c in p.children:
            c.depth = p.depth + 1
            c.stage = c.span.stage or p.stage
            if (not p.outside_parent and (c.start_ns < p.start_ns or c.end_ns > p.end_ns)
                    and p.span.kind == "CLIENT" and c.span.service_name != p.span.service_name
                    and c.end_ns - c.start_ns <= p.end_ns - p.start_ns):
                _shift(c, p.start_ns + ((p.end_ns - p.start_ns) - (c.end_ns - c.start_ns)) // 2 - c.start_ns)
                c.clamped = True
                clamped.append(c.span.span_id)
            if p.outside_parent or c.end_ns <= p.start_ns or c.start_ns >= p.end_ns:
                # Entirely outside the parent (or under such a span): it cannot
                # be on the parent's path. Zero-length marks at an edge are harmless.
                if p.outside_parent or c.end_ns > c.start_ns:
                    c.outside_parent = True
                    dropped.append(c.span.span_id)
            elif c.start_ns < p.start_ns or c.end_ns > p.end_ns:
                c.start_ns = max(c.start_ns, p.start_ns)
                c.end_ns = min(c.end_ns, p.end_ns)
                c.clamped = True
                clamped.append(c.span.span_id)
            stack.append(c)
    return clamped, dropped


def _shift(node: Node, delta: int) -> None:
    """Move a subtree in time (one host's clock against its caller's)."""
    for n in _subtree(node):
        n.start_ns += delta
        n.end_ns += delta


def _walk(root: Node) -> list[Segment]:
    """Jaeger's walk, iterative so deep traces cannot hit the recursion limit."""
    segments: list[Segment] = []
    # Each frame: (node, point t we are walking back from, remaining children sorted by end)
    def frame(n: Node, t: int) -> list:
        kids = [c for c in n.children if not c.outside_parent and c.end_ns > c.start_ns]
        kids.sort(key=lambda c: (c.end_ns, c.start_ns))
        return [n, t, kids]

    stack = [frame(root, root.end_ns)]
    while stack:
        top = stack[-1]
        n, t, kids = top
        # last-finishing child that ended at or before t
        while kids and kids[-1].end_ns > t:
            kids.pop()  # ends after t: overlaps a later child already on the path
        if t <= n.start_ns:
            stack.pop()
            continue
        if not kids:
            segments.append(Segment(n.span.span_id, n.start_ns, t))
            stack.pop()
            continue
        c = kids.pop()
        if c.end_ns < t:
            segments.append(Segment(n.span.span_id, c.end_ns, t))
        top[1] = c.start_ns
        stack.append(frame(c, c.end_ns))
    segments.sort(key=lambda s: (s.start_ns, s.end_ns))
    return segments


def critical_path(trace: Trace | Iterable[Span], *, implied_calls: bool = False) -> CriticalPath:
    """``implied_calls``: time a lost call span's gap to its edge (see :func:`_imply_calls`),
    for blame; the views keep to the spans received."""
    spans = trace.spans if isinstance(trace, Trace) else list(trace)
    root, nodes, orphans = build_tree(spans, implied_calls=implied_calls)
    if root is None:
        return CriticalPath(None, nodes, [], [], [], [], {})
    clamped, dropped = _prepare(root)
    segments = _walk(root)
    self_ns: dict[str, int] = {}
    for seg in segments:
        if seg.duration_ns > 0:
            self_ns[seg.span_id] = self_ns.get(seg.span_id, 0) + seg.duration_ns
    return CriticalPath(root, nodes, segments, orphans, clamped, dropped, self_ns)
