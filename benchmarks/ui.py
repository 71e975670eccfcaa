"""`stagetrace ui` at scale: search over a >= 1M-span store, and a 2,000-span trace
with 2,000 logs rendered in headless Chromium.

Store: the one benchmarks/forensics.py builds (an hour of tests/telemetry_gen.py
data, ~1.4M spans and ~1M logs, bulk-loaded through the collector's block writer,
then compacted as the maintainer would), plus one big trace: 2,000 spans (a
fan-out tree, real SDK spans) and 2,000 logs carrying its span ids, written as
one more block.

Measured against a real `stagetrace ui` subprocess over HTTP (warm: the first
request of each kind is reported separately as "cold"):
- `/api/search` with no filter, with a service, with status=error, with a minimum
  duration and with an attribute, over the whole hour;
- the trace page in Chromium: from navigation start to the page's `ready` state
  (API call + drawing), and the drawing alone (`data-render-ms`).

    .venv/bin/python benchmarks/ui.py [--requests 200000] [--keep DIR]

A store kept by benchmarks/forensics.py (e.g. its 10M-span ``--copies 7`` store)
can be given as --keep: then only the searches and the map are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

BIG_SPANS = 2000
BIG_LOGS = 2000


def big_trace(data_dir: Path, end_ns: int) -> str:
    """One trace of BIG_SPANS spans (root -> 40 stage spans -> 49 calls each) and BIG_LOGS logs."""
    import random

    from opentelemetry import trace
    from opentelemetry._logs import LogRecord as ApiLogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from stagetrace import semconv as sc
    from stagetrace.collector import store

    rnd = random.Random(3)
    res = Resource.create({"service.name": "big-batch", "service.instance.id": "bench-0"})
    sx, lx = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tp = TracerProvider(resource=res)
    tp.add_span_processor(SimpleSpanProcessor(sx))
    lp = LoggerProvider(resource=res)
    lp.add_log_record_processor(SimpleLogRecordProcessor(lx))
    tracer, logger = tp.get_tracer("bench"), lp.get_logger("bench")
    ms = 1_000_000
    t0 = end_ns - 120_000 * ms
    stages = [sc.STAGE_FEATURE_FETCH, sc.STAGE_PREPROCESS, sc.STAGE_INFERENCE]
    n_logs = 0
    with tracer.start_as_current_span("POST /batch", start_time=t0, kind=trace.SpanKind.SERVER,
                                      end_on_exit=False) as root:
        t = t0
        for i in range(40):
            st = stages[i % 3]
            s = tracer.start_span(f"{st} chunk {i}", start_time=t, attributes={sc.ML_STAGE: st})
            ctx = trace.set_span_in_context(s)
            tt = t
            for j in range(49 if i < 39 else BIG_SPANS - 1 - 40 - 39 * 49):
                d = int(rnd.uniform(0.5, 3.0) * ms)
                c = tracer.start_span(f"call {j}", context=ctx, start_time=tt, attributes={"item": j})
                sctx = c.get_span_context()
                for _ in range(BIG_LOGS // (BIG_SPANS - 41) + (1 if n_logs < BIG_LOGS % (BIG_SPANS - 41) else 0)):
                    if n_logs >= BIG_LOGS:
                        break
                    logger.emit(ApiLogRecord(timestamp=tt + d // 2, observed_timestamp=tt + d // 2,
                                             trace_id=sctx.trace_id, span_id=sctx.span_id,
                                             trace_flags=sctx.trace_flags, severity_number=SeverityNumber.INFO,
                                             severity_text="INFO", body=f"item {j} of chunk {i} done in {d} ns"))
                    n_logs += 1
                c.end(end_time=tt + d)
                tt += d
            s.end(end_time=tt)
            t = tt
        root.end(end_time=t + ms)
        tid = format(root.get_span_context().trace_id, "032x")
    while n_logs < BIG_LOGS:  # top up on the root
        rc = root.get_span_context()
        logger.emit(ApiLogRecord(timestamp=t0 + n_logs, observed_timestamp=t0 + n_logs, trace_id=rc.trace_id,
                                 span_id=rc.span_id, trace_flags=rc.trace_flags, severity_number=SeverityNumber.WARN,
                                 severity_text="WARN", body=f"root note {n_logs}"))
        n_logs += 1
    spans, logs = sx.get_finished_spans(), lx.get_finished_logs()
    assert len(spans) == BIG_SPANS and len(logs) == BIG_LOGS, (len(spans), len(logs))
    for table, payload in ((store.SPANS, encode_spans(spans)), (store.LOGS, encode_logs(logs))):
        store.write_block(data_dir, table, 900, 900, store.build_table(table, [payload.SerializeToString()]))
    return tid


def get(url: str) -> tuple[float, dict]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        doc = json.loads(r.read())
    return time.perf_counter() - t, doc


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=o)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the store in this directory")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import forensics as fbench
    from stagetrace.collector import store as _store

    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="stagetrace-bench-ui-"))
    meta_path = data_dir / "bench-meta.json"
    if meta_path.exists():
        totals = json.loads(meta_path.read_text())
        print(f"reusing store {data_dir}")
    else:
        print(f"loading {args.requests:,} requests into {data_dir}")
        totals = fbench.load(data_dir, args.requests)
        totals["big_trace_id"] = big_trace(data_dir, totals["end_ns"])
        meta_path.write_text(json.dumps(totals))
    bs = _store.BlockStore(data_dir)
    for table in _store.TABLES:
        while bs.compact(table):
            pass
    print(f"store: {totals['spans']:,} spans, {totals['logs']:,} logs, {totals['requests']:,} requests "
          + (f"+ one trace of {BIG_SPANS} spans and {BIG_LOGS} logs" if "big_trace_id" in totals else ""))
    s_ms, e_ms = totals["start_ns"] // 1_000_000, totals["end_ns"] // 1_000_000
    proc = subprocess.Popen([str(Path(sys.executable).with_name("stagetrace")), "ui", "--data-dir", str(data_dir),
                             "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        base = line.strip().split("url=", 1)[1]
        window = f"from={s_ms}&to={e_ms}"
        queries = {"no filter": "", "service=feature-service": "&service=feature-service",
                   "status=error": "&status=error", "min=500ms": "&min=500ms",
                   "attr ml.model.version=v2": "&attr=ml.model.version%3Dv2"}
        print("search over the hour (HTTP round trip, warm median of "
              f"{args.rounds}; cold = the first request of the process):")
        rows = {}
        for i, (name, q) in enumerate(queries.items()):
            times = []
            for _ in range(args.rounds + (1 if i == 0 else 0)):
                dt, doc = get(f"{base}api/search?{window}{q}")
                times.append(dt)
            cold = times.pop(0) if i == 0 else None
            rows[name] = (statistics.median(times), max(times), doc["count"], doc["sampled"])
            print(f"  {name:28} median {statistics.median(times) * 1e3:6.0f} ms, max {max(times) * 1e3:6.0f} ms, "
                  f"{doc['count']} points{' (sampled)' if doc['sampled'] else ''}"
                  + (f"; cold {cold * 1e3:.0f} ms" if cold else ""))
        dt, doc = get(f"{base}api/map?{window}")
        print(f"  service map                  {dt * 1e3:6.0f} ms, {len(doc['edges'])} edges, {doc['spans_read']} spans read")
        tid = totals.get("big_trace_id")
        if tid is None:  # a store kept by benchmarks/forensics.py (e.g. its --copies 7 store): search only
            print("no big trace in this store (built by benchmarks/forensics.py): trace page not measured")
            return
        dt, doc = get(f"{base}api/trace/{tid}")
        print(f"big trace API: {dt * 1e3:.0f} ms ({doc['data']['span_count']} spans, {doc['data']['log_count']} logs)")
        d = chrome()
        try:
            totals_ms, render_ms = [], []
            for _ in range(args.rounds):
                d.get(f"{base}trace/{tid}")
                for _ in range(600):
                    st = d.execute_script("return document.getElementById('app').dataset.state")
                    if st in ("ready", "error"):
                        break
                    time.sleep(0.02)
                assert st == "ready", st
                totals_ms.append(float(d.execute_script("return document.getElementById('app').dataset.readyMs")))
                render_ms.append(float(d.execute_script("return document.getElementById('app').dataset.renderMs")))
                rows_drawn = d.execute_script("return document.querySelectorAll('.span-row').length + ' spans, ' + "
                                              "document.querySelectorAll('.log-row').length + ' log rows'")
            print(f"big trace page in Chromium: navigation -> ready median {statistics.median(totals_ms):.0f} ms "
                  f"(max {max(totals_ms):.0f}), drawing alone median {statistics.median(render_ms):.0f} ms "
                  f"(max {max(render_ms):.0f}); {rows_drawn}")
        finally:
            d.quit()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
