"""Resource steps (issue 17: "traces break ... logs and metrics fill the gaps"). A service
starved of CPU that is called a few times a minute leaves too few slow calls in the traces
to tell; its own CPU metric steps up tenfold at once. The slow investigation names such a
service, first, when it is on the requests' path and its calls did take longer; a clean
run, a busy CPU nobody waited on, latency series, host-wide series, one-scrape spikes and
steps outside the window name nothing.

The traces come from tests/microservice_gen.py (an in-memory backend: the store is not
what is tested here); the metric series are built point by point."""

from __future__ import annotations

import random

import pytest

from stagetrace import semconv
from stagetrace.forensics import investigate_slow
from stagetrace.forensics.metricevidence import is_resource_metric, resource_steps
from stagetrace.model import MetricPoint, MetricSeries

import microservice_gen as gen

S = 1_000_000_000
SCRAPE = 60 * S


def _series(name: str, service: str, start: int, end: int, level, seed: int, unit: str = "%") -> MetricSeries:
    """A gauge scraped every minute from an hour before ``start`` to ``end``; ``level(t)``
    is its typical value, with +-30% noise."""
    rnd = random.Random(seed)
    res = {semconv.SERVICE_NAME: service}
    pts = [MetricPoint(name, "gauge", t, level(t) * rnd.uniform(0.7, 1.3), {}, res, 0, unit)
           for t in range(start - 3600 * S, end, SCRAPE)]
    return MetricSeries(name, "gauge", {}, res, pts, unit)


def test_steps_are_found_only_in_per_service_resource_series_inside_the_window():
    lo, hi = 10_000 * S, 10_000 * S + 600 * S
    step = lo + 240 * S
    up = lambda t: 80.0 if t >= step else 0.5  # noqa: E731
    flat = lambda t: 0.5  # noqa: E731
    series = [
        _series("container.cpu.utilization", "cart", lo, hi, up, 1),
        _series("container.cpu.utilization", "catalog", lo, hi, flat, 2),
        _series("http.server.request.duration", "ads", lo, hi, up, 3, "s"),  # latency: the traces' job
        _series("system.cpu.utilization", "shipping", lo, hi, up, 4),  # host-wide: shared by every service on it
        _series("process.cpu.utilization", "payment", lo, hi,
                lambda t: 80.0 if step <= t < step + SCRAPE else 0.5, 5),  # one scrape: a spike
        _series("jvm.memory.used", "currency", lo, hi, lambda t: 500.0 if t >= lo - 1800 * S else 5.0, 6, "By"),
    ]
    found = resource_steps(series, lo, hi)
    assert [(r.service, r.name) for r in found] == [("cart", "container.cpu.utilization")], found
    r = found[0]
    assert step <= r.time_ns < step + SCRAPE and r.ratio > 50 and r.p < 0.01
    assert is_resource_metric("nezha.cpu_usage_rate") and not is_resource_metric("node_cpu_seconds_total")


def test_noise_of_a_busy_service_is_no_step():
    lo, hi = 10_000 * S, 10_000 * S + 600 * S
    rnd = random.Random(9)
    series = [_series("container.cpu.utilization", f"svc{i}", lo, hi, lambda t: rnd.uniform(1, 6), i)
              for i in range(40)]
    assert resource_steps(series, lo, hi) == []


def _starved(cpu_step: bool, slow_calls: bool, seed: int):
    """Three minutes of traffic; ``shipping`` (one call per checkout, a tenth of the
    requests) is starved of CPU from the middle on when ``slow_calls``."""
    b, res = gen.generate(seconds=180, rate=6, onset=0.5, seed=seed, cpu_starved="shipping" if slow_calls else None)
    b.series = [_series("container.cpu.utilization", svc, res.start_ns, res.end_ns + 600 * S,
                        (lambda t: 90.0 if t >= res.onset_ns else 0.8) if (cpu_step and svc == "shipping")
                        else (lambda t: 0.8), i)
                for i, svc in enumerate(("frontend", "cart", "catalog", "currency", "payment", "shipping", "ads"))]
    return b, res


@pytest.mark.parametrize("window", ["incident", "hour"])
def test_a_starved_service_with_few_calls_is_named_first(window):
    b, res = _starved(cpu_step=True, slow_calls=True, seed=31)
    start = res.start_ns if window == "incident" else res.end_ns - 3600 * S
    rep = investigate_slow(b, start_ns=start, end_ns=res.end_ns)
    sig = rep.significant_findings
    assert sig and sig[0].service == "shipping" and sig[0].evidence.get("resource_step"), rep.verdict
    assert "shipping" in rep.verdict[1] or "shipping" in rep.verdict[0], rep.verdict  # one story: the headline


def test_a_busy_cpu_nobody_waited_on_is_not_a_cause():
    b, res = _starved(cpu_step=True, slow_calls=False, seed=32)
    rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert not [f for f in rep.significant_findings if f.evidence.get("resource_step")], rep.verdict


def test_clean_run_names_no_resource():
    b, res = _starved(cpu_step=False, slow_calls=False, seed=33)
    rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
    assert not [f for f in rep.significant_findings if f.kind in ("stage", "attribute", "metric")], rep.verdict
