"""How often a caller comes out as a second significant component when spans are lost:
tests/microservice_gen.py with a network delay into one service (catalog, payment, cart),
seeds 1, 4, 7, and 5 % and 10 % of the non-root spans lost (``--kind CLIENT``: only CLIENT
spans). Prints each run's significant components and how many runs named ``frontend``
(the caller; the culprit is the delayed service). Run it with a package tree first on
``PYTHONPATH`` to score another version on the same traces.

    .venv/bin/python benchmarks/lost_spans.py [--kind CLIENT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default=None, help="lose only spans of this kind (e.g. CLIENT)")
    args = ap.parse_args()
    import microservice_gen as gen
    from stagetrace.forensics import investigate_slow

    runs = spurious = 0
    for fault in ("catalog", "payment", "cart"):
        for seed in (1, 4, 7):
            for drop in (0.05, 0.1):
                b, res = gen.generate(net_delay=fault, seed=seed, drop_spans=drop, drop_kind=args.kind)
                rep = investigate_slow(b, start_ns=res.start_ns, end_ns=res.end_ns)
                named = [f.summary.split(" explains")[0] for f in rep.significant_findings if f.kind == "stage"]
                runs += 1
                spurious += any(n.split(":")[0] == "frontend" for n in named)
                print(f"{fault:<8} seed {seed} lost {drop:.0%}: {named}", flush=True)
    print(f"frontend named beside the culprit in {spurious} of {runs} runs")


if __name__ == "__main__":
    main()
