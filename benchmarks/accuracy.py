"""Root-cause accuracy on real, labelled fault cases: AC@1, AC@3, AC@5.

For every case folder of a dataset laid out as ``../shared/datasets/nezha-online-boutique``
(``traces.json.gz`` and ``metrics.json.gz``: OTLP/JSON export requests; ``ground_truth.json``:
the culprit service and the case window), this:

1. shifts every timestamp by one offset, so that the case window ends a minute ago and the
   store's retention period keeps it (the recordings are from 2022);
2. sends the spans and metrics to a fresh ``stagetrace collector`` over OTLP/HTTP (JSON,
   gzip, in requests of a few thousand spans, as an SDK's batch exporter would) and waits until
   the store holds them all;
3. runs ``investigate slow`` over the case window, as ``stagetrace investigate slow --from
   --until`` does (the same public function, in this process, so ten cases take one import);
4. scores the report: the culprit's rank is the position of the first finding whose
   ``service`` (or, for an edge, callee) is the labelled service.

It prints AC@1, AC@3 and AC@5 over the cases, then per case the culprit's rank and the top
three findings. Nothing here knows a case, a service name or a fault type: the labels are read
only to score.

    .venv/bin/python benchmarks/accuracy.py [--dataset DIR] [--keep DIR] [--case case-11 ...]

``--keep DIR`` keeps the per-case stores and reuses them on the next run (ingest takes most
of the time); ``--json FILE`` writes the per-case results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "nezha-online-boutique"
SPANS_PER_REQUEST = 4000
TIME_KEYS = ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano")


def shift_times(obj: Any, offset: int) -> None:
    """Add ``offset`` ns to every OTLP/JSON time field, in place (they are decimal strings)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in TIME_KEYS and isinstance(v, (str, int)) and int(v) > 0:
                obj[k] = str(int(v) + offset)
            else:
                shift_times(v, offset)
    elif isinstance(obj, list):
        for v in obj:
            shift_times(v, offset)


def max_time(obj: Any) -> int:
    best = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k in TIME_KEYS and isinstance(v, (str, int)):
                    best = max(best, int(v))
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    return best


def chunk_traces(doc: dict) -> Iterator[dict]:
    """Split one export request into several of at most SPANS_PER_REQUEST spans each."""
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            spans = ss.get("spans", [])
            for i in range(0, len(spans), SPANS_PER_REQUEST):
                yield {"resourceSpans": [{"resource": rs.get("resource", {}),
                                          "scopeSpans": [{"scope": ss.get("scope", {}),
                                                          "spans": spans[i:i + SPANS_PER_REQUEST]}]}]}


def post(url: str, doc: dict) -> None:
    body = gzip.compress(json.dumps(doc).encode())
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def ingest(case_dir: Path, data_dir: Path, end_ns: int) -> dict[str, int]:
    """Send one case to a fresh collector on ``data_dir``; returns the offset and counts."""
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    traces = json.loads(gzip.open(case_dir / "traces.json.gz").read())
    metrics = json.loads(gzip.open(case_dir / "metrics.json.gz").read())
    offset = end_ns - max(max_time(traces), max_time(metrics))
    shift_times(traces, offset)
    shift_times(metrics, offset)
    n_spans = sum(len(ss.get("spans", [])) for rs in traces["resourceSpans"] for ss in rs["scopeSpans"])
    with start_collector(data_dir) as col:
        for part in chunk_traces(traces):
            post(col.http_endpoint + "/v1/traces", part)
        post(col.http_endpoint + "/v1/metrics", metrics)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            b = EmbeddedBackend(data_dir)
            try:
                have = b.stats().get("spans", 0)
            finally:
                b.close()
            if have >= n_spans:
                break
            time.sleep(0.5)
    (data_dir / "accuracy-case.json").write_text(json.dumps({"offset_ns": offset, "spans": n_spans}))
    return {"offset_ns": offset, "spans": n_spans}


def culprit_rank(findings: list[dict], culprit: str) -> int | None:
    for i, f in enumerate(findings, 1):
        names = {f.get("service")} | ({(f.get("edge") or {}).get("callee")} if f.get("kind") != "stage" else set())
        if culprit in names:
            return i
    return None


def run_case(case_dir: Path, store_root: Path, reuse: bool) -> dict[str, Any]:
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics import investigate_slow

    gt = json.loads((case_dir / "ground_truth.json").read_text())
    data_dir = store_root / case_dir.name
    meta_path = data_dir / "accuracy-case.json"
    if reuse and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        if data_dir.exists():
            import shutil
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        t = time.perf_counter()
        meta = ingest(case_dir, data_dir, time.time_ns() - 60_000_000_000)
        meta["ingest_s"] = time.perf_counter() - t
    off = meta["offset_ns"]
    start = int(gt["window"]["start_unix_nano"]) + off
    end = int(gt["window"]["end_unix_nano"]) + off + 1
    backend = EmbeddedBackend(data_dir)
    t = time.perf_counter()
    try:
        report = investigate_slow(backend, start_ns=start, end_ns=end)
    finally:
        backend.close()
    secs = time.perf_counter() - t
    findings = [f.to_dict() for f in report.findings]
    culprit = gt["fault"]["service"]
    return {"case": case_dir.name, "fault": gt["fault"]["type"], "culprit": culprit,
            "rank": culprit_rank(findings, culprit), "seconds": secs,
            "top": [f["summary"] for f in findings[:3]], "verdict": report.verdict}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                    help="folder of case-* folders (default: ../shared/datasets/nezha-online-boutique)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the per-case stores here and reuse them")
    ap.add_argument("--case", action="append", default=[], help="only this case folder (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="write per-case results to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each case's verdict too")
    args = ap.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"accuracy: no dataset at {args.dataset} (pass --dataset DIR)", file=sys.stderr)
        return 2
    cases = sorted(p for p in args.dataset.iterdir() if (p / "ground_truth.json").exists())
    if args.case:
        cases = [c for c in cases if c.name in set(args.case)]
    if not cases:
        print(f"accuracy: no case folders (with ground_truth.json) in {args.dataset}", file=sys.stderr)
        return 2
    import tempfile
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="stagetrace-accuracy-")
        store_root = Path(tmp.name)
    else:
        store_root = args.keep
        store_root.mkdir(parents=True, exist_ok=True)
    results = []
    for c in cases:
        r = run_case(c, store_root, reuse=args.keep is not None)
        results.append(r)
        print(f"{r['case']:9} {r['fault']:15} {r['culprit']:22} rank {r['rank'] or '-':>2}  "
              f"({r['seconds']:.1f} s)", flush=True)
        for i, s in enumerate(r["top"], 1):
            print(f"    {i}. {s[:150]}")
        if args.verbose:
            for line in r["verdict"]:
                print(f"      | {line[:160]}")
    n = len(results)
    print()
    for k in (1, 3, 5):
        hit = sum(1 for r in results if r["rank"] is not None and r["rank"] <= k)
        print(f"AC@{k}: {hit}/{n} = {hit / n:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
