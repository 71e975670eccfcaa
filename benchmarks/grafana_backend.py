"""Cost of the Tempo/Loki client side of GrafanaBackend, next to the embedded store.

Tempo and Loki cannot run here, so this measures what stagetrace itself adds:
parsing Tempo's trace JSON and Loki's streams, and a whole get_trace() round trip
against a local HTTP server answering with a recorded-shape body (the recording in
tests/data/samples, scaled up by cloning spans and log lines). The embedded store
answers the same trace, ingested over OTLP/HTTP JSON by a `stagetrace collector`
subprocess. Figures are medians; the ratio is remote/embedded.

    .venv/bin/python benchmarks/grafana_backend.py [--spans 2000] [--logs 2000] [--repeat 15]
        [--minutes 10 --per-minute 60]   # size of the generated incident for the investigations
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The recordings the tests use, kept in the repository (provenance: tests/data/README.md).
SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "samples"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def scaled_trace(n_spans: int) -> tuple[dict, dict]:
    """The recorded v2 trace and the recorded OTLP input, cloned to ``n_spans`` spans
    (same trace id, fresh span ids, parents kept inside each clone)."""
    v2 = json.loads((SAMPLES / "tempo" / "tempo_trace_v2.json").read_text())
    inp = json.loads((SAMPLES / "input" / "input_traces.otlp.json").read_text())
    per = sum(len(ss["spans"]) for rs in inp["resourceSpans"] for ss in rs["scopeSpans"])
    clones = max(1, n_spans // per)
    out_v2 = {"trace": {"resourceSpans": []}, "metrics": {}}
    out_in = {"resourceSpans": []}
    for c in range(clones):
        def remap(hex_id: str) -> str:
            return f"{(int(hex_id, 16) + c * 0x1000003) % (1 << 64):016x}" if hex_id else ""
        for rs_v2, rs_in in zip(v2["trace"]["resourceSpans"], inp["resourceSpans"]):
            a, b = copy.deepcopy(rs_v2), copy.deepcopy(rs_in)
            for ss in b["scopeSpans"]:
                for sp in ss["spans"]:
                    sp["spanId"] = remap(sp["spanId"])
                    if sp.get("parentSpanId"):
                        sp["parentSpanId"] = remap(sp["parentSpanId"])
            for ss in a["scopeSpans"]:
                for sp in ss["spans"]:
                    for key in ("spanId", "parentSpanId"):
                        if sp.get(key):
                            sp[key] = base64.b64encode(bytes.fromhex(remap(base64.b64decode(sp[key]).hex()))).decode()
            out_v2["trace"]["resourceSpans"].append(a)
            out_in["resourceSpans"].append(b)
    return out_v2, out_in


def scaled_input_logs(n_lines: int) -> dict:
    """The recorded OTLP log input, cloned to ``n_lines`` records (times shifted by 1 ns per clone)."""
    doc = json.loads((SAMPLES / "input" / "input_logs.otlp.json").read_text())
    per = sum(len(sl["logRecords"]) for rl in doc["resourceLogs"] for sl in rl["scopeLogs"])
    reps = max(1, n_lines // per)
    for rl in doc["resourceLogs"]:
        for sl in rl["scopeLogs"]:
            base = sl["logRecords"]
            sl["logRecords"] = [dict(r, timeUnixNano=str(int(r["timeUnixNano"]) + i)) for i in range(reps) for r in base]
    return doc


def scaled_logs(n_lines: int) -> dict:
    doc = json.loads((SAMPLES / "loki" / "loki_query_range_by_trace_categorized.json").read_text())
    streams = doc["data"]["result"]
    per = sum(len(s["values"]) for s in streams)
    reps = max(1, n_lines // per)
    for s in streams:
        base = list(s["values"])
        s["values"] = [[str(int(v[0]) + i), v[1], v[2]] for i in range(reps) for v in base]
    return doc


def median_s(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=2000)
    ap.add_argument("--logs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--per-minute", type=int, default=60)
    args = ap.parse_args()
    import logging
    logging.getLogger("stagetrace.forensics.grafana").setLevel(logging.ERROR)  # "no Prometheus URL" is expected
    if not (SAMPLES / "README.md").is_file():
        sys.exit(f"error: recorded Tempo/Loki samples not found at {SAMPLES} (they are part of the repository; is the checkout complete?)")

    from stagetrace.backend import LogQuery
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics.grafana import GrafanaBackend, parse_loki_streams, parse_tempo_trace

    v2, otlp_in = scaled_trace(args.spans)
    logs = scaled_logs(args.logs)
    v2_body, logs_body = json.dumps(v2).encode(), json.dumps(logs).encode()
    n_spans = sum(len(ss["spans"]) for rs in otlp_in["resourceSpans"] for ss in rs["scopeSpans"])
    n_lines = sum(len(s["values"]) for s in logs["data"]["result"])

    t_parse = median_s(lambda: parse_tempo_trace(json.loads(v2_body)), args.repeat)
    t_loki = median_s(lambda: parse_loki_streams(json.loads(logs_body)), args.repeat)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = v2_body if self.path.startswith("/api/v2/traces/") else logs_body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    remote = GrafanaBackend(tempo_url=url, loki_url=url)
    def fresh(fn):
        def run():
            remote._cache.clear()  # measure a fetch, not the per-backend trace cache
            return fn()
        return run
    t_remote = median_s(fresh(lambda: remote.get_trace(TRACE_ID)), args.repeat)
    t_remote_nologs = median_s(fresh(lambda: remote.get_traces([TRACE_ID], with_logs=False)), args.repeat)
    t_cached = median_s(lambda: remote.get_traces([TRACE_ID], with_logs=False), args.repeat)

    with tempfile.TemporaryDirectory() as d, start_collector(d) as c:
        req = urllib.request.Request(c.http_endpoint + "/v1/traces", data=json.dumps(otlp_in).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()
        req = urllib.request.Request(c.http_endpoint + "/v1/logs", data=json.dumps(scaled_input_logs(args.logs)).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()
        with EmbeddedBackend(c.data_dir) as emb:
            tr = emb.get_trace(TRACE_ID)
            assert len(tr.spans) == n_spans and len(tr.logs) == n_lines, (len(tr.spans), len(tr.logs))
            assert len(remote.get_trace(TRACE_ID).logs) == n_lines
            t_emb = median_s(lambda: emb.get_trace(TRACE_ID), args.repeat)
            t_emb_nologs = median_s(lambda: emb.get_traces([TRACE_ID], with_logs=False), args.repeat)
    srv.shutdown()

    inv = investigation(args.minutes, args.per_minute, max(3, args.repeat // 5))

    print(f"trace of {n_spans} spans, {n_lines} log lines, median of {args.repeat} runs")
    print(f"  parse Tempo v2 trace JSON      {t_parse * 1e3:8.1f} ms  ({n_spans / t_parse:,.0f} spans/s)")
    print(f"  parse Loki categorized streams {t_loki * 1e3:8.1f} ms  ({n_lines / t_loki:,.0f} lines/s)")
    print(f"  get_trace spans only: grafana (local HTTP) {t_remote_nologs * 1e3:8.1f} ms   "
          f"embedded {t_emb_nologs * 1e3:8.1f} ms   ratio {t_remote_nologs / t_emb_nologs:5.2f}")
    print(f"  get_trace spans only, trace cached in the backend: {t_cached * 1e3:8.1f} ms (parse only)")
    print(f"  get_trace with logs:  grafana (local HTTP) {t_remote * 1e3:8.1f} ms   "
          f"embedded {t_emb * 1e3:8.1f} ms   ratio {t_remote / t_emb:5.2f}")
    print(f"investigations over a generated slow-shard incident ({inv['requests']} requests), "
          f"median of {inv['repeat']} runs")
    for name in ("investigate_slow", "investigate_errors"):
        r, e = inv[name]
        print(f"  {name:<19} grafana (data-set server) {r:6.2f} s   embedded {e:6.2f} s   ratio {r / e:5.2f}"
              f"   ({inv[name + '_requests']} HTTP requests)")


def investigation(minutes: float, per_minute: int, repeat: int) -> dict:
    """investigate slow/errors on both backends over the same generated incident. The
    remote side is the tests' data-set server (recorded Tempo/Loki shapes, our query
    evaluation), in this process: its encoding work shares the GIL with the client, so
    the remote figures include the server's cost. No metrics are sent to either side."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import telemetry_gen as gen
    from grafana_fakes import DatasetStack
    from test_grafana_backend import _NoMetrics
    from stagetrace import forensics
    from stagetrace.backend import LogQuery, TraceQuery
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics.grafana import GrafanaBackend

    out: dict = {"repeat": repeat}
    with tempfile.TemporaryDirectory() as d, start_collector(d) as c:
        res = gen.generate("slow_shard", _NoMetrics(gen.OtlpExporters(http_endpoint=c.http_endpoint)),
                           minutes=minutes, per_minute=per_minute)
        out["requests"] = res.requests
        with EmbeddedBackend(c.data_dir) as emb:
            stack = DatasetStack(emb.find_spans(TraceQuery(limit=None)), emb.find_logs(LogQuery(limit=None)))
            win = dict(start_ns=res.start_ns, end_ns=res.end_ns)
            for name in ("investigate_slow", "investigate_errors"):
                fn = getattr(forensics, name)
                n = len(stack.requests)

                def remote_run() -> None:
                    with GrafanaBackend(tempo_url=stack.url, loki_url=stack.url) as remote:  # fresh: no cache
                        fn(remote, **win)
                out[name] = (median_s(remote_run, repeat), median_s(lambda: fn(emb, **win), repeat))
                out[name + "_requests"] = (len(stack.requests) - n) // (repeat + 1)
            stack.close()
    return out


if __name__ == "__main__":
    main()
