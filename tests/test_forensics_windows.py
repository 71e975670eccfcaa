"""Window invariance (issue 17): the same first cause, at the same significance, for any
window that holds the incident and normal time before it. A three-minute fault at the end
of an hour of normal traffic (tests/microservice_gen.py) is investigated over a window
just around it, the last 15 minutes and the whole hour; and a clean hour names nothing."""

from __future__ import annotations

import pytest

from stagetrace.forensics import investigate_errors, investigate_slow

import microservice_gen as gen

S = 1_000_000_000


def _windows(res):
    end = res.end_ns
    return {"around": (res.onset_ns - 180 * S, end), "15m": (end - 900 * S, end), "1h": (res.start_ns, end)}


@pytest.fixture(scope="module")
def delayed_hour():
    # onset at 95% of an hour: the fault lasts the last three minutes
    return gen.generate(seconds=3600, rate=3, onset=0.95, net_delay="catalog", seed=11)


@pytest.mark.parametrize("window", ["around", "15m", "1h"])
def test_short_incident_in_a_long_window_is_named_at_every_window(delayed_hour, window):
    b, res = delayed_hour
    start, end = _windows(res)[window]
    rep = investigate_slow(b, start_ns=start, end_ns=end)
    sig = rep.significant_findings
    assert sig and sig[0].kind == "stage" and sig[0].service == "catalog", (window, rep.verdict)
    inc = rep.data["incident"]
    assert inc and inc["significant"] and abs(inc["onset_ns"] - res.onset_ns) <= 30 * S, inc


def test_clean_hour_names_nothing():
    b, res = gen.generate(seconds=3600, rate=3, seed=12)
    rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert not [f for f in rep.significant_findings if f.kind in ("stage", "attribute")], rep.verdict


@pytest.mark.parametrize("window", ["around", "1h"])
def test_new_error_cluster_late_in_the_hour_outranks_the_background(window):
    b, res = gen.generate(seconds=3600, rate=3, onset=0.95, version_errors=True, background_errors=True, seed=13)
    start, end = _windows(res)[window]
    rep = investigate_errors(b, start_ns=start, end_ns=end)
    top = rep.significant_findings[0]
    assert top.kind == "error_cluster" and top.service == "cart", (window, rep.verdict)
    # the headline is finding #1 (one story)
    assert top.summary in rep.verdict[1], rep.verdict


@pytest.mark.parametrize("window", ["around", "1h"])
def test_a_bad_host_of_the_blamed_service_is_in_the_top_three_and_attached(window):
    """catalog runs on two hosts; after the onset its calls on host-b are slow. A request calls
    catalog up to three times, so nearly every request touches host-b and a per-request
    comparison sees nothing: the blamed component's own calls are compared instead."""
    b, res = gen.generate(seconds=3600, rate=3, onset=0.95, slow_host="catalog", seed=21)
    start, end = _windows(res)[window]
    rep = investigate_slow(b, start_ns=start, end_ns=end)
    top = rep.findings[:3]
    assert top[0].significant and top[0].kind == "stage" and top[0].service == "catalog", rep.verdict
    host = [f for f in top if f.significant and f.attribute == "host.name"]
    assert host and host[0].value == "host-b", [f.summary for f in top]
    assert any("host.name=host-b" in s for s in top[0].evidence.get("supported_by", [])), top[0].evidence
