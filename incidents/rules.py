"""Alert rules for ``stagetrace watch``: what they mean, their defaults, and the TOML that changes them.

A rule file (``--rules FILE``) or a project's ``pyproject.toml`` (``[tool.stagetrace.watch]``)
holds the same table::

    interval = "30s"                    # evaluate every 30 s
    for = "0s"                          # pending this long before firing
    repeat_interval = "4h"              # re-notify a still-firing alert after this
    lookback = "24h"                    # history for baselines and "never seen" fingerprints

    [[burn_windows]]                    # multi-window, multi-burn-rate tiers (SRE workbook, ch. 5)
    long = "1h"; short = "5m"; factor = 14.4; severity = "page"

    [[rules]]
    name = "predict-latency"; kind = "latency"; service = "fraud-api"; route = "/predict"
    threshold = "300ms"                 # or ratio = 2.0 (x the baseline percentile)
    objective = 0.99

Rules given by kind only (``kind = "latency"`` without ``route``/``stage``) expand to one
alert series per route (server entry spans) or per ML stage found in the data, so the
defaults cover a service nobody configured.

Why multi-window multi-burn-rate: an SLO alert should page when the error budget burns fast
enough to matter, and not for a blip. The long window measures how much budget is gone
(a one-minute blip is diluted in an hour); the short window (1/12 of it) checks the burn
is still going on, so the alert resets quickly once it stops. The defaults are the Google
SRE workbook's (2 % of a 30-day budget in 1 h, 5 % in 6 h, pages; 10 % in 1 d and 3 d,
tickets), as Sloth and Pyrra generate them. Every window is configurable, down to seconds
(the tests and the demo run scaled-down windows).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stagetrace.config import parse_duration_ns
from stagetrace.errors import UserError

KINDS = ("latency", "errors", "new_error", "version_change", "drift", "quality")
SEVERITIES = ("page", "ticket", "info")
S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One tier: fires when the burn rate over *both* windows exceeds ``factor``."""

    long_ns: int
    short_ns: int
    factor: float
    severity: str = "page"

    def label(self) -> str:
        return f"{_fmt(self.long_ns)}/{_fmt(self.short_ns)}"


# Google SRE workbook, "Alerting on SLOs", table 5-8 (as Sloth and Pyrra use them).
DEFAULT_BURN_WINDOWS = (
    BurnWindow(3600 * S, 300 * S, 14.4, "page"),
    BurnWindow(6 * 3600 * S, 1800 * S, 6.0, "page"),
    BurnWindow(24 * 3600 * S, 2 * 3600 * S, 3.0, "ticket"),
    BurnWindow(3 * 24 * 3600 * S, 6 * 3600 * S, 1.0, "ticket"),
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule. ``kind``:

    - ``latency``: SLO "``objective`` of requests (or stage spans) are faster than the
      threshold". The threshold is ``threshold_ns``, else ``ratio`` x the ``baseline``
      percentile of the same series over the look-back (frozen while the alert is active,
      so a long incident does not become the new normal).
    - ``errors``: SLO "``objective`` of requests succeed" per route.
    - ``new_error``: an error fingerprint (the ones of ``investigate errors``) not seen
      in the look-back before, with at least ``min_events`` events.
    - ``version_change``: a new ``service.version`` / ``ml.model.version`` value first
      seen in the last ``within``, followed by a rise of the error rate or of the slow
      rate of its service (``rise`` x before, and ``min_events`` bad requests).
    - ``drift`` (issue 18): a feature or the prediction scores of ``model`` drifted over the
      last ``within`` (``investigate drift`` against the stored reference profile, or
      ``reference``, else the previous period).
    - ``quality``: the accuracy of ``model``'s labelled predictions of the last ``within``
      is below ``objective``, with at least ``min_events`` (default 30) labelled.
    Both are evaluated by :mod:`.mlrules` and carry their report as the cause.
    """

    name: str
    kind: str
    service: str | None = None
    route: str | None = None  # latency / errors on server entry spans
    stage: str | None = None  # latency on ML stage spans
    objective: float = 0.99
    threshold_ns: int | None = None
    ratio: float = 2.0
    baseline: float = 99.0  # percentile of the baseline for a ratio threshold
    severity: str | None = None  # None = the tier's severity (SLO rules), else "page"
    for_ns: int | None = None  # None = the watch's default
    min_events: int = 5
    rise: float = 2.0
    within_ns: int = 30 * 60 * S
    summary: str | None = None
    model: str | None = None  # drift / quality: ml.model.name
    version: str | None = None  # drift / quality: ml.model.version
    reference: str | None = None  # drift / quality: reference profile (default: DATA_DIR/profiles)

    @property
    def per_stage(self) -> bool:
        return self.kind == "latency" and self.stage is not None


@dataclass(slots=True)
class WatchConfig:
    rules: list[Rule]
    burn_windows: tuple[BurnWindow, ...] = DEFAULT_BURN_WINDOWS
    interval_ns: int = 30 * S
    for_ns: int = 0
    repeat_interval_ns: int = 4 * 3600 * S
    lookback_ns: int = 24 * 3600 * S
    settle_ns: int = 30 * S  # spans of the last settle_ns are re-read each cycle (late exports)
    min_requests: int = 10  # fewer requests in a short window: no SLO verdict
    budget_period_ns: int = 30 * 24 * 3600 * S
    telemetry_for_ns: int = 0  # "watch cannot read telemetry" fires after this
    source: str = "defaults"

    @property
    def max_window_ns(self) -> int:
        return max(w.long_ns for w in self.burn_windows)

    @property
    def resolution_ns(self) -> int:
        """Aggregation bucket: a tenth of the shortest window, at least 1 s."""
        shortest = min(w.short_ns for w in self.burn_windows)
        return max(S, shortest // 10 // S * S)


def default_rules() -> list[Rule]:
    """Every route's latency and errors, every ML stage's latency, new error
    fingerprints and version changes: useful with zero configuration."""
    return [
        Rule("route-latency", "latency", objective=0.99, ratio=2.0, baseline=99.0),
        Rule("route-errors", "errors", objective=0.999),
        Rule("stage-latency", "latency", stage="*", objective=0.99, ratio=2.0, baseline=99.0),
        Rule("new-error-fingerprint", "new_error", severity="ticket", min_events=3),
        Rule("version-change-regression", "version_change", severity="page"),
    ]


def load_config(rules_file: str | os.PathLike[str] | None = None, *, project_dir: str | os.PathLike[str] | None = None,
                overrides: dict[str, Any] | None = None) -> WatchConfig:
    """``--rules FILE`` (a plain table, or one with ``[tool.stagetrace.watch]``), else
    ``pyproject.toml``'s ``[tool.stagetrace.watch]`` in ``project_dir``, else the defaults."""
    import tomllib

    table: dict[str, Any] = {}
    source = "defaults"
    path = Path(rules_file) if rules_file else None
    if path is None:
        cand = Path(project_dir or ".") / "pyproject.toml"
        if cand.is_file():
            try:
                doc = tomllib.loads(cand.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read {cand}: {exc}") from None
            sub = doc.get("tool", {}).get("stagetrace", {}).get("watch")
            if sub is not None:
                table, source = sub, f"{cand} [tool.stagetrace.watch]"
    else:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"rules file {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read rules file {path}: {exc}") from None
        table = doc.get("tool", {}).get("stagetrace", {}).get("watch", doc)
        source = str(path)
    if overrides:
        table = {**table, **overrides}
    return parse_config(table, source)


_TOP_KEYS = {"interval", "for", "repeat_interval", "lookback", "settle", "min_requests", "budget_period",
             "burn_windows", "rules", "default_rules", "telemetry_for"}
_RULE_KEYS = {"name", "kind", "service", "route", "stage", "objective", "threshold", "ratio", "baseline",
              "severity", "for", "min_events", "rise", "within", "summary", "model", "version", "reference"}


def parse_config(table: dict[str, Any], source: str = "config") -> WatchConfig:
    """Validate a rules table; every mistake is one :class:`UserError` line naming the key."""
    unknown = set(table) - _TOP_KEYS
    if unknown:
        raise UserError(f"{source}: unknown watch setting(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(_TOP_KEYS))}")
    cfg = WatchConfig(rules=[], source=source)
    cfg.interval_ns = _dur(table, "interval", cfg.interval_ns, source)
    cfg.for_ns = _dur(table, "for", cfg.for_ns, source)
    cfg.repeat_interval_ns = _dur(table, "repeat_interval", cfg.repeat_interval_ns, source)
    cfg.lookback_ns = _dur(table, "lookback", cfg.lookback_ns, source)
    cfg.settle_ns = _dur(table, "settle", cfg.settle_ns, source)
    cfg.budget_period_ns = _dur(table, "budget_period", cfg.budget_period_ns, source)
    cfg.telemetry_for_ns = _dur(table, "telemetry_for", cfg.telemetry_for_ns, source)
    cfg.min_requests = int(table.get("min_requests", cfg.min_requests))
    if cfg.interval_ns <= 0:
        raise UserError(f"{source}: interval must be positive")
    if "burn_windows" in table:
        tiers = []
        for i, w in enumerate(_list_of_tables(table["burn_windows"], "burn_windows", source)):
            where = f"{source}: burn_windows[{i}]"
            bad = set(w) - {"long", "short", "factor", "severity"}
            if bad:
                raise UserError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
            try:
                long_ns, short_ns = parse_duration_ns(str(w["long"]), "s"), parse_duration_ns(str(w["short"]), "s")
                factor = float(w["factor"])
            except KeyError as exc:
                raise UserError(f"{where}: missing {exc.args[0]!r} (long, short, factor are required)") from None
            except (TypeError, ValueError):
                raise UserError(f"{where}: factor must be a number") from None
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            sev = str(w.get("severity", "page"))
            if sev not in SEVERITIES:
                raise UserError(f"{where}: severity {sev!r}: use {', '.join(SEVERITIES)}")
            if not 0 < short_ns <= long_ns or factor <= 0:
                raise UserError(f"{where}: need 0 < short <= long and factor > 0")
            tiers.append(BurnWindow(long_ns, short_ns, factor, sev))
        if not tiers:
            raise UserError(f"{source}: burn_windows is empty")
        cfg.burn_windows = tuple(tiers)
    rules = [] if "rules" in table and not table.get("default_rules", False) else default_rules()
    names = {r.name for r in rules}
    for i, r in enumerate(_list_of_tables(table.get("rules", []), "rules", source)):
        rule = _rule(r, f"{source}: rules[{i}]")
        if rule.name in names:
            raise UserError(f"{source}: rules[{i}]: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    cfg.rules = rules
    return cfg


def _rule(r: dict[str, Any], where: str) -> Rule:
    bad = set(r) - _RULE_KEYS
    if bad:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(_RULE_KEYS))}")
    kind = str(r.get("kind", ""))
    if kind not in KINDS:
        raise UserError(f"{where}: kind {kind!r}: use one of {', '.join(KINDS)}")
    name = str(r.get("name") or f"{kind}-{r.get('route') or r.get('stage') or r.get('model') or 'all'}")
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
        raise UserError(f"{where}: name {name!r}: use letters, digits and _ . : / -")
    kw: dict[str, Any] = {"name": name, "kind": kind}
    for k in ("service", "route", "stage", "summary", "model", "version", "reference"):
        if r.get(k) is not None:
            kw[k] = str(r[k])
    if kind != "latency" and "stage" in kw:
        raise UserError(f"{where}: stage applies to latency rules only")
    if kind in ("drift", "quality"):
        if not kw.get("model"):
            raise UserError(f"{where}: {kind} rules need a model (its ml.model.name)")
        if kind == "quality" and "objective" not in r:
            raise UserError(f"{where}: quality rules need an objective (the accuracy to keep, e.g. 0.9)")
        if kind == "quality" and "min_events" not in r:
            kw["min_events"] = 30
    elif any(k in kw for k in ("model", "version", "reference")):
        raise UserError(f"{where}: model, version and reference apply to drift and quality rules only")
    try:
        if "objective" in r:
            kw["objective"] = float(r["objective"])
            if kw["objective"] > 1:  # 99.9 written as a percentage
                kw["objective"] /= 100.0
            if not 0 < kw["objective"] < 1:
                raise UserError(f"{where}: objective must be between 0 and 1 (e.g. 0.999) or a percentage")
        for k in ("ratio", "baseline", "rise"):
            if k in r:
                kw[k] = float(r[k])
        if "min_events" in r:
            kw["min_events"] = int(r["min_events"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: objective, ratio, baseline, rise and min_events must be numbers") from None
    if "threshold" in r:
        kw["threshold_ns"] = _parse(str(r["threshold"]), where, "threshold", "ms")
    if "for" in r:
        kw["for_ns"] = _parse(str(r["for"]), where, "for", "s")
    if "within" in r:
        kw["within_ns"] = _parse(str(r["within"]), where, "within", "s")
    if "severity" in r:
        if str(r["severity"]) not in SEVERITIES:
            raise UserError(f"{where}: severity {r['severity']!r}: use {', '.join(SEVERITIES)}")
        kw["severity"] = str(r["severity"])
    if not 0 < kw.get("baseline", 99.0) < 100:
        raise UserError(f"{where}: baseline is a percentile between 0 and 100")
    return Rule(**kw)


def _list_of_tables(v: Any, key: str, source: str) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise UserError(f"{source}: {key} must be an array of tables ([[{key}]])")
    return v


def _dur(table: dict[str, Any], key: str, default: int, source: str) -> int:
    if key not in table:
        return default
    return _parse(str(table[key]), source, key, "s")


def _parse(text: str, where: str, key: str, unit: str) -> int:
    try:
        return parse_duration_ns(text, default_unit=unit)
    except UserError as exc:
        raise UserError(f"{where}: {key}: {exc}") from None


def _fmt(ns: int) -> str:
    for unit, size in (("d", 86400 * S), ("h", 3600 * S), ("m", 60 * S), ("s", S)):
        if ns >= size and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / 1e9:g}s"


fmt_duration = _fmt
__all__ = ["BurnWindow", "Rule", "WatchConfig", "DEFAULT_BURN_WINDOWS", "default_rules", "load_config",
           "parse_config", "fmt_duration", "replace"]
