"""What the rootless-trace count (``forensics.window.rootless_beside_note``) costs the
whole `investigate slow` and `investigate errors`, side by side in one run.

Each measurement is a fresh process running benchmarks/forensics.py's child (the
investigation over a kept store's window, rendered to JSON; wall, CPU and peak RSS of
that process): "on", the count as the installed package ships it; "off", the count
replaced by ``None`` in this benchmark's child only (no switch in the product); and with
``--before PKG`` (a package tree holding ``stagetrace/``, e.g. main's sources laid out
as the package dirs map them) "before", that package's count; ``--after PKG`` runs "on"
and "off" with that tree in place of the installed package. The variants take turns,
their order rotated each round, after one unmeasured warm-up run of each command;
medians of wall and CPU per command and variant, ratios to "off", and the load average
before and after.

    .venv/bin/python benchmarks/rootless_cost.py --data-dir DIR [--rounds 3] [--only slow,errors] [--before PKG] [--after PKG]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from forensics import CHILD  # noqa: E402  (the same child as the scale benchmark)

# "off": the count answers None before the investigation imports it by name
OFF = r"""
import stagetrace.forensics.slow as _s, stagetrace.forensics.errorclusters as _e
_s.rootless_beside_note = _e.rootless_beside_note = lambda *a, **k: None
_s.rootless_ids_beside = _e.rootless_ids_beside = lambda *a, **k: None  # its read started early (if any)
"""


def run(data_dir: Path, what: str, start: int, end: int, variant: str, pkg: dict[str, Path | None]) -> dict:
    tree = pkg["before"] if variant == "before" else pkg["after"]
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    p = subprocess.run([sys.executable, "-c", (OFF if variant == "off" else "") + CHILD, str(data_dir), what,
                        str(start), str(end)], capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode:
        raise SystemExit(f"{what} ({variant}) failed:\n{p.stderr[-3000:]}")
    at = p.stdout.rfind('{"seconds"')
    return json.loads(p.stdout[at:].splitlines()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="slow,errors")
    ap.add_argument("--before", type=Path, help="a package tree (holding stagetrace/) to run as 'before'")
    ap.add_argument("--after", type=Path, help="a package tree for 'on' and 'off' (default: the installed package)")
    args = ap.parse_args()
    pkg = {"before": args.before, "after": args.after}
    variants = ["on", "off"] + (["before"] if args.before else [])
    meta = json.loads((args.data_dir / "bench-meta.json").read_text())
    start, end = meta["start_ns"], meta["end_ns"]
    whats = [w for w in args.only.split(",") if w]
    for what in whats:  # warm the page cache; not measured
        run(args.data_dir, what, start, end, "on", pkg)
    load0 = os.getloadavg()
    res: dict[tuple[str, str], list[dict]] = {(w, v): [] for w in whats for v in variants}
    for i in range(args.rounds):
        for what in whats:
            for v in variants[i % len(variants):] + variants[:i % len(variants)]:
                r = run(args.data_dir, what, start, end, v, pkg)
                res[(what, v)].append(r)
                print(f"  round {i + 1} {what:<6} {v:<6} wall {r['seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s  "
                      f"rss {r['peak_rss_mb']:6.0f} MB  significant {r['significant']}  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    load1 = os.getloadavg()
    print(f"{args.data_dir} ({meta.get('spans', 0):,} spans), {args.rounds} rounds; "
          f"load average {load0[0]:.2f}/{load0[1]:.2f} -> {load1[0]:.2f}/{load1[1]:.2f}")
    for what in whats:
        med = {v: (statistics.median(r["seconds"] for r in res[(what, v)]),
                   statistics.median(r["cpu_seconds"] for r in res[(what, v)])) for v in variants}
        same = {json.dumps(r["top"]) for v in variants for r in res[(what, v)]}
        off_w, off_c = med["off"]
        print(f"  {what}: same top findings in every run: {len(same) == 1}")
        for v in variants:
            w, c = med[v]
            print(f"    {v:<6} wall {w:6.2f} s  cpu {c:6.2f} s  | vs off: wall x{w / off_w:.3f} ({w - off_w:+.2f} s)  "
                  f"cpu x{c / off_c:.3f} ({c - off_c:+.2f} s)")


if __name__ == "__main__":
    main()
