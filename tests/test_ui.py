"""`stagetrace ui` in a real browser (Debian's headless Chromium, driven by Selenium
through Debian's chromedriver), over a real store.

The store: tests/telemetry_gen.py emits two 10-minute incidents with the real
OTel SDK over OTLP into a `stagetrace collector` subprocess (the collector keeps
running and serves the UI's trace lookups, as in normal use): slow feature
fetches on shard 7 (onset half-way), then model v2 raising on a missing feature.
`stagetrace ui` runs as its own subprocess on a free loopback port. Nothing is
mocked. Screenshots of each page go to tests/artifacts/ui/ (git-ignored).

The investigation assertions read the structured report JSON the page drew
(`window.stagetrace.lastReport`), not its wording.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import telemetry_gen as gen
from stagetrace import semconv

MIN = 60_000_000_000
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("STAGETRACE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "ui"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        msg = f"{', '.join(missing)} not installed: `make deps` installs Debian's chromium and chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def start_ui(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`stagetrace ui` on a free port; returns the process and its printed URL."""
    exe = Path(sys.executable).with_name("stagetrace")
    proc = subprocess.Popen([str(exe), "ui", "--data-dir", str(data_dir), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()  # the ready line, or "" when it exited
    m = re.match(r"^stagetrace ui ready url=(\S+)$", line.strip())
    if not m:
        proc.kill()
        raise AssertionError(f"stagetrace ui did not start: {line!r} {proc.stderr.read()}")
    return proc, m.group(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from stagetrace.collector.process import start_collector
    data = tmp_path_factory.mktemp("ui-store")
    now = time.time_ns()
    with start_collector(data) as c:
        ex = gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint)
        slow = gen.generate("slow_shard", ex, minutes=10, end_ns=now - 15 * MIN)
        errors = gen.generate("v2_errors", ex, minutes=10, end_ns=now)
        proc, url = start_ui(c.data_dir)
        try:
            yield {"url": url, "data_dir": c.data_dir, "slow": slow, "errors": errors}
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def driver():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


def window(r) -> str:
    return f"from={r.start_ns // 1_000_000}&to={r.end_ns // 1_000_000}"


def wait(d, js: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while True:
        v = d.execute_script(js)
        if v or time.monotonic() > end:
            return v
        time.sleep(0.05)


def open_page(d, url: str) -> None:
    d.get(url)
    state = wait(d, "const s = document.getElementById('app').dataset.state; return s === 'loading' ? null : s")
    assert state == "ready", (url, state, d.find_element("id", "app").text[:500])


def console_errors(d) -> list[dict]:
    return [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def shot(d, name: str) -> None:
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def plot_xy(d, start_ms: float, duration_ms: float) -> tuple[float, float]:
    """Viewport coordinates of (start time, duration) on the scatter plot."""
    return d.execute_script("""
        const [t, dur] = arguments;
        const s = document.getElementById('scatter'), bg = s.querySelector('.plot-bg');
        const r = s.getBoundingClientRect(), doc = window.stagetrace.lastSearch;
        const ml = +bg.getAttribute('x'), mt = +bg.getAttribute('y'), pw = +bg.getAttribute('width'), ph = +bg.getAttribute('height');
        const maxD = Math.max(1, ...doc.points.map((p) => p.duration_ms)) * 1.05;
        const x = ml + (t - doc.window.start_ms) / (doc.window.end_ms - doc.window.start_ms) * pw;
        const y = mt + ph - Math.min(dur, maxD) / maxD * ph;
        return [r.left + x, r.top + y];""", start_ms, duration_ms)


def pointer(d):
    from selenium.webdriver.common.action_chains import ActionChains
    return ActionChains(d, duration=50)


def drag(d, a: tuple[float, float], b: tuple[float, float]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    ab = ActionBuilder(d, duration=50)
    ab.pointer_action.move_to_location(int(a[0]), int(a[1])).pointer_down()
    ab.pointer_action.move_to_location(int((a[0] + b[0]) / 2), int((a[1] + b[1]) / 2))
    ab.pointer_action.move_to_location(int(b[0]), int(b[1])).pointer_up()
    ab.perform()


def click_at(d, xy: tuple[float, float]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    ab = ActionBuilder(d, duration=50)
    ab.pointer_action.move_to_location(int(xy[0]), int(xy[1])).click()
    ab.perform()


def report_of(d, timeout: float = 60.0) -> dict:
    state = wait(d, "const s = document.getElementById('investigation').dataset.state; "
                    "return s === 'running' ? null : s", timeout)
    assert state == "done", (state, d.find_element("id", "investigation").text[:500])
    return d.execute_script("return window.stagetrace.lastReport")


# --- the pages, in a browser --------------------------------------------------------------


def test_search_page_shows_the_incident_and_filters_live_in_the_url(store, driver):
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?{window(slow)}")
    doc = d.execute_script("return window.stagetrace.lastSearch")
    assert doc["count"] == len(d.find_elements("css selector", "#scatter .dot")) > 100
    assert doc["matched"] == slow.requests  # the embedded store's one-query sample knows the total
    assert doc["mode"] == "root" and {p["service"] for p in doc["points"]} == {gen.API}
    # the incident is on the plot: after the onset the slow dots are the injected ones
    onset_ms = slow.onset_ns / 1e6
    late_slow = [p for p in doc["points"] if p["start_ms"] >= onset_ms and p["duration_ms"] > 300]
    assert len(late_slow) >= 10
    assert {p["trace_id"] for p in late_slow} <= set(slow.faulty_trace_ids)
    assert not [p for p in doc["points"] if p["start_ms"] < onset_ms and p["duration_ms"] > 300]
    shot(d, "search")
    assert console_errors(d) == []

    # filter through the form: errors only, in the v2 window
    open_page(d, f"{store['url']}?{window(store['errors'])}")
    from selenium.webdriver.support.ui import Select
    Select(d.find_element("id", "f-status")).select_by_value("error")
    d.find_element("id", "f-min").send_keys("1ms")
    d.find_element("id", "search-button").click()
    wait(d, "return location.search.includes('status=error')")
    open_page(d, d.current_url)  # the URL alone gives the same view
    assert "status=error" in d.current_url and "min=1ms" in d.current_url
    assert d.find_element("id", "f-status").get_attribute("value") == "error"
    doc = d.execute_script("return window.stagetrace.lastSearch")
    errors = set(store["errors"].error_trace_ids)
    assert doc["count"] >= 10 and all(p["error"] and p["trace_id"] in errors for p in doc["points"])
    rows = d.find_elements("css selector", "#result-table tbody tr")
    assert rows and all("row-error" in r.get_attribute("class") for r in rows)
    assert len(d.find_elements("css selector", "#scatter .dot-error")) == doc["count"]

    # a service that no root carries: its entry spans are plotted
    open_page(d, f"{store['url']}?{window(store['slow'])}&service={gen.FEATURES}")
    doc = d.execute_script("return window.stagetrace.lastSearch")
    assert doc["mode"] == "entry" and doc["count"] > 100
    assert {(p["service"], p["name"]) for p in doc["points"]} == {(gen.FEATURES, "GET /features/{entity_id}")}
    # an attribute only an inner span carries: those spans are plotted, and they hold the slow ones
    open_page(d, f"{store['url']}?{window(store['slow'])}&service={gen.FEATURES}&attr=feature.store.shard%3D7")
    doc = d.execute_script("return window.stagetrace.lastSearch")
    assert doc["mode"] == "span" and doc["count"] > 5
    assert {(p["service"], p["name"]) for p in doc["points"]} == {(gen.FEATURES, "feature_store.lookup")}
    assert max(p["duration_ms"] for p in doc["points"]) > 300
    assert console_errors(d) == []


def test_open_the_slowest_trace_from_the_plot(store, driver):
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?{window(slow)}")
    doc = d.execute_script("return window.stagetrace.lastSearch")
    top = max(doc["points"], key=lambda p: p["duration_ms"])
    click_at(d, plot_xy(d, top["start_ms"], top["duration_ms"]))
    wait(d, "return location.pathname.startsWith('/trace/')")
    open_page(d, d.current_url)
    assert d.current_url.endswith("/trace/" + top["trace_id"])
    rep = d.execute_script("return window.stagetrace.lastTrace")
    assert rep["kind"] == "trace" and rep["data"]["trace_id"] == top["trace_id"]
    # the critical path is highlighted, and it runs through the slow feature fetch
    crit = d.find_elements("css selector", ".span-row.critical")
    assert len(crit) == sum(1 for s in rep["data"]["spans"] if s["critical"]) >= 3
    assert d.find_elements("css selector", ".span-row.critical .stage-badge[data-stage='feature_fetch']")
    assert d.find_elements("css selector", ".crit-seg")
    # logs sit under the span that emitted them, in time order
    rows = d.execute_script("""return [...document.querySelectorAll('#waterfall .span-row, #waterfall .log-row')]
        .map((e) => [e.classList.contains('span-row') ? 'span' : 'log', e.dataset.spanId, e.textContent]);""")
    assert sum(1 for r in rows if r[0] == "log") == rep["data"]["log_count"] - len(rep["data"]["unattached_logs"])
    owner = None
    for kind, sid, text in rows:
        if kind == "span":
            owner = sid
        else:
            assert sid == owner, "a log row is not under its span"
    miss = [r for r in rows if r[0] == "log" and "cache miss" in r[2]]
    assert miss, "the shard-7 cache miss log is not on the page"
    # a click on the span shows its attributes
    d.find_element("css selector", f".span-row[data-span-id='{miss[0][1]}']").click()
    attrs = d.find_element("id", "span-attributes").text
    assert semconv.FEATURE_STORE_SHARD in attrs and "7" in attrs
    assert d.find_elements("css selector", "#metrics figure"), "no service metrics drawn"
    shot(d, "trace")
    assert console_errors(d) == []


def test_a_trace_only_logs_carry_is_drawn_with_its_logs(tmp_path, driver):
    """A trace id whose spans never arrived, only its log lines (one with markup and an
    ANSI escape in it): the page said the trace was not found; it now says no span was
    found and lists the lines, as text (no markup runs), without a script error."""
    import hostile_otlp as h
    from stagetrace.collector.process import start_collector
    d = driver
    n = 0x5EED
    now = time.time_ns()
    with start_collector(tmp_path / "store") as c:
        lines = [h.HLog(now - 60 * 10**9 + i, body, 17, h.trace_id(n), h.span_id(7), service="checkout")
                 for i, body in enumerate(["payment failed", "<b id='injected'>bold</b> \x1b[31mred"])]
        assert h.send(c.http_endpoint, logs=lines)[1] == 200
        proc, url = start_ui(c.data_dir)
        try:
            open_page(d, f"{url.rstrip('/')}/trace/{n:032x}")
            text = d.find_element("id", "app").text
            assert f"No spans were found for trace {n:032x}" in text and "payment failed" in text, text[:800]
            assert "<b id='injected'>bold</b>" in text and not d.find_elements("id", "injected")
            assert console_errors(d) == []
            shot(d, "trace-logs-only")
        finally:
            proc.terminate()
            proc.wait(10)


def test_brushing_the_slow_region_names_the_injected_cause(store, driver):
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?{window(slow)}")
    # from the onset to the end of the window, every request slower than 250 ms
    a = plot_xy(d, slow.onset_ns / 1e6, 1e9)  # clamped to the top of the plot
    b = plot_xy(d, slow.end_ns / 1e6, 250)
    drag(d, a, b)
    rep = report_of(d)
    shot(d, "investigate-slow")
    assert rep["kind"] == "slow"
    assert abs(rep["data"]["threshold_ns"] - 250e6) < 5e6, rep["data"]["threshold_ns"]
    assert rep["window"]["start_ns"] >= slow.onset_ns - 60e9
    top = rep["findings"][0]
    assert top["significant"]
    assert top["stage"] == semconv.STAGE_FEATURE_FETCH or (
        top["attribute"] == semconv.FEATURE_STORE_SHARD and str(top["value"]) == "7"), top
    # every trace id on the panel opens the trace view
    links = d.find_elements("css selector", "#investigation a.trace-link")
    assert links and all(a.get_attribute("href").endswith("/trace/" + a.get_attribute("data-trace-id")) for a in links)
    shown = [a for a in links if a.is_displayed()]  # (the others are in folded evidence)
    tid = shown[0].get_attribute("data-trace-id")
    assert tid in set(slow.faulty_trace_ids)
    shown[0].click()
    wait(d, "return location.pathname.startsWith('/trace/')")
    open_page(d, d.current_url)
    assert console_errors(d) == []


def test_a_clean_window_names_no_cause(store, driver):
    """The control: the same service before the onset has only its natural tail."""
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?from={slow.start_ns // 1_000_000}&to={slow.onset_ns // 1_000_000}")
    d.find_element("id", "why-slow").click()
    rep = report_of(d)
    assert rep["kind"] == "slow"
    assert [f for f in rep["findings"] if f["significant"]] == [], rep["findings"][:2]
    assert console_errors(d) == []


def test_why_are_these_failing_finds_the_v2_incident(store, driver):
    d = driver
    open_page(d, f"{store['url']}?{window(store['errors'])}")
    d.find_element("id", "why-failing").click()
    rep = report_of(d)
    shot(d, "investigate-errors")
    top = rep["findings"][0]
    assert top["kind"] == "error_cluster" and top["significant"]
    assert (top["service"], top["stage"]) == (gen.API, semconv.STAGE_INFERENCE), top
    assert top["attribute"] == semconv.ML_MODEL_VERSION and top["value"] == "v2"
    assert console_errors(d) == []


def test_service_map(store, driver):
    d = driver
    open_page(d, f"{store['url']}map?{window(store['errors'])}")
    doc = d.execute_script("return window.stagetrace.lastMap")
    edge = next(e for e in doc["edges"] if (e["caller"], e["callee"]) == (gen.API, gen.FEATURES))
    assert edge["requests"] >= 100 and edge["rate_per_s"] > 0 and edge["p95_ms"] >= edge["p50_ms"] > 0
    api = next(n for n in doc["nodes"] if n["service"] == gen.API)
    assert 0.02 < api["error_rate"] < 0.5  # the v2 canary's failures
    assert d.find_elements("css selector", f"#servicemap path.edge[data-caller='{gen.API}'][data-callee='{gen.FEATURES}']")
    cells = [c.text for c in d.find_elements("css selector", "#edge-table tbody td")]
    assert gen.API in cells and gen.FEATURES in cells
    shot(d, "map")
    assert console_errors(d) == []


@pytest.fixture(scope="module")
def burst(tmp_path_factory):
    """What `stagetrace demo` leaves: a few minutes of requests, a little before now, in
    an otherwise empty hour."""
    from stagetrace.collector.process import start_collector
    data = tmp_path_factory.mktemp("ui-burst")
    with start_collector(data) as c:
        ex = gen.OtlpExporters(grpc_endpoint=c.grpc_endpoint)
        run = gen.generate("slow_shard", ex, minutes=3, end_ns=time.time_ns() - 2 * MIN)
        proc, url = start_ui(c.data_dir)
        try:
            yield {"url": url, "run": run}
        finally:
            proc.terminate()
            proc.wait(10)


def x_spread(d) -> float:
    """How much of the scatter plot's width the dots cover (0..1)."""
    return d.execute_script("""
        const bg = document.querySelector('#scatter .plot-bg'), w = +bg.getAttribute('width');
        const xs = [...document.querySelectorAll('#scatter .dot')].map((e) =>
            e.tagName === 'circle' ? +e.getAttribute('cx') : +e.getAttribute('d').slice(1).split(',')[0]);
        return (Math.max(...xs) - Math.min(...xs)) / w;""")


def test_opens_on_the_requests_extent_and_the_url_keeps_it(burst, driver):
    d, run = driver, burst["run"]
    open_page(d, burst["url"])  # no range in the URL: "last 1h" would put every dot in one column
    doc = d.execute_script("return window.stagetrace.lastSearch")
    assert doc["fitted"], "opened on the whole hour"
    assert doc["matched"] == run.requests  # every request of the burst is in the fitted window
    w = doc["window"]
    assert w["start_ms"] <= run.start_ns / 1e6 and w["end_ms"] >= (run.end_ns - 60e9) / 1e6
    assert w["end_ms"] - w["start_ms"] < 0.25 * 3600e3
    assert x_spread(d) > 0.8, "the dots do not spread over the plot"
    # the range shown is in the URL, and the URL alone gives the same view
    q = d.execute_script("return location.search")
    assert f"from={doc['fitted']['from_ms']}" in q and f"to={doc['fitted']['to_ms']}" in q
    assert d.find_element("id", "fit-note").is_displayed()
    assert "UTC" in d.find_element("css selector", "#f-since option:checked").text
    shot(d, "search-fitted")
    shared = d.current_url
    open_page(d, shared)
    again = d.execute_script("return window.stagetrace.lastSearch")
    assert "fitted" not in again and again["window"] == w and again["count"] == doc["count"]
    assert not d.find_elements("id", "fit-note")
    # the whole hour is one click away, and stays as chosen
    open_page(d, burst["url"])
    d.find_element("id", "fit-undo").click()
    wait(d, "return location.search.includes('since=1h')")
    open_page(d, d.current_url)
    whole = d.execute_script("return window.stagetrace.lastSearch")
    assert "fitted" not in whole
    assert whole["window"]["end_ms"] - whole["window"]["start_ms"] == pytest.approx(3600e3, abs=5e3)
    assert x_spread(d) < 0.1  # what the page used to open on
    assert console_errors(d) == []


def test_a_range_the_data_fills_is_kept(store, driver):
    """The control: the main store's requests fill most of the last hour, so it opens on it."""
    d = driver
    open_page(d, store["url"])
    doc = d.execute_script("return window.stagetrace.lastSearch")
    assert "fitted" not in doc and "from=" not in d.current_url
    assert doc["window"]["end_ms"] - doc["window"]["start_ms"] == pytest.approx(3600e3, abs=5e3)


def test_fitted_window_rule():
    from stagetrace.ui.extent import fitted_window
    s = 1_000_000_000
    hour = (0, 3600 * s)
    assert fitted_window(100 * s, 400 * s, *hour) == (85 * s, 415 * s)  # 5 % margin, whole seconds
    assert fitted_window(0, 2000 * s, *hour) is None  # the data fills the hour
    assert fitted_window(1800 * s, 1800 * s, *hour) == (1799 * s, 1801 * s)  # one request: 1 s margin
    assert fitted_window(3599 * s, 3599 * s + s // 2, *hour) == (3598 * s, 3600 * s)  # never past the range
    assert fitted_window(5 * s, 4 * s, *hour) is None


def test_metric_charts_have_a_y_axis_with_units(store, driver):
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?{window(slow)}")
    top = max(d.execute_script("return window.stagetrace.lastSearch")["points"], key=lambda p: p["duration_ms"])
    open_page(d, f"{store['url']}trace/{top['trace_id']}")
    rep = d.execute_script("return window.stagetrace.lastTrace")
    series = [m for m in rep["data"]["metrics"] if not m.get("error") and m.get("points")][:24]
    charts = d.execute_script("""
        return [...document.querySelectorAll('#metrics svg.metric-chart')].map((s) => {
          const bg = s.querySelector('.plot-bg'), win = s.querySelector('.trace-window');
          return {
            lo: +s.dataset.lo, hi: +s.dataset.hi,
            plot: [+bg.getAttribute('y'), +bg.getAttribute('height'), +bg.getAttribute('x'), +bg.getAttribute('width')],
            // (value, height of its grid line, label)
            ticks: [...s.querySelectorAll('.y-tick')].map((t, i) =>
                [+t.dataset.value, +s.querySelectorAll('line.grid')[i].getAttribute('y1'), t.textContent]),
            xticks: [...s.querySelectorAll('.x-tick')].map((t) => t.textContent),
            pts: [...s.querySelectorAll('.pt')].map((c) => [+c.dataset.value, +c.getAttribute('cy')]),
            win: win && [+win.getAttribute('x'), +win.getAttribute('width')],
          };
        });""")
    assert len(charts) == len(series) >= 3
    suffix = {"process.memory.usage": ("B", "KiB", "MiB", "GiB"), "process.cpu.utilization": ("%",),
              "db.client.connection.wait_time": (" s", " ms", " µs")}
    seen = set()
    for m, c in zip(series, charts):
        values = [p["value"] for p in m["points"]]
        assert len(c["ticks"]) >= 2, (m["name"], c)
        tv = [t[0] for t in c["ticks"]]
        assert tv == sorted(tv) and [t[1] for t in c["ticks"]] == sorted((t[1] for t in c["ticks"]), reverse=True)
        assert c["lo"] <= min(values) and c["hi"] >= max(values)  # every point is on the scale
        # the ticks are the scale the points are drawn on: interpolate each point's height
        (v0, y0, _), (v1, y1, _) = c["ticks"][0], c["ticks"][-1]
        for v, cy in c["pts"]:
            assert abs(y0 + (v - v0) / (v1 - v0) * (y1 - y0) - cy) < 0.6, (m["name"], v, cy)
        if m["name"] in suffix:
            seen.add(m["name"])
            assert all(t[2].endswith(suffix[m["name"]]) for t in c["ticks"]), (m["name"], m["unit"], c["ticks"])
        # UTC clock times, hh:mm:ss
        assert c["xticks"] and all(len(t) == 8 and t[2] == t[5] == ":" and t.replace(":", "").isdigit()
                                   for t in c["xticks"])
        # the trace's own window is still marked, inside the plot
        ptop, ph, px, pw = c["plot"]
        assert c["win"] and c["win"][1] >= 2 and px <= c["win"][0] and c["win"][0] + c["win"][1] <= px + pw + 0.5
    assert {"process.memory.usage", "process.cpu.utilization"} <= seen
    # units the demo's own services export too: an annotation is the axis title, not a suffix
    scales = d.execute_script("""return [['{request}', 'http.server.active_requests', 3], ['{request}/s', 'x', 1500],
        ['s', 'x', 0], ['s', 'x', 0.02], ['ms', 'x', 2500], ['By', 'x', 3.1e8], ['1', 'process.cpu.utilization', 0.4],
        ['1', 'x', 7]].map((a) => metricScale(...a))""")
    assert [(c["div"], c["suffix"], c["title"]) for c in scales] == [
        (1, "", "request"), (1000, "k/s", "request"), (1, " s", ""), (0.001, " ms", ""), (1000, " s", ""),
        (2 ** 20, " MiB", ""), (0.01, "%", ""), (1, "", "")]
    metrics = d.find_element("id", "metrics")
    d.execute_script("arguments[0].scrollIntoView()", metrics)
    metrics.screenshot(str(ARTIFACTS / "trace-metrics.png"))
    assert console_errors(d) == []


# --- the server's rules (no browser) ---------------------------------------------------------


def _http(url: str, *, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_bad_requests_get_one_line_errors(store):
    u = store["url"]
    for path, code in (("api/search?min=fast", 400), ("api/search?status=broken", 400),
                       ("api/search?from=2&to=1", 400), ("api/trace/xyz", 400),
                       ("api/trace/" + "ab" * 16, 404), ("static/../ui/cli.py", 404), ("nope", 404)):
        status, _, body = _http(u + path)
        assert status == code, (path, status, body)
        if path.startswith("api/"):
            msg = json.loads(body)["error"]
            assert msg and "\n" not in msg and "Traceback" not in msg
    status, _, _ = _http(u + "api/investigate", data=b"x" * (65 * 1024), headers={"Content-Type": "application/json"})
    assert status == 413
    status, _, body = _http(u + "api/investigate", data=b'{"kind": "slow", "threshold": "p200"}')
    assert status == 400 and "percentile" in json.loads(body)["error"]
    status, _, _ = _http(u + "api/search?" + "a=1&" * 3000)
    assert status == 414
    # a page on another origin cannot reach the UI through DNS rebinding
    status, _, _ = _http(u + "api/health", headers={"Host": "evil.example:80"})
    assert status == 403
    status, headers, _ = _http(u)
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]


def test_token_and_remote_rules(store):
    exe = Path(sys.executable).with_name("stagetrace")
    p = subprocess.run([str(exe), "ui", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(store["data_dir"])],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--allow-remote" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([str(exe), "ui", "--host", "0.0.0.0", "--allow-remote", "--port", "0",
                        "--data-dir", str(store["data_dir"])], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--insecure" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    proc, url = start_ui(store["data_dir"], "--token", "s3cret-token")
    try:
        base = url.split("?")[0]
        assert url.endswith("?token=s3cret-token")
        assert _http(base + "api/health")[0] == 401
        assert _http(base + "api/health", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _http(base + "api/health", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        status, headers, _ = _http(url)  # the printed URL sets a cookie and drops the token from the address
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert _http(base + "api/health", headers={"Cookie": cookie})[0] == 200
        assert _http(base + "api/health", headers={"Cookie": "stagetrace_ui_token=nope"})[0] == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_artifacts_folder_is_ignored_by_git():
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    p = subprocess.run(["git", "check-ignore", "-q", "tests/artifacts/ui/search.png"], cwd=ROOT)
    assert p.returncode == 0


def test_search_and_map_over_tempo(store):
    """`--backend grafana`: the search plots Tempo's trace summaries through the same code.
    Tempo cannot run here, so tests/grafana_fakes.DatasetStack answers in Tempo's recorded
    response shapes, for this store's own spans."""
    from grafana_fakes import DatasetStack
    from stagetrace.backend import TraceQuery
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.forensics.grafana import GrafanaBackend
    from stagetrace.ui import api

    slow = store["slow"]
    with EmbeddedBackend(store["data_dir"]) as emb:
        spans = emb.find_spans(TraceQuery(start_ns=slow.start_ns, end_ns=slow.end_ns, limit=None))
    stack = DatasetStack(spans, [])
    try:
        with GrafanaBackend(tempo_url=stack.url, loki_url=stack.url) as remote:
            f = api.SearchFilters(start_ns=slow.start_ns, end_ns=slow.end_ns)
            doc = api.search(remote, f)
            errs = api.search(remote, api.SearchFilters(start_ns=slow.start_ns, end_ns=slow.end_ns, status="error"))
            smap = api.service_map(remote, slow.start_ns, slow.end_ns)
            # an hour holding only these 10 minutes: opened on their extent (from the plotted points)
            hour = api.SearchFilters(start_ns=slow.end_ns + 5 * MIN - 60 * MIN, end_ns=slow.end_ns + 5 * MIN)
            fitted = api.search(remote, hour, fit=True)
    finally:
        stack.close()
    assert doc["mode"] == "trace" and doc["count"] >= 300
    assert {p["service"] for p in doc["points"]} == {gen.API}
    late_slow = {p["trace_id"] for p in doc["points"] if p["start_ms"] >= slow.onset_ns / 1e6 and p["duration_ms"] > 300}
    assert len(late_slow) >= 10 and late_slow <= set(slow.faulty_trace_ids)
    assert errs["count"] >= 1 and all(p["error"] for p in errs["points"])
    edge = next(e for e in smap["edges"] if (e["caller"], e["callee"]) == (gen.API, gen.FEATURES))
    assert edge["requests"] >= 50 and edge["p95_ms"] > edge["p50_ms"] > 0
    assert fitted["fitted"] and fitted["fitted"]["range_ms"]["start_ms"] == hour.start_ns / 1e6
    assert fitted["window"]["start_ms"] <= doc["extent"]["first_ms"]
    assert fitted["window"]["end_ms"] >= doc["extent"]["last_ms"]
    assert fitted["window"]["end_ms"] - fitted["window"]["start_ms"] < 12 * MIN / 1e6
    assert fitted["count"] == doc["count"]


def test_fast_sample_agrees_with_the_backend(store):
    """The embedded store's one-query samples (ui/fastscan.py, which uses EmbeddedBackend
    internals) must be taken, and must mean what find_spans means."""
    from stagetrace.backend import TraceQuery
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.ui import api, fastscan

    r = store["slow"]
    with EmbeddedBackend(store["data_dir"]) as emb:
        assert fastscan.embedded_store(emb) is emb
        for kw, query in (({}, TraceQuery(root_only=True)),
                          ({"status": "error"}, TraceQuery(root_only=True, status="error")),
                          ({"min_duration_ns": 300_000_000}, TraceQuery(root_only=True, min_duration_ns=300_000_000)),
                          ({"operation": "feature_store.lookup", "attributes": {"feature.store.shard": 7}},
                           TraceQuery(span_name="feature_store.lookup", attributes={"feature.store.shard": 7}))):
            query.start_ns, query.end_ns, query.limit = r.start_ns, r.end_ns, None
            want = {s.span_id: s for s in emb.find_spans(query)}
            doc = api.search(emb, api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns, **kw), budget=10**6)
            got = {p["span_id"]: p for p in doc["points"]}
            assert want and set(got) <= set(want), kw
            if doc["matched"] is not None:
                assert doc["matched"] == len(want), kw
                # the extent the page may open on is the matching requests' own, exactly
                assert doc["extent"] == {"first_ms": min(s.start_ns for s in want.values()) / 1e6,
                                         "last_ms": max(s.start_ns for s in want.values()) / 1e6}, kw
            # every bucket's slowest are kept: the slowest few overall are always on the plot
            slowest = sorted(want.values(), key=lambda s: -s.duration_ns)[:3]
            assert all(s.span_id in got for s in slowest), kw
            for sid, p in got.items():
                assert (p["trace_id"], p["duration_ms"], p["error"]) == (
                    want[sid].trace_id, want[sid].duration_ns / 1e6, want[sid].is_error)
        smap = api.service_map(emb, r.start_ns, r.end_ns)
        assert smap["trace_fraction"] == 1.0  # fewer traces than the map's sample size: all of them
        edge = next(e for e in smap["edges"] if (e["caller"], e["callee"]) == (gen.API, gen.FEATURES))
        assert edge["requests"] == r.requests


def _newest(spans, n: int) -> list[str]:
    """The newest ``n`` spans' ids, as a full scan orders them (start, then span id, descending)."""
    return [s.span_id for s in sorted(spans, key=lambda s: (s.start_ns, s.span_id), reverse=True)[:n]]


SEARCHES = (  # (search form, the same as a find_spans query, keep only entry spans)
    ({}, {"root_only": True}, False),
    ({"status": "error"}, {"root_only": True, "status": "error"}, False),
    ({"service": gen.FEATURES}, {"service": gen.FEATURES}, True),
    ({"operation": "feature_store.lookup", "attributes": {"feature.store.shard": 7}},
     {"span_name": "feature_store.lookup", "attributes": {"feature.store.shard": 7}}, False),
)


def test_search_lists_the_newest_matches_exactly(store, monkeypatch):
    """The result list is the newest matching requests of the whole window (what Jaeger and
    Tempo answer), not the newest of the plotted sample: the same as a full scan's."""
    from stagetrace.backend import TraceQuery
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.ui import api

    # a sparser plot than the page's (this store holds fewer requests than its 1,500 points)
    monkeypatch.setattr(api, "FAST_PER_BUCKET", 2)
    monkeypatch.setattr(api, "FAST_SLOWEST_PER_BUCKET", 1)
    r = store["slow"]
    with EmbeddedBackend(store["data_dir"]) as emb:
        for form, kw, entry_only in SEARCHES:
            want = emb.find_spans(TraceQuery(start_ns=r.start_ns, end_ns=r.end_ns, limit=None, **kw))
            if entry_only:
                want = [s for s in want if not s.parent_span_id or s.kind in ("SERVER", "CONSUMER")]
            doc = api.search(emb, api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns, **form))
            assert doc["newest_exact"], form
            assert [p["span_id"] for p in doc["rows"]] == _newest(want, api.MAX_RESULT_ROWS), form
            if not form:  # more requests than points: a list of the sample's newest would differ
                assert doc["sampled"] and doc["count"] < len(want) and len(want) > api.MAX_RESULT_ROWS
                store["one_query_sample_doc"] = doc


def test_big_window_is_drawn_from_a_labelled_row_group_sample(store, monkeypatch):
    """Over more rows than a search may read, the plot comes from evenly spaced row groups
    (ui/fastscan.py): its points are real matches, the total is an estimate and says so,
    and the list stays the exact newest matches (an attribute filter: the sample's newest)."""
    from stagetrace.backend import TraceQuery
    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.ui import api, fastscan

    r = store["slow"]
    with EmbeddedBackend(store["data_dir"]) as emb:
        n_rows = len(emb.find_spans(TraceQuery(start_ns=r.start_ns, end_ns=r.end_ns, limit=None)))
        monkeypatch.setattr(fastscan, "SCAN_BUDGET_ROWS", 100)
        monkeypatch.setattr(fastscan, "ATTR_SCAN_BUDGET_ROWS", 100)
        monkeypatch.setattr(fastscan, "SAMPLE_ROWS", n_rows // 2)
        monkeypatch.setattr(fastscan, "SAMPLE_MIN_MATCHES", 100)
        monkeypatch.setattr(api, "FAST_PER_BUCKET", 2)  # this store's sample of rows holds a few hundred requests
        for form, kw, entry_only in SEARCHES:
            want = emb.find_spans(TraceQuery(start_ns=r.start_ns, end_ns=r.end_ns, limit=None, **kw))
            if entry_only:
                want = [s for s in want if not s.parent_span_id or s.kind in ("SERVER", "CONSUMER")]
            by_id = {s.span_id: s for s in want}
            doc = api.search(emb, api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns, **form))
            if form.get("status") == "error":  # few matches (counted first): read exactly instead
                assert len(want) <= 100 and doc["read_fraction"] == 1.0 and doc["matched"] == len(want)
                continue
            assert 0.2 < doc["read_fraction"] < 0.9 and doc["sampled"], form
            assert doc["points"] and all(p["span_id"] in by_id for p in doc["points"]), form
            assert doc["extent"]["first_ms"] <= min(s.start_ns for s in want) / 1e6, form  # never narrower
            assert doc["extent"]["last_ms"] >= max(s.start_ns for s in want) / 1e6, form
            if "attributes" in form:
                assert doc["matched"] is None and not doc["newest_exact"]
                assert all(p["span_id"] in by_id for p in doc["rows"])
            else:
                assert doc["matched"] == len(want) and not doc["matched_estimated"], form  # counted exactly
                assert doc["newest_exact"] and [p["span_id"] for p in doc["rows"]] == _newest(
                    want, api.MAX_RESULT_ROWS), form
        sampled = api.search(emb, api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns))
    store["row_group_sample_doc"] = sampled


def test_page_says_when_it_shows_a_sample(store, driver):
    """The summary says "N of M shown" and how the sample was taken, and nothing of a sample
    when every match is shown. The sampled answers are the ones the two tests above computed
    (this store is too small for the page's own sizes), served to the page's own search code
    in place of the server's answer."""
    d, slow = driver, store["slow"]
    open_page(d, f"{store['url']}?{window(slow)}")
    doc = d.execute_script("return window.stagetrace.lastSearch")
    summary = d.find_element("id", "search-summary").text
    assert not doc["sampled"] and summary.startswith(f"{doc['count']} requests ·") and "sample" not in summary
    answers = [store.get("one_query_sample_doc"), store.get("row_group_sample_doc")]
    if None in answers:
        pytest.skip("needs the answers of the two tests above")
    for sampled in answers:
        d.execute_script("""
            const doc = arguments[0];
            window.realFetch = window.realFetch || window.fetch;
            window.fetch = (url, opts) => String(url).includes('/api/search')
                ? Promise.resolve(new Response(JSON.stringify(doc), {status: 200, headers: {'Content-Type': 'application/json'}}))
                : window.realFetch(url, opts);
            searchPage();  // the page's own search, drawn from this answer""", sampled)
        wait(d, f"return document.getElementById('search-summary').textContent.includes('{sampled['count']} of ')")
        summary = d.find_element("id", "search-summary").text
        heading = d.find_element("id", "result-heading").text
        if sampled["read_fraction"] < 1:
            pct = f"{100 * sampled['read_fraction']:.0f}%"
            assert f"{sampled['count']} of {sampled['matched']:,} requests shown" in summary
            assert f"drawn from {pct} of the window's rows" in summary and "newest of all of them" in summary
            assert heading == f"Newest {len(sampled['rows'])} of {sampled['matched']:,}"
        else:
            assert f"{sampled['count']} of {sampled['matched']:,} requests shown" in summary
            assert "(a sample spread over the window, with each moment's slowest)" in summary
            assert heading == f"Newest {len(sampled['rows'])} of {sampled['matched']:,}"
    assert console_errors(d) == []


def test_https_with_a_token(store, tmp_path):
    """--tls-cert/--tls-key serve HTTPS (a self-signed certificate made with the openssl CLI)."""
    import ssl
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the openssl command line is needed to make the test certificate")
        pytest.skip("no openssl command line")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    proc, url = start_ui(store["data_dir"], "--token", "tls-token", "--tls-cert-file", str(tmp_path / "cert.pem"),
                         "--tls-key-file", str(tmp_path / "key.pem"))
    try:
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        base = url.split("?")[0]
        req = urllib.request.Request(base + "api/health", headers={"Authorization": "Bearer tls-token"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "api/health", context=ctx, timeout=30)
        assert e.value.code == 401
        with pytest.raises(OSError):  # plain HTTP is not served (and does not stop the server)
            urllib.request.urlopen(base.replace("https", "http") + "api/health", timeout=5)
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_error_search_reads_the_error_sidecars(store, monkeypatch):
    """`status=error` reads each block's error-span sidecar (or its entry sidecar, if that is
    smaller), not every entry span, and answers what find_spans answers."""
    from stagetrace.backend import TraceQuery
    from stagetrace.collector import query as cq
    from stagetrace.ui import api

    read: list[str] = []
    real = cq._Block.source

    def source(self, entries, errors=False):
        got = real(self, entries, errors)
        read.append(got[0].name)
        return got
    monkeypatch.setattr(cq._Block, "source", source)
    r = store["errors"]
    with cq.EmbeddedBackend(store["data_dir"]) as emb:
        doc = api.search(emb, api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns, status="error"))
        want = emb.find_spans(TraceQuery(start_ns=r.start_ns, end_ns=r.end_ns, root_only=True, status="error",
                                         limit=None))
    assert read and all(name.endswith(".errors.parquet") for name in read), sorted(set(read))[:5]
    assert want and doc["matched"] == len(want)
    assert [p["span_id"] for p in doc["rows"]] == _newest(want, api.MAX_RESULT_ROWS)


def test_attribute_prefilter_keeps_exactly_the_rows_holding_every_text():
    """The sample's byte prefilter (run in Arrow before DuckDB) keeps a row when each
    text is in its span body or its resource, on the raw bytes."""
    import pyarrow as pa

    from stagetrace.ui import fastscan

    body = b"\x0a\x10ml.model.version\x12\x04\x0a\x02v2"
    t = pa.table({"rest": pa.array([body, b"\x0aml.model.version", b"other", b"v2", body], pa.binary()),
                  "resource": pa.array([b"r", b"r\x12v2", b"ml.model.version v2", b"r", b"r"], pa.binary()),
                  "n": [0, 1, 2, 3, 4]})
    got = fastscan._prefiltered(t, {"ml.model.version": "v2"})
    assert got.column("n").to_pylist() == [0, 1, 2, 4]  # row 3 lacks the key
    assert fastscan._prefiltered(t, {"ml.model.version": 7}).column("n").to_pylist() == [0, 1, 2, 4]  # key only
    assert fastscan._prefiltered(t.slice(0, 0), {"a": "b"}).num_rows == 0


def test_attribute_sample_is_prefiltered_on_the_blocks_body_dictionaries(store, monkeypatch):
    """With an attribute filter, the row-group sample reads each block's bodies as
    dictionaries and keeps only the rows that pass the byte prefilter as it reads them
    (matching each row group's few distinct bodies, materialising nothing else): the
    same rows as prefiltering the plainly read sample, and the prefilter sees dictionaries."""
    import pyarrow as pa

    from stagetrace.collector.query import EmbeddedBackend
    from stagetrace.ui import fastscan

    r = store["slow"]
    attrs = {"feature.store.shard": "7", "service.name": gen.FEATURES}
    cols = fastscan._SAMPLE_COLUMNS + fastscan._DECODE_COLUMNS
    seen_types = []
    real = fastscan._prefiltered

    def spy(t, a):
        seen_types.append(t.schema.field("rest").type)
        return real(t, a)
    with EmbeddedBackend(store["data_dir"]) as emb:
        monkeypatch.setattr(fastscan, "SAMPLE_ROWS", 10 ** 9)  # every row group, so both reads see the same rows
        plain = fastscan._row_group_sample(emb, False, False, r.start_ns, r.end_ns, cols, 0, lambda: True)
        monkeypatch.setattr(fastscan, "_prefiltered", spy)
        got = fastscan._row_group_sample(emb, False, False, r.start_ns, r.end_ns, cols, 0, lambda: True, attrs)
    want = real(plain.blocks, attrs)
    assert 0 < want.num_rows < plain.blocks.num_rows  # the prefilter keeps some rows, not all
    assert sorted(got.blocks.column("span_id").to_pylist()) == sorted(want.column("span_id").to_pylist())
    assert got.fraction == plain.fraction and got.extent == plain.extent
    assert any(pa.types.is_dictionary(t) for t in seen_types), seen_types


def test_block_start_ranges_agree_with_the_footers_and_are_read_once(store):
    """Each block's row-group start ranges (kept per reader: a search asks for them on
    every request) are the footer's statistics, for the block and for its sidecars."""
    import pyarrow.parquet as pq

    from stagetrace.collector.query import EmbeddedBackend

    with EmbeddedBackend(store["data_dir"]) as emb:
        blocks = emb._view("spans").blocks
        assert blocks
        for b in blocks:
            for path in (b.ref.path, b.source(True)[0], b.source(False, True)[0]):
                md = pq.ParquetFile(path).metadata
                ci = md.schema.names.index("start_ns")
                stats = [md.row_group(i).column(ci).statistics for i in range(md.num_row_groups)]
                lo, hi, rows = b.start_ranges(path)
                known = [s is not None and s.has_min_max for s in stats]  # none: the widest range, always read
                assert lo.tolist() == [s.min if k else -2 ** 63 for s, k in zip(stats, known)]
                assert hi.tolist() == [s.max if k else 2 ** 63 - 1 for s, k in zip(stats, known)]
                assert rows.tolist() == [md.row_group(i).num_rows for i in range(md.num_row_groups)]
                assert b.start_ranges(path)[0] is lo  # kept, not read again


def test_the_ui_opens_the_store_before_the_first_search(store, monkeypatch):
    """`stagetrace ui` opens and verifies the blocks, reads their row-group ranges and
    sets DuckDB up in the background when it starts (ui/fastscan.py warm): the first
    search then opens no block and reads no footer, and answers as without the warm-up."""
    from stagetrace.collector import query as cq
    from stagetrace.ui import api
    from stagetrace.ui.server import UIConfig, UIServer

    r = store["slow"]
    f = api.SearchFilters(start_ns=r.start_ns, end_ns=r.end_ns, attributes={"feature.store.shard": 7})
    opened, ranged = [], []
    real_open, real_ranges = cq.EmbeddedBackend._open_block, cq._Block.start_ranges
    monkeypatch.setattr(cq.EmbeddedBackend, "_open_block",
                        lambda self, ref, *a: opened.append(ref) or real_open(self, ref, *a))
    monkeypatch.setattr(cq._Block, "start_ranges", lambda self, path=None: ranged.append(
        (self.ref.path, path)) or real_ranges(self, path))
    ui = UIServer(UIConfig(open_backend=lambda: cq.EmbeddedBackend(store["data_dir"])))
    ui.start()
    try:
        ui.warming.join(120)
        assert opened and ranged  # the warm-up did the opening
        firsts = set(ranged)
        # the blocks the warm-up read (the collector may cut a new one meanwhile: that one is new to both)
        warmed = {path for path, _ in firsts}
        opened.clear()
        doc = ui.with_backend(lambda b: api.search(b, f))
        assert not [ref for ref in opened if ref.path in warmed]
        assert not [x for x in set(ranged) - firsts if x[0] in warmed]  # nothing the warm-up had read already
    finally:
        ui.stop()
    with cq.EmbeddedBackend(store["data_dir"]) as emb:
        cold = api.search(emb, f)
    assert [p["span_id"] for p in doc["points"]] == [p["span_id"] for p in cold["points"]]
    assert doc["points"] and doc["rows"] == cold["rows"]
