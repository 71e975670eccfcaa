"""The diagnosis at the windows and formats users type, through the CLI, on the accuracy cases.

``benchmarks/accuracy.py`` scores nine ``--since``-style windows through the Python API.
Users type other things: a ``--since 2m`` just after an alert, a ``--from`` pasted from a
dashboard in another time zone, a window that starts after the fault began or ends before
the incident has grown, a window of a healthy morning, a window with nothing in it. This
runs ``stagetrace investigate slow|errors`` as a user would (a subprocess per run, its
exit code, standard output and standard error) on each labelled case's store, at windows
drawn per case with a fixed seed, and records for every run:

- the exit code, and whether standard error holds a traceback;
- for a window that holds part of the incident: the rank of the labelled culprit among the
  findings the report itself calls significant (as accuracy.py scores), and whether a
  *wrong* component is the first significant finding;
- for a clean window (only fault-free data: the baseline minute and/or the part of the
  case before the injection): whether the report calls anything significant (it must not);
- for an empty window (no data at all): whether it is one short report with exit code 0
  and no findings (the CLI's convention: an empty window is an answer, not an error).

Window kinds (times relative to the stored case; "now" is fixed per run, as accuracy.py
fixes it a minute after the case, because ``--since`` counts back from the wall clock):

``exact``       the case window (what accuracy.py calls exact), JSON;
``since``       ``--since``-style windows 2m 10m 45m 2h 12h 2d 30d ending at a "now" drawn from
                the case end + 10 s / 1 min / 10 min, or 90 s after the injection (mid-incident),
                given as ``--from/--until``;
``since-real``  a real ``--since`` (12h, 2d or 30d, the shortest that holds the case from the
                wall clock): the relative form users type most;
``from-mid``    starts 30/60/120 s after the injection, ends a minute after the case;
``until-mid``   ends 30/60/120 s after the injection, starts 10 min or 1 h before that;
``clean-base``  the fault-free baseline minute (cases that have one);
``clean-pre``   from the case start to 5 s before the injection;
``empty``       an hour of nothing (an hour before the data) or a window in the future;
``format``      the exact window as text, md or html: exit code, no traceback, and the culprit's
                name in the output whenever the JSON report names it.

``--from/--until`` are written in a time format drawn per run: ISO 8601 with ``Z``, with a
``+05:30`` or ``-07:00`` offset, without a zone (UTC), with a space for the ``T``, and Unix
seconds, milliseconds and nanoseconds.

    .venv/bin/python benchmarks/window_sweep.py --keep /tmp/x/acc [--without-metrics]
        [--dataset DIR ...] [--case case-84 ...] [--kind from-mid ...] [--seed 11]
        [--since-per-case 3] [--jobs 2] [--json FILE] [-v]

``--keep DIR`` holds accuracy.py's per-case stores (named as it names them; a case without
one is ingested there first, as ``accuracy.py --keep DIR`` would). Copy a shared store
before pointing this at it: the CLI opens the store read-only, but a missing store is written.
Exit status 1 when any run raised (a traceback, or an exit code other than 0 for a valid window).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (a sibling script: its stores, ingest and scoring are reused)

ROOT = accuracy.ROOT
CLI = ROOT / ".venv" / "bin" / "stagetrace"
S = 1_000_000_000
MINUTE = 60 * S
SINCE = {"2m": 2 * MINUTE, "10m": 10 * MINUTE, "45m": 45 * MINUTE, "2h": 120 * MINUTE,
         "12h": 720 * MINUTE, "2d": 2880 * MINUTE, "30d": 43200 * MINUTE}
REAL_SINCE = ("12h", "2d", "30d")
MID = (30, 60, 120)  # seconds after the injection
TIME_FORMATS = ("iso-z", "iso+05:30", "iso-07:00", "iso-naive", "iso-space", "epoch-s", "epoch-ms", "epoch-ns")
OTHER_FORMATS = ("text", "md", "html")
# a window must hold this much of the incident to be scored as one (else it is left out of
# the culprit counts: a window that holds 2 s of a fault cannot be asked to name it)
MIN_INCIDENT_S = 20


def fmt_time(ns: int, how: str, is_end: bool) -> str:
    """``ns`` as a user would paste it. Second-precision forms round outwards (the window
    never loses data: a start is floored and an end is ceiled)."""
    secs = (ns + (S - 1 if is_end else 0)) // S
    if how == "epoch-ns":
        return str(ns)
    if how == "epoch-ms":
        return str((ns + (999_999 if is_end else 0)) // 1_000_000)
    if how == "epoch-s":
        return str(secs)
    ms = (ns + (999_999 if is_end else 0)) // 1_000_000
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    if how == "iso-z":
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if how in ("iso+05:30", "iso-07:00"):
        sign = 1 if how[3] == "+" else -1
        h, m = int(how[4:6]), int(how[7:9])
        tz = dt.timezone(sign * dt.timedelta(hours=h, minutes=m))
        return t.astimezone(tz).isoformat(timespec="milliseconds")
    if how == "iso-naive":
        return t.replace(tzinfo=None).isoformat(timespec="milliseconds")
    if how == "iso-space":  # what a log line or a spreadsheet shows: whole seconds, a space
        return dt.datetime.fromtimestamp(secs, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    raise ValueError(how)


@dataclass
class Case:
    """One labelled case's store and its times, shifted as the store holds them."""
    dataset: str
    name: str
    data_dir: Path
    kind: str  # slow | errors: what accuracy.py runs for this case
    culprit: str
    start: int
    end: int
    inject: int
    base: tuple[int, int] | None

    @property
    def data_start(self) -> int:
        return min(self.start, self.base[0]) if self.base else self.start


@dataclass
class Run:
    case: Case
    kind: str
    start: int
    end: int
    argv: list[str]
    fmt: str = "json"
    label: str = ""
    out: dict[str, Any] = field(default_factory=dict)

    @property
    def expect(self) -> str:
        """incident | clean | empty | short: what the window holds of this case."""
        c = self.case
        inc = max(0, min(self.end, c.end) - max(self.start, c.inject))
        if inc >= MIN_INCIDENT_S * S:
            return "incident"
        if inc > 0:
            return "short"
        holds = self.start < c.end and self.end > c.data_start
        if c.base and self.start >= c.base[1] and self.end <= c.start:
            holds = False  # the 5 s gap between the baseline minute and the case
        return "clean" if holds else "empty"


def load_case(ds: Path, case_dir: Path, store_root: Path, metrics: bool) -> Case:
    gt, data_dir, meta = accuracy.prepare(case_dir, store_root, reuse=True, metrics=metrics)
    off = meta["offset_ns"]
    start, end = int(gt["window"]["start_unix_nano"]) + off, int(gt["window"]["end_unix_nano"]) + off
    base = None
    bw = gt.get("baseline_window") or {}
    if bw.get("end_unix_nano"):  # placed as accuracy.ingest places it: ending 5 s before the case
        b_off = start - 5 * S - int(bw["end_unix_nano"])
        base = (int(bw["start_unix_nano"]) + b_off, int(bw["end_unix_nano"]) + b_off)
    return Case(ds.name, case_dir.name, data_dir, "slow" if gt.get("expected_symptom") == "latency" else "errors",
                gt["fault"]["service"], start, end, int(gt["fault"]["inject_time_unix_nano"]) + off, base)


def plan(case: Case, rnd: random.Random, since_per_case: int) -> list[Run]:
    """The runs for one case, drawn from ``rnd`` (seeded per case: adding a case or a kind
    elsewhere does not change this case's windows)."""
    runs: list[Run] = []

    def add(kind: str, start: int, end: int, label: str, fmt: str = "json") -> None:
        how = rnd.choice(TIME_FORMATS)
        argv = ["--from", fmt_time(start, how, False), "--until", fmt_time(end, how, True)]
        runs.append(Run(case, kind, start, end, argv, fmt, f"{label} [{how}]"))

    add("exact", case.start, case.end + 1, "exact")
    nows = {"end+10s": case.end + 10 * S, "end+1m": case.end + MINUTE, "end+10m": case.end + 10 * MINUTE,
            "inject+90s": case.inject + 90 * S}
    for name in rnd.sample(sorted(SINCE), since_per_case):
        now_name = rnd.choice(sorted(nows))
        add("since", nows[now_name] - SINCE[name], nows[now_name], f"since {name} @ {now_name}")
    # the shortest real --since that holds the case from the wall clock (as a user types it)
    now = time.time_ns()
    real = next((n for n in REAL_SINCE if now - SINCE[n] < case.data_start - MINUTE), REAL_SINCE[-1])
    runs.append(Run(case, "since-real", now - SINCE[real], now, ["--since", real], "json", f"--since {real} (wall clock)"))
    m = rnd.choice(MID)
    add("from-mid", case.inject + m * S, case.end + MINUTE, f"from inject+{m}s")
    m, back = rnd.choice(MID), rnd.choice((10 * MINUTE, 60 * MINUTE))
    add("until-mid", case.inject + m * S - back, case.inject + m * S, f"until inject+{m}s, {back // MINUTE}m long")
    if case.base:
        add("clean-base", case.base[0], case.base[1] + 1, "baseline minute")
    add("clean-pre", case.start, case.inject - 5 * S, "case start .. inject-5s")
    if rnd.random() < 0.5:
        add("empty", case.data_start - 2 * 60 * MINUTE, case.data_start - 60 * MINUTE, "an hour before the data")
    else:
        add("empty", now + 60 * MINUTE, now + 120 * MINUTE, "in the future")
    fmt = rnd.choice(OTHER_FORMATS)
    add("format", case.start, case.end + 1, f"exact as {fmt}", fmt)
    return runs


def execute(run: Run) -> Run:
    c = run.case
    argv = [str(CLI), "investigate", c.kind, *run.argv, "--format", run.fmt, "--data-dir", str(c.data_dir)]
    env = dict(os.environ, COLUMNS="140", PYTHONHASHSEED="0")
    t0, r0 = time.perf_counter(), os.times()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    r1 = os.times()
    run.out = {"rc": p.returncode, "seconds": time.perf_counter() - t0,
               "cpu": (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system),
               "traceback": "Traceback (most recent call last)" in p.stderr,
               "stderr": p.stderr.strip().splitlines()[-3:], "argv": argv[1:]}
    if run.fmt == "json" and p.returncode == 0:
        try:
            rep = json.loads(p.stdout)
        except ValueError:
            run.out["bad_json"] = True
            return run
        sig = [f for f in rep.get("findings", []) if f.get("significant")]
        run.out.update(rank=accuracy.significant_rank(rep.get("findings", []), c.culprit),
                       first=sig[0].get("service") if sig else None, n_sig=len(sig),
                       n_findings=len(rep.get("findings", [])), verdict=rep.get("verdict", [])[:2],
                       notes=[n for n in rep.get("notes", []) if "skipped" in n.lower()],
                       top=[f"{f.get('service')}: {f['summary'][:140]}" for f in sig[:3]])
    elif p.returncode == 0:
        run.out["mentions_culprit"] = c.culprit in p.stdout
        run.out["bytes"] = len(p.stdout)
    return run


def outcome(run: Run, json_rank: dict[str, int | None]) -> str:
    """One word per run, for the table: raised | first | named | missed | wrong-first (an
    incident), quiet | names-culprit | names-other (clean), report | not-empty (empty), ok | lost
    (format)."""
    o = run.out
    if o["traceback"] or o["rc"] != 0 or o.get("bad_json"):
        return "raised"
    if run.fmt != "json":
        named = json_rank.get(run.case.name) is not None
        return "lost" if named and not o["mentions_culprit"] else "ok"
    e = run.expect
    if e == "empty":
        return "report" if o["n_findings"] == 0 and len(o["verdict"]) == 1 else "not-empty"
    if e == "clean":  # naming the culprit there means its effect began before the labelled injection
        return "quiet" if not o["n_sig"] else "names-culprit" if o["first"] == run.case.culprit else "names-other"
    if o["first"] is not None and o["first"] != run.case.culprit:
        return "wrong-first"
    if o["rank"] == 1:
        return "first"
    return "named" if o["rank"] else "missed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, required=True, help="accuracy.py's per-case stores (a copy)")
    ap.add_argument("--dataset", type=Path, action="append", default=[],
                    help="folder of case-* folders (repeatable; default: every dataset in ../shared/datasets)")
    ap.add_argument("--case", action="append", default=[], help="only this case folder (repeatable)")
    ap.add_argument("--without-metrics", action="store_true", help="the stores ingested without metrics")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--since-per-case", type=int, default=3, help="--since windows drawn per case (of 7)")
    ap.add_argument("--kind", action="append", default=[],
                    help="only runs of this window kind (repeatable; the draws are the same, so a subset "
                         "re-run matches a full run's runs one for one)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write every run here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the top findings of runs that are not right")
    args = ap.parse_args(argv)
    datasets = args.dataset or sorted(p for p in accuracy.DATASETS.iterdir() if p.is_dir())
    runs: list[Run] = []
    for ds in datasets:
        for cdir in sorted(p for p in ds.iterdir() if (p / "ground_truth.json").exists()):
            if args.case and cdir.name not in args.case:
                continue
            case = load_case(ds, cdir, args.keep, metrics=not args.without_metrics)
            seed = int(hashlib.sha1(f"{args.seed}/{ds.name}/{cdir.name}".encode()).hexdigest()[:8], 16)
            runs += [r for r in plan(case, random.Random(seed), args.since_per_case)
                     if not args.kind or r.kind in args.kind]
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), os.times()
    print(f"{len(runs)} runs, {args.jobs} at a time; load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}",
          flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for i, fut in enumerate(as_completed([pool.submit(execute, r) for r in runs]), 1):
            fut.result()  # a failure of this script itself (not of a run) stops it
            if i % 20 == 0:
                print(f"  {i} of {len(runs)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    done = runs  # in plan order (execute fills each run in place)
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    json_rank = {r.case.name: r.out.get("rank") for r in done if r.kind == "exact" and r.out.get("rc") == 0}
    rows: dict[str, Counter] = {}
    for r in done:
        r.out["expect"], r.out["outcome"] = r.expect, outcome(r, json_rank)
        key = r.kind if r.kind in ("format", "clean-base", "clean-pre", "empty") else {
            "incident": r.kind, "short": f"{r.kind} (<{MIN_INCIDENT_S} s of the fault)"}.get(r.expect, f"{r.kind} ({r.expect})")
        rows.setdefault(key, Counter())[r.out["outcome"]] += 1
        bad = r.out["outcome"] in ("raised", "wrong-first", "names-culprit", "names-other", "not-empty", "lost", "missed")
        if bad or args.verbose:
            print(f"{r.case.dataset[6:12]} {r.case.name} {r.case.kind:6} {r.kind:10} {r.label:48} "
                  f"{r.out['outcome']:15} rc={r.out['rc']} rank={r.out.get('rank')} first={r.out.get('first')} "
                  f"({r.out['seconds']:.1f} s)", flush=True)
            if r.out["traceback"] or r.out["rc"]:
                print("      stderr: " + " | ".join(r.out["stderr"])[:300])
            if bad and r.out["outcome"] != "missed":
                for line in r.out.get("top", [])[:3]:
                    print(f"      {line}")
    print()
    for key in sorted(rows):
        cnt = rows[key]
        print(f"{key:40} {sum(cnt.values()):4}  " + "  ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    secs = sorted(r.out["seconds"] for r in done)
    raised = sum(1 for r in done if r.out["outcome"] == "raised")
    load1 = os.getloadavg()
    print(f"\nruns: {len(done)}, raised: {raised}; wall {wall:.0f} s, CPU {cpu:.0f} s (children); per run median "
          f"{secs[len(secs) // 2]:.1f} s; load average before {load0[0]:.1f}, after {load1[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([{"dataset": r.case.dataset, "case": r.case.name, "kind": r.kind,
                                          "label": r.label, "format": r.fmt, "culprit": r.case.culprit,
                                          "start_ns": r.start, "end_ns": r.end} | r.out for r in done],
                                        indent=1, default=str))
    return 1 if raised else 0


if __name__ == "__main__":
    raise SystemExit(main())
