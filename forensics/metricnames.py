"""Short, distinguishing display names for metric series.

A metric series is named by its full label set, which is mostly noise for a
reader: ``http.server.request.duration{http.request.method=GET,
http.response.status_code=200,http.route=...,service.instance.id=ecfaf5ef-...}``.
What an on-call engineer needs is what sets *this* series apart from the
other series of the same metric: ``feature-store http.server.request.duration
{status_code=500}``. This module is the one place that decides that, so the
summaries and every renderer (text, Markdown, HTML) say the same thing; the
JSON evidence keeps the full label set.

Rules, per group of sibling series (same service and metric name):

- service name first, then the metric name;
- only labels whose value differs between siblings (a label missing from a
  sibling counts as a different value); constant labels are dropped;
- instance identity (``service.instance.id``) is never a label: when series
  differ only by instance it becomes ``(1 of N instances, <short id>)``;
- label keys are shortened to their last dotted segment (two for generic ones
  like ``pool.name``) unless that makes two keys collide; long values are cut
  in the middle, so ``online-store-shard-7`` keeps its distinguishing tail;
- at most :data:`MAX_LABELS` labels (``+N labels`` beyond), and the whole
  name is capped at :data:`MAX_LEN` characters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from stagetrace import semconv

MAX_LEN = 120
MAX_LABELS = 4
MAX_VALUE_LEN = 28
INSTANCE_KEYS = (semconv.SERVICE_INSTANCE_ID,)
# A last segment this generic says nothing alone: keep the segment before it too.
_GENERIC_TAILS = {"name", "type", "id", "version", "code", "kind", "state", "status", "size", "count", "mode"}


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """What identifies a series for naming: service, metric and its labels
    (including the instance id, if known)."""

    service: str
    name: str
    attributes: Mapping[str, Any]


def _cut_middle(s: str, n: int) -> str:
    if len(s) <= n:
        return s
    head = (n - 1) // 2
    return s[:head] + "…" + s[len(s) - (n - 1 - head):]


def short_key(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1].lower() in _GENERIC_TAILS:
        return ".".join(parts[-2:])
    return parts[-1]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    short = {k: short_key(k) for k in keys}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clash else s) for k, s in short.items()}


def _fmt_value(v: Any) -> str:
    if v is None:
        return "∅"  # the label is absent on this series but present on a sibling
    return _cut_middle(str(v), MAX_VALUE_LEN)


def _instance(attrs: Mapping[str, Any]) -> str | None:
    for k in INSTANCE_KEYS:
        if attrs.get(k):
            return str(attrs[k])
    return None


def display_names(series: Sequence[SeriesKey], *, max_len: int = MAX_LEN, with_service: bool = True) -> list[str]:
    """One display name per series, in input order. Siblings are the series of
    the same service and metric name within ``series``, so pass everything the
    report shows together (the whole window, the whole trace)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(series):
        groups.setdefault((s.service, s.name), []).append(i)
    out = [""] * len(series)
    for (service, name), idx in groups.items():
        labels = [{k: v for k, v in series[i].attributes.items() if k not in INSTANCE_KEYS} for i in idx]
        chosen = _distinguishing(labels)
        shown, extra = chosen[:MAX_LABELS], max(0, len(chosen) - MAX_LABELS)
        short = _short_keys(shown)
        instances = sorted({x for i in idx if (x := _instance(series[i].attributes))})
        # The instance matters when even all the labels leave two series looking the same.
        sigs = [tuple(_hashable(lab.get(k)) for k in chosen) for lab in labels]
        instance_matters = len(instances) > 1 and len(set(sigs)) < len(sigs)
        for j, i in enumerate(idx):
            parts = [f"{short[k]}={_fmt_value(labels[j][k])}" for k in shown if labels[j].get(k) is not None]
            if extra:
                parts.append(f"+{extra} labels")
            txt = (f"{service} " if with_service else "") + name
            if parts:
                txt += "{" + ", ".join(parts) + "}"
            inst = _instance(series[i].attributes)
            suffix = f" (1 of {len(instances)} instances, {inst[:8]})" if instance_matters and inst else ""
            out[i] = _cap(txt, max(24, max_len - len(suffix))) + suffix
    return out


def display_name(service: str, name: str, attributes: Mapping[str, Any],
                 siblings: Sequence[Mapping[str, Any]] = (), *, max_len: int = MAX_LEN) -> str:
    """The display name of one series; ``siblings`` are the label sets of the
    other series of the same metric and service (without this one)."""
    keys = [SeriesKey(service, name, attributes)] + [SeriesKey(service, name, a) for a in siblings]
    return display_names(keys, max_len=max_len)[0]


def _distinguishing(labels: Sequence[Mapping[str, Any]]) -> list[str]:
    """Greedy: the label splitting the siblings into the most groups first, then
    each label that still splits a group further; a label that only restates
    one already shown (``pool.name`` next to ``shard``) adds nothing and is
    left out."""
    keys = sorted({k for lab in labels for k in lab})
    varying = [k for k in keys if len({_hashable(lab.get(k)) for lab in labels}) > 1]
    # more distinct values first; then labels every sibling has (no blanks); then key order
    varying.sort(key=lambda k: (-len({_hashable(lab.get(k)) for lab in labels}),
                                -sum(lab.get(k) is not None for lab in labels), k))
    chosen: list[str] = []
    groups = len({() for _ in labels})
    for k in varying:
        n = len({tuple(_hashable(lab.get(c)) for c in chosen + [k]) for lab in labels})
        if n > groups:
            chosen.append(k)
            groups = n
    return chosen


def _cap(txt: str, n: int) -> str:
    if len(txt) <= n:
        return txt
    # cut inside the label list first, so the service and metric stay readable
    brace = txt.find("{")
    if 0 < brace < n - 8:
        return txt[: n - 2] + "…}" if txt.endswith("}") else txt[: n - 1] + "…"
    return _cut_middle(txt, n)


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def variation(values: Sequence[float]) -> float:
    """How much a series moved: its range. Only series of one metric and
    service are ranked against each other, so they share a unit; a relative
    measure would rank a pool that waited 9 µs once above one that waited 1.2 s."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return max(vals) - min(vals) if len(vals) >= 2 else 0.0


def limit_series(rows: Sequence[Mapping[str, Any]], per_metric: int = 4) -> list[tuple[str, Any]]:
    """Rows of a metric table, grouped by service and metric, most varying
    series first, at most ``per_metric`` of each followed by a "+N more" row.

    ``rows`` are the ``metrics`` items of a trace report (``service``, ``name``,
    ``attributes``, ``instance``, ``points``; or ``error``). Returns
    ``("series", row_with_display_name)``, ``("more", {"service", "name", "hidden"})``
    and ``("error", row)`` items in display order."""
    keys, ok = [], []
    errors = []
    for m in rows:
        if "error" in m:
            errors.append(("error", m))
            continue
        attrs = dict(m.get("attributes") or {})
        if m.get("instance"):
            attrs[semconv.SERVICE_INSTANCE_ID] = m["instance"]
        keys.append(SeriesKey(m["service"], m["name"], attrs))
        ok.append(m)
    names = [m.get("display_name") for m in ok]
    if not all(names):
        names = display_names(keys)
    groups: dict[tuple[str, str], list[dict]] = {}
    for m, dn in zip(ok, names):
        groups.setdefault((m["service"], m["name"]), []).append(
            dict(m) | {"display_name": dn, "variation": variation([p["value"] for p in m.get("points", [])])})
    out: list[tuple[str, Any]] = list(errors)
    for (svc, name) in sorted(groups):
        g = sorted(groups[(svc, name)], key=lambda r: (-r["variation"], r["display_name"]))
        out += [("series", r) for r in g[:per_metric]]
        if len(g) > per_metric:
            out.append(("more", {"service": svc, "name": name, "hidden": len(g) - per_metric}))
    return out
