"""``stagetrace profile build`` (issue 18, item 2) and ``investigate drift`` reading the
reference it stored.

A real scikit-learn model scores three periods under the real ``opentelemetry-instrument``,
exporting to a real ``stagetrace collector``: healthy, clean (same distribution), and
shifted (``amount`` in cents). References are built from the app's training file (CSV
and Parquet) and from the healthy window of the stored spans, stored per model name and
version; every command is the real CLI in a subprocess. Each reference must find the
shifted feature, and only it, in the shifted period, and nothing in the clean one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stagetrace.collector.process import start_collector
from stagetrace.forensics.drift import PREDICTION

from ml_apps import inference_spans, run_instrumented  # noqa: I001 - tests/ helper

APP = Path(__file__).parent / "apps" / "drift_app.py"
FEATURES = {"amount", "hour", "merchant_risk"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stagetrace.cli", *args], capture_output=True, text=True, timeout=180)


def _drift(data: Path, period: list[int], *extra: str) -> dict:
    r = _cli("investigate", "drift", "--model", "fraud", "--from", str(period[0]), "--until", str(period[1]),
             "--data-dir", str(data), "--format", "json", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    return doc[0] if isinstance(doc, list) else doc


def _drifted_inputs(report: dict) -> list[str]:
    """Input features named by drift findings, in report order (the prediction is not an input)."""
    return [f["evidence"]["feature"] for f in report["findings"] if f["evidence"]["feature"] in FEATURES]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(data dir, app dir, periods) of one instrumented run, the collector stopped."""
    tmp = tmp_path_factory.mktemp("served")
    data = tmp / "data"
    with start_collector(data, token="s3cret") as c:
        run_instrumented(APP, [str(tmp)], c, tmp, STAGETRACE_MODEL_NAME="fraud", STAGETRACE_MODEL_VERSION="v1")
        spans = inference_spans(c.data_dir, 120)
    assert len(spans) == 120
    return data, tmp, json.loads((tmp / "periods.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("train_file", ["train.csv", "train.parquet"])
def test_reference_from_a_training_file_finds_the_shift_and_only_it(served, train_file, tmp_path):
    data, app_dir, periods = served
    ref = tmp_path / "ref.json"
    r = _cli("profile", "build", "--model", "fraud", "--version", "v1", "--from-file", str(app_dir / train_file),
             "--output", str(ref))
    assert r.returncode == 0, r.stderr
    assert "3 features, 3000 rows" in r.stdout
    doc = json.loads(ref.read_text())
    assert set(doc["features"]) == FEATURES and doc["model"] == "fraud" and doc["model_version"] == "v1"
    shifted = _drift(data, periods["shifted"], "--version", "v1", "--reference", str(ref))
    assert _drifted_inputs(shifted) == ["amount"], shifted["verdict"]
    assert shifted["findings"][0]["evidence"]["feature"] == "amount"
    clean = _drift(data, periods["clean"], "--version", "v1", "--reference", str(ref))
    assert clean["findings"] == [], clean["verdict"]


@pytest.mark.slow
def test_reference_from_a_healthy_window_is_stored_per_model_and_version(served, tmp_path):
    data, app_dir, periods = served
    store = tmp_path / "profiles-home"  # the data dir of the references: the spans' store, copied
    shutil.copytree(data, store)
    healthy, clean, shifted = periods["healthy"], periods["clean"], periods["shifted"]
    r = _cli("profile", "build", "--model", "fraud", "--version", "v1", "--from", str(healthy[0]),
             "--until", str(healthy[1]), "--data-dir", str(store))
    assert r.returncode == 0, r.stderr
    assert "640 rows (40 stored predictions)" in r.stdout, r.stdout
    v1 = store / "profiles" / "fraud" / "v1.json"
    assert v1.exists() and json.loads(v1.read_text())["prediction"] is not None  # the scores are profiled too
    # references of another version and of the model at large, both from data in cents: if
    # `drift --version v1` read either, the clean period would look drifted
    cents = tmp_path / "cents.csv"
    lines = (app_dir / "train.csv").read_text().splitlines()
    cents.write_text("\n".join([lines[0]] + [f"{float(a) * 100},{rest}" for a, _, rest in
                                              (ln.partition(",") for ln in lines[1:])]))
    for version in (["--version", "v2"], []):
        r = _cli("profile", "build", "--model", "fraud", *version, "--from-file", str(cents), "--data-dir", str(store))
        assert r.returncode == 0, r.stderr
    assert {p.name for p in (store / "profiles" / "fraud").iterdir()} == {"v1.json", "v2.json", "any.json"}
    # a window with no predictions of the model is one line and a non-zero exit
    r = _cli("profile", "build", "--model", "nobody", "--from", str(healthy[0]), "--until", str(healthy[1]),
             "--data-dir", str(store))
    assert r.returncode == 2 and "no profiled inference spans of model 'nobody'" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (store / "profiles" / "nobody").exists()

    rep = _drift(store, shifted, "--version", "v1")  # no --reference: the stored v1 profile
    assert str(v1) == rep["query"]["reference"]
    assert _drifted_inputs(rep) == ["amount"], rep["verdict"]
    assert rep["findings"][0]["evidence"]["feature"] == "amount"
    # a reference from stored predictions profiles their scores too: if they moved with
    # amount, that is reported after the input
    assert [f["evidence"]["feature"] for f in rep["findings"]] in (["amount"], ["amount", PREDICTION])
    rep = _drift(store, clean, "--version", "v1")
    assert rep["findings"] == [], rep["verdict"]
    # without --version the model's own reference is read: against it the clean period drifted
    rep = _drift(store, clean)
    assert str(store / "profiles" / "fraud" / "any.json") == rep["query"]["reference"]
    assert _drifted_inputs(rep) == ["amount"], rep["verdict"]
