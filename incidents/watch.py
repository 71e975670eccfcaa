"""The watch loop: read what arrived, evaluate the rules, move alerts through their
lifecycle, attach the cause, notify.

Lifecycle (as Prometheus and Alertmanager define it): a condition that becomes true
opens a **pending** alert; once it has held for ``for`` the alert **fires** (the
investigation runs, the notification goes out); while it fires, each target is
re-notified only after ``repeat_interval`` (Alertmanager itself gets a refresh every
evaluation minute, as Prometheus re-sends, so it does not time the alert out); when the
condition no longer holds the alert is **resolved** and every target that heard of it
hears that too. A pending alert whose condition goes away is dropped silently.

Identity and de-duplication: one alert per rule and label set (``alertname``,
``severity`` and the series' labels). State is saved after every evaluation, so a
restart finds its firing alerts and what each target was already told.

A failing read of the backend does not resolve anything (missing data is not good
news); it raises the ``WatchCannotReadTelemetry`` alert instead, which resolves once
reads succeed again.

Causes off the loop (``background_causes``, what ``stagetrace watch`` runs): an
investigation takes seconds, so it runs on one worker thread with its own backend,
while the loop goes on evaluating. A firing alert is held back from its targets until
its cause is attached (an on-call engineer's first message should say why), for at most
``CAUSE_WAIT_NS``; past that it goes out without, and the cause follows in the next
update (Alertmanager gets it at once, as a refresh). At most
``MAX_PENDING_CAUSES`` investigations wait; an alert past that is sent without a cause,
which says so.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from stagetrace.backend import Backend, LogQuery, TraceQuery

from . import cause as cause_mod
from .mlrules import MODEL_KINDS, evaluate_models
from .evaluate import Condition, evaluate
from .notify import Target
from .rules import Rule, WatchConfig, fmt_duration
from .series import Aggregates, Fingerprinter, error_events
from .state import SilenceStore, StateStore

log = logging.getLogger("stagetrace.watch")
TELEMETRY_RULE = Rule("WatchCannotReadTelemetry", "errors", severity="page")
MAX_RESOLVE_ATTEMPTS = 20
MAX_PENDING_CAUSES = 8
CAUSE_WAIT_NS = 60 * 10**9  # longest a firing alert is held back waiting for its cause


def alert_key(labels: dict[str, str]) -> str:
    return hashlib.sha1(json.dumps(labels, sort_keys=True).encode()).hexdigest()


def _close_quietly(backend: Backend | None) -> None:
    if backend is not None:
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - closing what failed must not fail the watch
            pass


class Watcher:
    """One watch over one backend. ``clock`` is the evaluation time source (tests step
    it through generated history; the CLI uses the wall clock)."""

    def __init__(self, cfg: WatchConfig, *, state_dir: str | Path, out_dir: str | Path,
                 open_backend: Callable[[], Backend], targets: Sequence[Target] = (),
                 clock: Callable[[], int] = time.time_ns, investigate: bool = True,
                 ignore_before_ns: int | None = None, background_causes: bool = False) -> None:
        self.cfg = cfg
        self.open_backend = open_backend
        self.targets = list(targets)
        self.clock = clock
        self.out_dir = Path(out_dir)
        self.investigate = investigate
        self.ignore_before_ns = ignore_before_ns  # older data is not part of the story (a demo's warm-up)
        self.data_dir = Path(state_dir)  # the CLI's data dir: where `profile build` stores reference profiles
        self.store = StateStore(state_dir)
        self.silences = SilenceStore(state_dir)
        self.state = self.store.load()
        self.agg = Aggregates(cfg.resolution_ns)
        self.fingerprinter: Fingerprinter | None = None
        self.cursor_ns: int | None = None
        self.backend: Backend | None = None
        self.refresh_ns = max(cfg.interval_ns, 60 * 10**9)  # Alertmanager re-send period
        self.hold_ns = 4 * self.refresh_ns  # endsAt ahead of now while firing
        self.background_causes = background_causes
        self._causes: dict[str, concurrent.futures.Future] = {}  # alert key -> its investigation
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._cause_backend: Backend | None = None  # the worker's own: never used by the loop
        self.cause_ready = threading.Event()  # set when an investigation finished (run() delivers it)
        for a in self.state["alerts"].values():
            a.pop("cause_wait_until", None)  # a restart: no investigation of before is running any more

    # --- one evaluation --------------------------------------------------------------------
    def step(self, now_ns: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Evaluate once at ``now_ns`` (default: the clock). Returns the notifications
        sent as (event, alert) pairs."""
        now = self.clock() if now_ns is None else now_ns
        self._collect_causes()
        try:
            self._read(now)
        except Exception as exc:  # noqa: BLE001 - any read failure is the telemetry alert
            self._drop_backend()
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("watch cannot read telemetry: %s", msg)
            self.state["last_error"] = msg
            conds = [Condition(TELEMETRY_RULE, {"alertname": TELEMETRY_RULE.name, "severity": "page"},
                               "watch cannot read telemetry", f"Reading the backend failed: {msg}", 1.0, None,
                               (now, now), annotations={"error": msg[:500]})]
            sent = self._lifecycle(conds, now, only={alert_key(conds[0].labels)}, for_ns=self.cfg.telemetry_for_ns)
            self._save(now)
            return sent
        self.state.pop("last_error", None)
        frozen = {a["annotations"]["series_id"]: a["threshold_ns"] for a in self.state["alerts"].values()
                  if a.get("threshold_ns") and a.get("annotations", {}).get("series_id")}
        conds = evaluate(self.cfg, self.agg, now, frozen)
        if any(r.kind in MODEL_KINDS for r in self.cfg.rules):
            try:
                conds += evaluate_models(self.cfg, self._backend(), now, self.data_dir, self.ignore_before_ns)
            except Exception as exc:  # noqa: BLE001 - odd data must not stop the other rules
                msg = f"{type(exc).__name__}: {exc}"
                if self.state.get("model_rules_error") != msg:
                    log.warning("watch: the drift/quality rules could not be evaluated: %s", msg)
                self.state["model_rules_error"] = msg
            else:
                self.state.pop("model_rules_error", None)
        sent = self._lifecycle(conds, now)
        self._save(now)
        return sent

    def run(self, stop: threading.Event | None = None, on_cycle: Callable[[], None] | None = None) -> None:
        """Evaluate every ``interval`` until ``stop`` is set (or Ctrl-C); a cause that
        arrives in between is delivered at once."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                self.step()
                if on_cycle:
                    on_cycle()
                while not stop.is_set():
                    left = self.cfg.interval_ns / 1e9 - (time.monotonic() - t0)
                    if left <= 0:
                        break
                    if self.cause_ready.wait(min(left, 0.5)):
                        self.deliver_causes()
        finally:
            self.close()

    def deliver_causes(self, now_ns: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Attach the causes that arrived and send what they held back, without a new
        evaluation. Returns the notifications sent."""
        now = self.clock() if now_ns is None else now_ns
        self.cause_ready.clear()
        self._collect_causes()
        sent = self._deliver(now)
        self.state["causes_pending"] = len(self._causes)
        self.store.save(self.state)  # (not last_eval_ns: this was no evaluation)
        return sent

    def close(self) -> None:
        if self._pool is not None:
            # the investigation under way finishes; its alert and the ones still waiting go out now
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            if self._causes:
                self.deliver_causes()
        _close_quietly(self._cause_backend)
        self._cause_backend = None
        self._drop_backend()

    # --- reading ---------------------------------------------------------------------------
    def _backend(self) -> Backend:
        if self.backend is None:
            self.backend = self.open_backend()
        return self.backend

    def _drop_backend(self) -> None:
        _close_quietly(self.backend)
        self.backend = None

    def _read(self, now: int) -> None:
        """Fold in the spans and error logs since the last read (and the settle margin)."""
        cfg = self.cfg
        history = max(cfg.max_window_ns, cfg.lookback_ns)
        if self.cursor_ns is None or now < self.cursor_ns - cfg.settle_ns:
            start = now - history  # first read (or the clock went back): backfill
            self.agg = Aggregates(cfg.resolution_ns)
        else:
            start = min(self.cursor_ns, now - cfg.settle_ns)
        start = self.agg.bucket_of(start)
        if self.ignore_before_ns is not None:
            start = max(start, self.ignore_before_ns)
        b = self._backend()
        spans = b.find_spans(TraceQuery(start_ns=start, end_ns=now, limit=None))
        logs = b.find_logs(LogQuery(start_ns=start, end_ns=now, min_severity=17, limit=None))
        self.agg.drop_from(start)
        self.agg.add_spans(spans)
        self.agg.errors.extend(error_events(spans, logs))
        if self.fingerprinter is None:
            self.fingerprinter = Fingerprinter()
        self.fingerprinter.assign(self.agg.errors)
        self.agg.prune(now - history)
        self.cursor_ns = now

    # --- lifecycle ---------------------------------------------------------------------------
    def _lifecycle(self, conds: list[Condition], now: int, only: set[str] | None = None,
                   for_ns: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        alerts: dict[str, dict[str, Any]] = self.state["alerts"]
        seen = set()
        for c in conds:
            key = alert_key(c.labels)
            if key in seen:
                continue
            seen.add(key)
            a = alerts.get(key)
            if a is None:
                a = alerts[key] = {"key": key, "id": hashlib.sha1(f"{key}{now}".encode()).hexdigest()[:12],
                                   "rule": c.rule.name, "kind": c.rule.kind, "labels": dict(c.labels),
                                   "state": "pending", "active_since": now, "delivered": {}}
                if c.threshold_ns:
                    a["threshold_ns"] = c.threshold_ns  # frozen while active
            a["last_active_ns"] = now
            a["value"] = c.value
            a["window_ns"] = list(c.window_ns)
            a["onset_ns"] = c.onset_ns
            a["service"], a["route"] = c.service, c.route
            a["annotations"] = {**{k: v for k, v in a.get("annotations", {}).items() if k.startswith(("cause", "root_cause",
                                                                                                       "report", "example"))},
                                "summary": c.summary, "description": c.description, **c.annotations,
                                "alert_id": a["id"]}
            wait = c.rule.for_ns if c.rule.for_ns is not None else (self.cfg.for_ns if for_ns is None else for_ns)
            if a["state"] == "pending" and now - a["active_since"] >= wait:
                a["state"], a["fired_at"] = "firing", now
                if self.investigate and c.investigate and self.backend is not None:
                    if self.background_causes:
                        self._start_cause(a, c, now)
                    else:
                        self._attach_cause(a, c)
                self._write_alert(a)
        for key, a in list(alerts.items()):
            if key in seen or (only is not None and key not in only):
                continue
            if a["state"] == "pending":
                del alerts[key]
                continue
            a["state"], a["resolved_at"] = "resolved", now
            a["pending_resolve"] = [t for t in a.get("delivered", {})]
            a.pop("cause_wait_until", None)
            del alerts[key]
            self.state["history"].append(a)
            self._write_alert(a)
        return self._deliver(now)

    def _deliver(self, now: int) -> list[tuple[str, dict[str, Any]]]:
        """Deliveries: firing alerts, then resolutions still owed."""
        alerts: dict[str, dict[str, Any]] = self.state["alerts"]
        sent: list[tuple[str, dict[str, Any]]] = []
        for a in alerts.values():
            if a["state"] != "firing":
                continue
            if a.get("cause_wait_until", 0) > now:
                continue  # held back: its cause is on the way
            sil = self.silences.matching(a["labels"], now)
            if sil is not None:
                a["silenced_by"] = sil.id
                continue
            a.pop("silenced_by", None)
            for t in self.targets:
                rec = a["delivered"].get(t.name)
                if rec is None:
                    event = "firing"
                elif now - rec["notified_at"] >= self.cfg.repeat_interval_ns:
                    event = "repeat"
                elif getattr(t, "always", False) and now - rec["sent_at"] >= self.refresh_ns:
                    event = "refresh"
                else:
                    continue
                if self._send(t, event, a, now):
                    rec = a["delivered"].setdefault(t.name, {})
                    rec["sent_at"] = now
                    if event != "refresh":
                        rec["notified_at"] = now
                        sent.append((event, a))
        for a in self.state["history"][-50:]:
            owed = a.get("pending_resolve") or []
            if not owed:
                continue
            left = []
            for name in owed:
                t = next((t for t in self.targets if t.name == name), None)
                if t is None:
                    continue
                if self._send(t, "resolved", a, now):
                    sent.append(("resolved", a))
                else:
                    a["resolve_attempts"] = a.get("resolve_attempts", 0) + 1
                    if a["resolve_attempts"] < MAX_RESOLVE_ATTEMPTS:
                        left.append(name)
            a["pending_resolve"] = left
        return sent

    def _send(self, t: Target, event: str, a: dict[str, Any], now: int) -> bool:
        try:
            t.send(event, a, now)
            return True
        except Exception as exc:  # noqa: BLE001 - retried at the next evaluation
            log.warning("notifying %s of %s failed: %s", t.name, a["labels"].get("alertname"), exc)
            return False

    def _attach_cause(self, a: dict[str, Any], c: Condition) -> None:
        assert self.backend is not None
        self._apply_cause(a, cause_mod.investigate(self.backend, c, a["id"], self.out_dir))

    def _start_cause(self, a: dict[str, Any], c: Condition, now: int) -> None:
        """Run the investigation on the worker thread; the alert waits for it (``_deliver``)."""
        if len(self._causes) >= MAX_PENDING_CAUSES:
            a["annotations"]["cause_error"] = f"not investigated: {MAX_PENDING_CAUSES} investigations already waiting"
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stagetrace-cause")
        fut = self._pool.submit(self._investigate_off_loop, c, a["id"])
        fut.add_done_callback(lambda _f: self.cause_ready.set())
        self._causes[a["key"]] = fut
        a["cause_wait_until"] = now + CAUSE_WAIT_NS

    def _investigate_off_loop(self, c: Condition, alert_id: str) -> cause_mod.Cause:
        if self._cause_backend is None:  # (only this worker thread touches it)
            self._cause_backend = self.open_backend()
        return cause_mod.investigate(self._cause_backend, c, alert_id, self.out_dir)

    def _collect_causes(self) -> None:
        """Attach every finished investigation to its alert (firing, or resolved since)."""
        for key, fut in list(self._causes.items()):
            if not fut.done():
                continue
            del self._causes[key]
            a = self.state["alerts"].get(key) or next(
                (h for h in reversed(self.state["history"]) if h.get("key") == key), None)
            if a is None:
                continue
            a.pop("cause_wait_until", None)
            try:
                self._apply_cause(a, fut.result())
            except Exception as exc:  # noqa: BLE001 - the backend could not be opened: say so, send anyway
                a["annotations"]["cause_error"] = f"{type(exc).__name__}: {exc}"[:500]
            for rec in a.get("delivered", {}).values():
                rec["sent_at"] = 0  # told before its cause came: refresh the targets that take updates
            self._write_alert(a)

    def _apply_cause(self, a: dict[str, Any], found: cause_mod.Cause) -> None:
        a["annotations"].update(found.annotations())
        a["report_files"] = found.files
        a["cause"] = {"lines": found.lines, "top": {k: v for k, v in found.top.items()},
                      "example_trace_ids": found.example_trace_ids}
        if found.files.get("html"):
            a["generator_url"] = Path(found.files["html"]).as_uri()

    def _write_alert(self, a: dict[str, Any]) -> None:
        d = self.out_dir / "alerts" / a["id"]
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / "alert.json").write_text(json.dumps(a, indent=1, default=str), encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write %s: %s", d, exc)

    def _save(self, now: int) -> None:
        self.state["last_eval_ns"] = now
        self.state["causes_pending"] = len(self._causes)  # (the demo waits for them before it stops the watch)
        self.store.save(self.state)

    # --- views -------------------------------------------------------------------------------
    def describe(self) -> str:
        tiers = ", ".join(f"{w.label()} x{w.factor:g} {w.severity}" for w in self.cfg.burn_windows)
        return (f"{len(self.cfg.rules)} rules from {self.cfg.source}; every {fmt_duration(self.cfg.interval_ns)}; "
                f"burn windows {tiers}")
