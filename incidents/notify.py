"""Where alerts go: Alertmanager, any webhook that speaks Alertmanager's payload,
a Slack incoming webhook, a JSON-lines file, and the log.

- ``AlertmanagerTarget`` POSTs to ``/api/v2/alerts`` the way Prometheus does: the alert
  is re-sent while it fires (Alertmanager de-duplicates, groups and routes) with an
  ``endsAt`` a few evaluations ahead, and sent once more with its real ``endsAt`` when
  it resolves.
- ``WebhookTarget`` POSTs Alertmanager's *webhook* payload (``version: "4"``), so any
  receiver written for Alertmanager takes our alerts unchanged.
- ``SlackTarget`` POSTs ``{"text": ..., "blocks": [...]}`` (Slack incoming webhooks,
  Mattermost and Rocket.Chat accept it).

Every target is told about firing, repeat and resolved events; a target that fails is
retried at the next evaluation (the watch records delivery per target). Requests use
the standard library with a short timeout and bounded bodies.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("stagetrace.watch")
TIMEOUT_S = 5.0
MAX_ANNOTATION = 4000


def rfc3339(ns: int | None) -> str:
    if not ns:
        return "0001-01-01T00:00:00Z"
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class Target(Protocol):
    name: str

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        """``event`` is firing | repeat | resolved | refresh; raise on failure."""
        ...


def target_name(kind: str, url: str) -> str:
    """A stable name for the state file and the log that does not carry the URL's secret
    (a Slack webhook's path is its credential): scheme, host and a hash of the rest."""
    import hashlib
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    return f"{kind}:{u.scheme}://{u.hostname}:{u.port or ''}#{hashlib.sha1(url.encode()).hexdigest()[:10]}"


def _post(url: str, doc: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(doc, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            r.read(65536)
    except urllib.error.HTTPError as exc:  # the URL itself is not repeated: it may hold a credential
        raise OSError(f"answered {exc.code}: {exc.read(300).decode(errors='replace')}") from None


def am_alert(alert: dict[str, Any], now_ns: int, hold_ns: int) -> dict[str, Any]:
    """One alert in Alertmanager's API/webhook shape."""
    resolved = alert["state"] == "resolved"
    ends = alert.get("resolved_at") if resolved else now_ns + hold_ns
    ann = {k: str(v)[:MAX_ANNOTATION] for k, v in alert.get("annotations", {}).items()}
    return {"labels": dict(alert["labels"]), "annotations": ann, "startsAt": rfc3339(alert.get("fired_at")),
            "endsAt": rfc3339(ends), "generatorURL": alert.get("generator_url", "")}


class AlertmanagerTarget:
    """Alertmanager's v2 API. ``always`` = True: also called on the refresh events, so
    Alertmanager keeps the alert active (it resolves alerts whose ``endsAt`` passes)."""

    always = True

    def __init__(self, url: str, hold_ns: int) -> None:
        self.url = url.rstrip("/")
        self.name = target_name("alertmanager", self.url)
        self.hold_ns = hold_ns

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        _post(self.url + "/api/v2/alerts", [am_alert(alert, now_ns, self.hold_ns)])


class WebhookTarget:
    always = False

    def __init__(self, url: str, hold_ns: int) -> None:
        self.url = url
        self.name = target_name("webhook", url)
        self.hold_ns = hold_ns

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        a = am_alert(alert, now_ns, self.hold_ns)
        a["status"] = "resolved" if alert["state"] == "resolved" else "firing"
        a["fingerprint"] = alert["key"][:16]
        group = {"alertname": alert["labels"].get("alertname", "")}
        _post(self.url, {"version": "4", "groupKey": json.dumps(group, sort_keys=True), "truncatedAlerts": 0,
                         "status": a["status"], "receiver": "stagetrace-watch", "groupLabels": group,
                         "commonLabels": a["labels"], "commonAnnotations": a["annotations"],
                         "externalURL": alert.get("generator_url", ""), "alerts": [a]})


def slack_text(event: str, alert: dict[str, Any]) -> str:
    lab, ann = alert["labels"], alert.get("annotations", {})
    icon = {"resolved": "✅ RESOLVED"}.get(event if event == "resolved" else alert["state"],
                                             "🔥 FIRING" if lab.get("severity") == "page" else "⚠️ FIRING")
    if event == "repeat":
        icon += " (still)"
    lines = [f"*{icon}* [{lab.get('severity', '')}] *{lab.get('alertname', '')}*: {ann.get('summary', '')}"]
    if event != "resolved":
        if ann.get("cause"):
            lines.append("*Likely cause* (stagetrace investigation):\n" + ann["cause"])
        if ann.get("example_trace_id"):
            lines.append(f"Example trace: `stagetrace trace {ann['example_trace_id']}`")
        if ann.get("report"):
            lines.append(f"Full report: {ann['report']}")
    lines.append("Labels: " + ", ".join(f"{k}={v}" for k, v in sorted(lab.items())))
    return "\n".join(lines)


class SlackTarget:
    always = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = target_name("slack", url)

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        text = slack_text(event, alert)[:MAX_ANNOTATION]  # Slack truncates long messages anyway
        _post(self.url, {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]})


class JsonlTarget:
    """One JSON object per event, appended; what scripts and the demo read."""

    always = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"event": event, "time": rfc3339(now_ns), "time_ns": now_ns,
               **{k: alert.get(k) for k in ("id", "state", "labels", "annotations", "active_since", "fired_at",
                                            "resolved_at", "value", "report_files")}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")


class LogTarget:
    always = False
    name = "log"

    def __init__(self, echo: Any = None) -> None:
        self.echo = echo

    def send(self, event: str, alert: dict[str, Any], now_ns: int) -> None:
        lab, ann = alert["labels"], alert.get("annotations", {})
        msg = f"{event.upper()} {lab.get('alertname')} [{lab.get('severity')}] {ann.get('summary', '')}"
        if event != "resolved" and ann.get("root_cause"):
            msg += f"\n    cause: {ann['root_cause']}"
        if event != "resolved" and ann.get("report"):
            msg += f"\n    report: {ann['report']}"
        if self.echo is not None:
            self.echo(msg)
        else:
            log.warning(msg)
