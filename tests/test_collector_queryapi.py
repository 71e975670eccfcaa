"""The collector's query service (collector/queryapi.py) and the reader that uses
it (collector/client.py), through a real `stagetrace collector` subprocess and
real `stagetrace trace` processes. Nothing is mocked.

What must hold: a lookup the collector serves gives exactly the report a
process reading the store itself gives; the served CLI process never imports
pyarrow or DuckDB (that is the point: docs/benchmarks.md); and every way the
collector can be missing (stopped, killed, token refused) still gives the
right answer by reading the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import telemetry_gen as gen
from stagetrace import semconv, wire
from stagetrace.backend import LogQuery, MetricQuery, TraceQuery
from stagetrace.collector.client import ENV_DIRECT, ServedBackend, open_embedded
from stagetrace.collector.process import start_collector
from stagetrace.collector.queryapi import DISCOVERY_FILE, PREFIX
from stagetrace.model import LogRecord, Span, SpanEvent, SpanLink, Trace

# Runs the CLI in-process and then says which heavy modules it loaded.
_PROBE = ("import sys; from stagetrace.cli import main\n"
          "try:\n    main()\n"
          "finally:\n    sys.stderr.write('\\nLOADED=' + ','.join(m for m in ('pyarrow', 'duckdb') if m in sys.modules))\n")


def _trace_cli(trace_id, data_dir, *extra, env=None, env_replace=None):
    e = env_replace if env_replace is not None else {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-c", _PROBE, "trace", trace_id, "--data-dir", str(data_dir), *extra],
                       capture_output=True, text=True, timeout=120, env=e)
    err, _, loaded = p.stderr.rpartition("\nLOADED=")
    return p.returncode, p.stdout, err, set(filter(None, loaded.strip().split(",")))


def test_wire_round_trips_the_model_exactly():
    span = Span("ab" * 16, "cd" * 8, "", "predict", "SERVER", 1, 5, "ERROR", "boom",
                {"s": "x", "i": 2**62, "f": 0.5, "b": True, "l": [1, 2], "$type": "not a tag"},
                [SpanEvent("exception", 3, {"exception.type": "KeyError"})], [SpanLink("ef" * 16, "01" * 8, {})],
                {"service.name": "api"}, "scope", "1.0")
    log = LogRecord(2, 2, 17, "ERROR", {"structured": [1, {"$type": "Span"}]}, {}, "ab" * 16, "cd" * 8)
    t = Trace("ab" * 16, [span], [log])
    back = wire.loads(wire.dumps({"t": t, "q": [TraceQuery(service="api"), MetricQuery(name="m")]}))
    assert back["t"] == t and back["t"].start_ns == 1 and back["t"].end_ns == 5
    assert back["q"] == [TraceQuery(service="api"), MetricQuery(name="m")]
    assert type(back["t"].spans[0].attributes["i"]) is int
    with pytest.raises(ValueError, match="unknown wire type"):
        wire.loads(b'{"$type": "os.system", "cmd": "true"}')


def test_served_trace_equals_direct_read_and_loads_no_pyarrow(tmp_path):
    with start_collector(tmp_path) as c:
        res = gen.generate("v2_errors", gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), minutes=3)
        assert (c.data_dir / DISCOVERY_FILE).exists()
        tid = res.all_trace_ids[len(res.all_trace_ids) // 2]
        rc, served, err, loaded = _trace_cli(tid, c.data_dir, "--format", "json")
        assert rc == 0, err
        assert loaded == set(), f"the served path loaded {loaded}"
        rc2, direct, err2, loaded2 = _trace_cli(tid, c.data_dir, "--format", "json", env={ENV_DIRECT: "1"})
        assert rc2 == 0, err2
        assert "pyarrow" in loaded2  # the direct read really is the other path
        a, b = json.loads(served), json.loads(direct)
        a.pop("generated_at_ns"), b.pop("generated_at_ns")
        assert a == b
        assert a["data"]["metrics"] and a["data"]["span_count"] >= 5 and a["data"]["log_count"]
        # an unknown id: one line, exit 2, still without pyarrow
        rc3, out3, err3, loaded3 = _trace_cli("0" * 31 + "1", c.data_dir)
        assert rc3 == 2 and "not found" in err3 and "Traceback" not in err3 and loaded3 == set()
    # stopped: the discovery file is gone and the store is read here
    assert not (tmp_path / DISCOVERY_FILE).exists()
    rc4, after, err4, loaded4 = _trace_cli(tid, tmp_path, "--format", "json")
    assert rc4 == 0 and "pyarrow" in loaded4, err4
    d = json.loads(after)
    d.pop("generated_at_ns")
    assert d == a


def test_killed_collector_leaves_a_stale_file_and_readers_fall_back(tmp_path):
    with start_collector(tmp_path) as c:
        res = gen.generate("clean", gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), minutes=1)
        c.kill9()
    assert (tmp_path / DISCOVERY_FILE).exists()  # kill -9 cannot clean up
    b = open_embedded(tmp_path)
    assert not isinstance(b, ServedBackend)  # dead pid: not even one connection attempt
    b.close()
    rc, out, err, loaded = _trace_cli(res.all_trace_ids[0], tmp_path)
    assert rc == 0 and res.all_trace_ids[0] in out, err


def test_token_is_required_for_queries_too(tmp_path):
    with start_collector(tmp_path) as c:
        res = gen.generate("clean", gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), minutes=1)
    tid = res.all_trace_ids[0]
    with start_collector(tmp_path, token="s3cret") as c:  # same store, now with a token
        url = c.http_endpoint + PREFIX + "get_trace"
        body = json.dumps({"args": [tid]}).encode()
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=10)
        assert ei.value.code == 401
        ok = urllib.request.urlopen(urllib.request.Request(
            url, body, {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}), timeout=10)
        got = wire.decode(json.loads(ok.read())["result"])
        assert isinstance(got, Trace) and got.trace_id == tid
        # without the token the reader still answers, by reading the store itself
        env = {k: v for k, v in os.environ.items() if k != semconv.ENV_COLLECTOR_TOKEN}
        rc, out, err, loaded = _trace_cli(tid, c.data_dir, env_replace=env)
        assert rc == 0 and tid in out and "pyarrow" in loaded, err
        env[semconv.ENV_COLLECTOR_TOKEN] = "s3cret"
        rc, out, err, loaded = _trace_cli(tid, c.data_dir, env_replace=env)
        assert rc == 0 and tid in out and loaded == set(), err


def test_bad_queries_get_clear_http_errors(tmp_path):
    with start_collector(tmp_path) as c:
        base = c.http_endpoint + PREFIX

        def post(method, body, ctype="application/json"):
            try:
                r = urllib.request.urlopen(urllib.request.Request(base + method, body, {"Content-Type": ctype}),
                                           timeout=10)
                return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"{}")

        assert post("find_spans", b"{}")[0] == 404  # unbounded scans are not served
        # find_logs only as a lookup by trace id with a limit (`stagetrace trace` of an id only logs carry)
        from stagetrace import wire
        from stagetrace.backend import LogQuery
        for scan in (LogQuery(limit=None), LogQuery(trace_ids=["0" * 31 + "1"], limit=None),
                     LogQuery(trace_ids=[], limit=10), LogQuery(trace_ids=["0" * 31 + "1"] * 101, limit=10)):
            st, doc = post("find_logs", wire.dumps({"args": [scan]}))
            assert st == 400 and "served by trace id only" in doc["error"], (scan, st, doc)
        st, doc = post("find_logs", wire.dumps({"args": [LogQuery(trace_ids=["0" * 31 + "1"], limit=10)]}))
        assert st == 200 and doc["result"] == [], doc
        st, doc = post("get_trace", b"not json")
        assert st == 400 and "bad query body" in doc["error"]
        st, doc = post("get_trace", json.dumps({"args": ["zz"]}).encode())
        assert st == 400 and doc["error"]
        # an oversized query is refused from its Content-Length, before the body is read
        import http.client
        from urllib.parse import urlsplit
        u = urlsplit(c.http_endpoint)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.putrequest("POST", PREFIX + "get_trace")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        st, doc = post("get_trace", json.dumps({"args": ["0" * 31 + "1"]}).encode())
        assert st == 200 and doc["result"] is None
        # the collector still ingests and answers after all that
        assert post("stats", b"{}")[0] == 200


def test_served_backend_answers_like_the_store(tmp_path):
    from stagetrace.collector.query import EmbeddedBackend
    with start_collector(tmp_path) as c:
        res = gen.generate("slow_shard", gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint), minutes=2)
        served = open_embedded(c.data_dir)
        direct = EmbeddedBackend(c.data_dir)
        try:
            assert isinstance(served, ServedBackend)
            for tid in res.all_trace_ids[:5]:
                assert served.get_trace(tid) == direct.get_trace(tid)
            q = MetricQuery(start_ns=res.start_ns, end_ns=res.end_ns)
            assert served.metric_series(q) == direct.metric_series(q)
            assert served.metric_names() == direct.metric_names()
            lq = LogQuery(trace_ids=list(res.all_trace_ids[:5]), limit=100)  # served: a lookup by trace id
            assert served.find_logs(lq) == direct.find_logs(lq)
            # not served: delegated to a local read, same answer
            tq = TraceQuery(root_only=True, limit=None, start_ns=res.start_ns, end_ns=res.end_ns)
            assert len(served.find_spans(tq)) == len(direct.find_spans(tq)) > 0
        finally:
            served.close()
            direct.close()


def test_warm_up_pays_the_first_log_decode_imports(tmp_path):
    """The first lookup that finds its trace in the write-ahead log decodes records into
    columns, which imports pandas through pyarrow (1-3 s under load: the slowest lookup
    during ingest, docs/benchmarks.md session 8); the query service's warm-up pays it at
    start instead. A fresh process, so nothing else imported it first."""
    probe = ("import sys; from pathlib import Path\n"
             "from stagetrace.collector.queryapi import QueryService\n"
             f"QueryService(Path({str(tmp_path)!r})).warm().join(120)\n"
             "print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
