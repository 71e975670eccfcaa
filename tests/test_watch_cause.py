"""A watch alert's cause is the investigation's first incident or component (issue 17,
"one story"), never its summary line: with background errors only, the cause is the top
incident marked not significant; with a new incident, it is that incident."""

from __future__ import annotations

from stagetrace.incidents import cause
from stagetrace.incidents.evaluate import Condition

import microservice_gen as gen


def _cond(res) -> Condition:
    return Condition(rule=None, labels={"alertname": "route-errors"}, summary="errors", description="",
                     value=1.0, investigate="errors", window_ns=(res.start_ns, res.end_ns))


def test_cause_is_the_incident_never_the_summary(tmp_path):
    b, res = gen.generate(seconds=600, rate=4, onset=0.6, version_errors=True, background_errors=True, seed=21)
    c = cause.investigate(b, _cond(res), "a1", tmp_path)
    assert c.lines and c.top["kind"] == "error_cluster" and c.top["service"] == "cart", c.lines
    assert "requests failed" not in c.lines[0], c.lines


def test_background_only_cause_is_marked_not_significant(tmp_path):
    b, res = gen.generate(seconds=600, rate=4, background_errors=True, seed=22)
    c = cause.investigate(b, _cond(res), "a2", tmp_path)
    assert c.lines[0].startswith("(not significant) ") and "requests failed" not in c.lines[0], c.lines


def test_a_latency_alert_names_the_starved_service_its_metric_shows(tmp_path):
    """The slow investigation's first finding is a service's CPU stepping up tenfold (few of its
    calls in the traces): the alert's cause is that component, not a later stage finding."""
    from test_forensics_resources import _starved
    b, res = _starved(cpu_step=True, slow_calls=True, seed=31)
    cond = Condition(rule=None, labels={"alertname": "route-latency"}, summary="slow", description="",
                     value=1.0, investigate="slow", window_ns=(res.start_ns, res.end_ns))
    c = cause.investigate(b, cond, "a3", tmp_path)
    assert c.top["kind"] == "metric" and c.top["service"] == "shipping", c.lines
    assert "shipping" in c.lines[0] and "stepped up" in c.lines[0], c.lines
