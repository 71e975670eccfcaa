"""GrafanaBackend.metric_series / metric_names against the REAL Prometheus server.

The test serves a small exporter (a gauge, a counter and a histogram whose values
change on every scrape, in the Prometheus text format) on 127.0.0.1, starts the
Debian `prometheus` binary scraping it every second, and reads the series back
through the backend: names folded from their Prometheus spelling, histogram
buckets rebuilt from the cumulative `_bucket{le}` series, attributes and service
restored from the labels.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stagetrace.backend import MetricQuery
from stagetrace.errors import BackendError
from stagetrace.forensics.grafana import GrafanaBackend, prom_name

from prometheus_server import start_prometheus

JOB = "promtest-svc"
BOUNDS = [0.1, 0.5, 1.0]


def state(k: int) -> dict:
    """What the exporter serves at its k-th scrape (k >= 1): cumulative counts grow."""
    per_bucket = [3 * k, 2 * k, k, k // 2]  # <=0.1, <=0.5, <=1, >1
    return {"pool_wait": 0.002 * k, "requests": 10 * k, "buckets": per_bucket, "count": sum(per_bucket),
            "sum": round(0.05 * 3 * k + 0.3 * 2 * k + 0.8 * k + 2.0 * (k // 2), 6)}


class _Exporter(BaseHTTPRequestHandler):
    scrapes = 0
    lock = threading.Lock()

    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/spanmetrics":
            return self._spanmetrics()
        with _Exporter.lock:
            _Exporter.scrapes += 1
            s = state(_Exporter.scrapes)
        cum, lines = 0, []
        lines += ["# TYPE ml_pool_wait_seconds gauge", f'ml_pool_wait_seconds{{feature_store_shard="7"}} {s["pool_wait"]}',
                  f'ml_pool_wait_seconds{{feature_store_shard="3"}} 0.001',
                  "# TYPE ml_requests_total counter", f'ml_requests_total{{ml_stage="inference"}} {s["requests"]}',
                  "# TYPE ml_stage_duration_seconds histogram"]
        for le, n in zip([*map(str, BOUNDS), "+Inf"], s["buckets"]):
            cum += n
            lines.append(f'ml_stage_duration_seconds_bucket{{ml_stage="inference",le="{le}"}} {cum}')
        lines += [f'ml_stage_duration_seconds_sum{{ml_stage="inference"}} {s["sum"]}',
                  f'ml_stage_duration_seconds_count{{ml_stage="inference"}} {s["count"]}']
        self._reply(lines)

    def _spanmetrics(self) -> None:
        """What the Collector's spanmetrics connector writes (remote write or OTLP into
        Prometheus): job = "<service.namespace>/<service.name>", ML dimensions as labels."""
        labels = ('job="stagetrace-demo/fraud-api",service_name="fraud-api",span_name="Scorer.score",'
                  'span_kind="SPAN_KIND_INTERNAL",ml_stage="inference",ml_model_name="fraud",')
        self._reply(["# TYPE traces_span_metrics_calls_total counter",
                     f'traces_span_metrics_calls_total{{{labels}ml_model_version="v1",status_code="STATUS_CODE_UNSET"}} 90',
                     f'traces_span_metrics_calls_total{{{labels}ml_model_version="v2",status_code="STATUS_CODE_ERROR"}} 7'])

    def _reply(self, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def prom():
    exporter = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=exporter.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    target = [{"targets": [f"127.0.0.1:{exporter.server_address[1]}"]}]
    server = start_prometheus([{"job_name": JOB, "scrape_interval": "1s", "static_configs": target},
                               {"job_name": "spanmetrics", "scrape_interval": "1s", "metrics_path": "/spanmetrics",
                                "honor_labels": True, "static_configs": target}])
    try:
        b = GrafanaBackend(prometheus_url=server.url, timeout_s=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait for 4 scrapes to be queryable
            res = b.query_range(f'ml_requests_total{{job="{JOB}"}}', time.time_ns() - 60 * 10**9, time.time_ns())
            if res and float(res[0]["values"][-1][1]) >= 40:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"prometheus did not scrape the test exporter: {server.log()[-500:]}")
        yield b, server
        b.close()
    finally:
        server.stop()
        exporter.shutdown()
        exporter.server_close()


def _window() -> dict:
    now = time.time_ns()
    return {"start_ns": now - 120 * 10**9, "end_ns": now + 10**9}


def test_prom_name_translation():
    assert prom_name("ml.stage.duration") == "ml_stage_duration"
    assert prom_name("db.client.connection.wait_time") == "db_client_connection_wait_time"
    assert prom_name("2xx.count") == "_2xx_count"


def test_histogram_series_rebuilt_from_buckets(prom):
    b, _ = prom
    series = b.metric_series(MetricQuery(name="ml.stage.duration", service=JOB, **_window()))
    assert len(series) == 1
    s = series[0]
    assert (s.name, s.kind, s.unit) == ("ml.stage.duration", "histogram", "s")
    assert s.attributes == {"ml.stage": "inference"}  # label ml_stage -> semconv name
    assert s.resource["service.name"] == JOB
    served = {}
    for k in range(1, 400):
        st = state(k)
        served[(tuple(st["buckets"]), st["count"])] = st
    seen = set()
    for p in s.points:
        assert p.explicit_bounds == BOUNDS
        key = (tuple(p.bucket_counts), p.count)
        assert key in served, key  # each point is one state the exporter served
        assert p.sum == pytest.approx(served[key]["sum"])
        assert p.value == pytest.approx(served[key]["sum"] / served[key]["count"])
        seen.add(key)
    assert len(seen) >= 3
    counts = [p.count for p in s.points]
    assert counts == sorted(counts)


def test_gauge_counter_and_attribute_filter(prom):
    b, _ = prom
    w = _window()
    gauges = b.metric_series(MetricQuery(name="ml.pool.wait", service=JOB, **w))
    assert {s.attributes["feature.store.shard"] for s in gauges} == {"7", "3"}
    assert all(s.kind == "gauge" and s.unit == "s" for s in gauges)
    shard7 = b.metric_series(MetricQuery(name="ml_pool_wait_seconds", service=JOB,
                                         attributes={"feature.store.shard": "7"}, **w))
    assert len(shard7) == 1 and shard7[0].points[-1].value > shard7[0].points[0].value
    assert b.metric_series(MetricQuery(name="ml.pool.wait", attributes={"feature.store.shard": "9"}, **w)) == []
    (counter,) = b.metric_series(MetricQuery(name="ml.requests", service=JOB, **w))
    assert counter.kind == "sum" and all(p.is_monotonic and p.temporality == "CUMULATIVE" for p in counter.points)
    assert counter.points[-1].value >= 40 and counter.points[-1].value % 10 == 0
    assert b.metric_series(MetricQuery(name="ml.pool.wait", service="other-svc", **w)) == []


def test_metric_names_fold_suffixes(prom):
    b, _ = prom
    names = b.metric_names(service=JOB, **_window())
    assert {"ml_pool_wait_seconds", "ml_requests", "ml_stage_duration_seconds"} <= set(names)
    assert not any(n.endswith(("_bucket", "_count")) for n in names if n.startswith("ml_"))
    every = b.metric_series(MetricQuery(service=JOB, **_window()))
    assert {"ml_stage_duration_seconds", "ml_pool_wait_seconds"} <= {s.name for s in every}


def test_prometheus_errors_are_one_line(prom):
    b, server = prom
    with pytest.raises(BackendError) as e:
        b.query_range("sum(rate(", time.time_ns() - 10**10, time.time_ns())
    msg = str(e.value)
    assert msg.startswith("Prometheus answered HTTP 400 for /api/v1/query_range: ") and "parse error" in msg
    assert "\n" not in msg
    down = GrafanaBackend(prometheus_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(BackendError, match="Prometheus at http://127.0.0.1:9 is unreachable"):
        down.metric_names()


def test_span_metrics_names_and_job_namespace(prom):
    b, _ = prom
    series = b.metric_series(MetricQuery(name="traces.span.metrics.calls", service="fraud-api", **_window()))
    assert {s.attributes["ml.model.version"] for s in series} == {"v1", "v2"}
    (err,) = [s for s in series if s.attributes["status_code"] == "STATUS_CODE_ERROR"]
    assert err.kind == "sum" and err.points[-1].value == 7
    assert err.resource["service.name"] == "fraud-api" and err.resource["service.namespace"] == "stagetrace-demo"
    assert err.attributes["ml.stage"] == "inference" and err.attributes["ml.model.name"] == "fraud"
    only_v2 = b.metric_series(MetricQuery(name="traces_span_metrics_calls", attributes={"ml.model.version": "v2"},
                                          **_window()))
    assert [s.attributes["status_code"] for s in only_v2] == ["STATUS_CODE_ERROR"]
