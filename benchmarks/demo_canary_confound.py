"""Why the demo's quality segment can name the canary split instead of the drifting client.

    .venv/bin/python benchmarks/demo_canary_confound.py

The demo's two model versions (``demo/model.py``: v1 a logistic regression, v2 gradient-
boosted trees) scored on the demo's synthetic transactions, clean and with ``amount`` x100
(clipped at the API's limit, as ``demo/app.py`` does), and what that makes of the
segments ``investigate quality`` weighs after the canary starts: the errors in excess of
the rest's rate that each candidate segment holds (``forensics/quality.py::_segments``
ranks by that). Expected values from the scenario's shares, not a run of the demo.
"""

from __future__ import annotations

import numpy as np

from stagetrace.demo.app import AMOUNT_LIMIT
from stagetrace.demo.model import synthetic_dataset, train_model
from stagetrace.demo.scenarios import CENTS, CLIENTS, DEFAULT_CANARY_SHARE, DRIFT_CLIENT


def main() -> None:
    X, y = synthetic_dataset(n=20000, seed=11)
    drifted = X.copy()
    drifted[:, 0] = np.minimum(drifted[:, 0] * CENTS, AMOUNT_LIMIT)
    err = {}
    for version in ("v1", "v2"):
        m = train_model(version)
        err[version] = (float((m.predict(X) != y).mean()), float((m.predict(drifted) != y).mean()))
        print(f"{version}: error rate clean {err[version][0]:.1%}, amount x100 {err[version][1]:.1%}")
    share = dict(CLIENTS)[DRIFT_CLIENT]
    canary = DEFAULT_CANARY_SHARE
    # error rate of each cell (drift client or not) x (v1 or v2), weights = traffic shares
    cells = {(d, v): (share if d else 1 - share) * (canary if v == "v2" else 1 - canary)
             for d in (True, False) for v in ("v1", "v2")}
    rate = {(d, v): err[v][1] if d else err[v][0] for d, v in cells}

    def excess(inside) -> float:
        ins = [c for c in cells if inside(c)]
        out = [c for c in cells if not inside(c)]
        w_in, w_out = sum(cells[c] for c in ins), sum(cells[c] for c in out)
        r_in = sum(cells[c] * rate[c] for c in ins) / w_in
        r_out = sum(cells[c] * rate[c] for c in out) / w_out
        return (r_in - r_out) * w_in

    print(f"after the canary starts ({canary:.0%} of accounts on v2), excess errors per 100 labelled predictions:")
    print(f"  {DRIFT_CLIENT}: {100 * excess(lambda c: c[0]):.1f}")
    print(f"  ml.model.version=v1: {100 * excess(lambda c: c[1] == 'v1'):.1f}")


if __name__ == "__main__":
    main()
