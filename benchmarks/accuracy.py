"""Root-cause accuracy on real, labelled fault cases, at the windows users type.

For every case folder of the datasets in ``../shared/datasets`` (``traces.json.gz``,
optional ``logs.json.gz``, ``metrics.json.gz``, optional fault-free ``baseline_traces`` /
``baseline_logs``; ``ground_truth.json``: the culprit service, the case window and the
expected symptom), this:

1. shifts every timestamp by one offset, so that the case window ends a minute before
   "now" (the recordings are from 2022-2023); the baseline minute, where there is one, is
   shifted to end 5 s before the case window starts, as a user's store would hold it;
2. sends spans, logs and metrics to a fresh ``stagetrace collector`` over OTLP/HTTP (JSON,
   gzip, a few thousand records per request) and waits until the store holds them all;
3. investigates each case at five windows: its exact window, and ``--since 15m``, the
   default hour, ``--since 6h`` and ``--since 24h`` ending at "now" (one minute after the
   case): ``investigate slow`` for latency faults, ``investigate errors`` for the others,
   through the same public functions the CLI calls;
4. scores the report as a user reads it: the culprit's rank is the position, among the
   findings the report itself calls significant, of the first whose ``service`` is the
   labelled service. A culprit named only by a finding marked not significant does not count.

It prints AC@1 and AC@3 per dataset and window, and how many runs raised (must be 0).
Nothing here knows a case, a service name or a fault type: the labels are read only to score.

    .venv/bin/python benchmarks/accuracy.py [--dataset DIR ...] [--keep DIR] [--case case-11 ...]
        [--window exact --window 1h ...] [--without-metrics] [--broken-traces] [--thin F]
        [--short-fault S] [--json FILE] [-v]

``--broken-traces`` breaks each case's traces as real pipelines do before sending them: 5 % of
the non-root spans are lost (their children become orphans), one service's clock is moved by
50-300 ms, and no span keeps its status. Seeded per case, so every run loses the same spans.

``--thin F`` and ``--short-fault S`` make each case's incident smaller, as a held-out system may
see it (lower traffic, a short fault). ``--thin F`` keeps a fraction F of the traces, whole traces,
in the case and its baseline minute, and the log records carrying their trace ids (log records
without a trace id and the metrics are kept: a quieter system still logs and is still scraped). A
trace is kept when a hash of the case and its trace id falls below F: the same traces every run, and
those kept at 0.25 are among those kept at 0.5. ``--short-fault S`` keeps the traces that start after
the fault's injection only for its first S seconds (and the log records of the traces dropped); the
traces before the injection, the baseline minute, the other logs and the metrics are untouched, so
the metrics still show the fault lasting: the traces-and-logs runs (``--without-metrics``) are the
real test of a short fault. Both can be combined with each other and with the other flags; datasets
are reported as NAME/thin0.5, NAME/short60s.

``--keep DIR`` keeps the per-case stores and reuses them on the next run (ingest takes most
of the time; the windows are relative to the stored case, not to the wall clock).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RECORDS_PER_REQUEST = 4000
TIME_KEYS = ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "observedTimeUnixNano")
MINUTE = 60_000_000_000
WINDOWS = {"exact": None, "15m": 15 * MINUTE, "1h": 60 * MINUTE, "6h": 360 * MINUTE, "24h": 1440 * MINUTE}
# Other windows users type, scored with --window (not by default: they would double the run).
MORE_WINDOWS = {"5m": 5 * MINUTE, "30m": 30 * MINUTE, "3h": 180 * MINUTE, "7d": 7 * 1440 * MINUTE}
ALL_WINDOWS = WINDOWS | MORE_WINDOWS


def shift_times(obj: Any, offset: int) -> None:
    """Add ``offset`` ns to every OTLP/JSON time field, in place (they are decimal strings)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in TIME_KEYS and isinstance(v, (str, int)) and str(v).isdigit() and int(v) > 0:
                obj[k] = str(int(v) + offset)
            else:
                shift_times(v, offset)
    elif isinstance(obj, list):
        for v in obj:
            shift_times(v, offset)


def chunks(doc: dict) -> Iterator[dict]:
    """Split one export request (spans or logs) into several of at most RECORDS_PER_REQUEST records."""
    top, scopes, items = (("resourceSpans", "scopeSpans", "spans") if "resourceSpans" in doc
                          else ("resourceLogs", "scopeLogs", "logRecords"))
    for res in doc.get(top, []):
        for sc in res.get(scopes, []):
            recs = sc.get(items, [])
            for i in range(0, len(recs), RECORDS_PER_REQUEST):
                yield {top: [{"resource": res.get("resource", {}),
                              scopes: [{"scope": sc.get("scope", {}), items: recs[i:i + RECORDS_PER_REQUEST]}]}]}


def count(doc: dict) -> int:
    if "resourceSpans" in doc:
        return sum(len(ss.get("spans", [])) for rs in doc["resourceSpans"] for ss in rs.get("scopeSpans", []))
    return sum(len(sl.get("logRecords", [])) for rl in doc.get("resourceLogs", []) for sl in rl.get("scopeLogs", []))


def post(url: str, doc: dict) -> None:
    body = gzip.compress(json.dumps(doc).encode())
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def load(case_dir: Path, name: str) -> dict | None:
    p = case_dir / f"{name}.json.gz"
    return json.loads(gzip.open(p).read()) if p.exists() else None


def break_traces(doc: dict, case: str, lose: float = 0.05, skew_ms: tuple[int, int] = (50, 300)) -> str:
    """Break one OTLP/JSON traces document in place, as real pipelines do (see the module
    docstring). Seeded by the case: a case's traces and its baseline minute draw the same
    skew, and the same service when both hold the same services (a host's clock). Returns
    what was done, for the log."""
    rnd = random.Random(int(hashlib.sha1(case.encode()).hexdigest()[:8], 16))

    def service(rs: dict) -> str | None:
        for a in rs.get("resource", {}).get("attributes", []):
            if a.get("key") == "service.name":
                return a.get("value", {}).get("stringValue")
        return None

    names = sorted({n for n in map(service, doc.get("resourceSpans", [])) if n})
    skewed = rnd.choice(names) if names else None
    skew = rnd.choice((-1, 1)) * rnd.randint(*skew_ms) * 1_000_000
    lost = 0
    for rs in doc.get("resourceSpans", []):
        shift = skew if service(rs) == skewed else 0
        for ss in rs.get("scopeSpans", []):
            kept = []
            for sp in ss.get("spans", []):
                if sp.get("parentSpanId") and rnd.random() < lose:
                    lost += 1
                    continue
                sp.pop("status", None)
                if shift:
                    for k in ("startTimeUnixNano", "endTimeUnixNano"):
                        sp[k] = str(int(sp[k]) + shift)
                kept.append(sp)
            ss["spans"] = kept
    return f"{lost} spans lost, {skewed} skewed by {skew / 1e6:+.0f} ms, statuses removed"


def _spans(doc: dict) -> Iterator[dict]:
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            yield from ss.get("spans", [])


def drop_traces(doc: dict, dropped: Any) -> int:
    """Remove, in place, the spans (or log records) whose trace id is in ``dropped``; a log
    record without a trace id is kept. Returns how many records were removed."""
    top, scopes, items = (("resourceSpans", "scopeSpans", "spans") if "resourceSpans" in doc
                          else ("resourceLogs", "scopeLogs", "logRecords"))
    n = 0
    for res in doc.get(top, []):
        for sc in res.get(scopes, []):
            recs = sc.get(items, [])
            kept = [r for r in recs if not r.get("traceId") or r["traceId"] not in dropped]
            n += len(recs) - len(kept)
            sc[items] = kept
    return n


class _Thinned:
    """The trace ids ``--thin`` drops: those whose hash with the case is at or above the fraction
    (membership is computed, so it holds for log records whose trace is not in the recording)."""

    def __init__(self, case: str, keep: float) -> None:
        self.case, self.keep = case, keep

    def __contains__(self, trace_id: str) -> bool:
        h = int(hashlib.sha1(f"{self.case}:{trace_id}".encode()).hexdigest()[:8], 16)
        return h / 0x1_0000_0000 >= self.keep


def shorten_fault(traces: dict, inject_ns: int, seconds: float) -> set[str]:
    """The trace ids of ``traces`` that start ``seconds`` or more after the injection: what
    ``--short-fault`` drops (a trace starts at its earliest span)."""
    start: dict[str, int] = {}
    for sp in _spans(traces):
        t = int(sp["startTimeUnixNano"])
        start[sp["traceId"]] = min(t, start.get(sp["traceId"], t))
    cut = inject_ns + int(seconds * 1e9)
    return {tid for tid, t in start.items() if t >= cut}


def ingest(case_dir: Path, data_dir: Path, gt: dict, end_ns: int, metrics: bool = True,
           broken: bool = False, thin: float | None = None, short_fault: float | None = None) -> dict[str, int]:
    """Send one case (and its baseline minute) to a fresh collector on ``data_dir``; without
    its metrics when ``metrics`` is False (traces and logs only, as many users have); its
    traces broken by :func:`break_traces` when ``broken``; a smaller incident with ``thin``
    and ``short_fault`` (see the module docstring)."""
    from stagetrace.collector.process import start_collector
    from stagetrace.collector.query import EmbeddedBackend

    offset = end_ns - int(gt["window"]["end_unix_nano"])
    docs: list[dict] = []
    thinned = _Thinned(case_dir.name, thin) if thin is not None else None
    dropped: list[Any] = [thinned] if thinned is not None else []
    for name in ("traces", "logs", "metrics") if metrics else ("traces", "logs"):
        d = load(case_dir, name)
        if d is not None:
            if name == "traces" and short_fault is not None:  # before the logs, which follow their traces
                dropped.append(shorten_fault(d, int(gt["fault"]["inject_time_unix_nano"]), short_fault))
            if name != "metrics" and dropped:
                n = sum(drop_traces(d, drop) for drop in dropped)
                print(f"  {case_dir.name}/{name}: {n} records of dropped traces removed", file=sys.stderr)
            shift_times(d, offset)
            if broken and name == "traces":
                print(f"  {case_dir.name}/{name}: {break_traces(d, case_dir.name)}", file=sys.stderr)
            docs.append(d)
    base_end = (gt.get("baseline_window") or {}).get("end_unix_nano")
    if base_end:
        b_off = int(gt["window"]["start_unix_nano"]) + offset - 5_000_000_000 - int(base_end)
        for name in ("baseline_traces", "baseline_logs"):
            d = load(case_dir, name)
            if d is not None:
                if thinned is not None:
                    drop_traces(d, thinned)
                shift_times(d, b_off)
                if broken and name == "baseline_traces":
                    print(f"  {case_dir.name}/{name}: {break_traces(d, case_dir.name)}", file=sys.stderr)
                docs.append(d)
    n_spans = sum(count(d) for d in docs if "resourceSpans" in d)
    n_logs = sum(count(d) for d in docs if "resourceLogs" in d)
    with start_collector(data_dir) as col:
        for d in docs:
            if "resourceMetrics" in d:
                post(col.http_endpoint + "/v1/metrics", d)
                continue
            path = "/v1/traces" if "resourceSpans" in d else "/v1/logs"
            for part in chunks(d):
                post(col.http_endpoint + path, part)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            b = EmbeddedBackend(data_dir)
            try:
                st = b.stats()
            finally:
                b.close()
            if st.get("spans", 0) >= n_spans and st.get("logs", 0) >= n_logs:
                break
            time.sleep(0.5)
    meta = {"offset_ns": offset, "spans": n_spans, "logs": n_logs}
    (data_dir / "accuracy-case.json").write_text(json.dumps(meta))
    return meta


def significant_rank(findings: list[dict], culprit: str) -> int | None:
    """Rank of the culprit among the findings the report calls significant (1-based)."""
    sig = [f for f in findings if f.get("significant")]
    for i, f in enumerate(sig, 1):
        if f.get("service") == culprit:
            return i
    return None


def prepare(case_dir: Path, store_root: Path, reuse: bool, metrics: bool = True,
            broken: bool = False, thin: float | None = None,
            short_fault: float | None = None) -> tuple[dict, Path, dict]:
    gt = json.loads((case_dir / "ground_truth.json").read_text())
    data_dir = store_root / (f"{case_dir.parent.name}-{case_dir.name}{'' if metrics else '-nometrics'}"
                             f"{'-broken' if broken else ''}{variant(thin, short_fault, '-')}")
    meta_path = data_dir / "accuracy-case.json"
    if reuse and meta_path.exists():
        return gt, data_dir, json.loads(meta_path.read_text())
    if data_dir.exists():
        import shutil
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    t = time.perf_counter()
    meta = ingest(case_dir, data_dir, gt, time.time_ns() - MINUTE, metrics, broken, thin, short_fault)
    meta["ingest_s"] = time.perf_counter() - t
    meta_path.write_text(json.dumps(meta))
    return gt, data_dir, meta


def variant(thin: float | None, short_fault: float | None, sep: str) -> str:
    """The suffix naming a smaller incident, for store folders and dataset labels."""
    return ((f"{sep}thin{thin:g}" if thin is not None else "")
            + (f"{sep}short{short_fault:g}s" if short_fault is not None else ""))


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = -1.0
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1]")
    return f


def _seconds(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = -1.0
    if not f > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return f


def run_window(backend, gt: dict, meta: dict, window: str) -> dict[str, Any]:
    from stagetrace.forensics import investigate_errors, investigate_slow

    off = meta["offset_ns"]
    case_start, case_end = int(gt["window"]["start_unix_nano"]) + off, int(gt["window"]["end_unix_nano"]) + off
    now = case_end + MINUTE
    start, end = (case_start, case_end + 1) if ALL_WINDOWS[window] is None else (now - ALL_WINDOWS[window], now)
    kind = "slow" if gt.get("expected_symptom") == "latency" else "errors"
    culprit = gt["fault"]["service"]
    t = time.perf_counter()
    out: dict[str, Any] = {"window": window, "kind": kind, "culprit": culprit}
    try:
        fn = investigate_slow if kind == "slow" else investigate_errors
        report = fn(backend, start_ns=start, end_ns=end)
    except Exception as exc:  # counted: an investigation must never raise
        out.update(raised=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=6), rank=None, top=[])
        return out | {"seconds": time.perf_counter() - t}
    findings = [f.to_dict() for f in report.findings]
    sig = [f for f in findings if f.get("significant")]
    out.update(raised=None, rank=significant_rank(findings, culprit), seconds=time.perf_counter() - t,
               top=[f"{f.get('service')}: {f['summary']}" for f in sig[:3]], verdict=report.verdict,
               notes=[n for n in report.notes if "skipped" in n.lower()])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, action="append", default=[],
                    help="folder of case-* folders (repeatable; default: every dataset in ../shared/datasets)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the per-case stores here and reuse them")
    ap.add_argument("--case", action="append", default=[], help="only this case folder (repeatable)")
    ap.add_argument("--window", action="append", default=[], choices=list(ALL_WINDOWS),
                    help="only this window (repeatable; default: the five of WINDOWS)")
    ap.add_argument("--json", type=Path, default=None, help="write per-case results to this file")
    ap.add_argument("--without-metrics", action="store_true",
                    help="ingest traces and logs only (what the before-stop smoke sends); datasets are "
                         "reported as NAME/no-metrics")
    ap.add_argument("--broken-traces", action="store_true",
                    help="lose 5%% of the spans, skew one service's clock, drop every status (see the docstring); "
                         "datasets are reported as NAME/broken")
    ap.add_argument("--thin", type=_fraction, default=None, metavar="F",
                    help="keep this fraction of the traces, whole, and their logs (seeded per case; see the "
                         "docstring); datasets are reported as NAME/thinF")
    ap.add_argument("--short-fault", type=_seconds, default=None, metavar="S",
                    help="keep the traces after the fault's injection only for its first S seconds (see the "
                         "docstring); datasets are reported as NAME/shortSs")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each run's verdict too")
    args = ap.parse_args(argv)
    datasets = args.dataset or sorted(p for p in DATASETS.iterdir() if p.is_dir()) if DATASETS.is_dir() else args.dataset
    if not datasets or not all(d.is_dir() for d in datasets):
        print(f"accuracy: no dataset at {datasets or DATASETS} (pass --dataset DIR)", file=sys.stderr)
        return 2
    windows = args.window or list(WINDOWS)
    import tempfile
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="stagetrace-accuracy-")
        store_root = Path(tmp.name)
    else:
        store_root = args.keep
        store_root.mkdir(parents=True, exist_ok=True)
    from stagetrace.collector.query import EmbeddedBackend

    results: list[dict[str, Any]] = []

    def label(ds: Path) -> str:
        return (ds.name + ("/no-metrics" if args.without_metrics else "") + ("/broken" if args.broken_traces else "")
                + variant(args.thin, args.short_fault, "/"))

    for ds in datasets:
        cases = sorted(p for p in ds.iterdir() if (p / "ground_truth.json").exists())
        if args.case:
            cases = [c for c in cases if c.name in set(args.case)]
        for c in cases:
            gt, data_dir, meta = prepare(c, store_root, reuse=args.keep is not None, metrics=not args.without_metrics,
                                         broken=args.broken_traces, thin=args.thin,
                                         short_fault=args.short_fault)
            backend = EmbeddedBackend(data_dir)
            try:
                for w in windows:
                    r = run_window(backend, gt, meta, w) | {"dataset": label(ds), "case": c.name,
                                                            "fault": gt["fault"]["type"]}
                    results.append(r)
                    status = f"RAISED {r['raised'][:100]}" if r["raised"] else f"rank {r['rank'] or '-':>2}"
                    print(f"{label(ds)[:22]:22} {c.name:8} {r['fault'][:14]:14} {r['kind']:6} {w:5} "
                          f"{r['culprit'][:30]:30} {status}  ({r['seconds']:.1f} s)", flush=True)
                    if r["raised"] and args.verbose:
                        print(r["trace"])
                    if args.verbose and not r["raised"]:
                        for i, s in enumerate(r["top"], 1):
                            print(f"      {i}. {s[:170]}")
                        for line in r.get("verdict", [])[:2]:
                            print(f"      | {line[:170]}")
            finally:
                backend.close()
    print()
    print(f"{'dataset':28} {'window':6} {'AC@1':>7} {'AC@3':>7} {'raised':>6}")
    for ds in datasets:
        for w in windows:
            rs = [r for r in results if r["dataset"] == label(ds) and r["window"] == w]
            if not rs:
                continue
            n = len(rs)
            a1 = sum(1 for r in rs if r["rank"] is not None and r["rank"] <= 1)
            a3 = sum(1 for r in rs if r["rank"] is not None and r["rank"] <= 3)
            raised = sum(1 for r in rs if r["raised"])
            print(f"{label(ds):28} {w:6} {a1:>3}/{n:<3} {a3:>3}/{n:<3} {raised:>6}")
    raised_total = sum(1 for r in results if r["raised"])
    print(f"\nruns: {len(results)}, raised: {raised_total}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()
    return 1 if raised_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
