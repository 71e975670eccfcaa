"""Drift, reference profiles and input-profile comparison (issue 18), on profiles made
by the real capture code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import drift as bench  # noqa: E402  (benchmarks/drift.py: the synthetic generator)

from stagetrace import mlprofile  # noqa: E402
from stagetrace.forensics import mlprofiles as mp  # noqa: E402
from stagetrace.forensics.drift import PREDICTION, investigate_drift, load_reference, save_reference  # noqa: E402
from stagetrace.forensics.mlprofiles import compare_input_profiles  # noqa: E402


def test_compare_input_profiles_names_the_missing_feature_first():
    rng = np.random.default_rng(5)
    normal = bench.spans_for(bench.rows(rng, 300), 0, 1, rng=rng)
    bad = bench.rows(rng, 40)
    for r in bad:
        r["income"] = None  # the failing predictions lack this feature
    failing = bench.spans_for(bad, 0, 1, rng=rng)
    diffs = compare_input_profiles(failing, normal)
    top = diffs[0]
    assert top["feature"] == "income" and top["significant"]
    assert top["missing_failing"] == 1.0 and top["missing_normal"] == 0.0
    assert "income missing in 100% of failing vs 0% of normal" in top["summary"]
    assert not any(d["significant"] for d in diffs[1:])


def test_drift_no_false_alarm_and_detects_a_shift():
    rng = np.random.default_rng(9)
    ref = mp.distributions(bench.spans_for(bench.rows(rng, 5000), 0, 1, rng=rng))
    clean = mp.distributions(bench.spans_for(bench.rows(rng, 2000), 0, 1, rng=rng))
    assert not any(mp.compare(f, ref[f], clean[f], tests=5).significant for f in bench.NAMES)
    shifted = mp.distributions(bench.spans_for(bench.rows(rng, 2000, shift_sigma=0.5), 0, 1, rng=rng))
    flags = {f: mp.compare(f, ref[f], shifted[f], tests=5).significant for f in bench.NAMES}
    assert flags == {"amount": True, "income": False, "country": False, "age": False}


@pytest.mark.parametrize("change,feature", [({"extra_missing": 0.10}, "age"), ({"new_category": True}, "country"),
                                            ({"unit": 100.0}, "amount")])
def test_each_kind_of_shift_is_found_on_its_feature_alone(change, feature):
    """The issue's known answers, 2 000 one-row predictions each: 10 more points of missing
    values, a new category at 5 %, a x100 unit change; the clean window beside each names
    nothing (benchmarks/drift.py runs these 10 times each and 20 clean windows)."""
    rng = np.random.default_rng(31)
    ref = mp.distributions(bench.spans_for(bench.rows(rng, 10_000), 0, 1, rng=rng))
    tests = len(bench.NAMES) + 1
    cur = mp.distributions(bench.spans_for(bench.rows(rng, 2000, **change), 0, 1, rng=rng))
    flags = {f: mp.compare(f, ref[f], cur[f], tests=tests).significant for f in bench.NAMES}
    assert flags == {f: f == feature for f in bench.NAMES}, flags
    clean = mp.distributions(bench.spans_for(bench.rows(rng, 2000), 0, 1, rng=rng))
    assert not any(mp.compare(f, ref[f], clean[f], tests=tests).significant for f in bench.NAMES)


def _two_client_window(tmp_path, cents_from: int | None):
    """(report, t0, sec): 10 intervals of 100 s, two clients; client 2.0 sends ``amount``
    x100 from interval ``cents_from`` on (None: never)."""
    rng = np.random.default_rng(2)
    sec = 10**9
    t0 = 1_700_000_000 * sec
    spans = []
    for i in range(10):
        for client in ("1.0", "2.0"):
            unit = 100.0 if (client == "2.0" and cents_from is not None and i >= cents_from) else 1.0
            spans += bench.spans_for(bench.rows(rng, 40, unit=unit), t0 + i * 100 * sec + (client == "2.0") * sec // 2,
                                     2 * sec, client=client, rng=rng)
    refp = tmp_path / "ref.json"
    save_reference(refp, "m", None, mp.distributions(bench.spans_for(bench.rows(rng, 4000), 0, 1, rng=rng)), None, "t")
    rep = investigate_drift(bench.MemoryBackend(spans), model="m", version=None, start_ns=t0, end_ns=t0 + 1000 * sec,
                            reference=refp, interval_ns=100 * sec)
    return rep, t0, sec


def test_investigate_drift_onset_and_segment(tmp_path):
    rep, t0, sec = _two_client_window(tmp_path, 6)
    top = rep.findings[0]
    assert top.evidence["feature"] == "amount"
    assert top.evidence["onset_ns"] == t0 + 600 * sec
    seg = top.evidence["segments"][0]
    assert (seg["attribute"], seg["value"]) == ("client.version", "2.0")
    assert [f.evidence["feature"] for f in rep.findings] == ["amount"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_profile_build_and_drift(tmp_path):
    data = tmp_path / "data"
    r = _cli("profile", "build", "--model", "m", "--from-file", str(tmp_path / "nope.csv"), "--data-dir", str(data))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    csv = tmp_path / "train.csv"
    rng = np.random.default_rng(1)
    csv.write_text("amount,country\n" + "\n".join(f"{rng.normal(50, 10):.3f},{c}" for c in rng.choice(["FR", "DE"], 500)))
    r = _cli("profile", "build", "--model", "m", "--version", "v1", "--from-file", str(csv), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert (data / "profiles" / "m" / "v1.json").exists() and "2 features, 500 rows" in r.stdout
    r = _cli("investigate", "drift", "--model", "m", "--version", "v1", "--since", "5m", "--data-dir", str(data),
             "--format", "md")
    assert r.returncode == 0, r.stderr
    assert "No profiled inference spans of model 'm'" in r.stdout
    r = _cli("investigate", "drift", "--model", "m", "--interval", "0s", "--data-dir", str(data))
    assert r.returncode == 2 and "--interval must be positive" in r.stderr and "Traceback" not in r.stderr
    # an interval that cuts a long window into millions of buckets is a typo: one line, not a hang
    r = _cli("investigate", "drift", "--model", "m", "--interval", "1ms", "--since", "3650d", "--data-dir", str(data))
    assert r.returncode == 2 and "--interval is too small" in r.stderr and "Traceback" not in r.stderr


def _batched_spans(rng, calls, t0, *, cents_share=0.0, rows_per_call=30, amount_missing=False, omit_share=0.0):
    """Calls of ``rows_per_call`` rows: ``amount`` drawn per row (NaN in every row with
    ``amount_missing``, and in every row of a share ``omit_share`` of the calls: a client
    that omits it), ``acct`` once per call (every row of a request carries its account's
    value), through the real capture."""
    from stagetrace import semconv
    from stagetrace.instrumentation import profiling
    from stagetrace.instrumentation.profile_capture import input_attributes
    from stagetrace.model import Span

    settings = profiling.ProfileSettings(features=["amount", "acct"])
    out = []
    for i in range(calls):
        cents = rng.random() < cents_share
        x = np.column_stack([rng.normal(50.0, 10.0, rows_per_call) * (100.0 if cents else 1.0),
                             np.full(rows_per_call, rng.lognormal(3.5, 0.6))])
        if amount_missing or (omit_share and rng.random() < omit_share):
            x[:, 0] = np.nan
        attrs = {semconv.ML_STAGE: "inference", semconv.ML_MODEL_NAME: "m"}
        attrs.update(input_attributes(settings, x, None, "score", "m"))
        out.append(Span(trace_id=f"{rng.integers(1, 2**63):016x}{i:016x}", span_id=f"{i + 1:016x}", parent_span_id="",
                        name="inference m", kind="INTERNAL", start_ns=t0 + i * 10**9, end_ns=t0 + i * 10**9 + 1000,
                        attributes=attrs, resource={"service.name": "api", "client.version": "2.0" if cents else "1.0"}))
    return out


def test_rows_of_one_call_that_share_a_value_are_not_independent_evidence(tmp_path):
    """150 requests of 30 rows against 150 more from the same distribution: a
    per-request feature (the account's) is 150 draws, not 4 500, and must not be called
    drift; a x100 unit change in a quarter of the requests still is."""
    from stagetrace.forensics.drift import row_correlations

    rng = np.random.default_rng(3)
    sec = 10**9
    t0 = 1_700_000_000 * sec
    ref_spans = _batched_spans(rng, 150, t0 - 1000 * sec)
    iccs, effects = row_correlations(ref_spans)
    assert iccs["acct"] == 1.0 and effects["acct"] == 30.0  # identical within a call
    assert iccs["amount"] < 0.05 and effects["amount"] < 2.5  # independent rows
    refp = tmp_path / "ref.json"
    save_reference(refp, "m", None, mp.distributions(ref_spans), None, "t", correlations=(iccs, effects))
    false_alarms = 0
    for _ in range(5):
        clean = _batched_spans(rng, 150, t0)
        rep = investigate_drift(bench.MemoryBackend(clean), model="m", version=None, start_ns=t0,
                                end_ns=t0 + 150 * sec, reference=refp)
        false_alarms += any(f.evidence["feature"] == "acct" for f in rep.findings)
        assert not any(f.evidence["feature"] == "amount" for f in rep.findings), rep.verdict
    assert false_alarms == 0
    drifted = _batched_spans(rng, 150, t0, cents_share=0.25)
    rep = investigate_drift(bench.MemoryBackend(drifted), model="m", version=None, start_ns=t0,
                            end_ns=t0 + 150 * sec, reference=refp)
    assert [f.evidence["feature"] for f in rep.findings] == ["amount"], rep.verdict
    assert (rep.findings[0].attribute, rep.findings[0].value) == ("client.version", "2.0")


def test_input_evidence_counts_calls_not_the_rows_of_one_batch():
    """The inputs of failing vs normal predictions (investigate errors / slow): a handful of
    big failing batches carry 4 accounts, not 120 independent values, so ``acct`` (one value
    per call, from the same distribution on both sides) must not be named; a feature
    missing in every failing row still is."""
    rng = np.random.default_rng(17)
    t0 = 1_700_000_000 * 10**9
    named = 0
    for _ in range(5):
        normal = _batched_spans(rng, 200, t0)
        failing = _batched_spans(rng, 4, t0 + 300 * 10**9)
        diffs = {d["feature"]: d for d in compare_input_profiles(failing, normal)}
        assert diffs["acct"]["row_correlation"] == 1.0  # every row of a call shares its account
        named += diffs["acct"]["significant"]
        assert not diffs["amount"]["significant"], diffs["amount"]
    assert named == 0
    # A client that omits amount in whole requests (a fifth of them): 8 failing calls that
    # happen to hold 3 such requests are 3 of 8, not 90 of 240 independent missing values.
    named = 0
    for _ in range(5):
        normal = _batched_spans(rng, 200, t0, omit_share=0.2)
        failing = _batched_spans(rng, 3, t0, amount_missing=True) + _batched_spans(rng, 5, t0 + 10**10)
        diffs = {d["feature"]: d for d in compare_input_profiles(failing, normal)}
        assert 0.3 < diffs["amount"]["missing_failing"] < 0.45 and diffs["amount"]["row_correlation"] > 0.9
        named += diffs["amount"]["significant"]
    assert named == 0
    failing = _batched_spans(rng, 4, t0 + 300 * 10**9, amount_missing=True)
    diffs = compare_input_profiles(failing, _batched_spans(rng, 200, t0))
    assert diffs[0]["feature"] == "amount" and diffs[0]["significant"], diffs[0]
    assert "amount missing in 100% of failing vs 0% of normal" in diffs[0]["summary"]
    assert not any(d["significant"] for d in diffs[1:]), diffs[1:]


class _DriftCharts(HTMLParser):
    """The drift histograms of an html report: feature -> series -> [(group, share)],
    and the example trace lines."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, list[tuple[str, float]]]] = {}
        self.other_charts: list[str] = []
        self._feature: str | None = None
        self._li = False
        self.lines: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            if a.get("data-chart") == "drift-histogram":
                self._feature = a["data-feature"]
                self.charts[self._feature] = {}
            else:
                self.other_charts.append(a.get("data-chart"))
        elif tag == "rect" and self._feature and "data-series" in a:
            self.charts[self._feature].setdefault(a["data-series"], []).append((a["data-group"], float(a["data-share"])))
        self._li = tag == "li"

    def handle_endtag(self, tag):
        if tag == "svg":
            self._feature = None

    def handle_data(self, data):
        if self._li:
            self.lines.append(data)


def test_html_drift_report_has_a_histogram_per_drifted_feature(tmp_path):
    """Each drifted feature gets a histogram of the reference's and the window's shares in
    the groups the test compared; the shares are the report's, the mass moved where the
    finding says, and a clean window draws none."""
    from stagetrace.forensics import render

    rep, _, _ = _two_client_window(tmp_path, 6)
    parser = _DriftCharts()
    parser.feed(render([rep], "html"))
    drifted = [f.evidence["feature"] for f in rep.findings]
    assert drifted and "amount" in drifted
    assert sorted(parser.charts) == sorted(drifted)
    for f in rep.findings:
        chart = parser.charts[f.evidence["feature"]]
        groups = f.evidence["groups"]
        for series in ("reference", "current"):
            got = chart[series]
            assert [g for g, _ in got] == [g["group"] for g in groups]
            assert [v for _, v in got] == pytest.approx([g[series] for g in groups], abs=1e-6)
            assert sum(v for _, v in got) == pytest.approx(1.0, abs=1e-3)
        # where the finding says the new mass went, the window's bar is the taller
        top = dict(chart["current"])[f.evidence["top_group"]]
        assert top > dict(chart["reference"])[f.evidence["top_group"]]
    amount = parser.charts["amount"]
    assert max(v for _, v in amount["current"]) < 0.9  # a real histogram, not one bar
    assert any(line.startswith("stagetrace trace ") for line in parser.lines)
    assert any("client.version=2.0" in line for line in parser.lines)

    clean, _, _ = _two_client_window(tmp_path, None)
    assert clean.findings == []
    parser = _DriftCharts()
    parser.feed(render([clean], "html"))
    assert parser.charts == {}


def _scored(spans, rng, model_shift: float):
    """Give each one-row span the output profile of a model whose fraud probability
    depends on amount, through the real output capture; ``model_shift`` moves the logit
    (a retrained or swapped model: the inputs unchanged, the predictions not)."""
    from stagetrace.instrumentation.profile_capture import output_attributes

    class Model:  # what the capture reads of a scikit-learn classifier: its classes
        classes_ = np.array([0, 1])

    for sp in spans:
        amount = mp.distributions([sp])["amount"]
        code = next(iter(amount.counts)) if amount.counts else None
        x = 50.0 if code is None else float(np.mean(mlprofile.bin_edges(code)))
        p = 1.0 / (1.0 + np.exp(-((x - 50.0) / 10.0 - 1.0 + model_shift + rng.normal(0, 0.5))))
        sp.attributes.update(output_attributes(np.array([[1.0 - p, p]]), Model()))
    return spans


def test_prediction_drift_without_input_drift_and_the_previous_period(tmp_path):
    """A model swapped under unchanged inputs: the prediction scores drift, no input does,
    against a reference built from stored predictions and against the previous period.
    Without a reference the previous period is the baseline, and the report says so."""
    rng = np.random.default_rng(12)
    sec = 10**9
    t0 = 1_700_000_000 * sec
    refp = tmp_path / "ref.json"
    ref_spans = _scored(bench.spans_for(bench.rows(rng, 3000), 0, 1, rng=rng), rng, 0.0)
    save_reference(refp, "m", None, mp.distributions(ref_spans), mp.score_dist(ref_spans), "stored predictions")
    prev = _scored(bench.spans_for(bench.rows(rng, 1500), t0 - 1000 * sec, sec // 2, rng=rng), rng, 0.0)
    clean = _scored(bench.spans_for(bench.rows(rng, 1500), t0, sec // 2, rng=rng), rng, 0.0)
    swapped = _scored(bench.spans_for(bench.rows(rng, 1500), t0, sec // 2, rng=rng), rng, 1.5)

    def drift(window, reference):
        return investigate_drift(bench.MemoryBackend(prev + window), model="m", version=None, start_ns=t0,
                                 end_ns=t0 + 1000 * sec, reference=reference, interval_ns=100 * sec)

    rep = drift(swapped, refp)
    assert [f.evidence["feature"] for f in rep.findings] == [PREDICTION], rep.verdict
    row = next(r for r in rep.data["features"] if r["feature"] == PREDICTION)
    assert row["vs_previous"] is not None and row["vs_previous"]["significant"], row["vs_previous"]
    assert rep.findings[0].evidence["vs_previous_psi"] == row["vs_previous"]["psi"]
    assert drift(clean, refp).findings == []
    rep = drift(swapped, None)
    assert any("previous period" in n for n in rep.notes), rep.notes
    assert [f.evidence["feature"] for f in rep.findings] == [PREDICTION], rep.verdict
    assert "the previous period" in rep.findings[0].summary
    assert drift(clean, None).findings == []


def _outputs(spans, values, instance):
    from stagetrace.instrumentation.profile_capture import output_attributes

    for sp, v in zip(spans, values):
        sp.attributes.update(output_attributes(np.asarray(v), instance))
    return spans


def test_prediction_scores_in_score_units_for_classifiers_and_regressors(tmp_path):
    """A confident classifier whose scores move within 0.80-0.95 (a 0.05 grid, labelled as
    scores, not as internal bins), a regressor's values (not counted as missing), and a
    version-1 reference's stored scores, read as score steps."""
    rng = np.random.default_rng(8)

    class Clf:
        classes_ = np.array(["legit", "fraud"])

    def clf_spans(n, center):
        p = np.clip(rng.normal(center, 0.03, n), 0, 1)
        return _outputs(bench.spans_for(bench.rows(rng, n), 0, 1, rng=rng), [[[1 - q, q]] for q in p], Clf())

    ref = mp.score_dist(clf_spans(3000, 0.84))
    assert ref.kind == "s" and ref.missing == 0
    shifted = mp.compare(PREDICTION, ref, mp.score_dist(clf_spans(1500, 0.88)), tests=5)
    assert shifted.significant and shifted.top_group in ("[0.85, 0.90)", "[0.90, 0.95)", ">= 0.90", ">= 0.95")
    labels = [g["group"] for g in shifted.groups]
    # score units on the 0.05 grid: "< 0.85", "[0.85, 0.90)", ">= 0.90" (main: "< 16", "[16, 20)")
    assert len(labels) >= 4 and all(re.fullmatch(r"(< |>= )?\[?[01]\.\d[05](, [01]\.\d[05]\))?", lb)
                                    for lb in labels[:-1]), labels
    assert not mp.compare(PREDICTION, ref, mp.score_dist(clf_spans(1500, 0.84)), tests=5).significant

    def reg_spans(n, mean):
        return _outputs(bench.spans_for(bench.rows(rng, n), 0, 1, rng=rng), [[v] for v in rng.normal(mean, 20, n)], None)

    reg = mp.score_dist(reg_spans(3000, 200.0))
    assert reg.kind == "n" and reg.missing == 0 and reg.rows == 3000
    assert mp.compare(PREDICTION, reg, mp.score_dist(reg_spans(1500, 215.0)), tests=5).significant
    assert not mp.compare(PREDICTION, reg, mp.score_dist(reg_spans(1500, 200.0)), tests=5).significant

    # a reference written before the steps (version 1: the steps plus one, as float bins)
    old = mp.FeatureDist("n", missing=3, rows=33)
    old.counts.update({int(mlprofile.bin_codes([17.0])[0]): 20, int(mlprofile.bin_codes([3.0])[0]): 10})
    refp = tmp_path / "v1.json"
    save_reference(refp, "m", None, {}, None, "t")
    doc = json.loads(refp.read_text())
    doc.update(version=1, prediction=old.to_json())
    refp.write_text(json.dumps(doc))
    _, pred, _ = load_reference(refp)
    assert pred.kind == "s" and dict(pred.counts) == {15: 20, 2: 10} and (pred.missing, pred.rows) == (3, 33)


def test_text_and_markdown_drift_reports_give_example_traces(tmp_path):
    from stagetrace.forensics import render

    rep, _, _ = _two_client_window(tmp_path, 6)
    ids = rep.findings[0].evidence["example_trace_ids"]
    assert ids
    for fmt in ("text", "md"):
        page = render([rep], fmt)
        lines = "\n".join(ln for ln in page.splitlines() if ln.lstrip("- ").startswith("amount:"))
        assert lines, page
        assert all(f"stagetrace trace {t}" in lines for t in ids), (fmt, lines)
