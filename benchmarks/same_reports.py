"""Do two versions of stagetrace reach the same conclusions? Runs `investigate slow` /
`investigate errors` with each package on the same stores and windows and diffs the
``--format json`` reports (a speed change to the analysis must not change a byte).

Stores: kept `benchmarks/forensics.py` stores (``--bench DIR``: the window of its
bench-meta.json, both commands) and kept `benchmarks/accuracy.py` stores
(``--accuracy DIR``: each case's five windows, the command its ground truth names).
"Before" is a package tree given as ``--before PKG`` (a directory holding
``stagetrace/``, e.g. main's sources laid out by `git archive` as the package dirs
map them); "after" is the installed package, or ``--after PKG``. Both run with
``PYTHONHASHSEED=0`` unless ``--before-seed``/``--after-seed`` say otherwise: the
same version under two seeds shows whether a report depends on the string-hash seed.

    .venv/bin/python benchmarks/same_reports.py --before /tmp/x/before-pkg \\
        --bench /tmp/x/f1m --accuracy /tmp/x/acc

Exit status 1 when any report differs (the first differing lines are printed).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

CHILD = r"""
import json, re, sys, time
from stagetrace.collector.query import EmbeddedBackend
from stagetrace.forensics import investigate_errors, investigate_slow, render
jobs = json.loads(sys.stdin.read())
out = []
for j in jobs:
    b = EmbeddedBackend(j["data_dir"])
    fn = investigate_slow if j["kind"] == "slow" else investigate_errors
    t = time.perf_counter()
    try:
        text = render(fn(b, start_ns=j["start"], end_ns=j["end"]), "json")
    except Exception as exc:
        text = f"RAISED {type(exc).__name__}: {exc}"
    out.append({"text": re.sub(r'"generated_at_ns": \d+', '"generated_at_ns": 0', text),
                "seconds": time.perf_counter() - t})
    b.close()
print(json.dumps(out))
"""


def bench_jobs(d: Path) -> list[dict]:
    meta = json.loads((d / "bench-meta.json").read_text())
    return [{"data_dir": str(d), "kind": k, "start": meta["start_ns"], "end": meta["end_ns"], "label": f"{d.name} {k}"}
            for k in ("slow", "errors")]


def accuracy_jobs(root: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import MINUTE, WINDOWS  # the benchmark's own windows

    jobs = []
    for d in sorted(p for p in root.iterdir() if (p / "accuracy-case.json").exists()):
        meta = json.loads((d / "accuracy-case.json").read_text())
        ds, _, case = d.name.rpartition("-case-")
        gt_path = next((p / f"case-{case}" / "ground_truth.json" for p in DATASETS.iterdir()
                        if d.name.startswith(p.name) and (p / f"case-{case}" / "ground_truth.json").exists()), None)
        if gt_path is None:
            print(f"  {d.name}: no ground truth found under {DATASETS}, skipped", file=sys.stderr)
            continue
        gt = json.loads(gt_path.read_text())
        off = meta["offset_ns"]
        c_start, c_end = int(gt["window"]["start_unix_nano"]) + off, int(gt["window"]["end_unix_nano"]) + off
        now = c_end + MINUTE
        kind = "slow" if gt.get("expected_symptom") == "latency" else "errors"
        for w, span in WINDOWS.items():
            start, end = (c_start, c_end + 1) if span is None else (now - span, now)
            jobs.append({"data_dir": str(d), "kind": kind, "start": start, "end": end, "label": f"{d.name} {w} {kind}"})
    return jobs


def run(jobs: list[dict], pythonpath: str | None, seed: str = "0") -> list[dict]:
    # a fixed string-hash seed: reports must not depend on it, but older versions did
    # (set iteration orders), so a comparison with them needs the same seed for both
    env = dict(os.environ, PYTHONHASHSEED=seed)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(jobs), capture_output=True, text=True,
                       env=env, cwd="/")
    if p.returncode:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="directory holding the 'before' stagetrace package")
    ap.add_argument("--after", help="directory holding the 'after' package (default: the installed one)")
    ap.add_argument("--before-seed", default="0", help="PYTHONHASHSEED of the 'before' run")
    ap.add_argument("--after-seed", default="0", help="PYTHONHASHSEED of the 'after' run")
    ap.add_argument("--bench", type=Path, action="append", default=[], help="a kept benchmarks/forensics.py store")
    ap.add_argument("--accuracy", type=Path, action="append", default=[], help="a kept benchmarks/accuracy.py root")
    ap.add_argument("--case", action="append", default=[], help="only stores whose name contains this (repeatable)")
    ap.add_argument("--diff-lines", type=int, default=40, help="lines of each differing report's diff to print")
    args = ap.parse_args()
    for flag, pkg in (("--before", args.before), ("--after", args.after)):
        if pkg is not None and not (Path(pkg) / "stagetrace").is_dir():
            print(f"same_reports: {flag} {pkg}: no stagetrace package there", file=sys.stderr)
            return 2
    jobs = [j for d in args.bench for j in bench_jobs(d)] + [j for r in args.accuracy for j in accuracy_jobs(r)]
    if args.case:
        jobs = [j for j in jobs if any(c in j["label"] for c in args.case)]
    if not jobs:
        print("same_reports: nothing to compare (give --bench or --accuracy)", file=sys.stderr)
        return 2
    before, after = run(jobs, args.before, args.before_seed), run(jobs, args.after, args.after_seed)
    differ = 0
    for j, b, a in zip(jobs, before, after):
        same = b["text"] == a["text"]
        differ += not same
        print(f"{'same   ' if same else 'DIFFERS'} {j['label']:60} before {b['seconds']:6.2f} s, after {a['seconds']:6.2f} s")
        if not same:
            diff = difflib.unified_diff(b["text"].splitlines(), a["text"].splitlines(), "before", "after", lineterm="", n=1)
            for line in list(diff)[:args.diff_lines]:
                print("    " + line)
    print(f"\n{len(jobs) - differ} of {len(jobs)} reports identical")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
