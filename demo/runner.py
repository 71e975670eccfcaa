"""``stagetrace demo`` end to end: collector -> services -> load -> flush -> forensics -> reports.

Every step has a timeout, every child runs in its own process group and is
stopped in ``finally`` (and on SIGTERM/SIGHUP/Ctrl-C, which become
KeyboardInterrupt here), so a run never hangs and never leaves a process or a
port behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape

from stagetrace import semconv
from stagetrace.errors import UserError

from . import procs
from .columns import FEATURES
from .scenarios import DESCRIPTIONS, ENV_DEMO_SCHEDULE_FILE, Schedule

T = TypeVar("T")
API_SERVICE = "fraud-api"
FEATURE_SERVICE = "feature-store"
# Zero code in the app: the stages are wired from outside, by a [tool.stagetrace] file.
STAGES_CONFIG = Path(__file__).with_name("stagetrace.toml")
# Standard OTel header capture turns the shard routing key into a span attribute.
CAPTURED_HEADERS = "x-feature-shard"
RUN_MARKER = ".stagetrace-demo-run"
READY_TIMEOUT_S = 90.0
FLUSH_TIMEOUT_S = 20.0
WATCH_CATCH_UP_S = 20.0  # for the watch's last evaluation to finish (2 s when it keeps up)
WATCH_START_S = 20.0  # for the watch to start up and finish its first evaluation


@dataclass
class DemoOptions:
    scenarios: tuple[str, ...]
    duration_s: float
    out: Path
    rate: float = 20.0
    api_port: int = 0
    keep_running: bool = False
    progress: bool | None = None  # None = when stdout is a terminal


@dataclass
class DemoResult:
    out: Path
    data_dir: Path
    reports: dict[str, Path]
    summary: dict[str, Any] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)


def check_dependencies() -> None:
    """The `demo` extra: say which part is missing and how to get it."""
    missing = []
    for mod, name in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("sklearn", "scikit-learn")):
        try:  # find, not import: the driver never needs them itself
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise UserError(f"the demo needs {', '.join(missing)}: install them with pip install 'stagetrace[demo]'")


def otel_instrument_argv() -> list[str]:
    """The real ``opentelemetry-instrument`` launcher of this environment."""
    here = Path(sys.executable).parent / "opentelemetry-instrument"
    if here.exists():
        return [str(here)]
    found = shutil.which("opentelemetry-instrument")
    if found:
        return [found]
    if importlib.util.find_spec("opentelemetry.instrumentation.auto_instrumentation") is None:
        raise UserError("opentelemetry-instrument is not installed: pip install opentelemetry-instrumentation")
    # Same entry point the console script calls.
    return [sys.executable, "-c", "import sys; from opentelemetry.instrumentation.auto_instrumentation import run; "
            "sys.argv[0] = 'opentelemetry-instrument'; sys.exit(run())"]


def service_env(service: str, otlp_grpc: str, schedule_file: Path, run_dir: Path,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, minus any OTEL_*/STAGETRACE_* of the caller
    that would send the demo's telemetry elsewhere or change its sampling."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update({
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        # Short export intervals so the telemetry is in the store seconds after the load.
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_BLRP_SCHEDULE_DELAY": "500",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        # The stable HTTP semantic conventions (http.response.status_code, url.full, ...).
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
        # Health checks are the orchestrator's, not user traffic.
        "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "healthz",
        # The model is fed a bare array: name its columns for the input profiles (as a user
        # whose model has no feature_names_in_ would, in [tool.stagetrace.profile]).
        semconv.ENV_PROFILE_FEATURES: ",".join(FEATURES),
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": CAPTURED_HEADERS,
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST": CAPTURED_HEADERS,
        semconv.ENV_CONFIG: str(STAGES_CONFIG),
        # The faults are placed once both services are up; they re-read this file.
        ENV_DEMO_SCHEDULE_FILE: str(schedule_file),
        "STAGETRACE_DEMO_RUN_DIR": str(run_dir),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def _resource(version: str) -> str:
    return f"service.namespace=stagetrace-demo,service.version={version},deployment.environment.name=demo"


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP stop the demo like Ctrl-C does, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _lock_out(out: Path) -> Any:
    """One demo per output directory: a second one would delete the first's store."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / ".stagetrace-demo.lock", "w")
    except OSError as exc:
        raise UserError(f"cannot use --out {out}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UserError(f"another stagetrace demo is running with --out {out}; wait for it or choose another") from None
    return fh


def _prepare_out(out: Path) -> tuple[Path, Path, Path]:
    """``out/`` for reports; ``out/run/`` (data + logs) replaced on every run."""
    run_dir = out / "run"
    if run_dir.exists():
        if not (run_dir / RUN_MARKER).exists():
            raise UserError(f"{run_dir} exists and was not made by stagetrace demo; choose another --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    (run_dir / RUN_MARKER).write_text("created by stagetrace demo; deleted by the next run\n")
    data_dir = run_dir / "data"
    log_dir = run_dir / "logs"
    data_dir.mkdir()
    log_dir.mkdir()
    return run_dir, data_dir, log_dir


def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    console = console or Console(highlight=False, soft_wrap=True)
    progress = console.is_terminal if opts.progress is None else opts.progress
    check_dependencies()
    launcher = otel_instrument_argv()
    if opts.api_port:
        procs.check_port_free(opts.api_port, what="--api-port")
    # Absolute: the children run in the run dir and get these paths in their environment.
    opts.out = opts.out.expanduser().resolve()
    lock = _lock_out(opts.out)
    try:
        return _run(opts, console, progress, launcher)
    finally:
        lock.close()


def _run(opts: DemoOptions, console: Console, progress: bool, launcher: list[str]) -> DemoResult:
    run_dir, data_dir, log_dir = _prepare_out(opts.out)
    result = DemoResult(out=opts.out, data_dir=data_dir, reports={})
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started, 2)

    with _signals_as_interrupt(), procs.ProcessSet(log_dir) as children, ExitStack() as cleanup:
        # 1. the collector
        console.print(f"[bold]stagetrace demo[/] scenarios: {', '.join(opts.scenarios)}; "
                      f"load {opts.duration_s:.0f} s at ~{opts.rate:.0f} req/s; output {opts.out}")
        coll, coll_children = _start_collector(children, data_dir, log_dir)
        result.ports += [coll.grpc_port, coll.http_port]
        console.print(f"  collector      grpc=127.0.0.1:{coll.grpc_port} http=127.0.0.1:{coll.http_port} "
                      f"data_dir={data_dir}  (pid {coll.pid})")
        mark("collector")

        # 2. the services, under the real opentelemetry-instrument
        feat_port = procs.free_port()
        api_port = opts.api_port or procs.free_port()
        canary_port = procs.free_port()
        result.ports += [feat_port, api_port, canary_port]
        grpc_url = f"http://127.0.0.1:{coll.grpc_port}"
        uvicorn = [sys.executable, "-m", "uvicorn"]
        # Keep-alive longer than the client's idle gaps: no reset races on reused connections.
        common = ["--host", "127.0.0.1", "--no-access-log", "--timeout-graceful-shutdown", "5",
                  "--timeout-keep-alive", "75"]
        schedule_file = run_dir / "schedule.json"

        def spawn(name: str, service: str, target: str, port: int, extra_args: list[str],
                  extra_env: dict[str, str]) -> procs.Child:
            env = service_env(service, grpc_url, schedule_file, run_dir, extra_env)
            # cwd = the run dir: no pyproject.toml of the caller's project is picked up.
            return children.start(name, [*launcher, *uvicorn, target, "--port", str(port), *common, *extra_args], env,
                                  cwd=str(run_dir))

        feat_url = f"http://127.0.0.1:{feat_port}"
        feat = spawn("feature-store", FEATURE_SERVICE, "stagetrace.demo.features:app", feat_port, [],
                     {"OTEL_RESOURCE_ATTRIBUTES": _resource("0.9.0")})
        api = spawn("fraud-api", API_SERVICE, "stagetrace.demo.app:app", api_port, ["--workers", "2"],
                    {"FEATURE_SERVICE_URL": feat_url, "FRAUD_MODEL_VERSION": "v1",
                     semconv.ENV_MODEL_VERSION: "v1", "OTEL_RESOURCE_ATTRIBUTES": _resource("1.4.2")})
        # The canary: the same API, serving model v2, one worker; traffic reaches it only
        # once scenario model-errors rolls it out.
        canary = spawn("fraud-api-canary", API_SERVICE, "stagetrace.demo.app:app", canary_port, [],
                       {"FEATURE_SERVICE_URL": feat_url, "FRAUD_MODEL_VERSION": "v2",
                        semconv.ENV_MODEL_VERSION: "v2", "OTEL_RESOURCE_ATTRIBUTES": _resource("1.5.0-rc1")})
        t0 = time.monotonic()
        for child, port in ((feat, feat_port), (api, api_port), (canary, canary_port)):
            procs.wait_http_ready(child, f"http://127.0.0.1:{port}/healthz", READY_TIMEOUT_S)
        console.print(f"  {FEATURE_SERVICE:<14} http://127.0.0.1:{feat_port}  (pid {feat.pid})")
        console.print(f"  {API_SERVICE:<14} http://127.0.0.1:{api_port}  (pid {api.pid}, 2 workers, model v1)")
        console.print(f"  {API_SERVICE + ' canary':<14} http://127.0.0.1:{canary_port}  (pid {canary.pid}, model v2)"
                      f"  ready in {time.monotonic() - t0:.1f} s")

        # 3. the load, with the faults staggered in it, from an instrumented client
        from .loadgen import LabelFeed, instrument_client, warm_up
        shutdown_client = instrument_client(f"http://127.0.0.1:{coll.http_port}")
        flush_client = True
        # Each answered prediction's label goes back to the collector a few seconds later.
        label_feed = LabelFeed(f"http://127.0.0.1:{coll.http_port}")
        # a run that stops early (Ctrl-C, a dead service) drops the labels not yet sent
        cleanup.callback(label_feed.close, timeout_s=2.0, drop=True)
        try:
            # Warm-up first: fresh workers (and this client's first export) are slow, and
            # that must not look like an incident in the clean period.
            warm_up([f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{canary_port}"])
            # `stagetrace watch` beside the load (after the warm-up): the faults should page,
            # each alert with its cause
            from stagetrace.incidents import demo as incidents_demo
            watch_rules = incidents_demo.write_rules(run_dir)
            watch_out = opts.out / "watch"
            shutil.rmtree(watch_out, ignore_errors=True)  # alerts of an earlier run would mislead
            watch = children.start("watch", incidents_demo.watch_argv(watch_rules, data_dir, watch_out, time.time()),
                                   {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))},
                                   cwd=str(run_dir))
            console.print(f"  watch          every 2 s, alerts to {watch_out / 'alerts.jsonl'}, pid {watch.pid}")
            # The clean period starts once the watch has started up: its imports take CPU
            # from the services on a small machine, and the slow first seconds they caused
            # looked like an incident in the clean period.
            incidents_demo.wait_for_evaluation(data_dir, time.time_ns(), WATCH_START_S, watch.alive)
            mark("services")
            schedule = Schedule.plan(opts.scenarios, time.time() + 1.0, opts.duration_s)
            _write_schedule(schedule_file, schedule)
            for name, (lo, hi) in schedule.windows.items():
                console.print(f"  fault {name:<15} +{lo - schedule.start:4.1f}s .. +{hi - schedule.start:4.1f}s  "
                              f"{DESCRIPTIONS[name]}")
            # The model's reference profile, once the clean period is over: what the watch's
            # drift rule compares with (as a team runs `stagetrace profile build` on a healthy window)
            early_ref = _reference_when_clean_ends(data_dir, schedule)
            cleanup.callback(early_ref.stop)
            stats = _drive_load(console, progress, f"http://127.0.0.1:{api_port}",
                                f"http://127.0.0.1:{canary_port}", schedule, opts.rate, label_feed)
        except BaseException:
            flush_client = False  # interrupted or failed: nobody will read these spans
            raise
        finally:
            shutdown_client(flush_client)
        mark("load")
        for child in (feat, api, canary):  # a report on a run whose service died would mislead
            if not child.alive():
                raise UserError(f"{child.name} exited during the run with code {child.proc.returncode}: "
                                f"{child.last_error_line()} (log: {child.log_path})")
        if coll.poll() is not None:
            raise UserError(f"the collector exited during the run with code {coll.poll()} "
                            f"(log: {log_dir / 'collector.log'})")
        # 4. flush: the services export every 0.5 s; wait until the store stops
        # growing before stopping them, so the analyses see every request's telemetry
        # (the instrumentation also flushes on SIGTERM, but waiting is the proof).
        n_spans = _wait_for_telemetry(data_dir, schedule, console)
        mark("telemetry")
        # one more watch evaluation over the flushed tail (bounded: a late watch is stopped)
        if not incidents_demo.wait_for_evaluation(data_dir, time.time_ns(), WATCH_CATCH_UP_S, watch.alive):
            console.print(f"  [yellow]watch          still evaluating after {WATCH_CATCH_UP_S:.0f} s; stopped[/]")
        children.stop(watch)
        early_ref.stop()  # late: only the watch wanted it, and the investigation below writes the same file
        # The last labels fall due about now (the flush above outlasts their delay);
        # sent before the collector stops.
        stats.labels = label_feed.close()
        if stats.labels.get("unsent") or stats.labels.get("failed_posts"):
            console.print(f"  [yellow]labels: {stats.labels.get('unsent', 0)} unsent, "
                          f"{stats.labels.get('failed_posts', 0)} failed posts: {'; '.join(label_feed.errors[:2])}[/]")
        console.print(f"  labels         {stats.labels.get('accepted', 0)} sent back "
                      f"{label_feed.delay_s:.0f} s after their predictions"
                      + (f", {stats.labels['rejected']} rejected" if stats.labels.get("rejected") else ""))
        if early_ref.result:  # `profile build` says what it wrote
            console.print(f"  reference      at +{early_ref.result['at_s']:.1f}s, for the watch's drift rule: "
                          f"{escape(early_ref.result['line'])}")
        alerts = incidents_demo.fired_alerts(watch_out)
        console.print(f"  watch          {len(alerts)} alert(s) fired during the load")
        for a in alerts:
            lab, ann = a["labels"], a.get("annotations", {})
            # escaped: "[page]" and the texts are not rich markup
            sev = escape(f"[{lab.get('severity')}]")
            console.print(f"    [red]FIRING[/] {escape(str(lab.get('alertname')))} {sev} "
                          f"+{a['fired_at'] / 1e9 - schedule.start:.0f}s  {escape(ann.get('summary', ''))}")
            if ann.get("root_cause"):
                console.print(f"           cause: {escape(ann['root_cause'])}")
        if not opts.keep_running:
            children.stop_many([api, canary, feat])
            # The collector too: on SIGTERM it cuts its write-ahead log into blocks,
            # and the analyses then read a store that no longer changes under them.
            for child in coll_children:
                children.stop(child)
        mark("flush")

        # 5. investigate, 6. write the reports
        from .investigate import investigate
        summary = _retry_store(lambda: investigate(data_dir, schedule, stats, opts.out, console, n_spans=n_spans))
        mark("forensics")
        result.reports = summary.pop("files")
        # 7. the post-mortem draft of the whole run, next to the reports
        pm = _retry_store(lambda: incidents_demo.write_postmortem(
            data_dir, watch_rules, int(schedule.start * 1e9), int((schedule.end + 2) * 1e9), opts.out))
        result.reports.update({"postmortem_md": Path(pm["md"]), "postmortem_html": Path(pm["html"])})
        summary["alerts"] = [{"alertname": a["labels"].get("alertname"), "severity": a["labels"].get("severity"),
                              "fired_at_s": round(a["fired_at"] / 1e9 - schedule.start, 1),
                              "cause": a.get("annotations", {}).get("root_cause")} for a in alerts]
        console.print(f"[bold]Post-mortem draft[/]  {pm['md']}  {pm['html']}")
        mark("postmortem")
        result.summary = summary
        result.pids = children.pids
        (run_dir / "run.json").write_text(json.dumps({
            "scenarios": list(opts.scenarios), "schedule": json.loads(schedule.to_env()),
            "pids": result.pids, "ports": result.ports, "data_dir": str(data_dir),
            "requests": stats.sent, "failed": stats.failed, "spans": n_spans, "labels": stats.labels,
            "timings_s": timings,
            **summary}, indent=2, default=str))
        console.print(f"[dim]done in {time.monotonic() - started:.0f} s[/]")
        if opts.keep_running:
            console.print(f"\nServices keep running: API http://127.0.0.1:{api_port}/docs  "
                          f"collector grpc=127.0.0.1:{coll.grpc_port}. Press Ctrl-C to stop.")
            try:
                while all(c.alive() for c in (api, canary, feat)):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    return result


class _DelayedReference(threading.Timer):
    """Runs `stagetrace profile build` over the clean period once it is over (niced, in its
    own process: the load generator's process must not lose CPU to it), storing the
    reference profile where the watch's drift rule finds it. Best effort: without it the
    watch compares with the previous period."""

    def __init__(self, delay_s: float, data_dir: Path, schedule: Schedule) -> None:
        super().__init__(max(0.0, delay_s), self._build)
        self.daemon = True
        self.data_dir, self.schedule = data_dir, schedule
        self.result: dict[str, Any] | None = None
        self._proc: Any = None
        self._lock = threading.Lock()
        self._stopped = False

    def _build(self) -> None:
        import subprocess

        from .investigate import MODEL, clean_reference_end

        nice = [shutil.which("nice"), "-n", "10"] if shutil.which("nice") else []
        argv = [*nice, sys.executable, "-m", "stagetrace.cli", "profile", "build", "--model", MODEL,
                "--data-dir", str(self.data_dir), "--from", f"{self.schedule.start:.3f}",
                "--until", f"{clean_reference_end(self.schedule):.3f}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
        with self._lock:
            if self._stopped:
                return
            self._proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return
        if self._proc.returncode == 0:
            self.result = {"line": out.strip().splitlines()[-1] if out.strip() else "",
                           "at_s": round(time.time() - self.schedule.start, 1)}

    def stop(self) -> None:
        """Cancel, or end the build if it is running (the demo is stopping)."""
        self.cancel()
        with self._lock:
            self._stopped = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


# the clean period's last spans are exported within 0.5 s (OTEL_BSP_SCHEDULE_DELAY) of ending
_EXPORT_MARGIN_S = 1.5


def _reference_when_clean_ends(data_dir: Path, schedule: Schedule) -> _DelayedReference:
    from .investigate import clean_reference_end

    t = _DelayedReference(clean_reference_end(schedule) + _EXPORT_MARGIN_S - time.time(), data_dir, schedule)
    t.start()
    return t


def _write_schedule(path: Path, schedule: Schedule) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(schedule.to_env())
    tmp.replace(path)


def _start_collector(children: procs.ProcessSet, data_dir: Path, log_dir: Path) -> Any:
    try:
        from stagetrace.collector.process import CollectorStartError, start_collector
    except ImportError as exc:
        raise UserError(f"the embedded collector is unavailable: {exc}") from None
    # The caller's OTEL_*/STAGETRACE_* settings are for their apps, not this private collector.
    try:
        coll = start_collector(data_dir, grpc_port=0, http_port=0, timeout=30.0,
                               env={semconv.ENV_COLLECTOR_TOKEN: "", semconv.ENV_DATA_DIR: str(data_dir)})
    except CollectorStartError as exc:
        raise UserError(f"the embedded collector did not start: {exc}") from None
    # start_collector gives the collector (and its block maintainer) a parent-death
    # signal and its own process group, so even a kill -9 of the demo leaves nothing.
    child = children.adopt("collector", coll.proc, log_dir / "collector.log",
                           stopper=lambda: _stop_collector(coll, log_dir))
    return coll, [child]


def _stop_collector(coll: Any, log_dir: Path) -> None:
    try:
        coll.stop(timeout=15.0)
    finally:
        # Keep its log with the others.
        (log_dir / "collector.log").write_text(coll.stderr_text())


def _drive_load(console: Console, progress: bool, api_url: str, canary_url: str, schedule: Schedule,
                rate: float, labels: Any = None):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .loadgen import run_load

    total = schedule.end - schedule.start
    if progress:
        bar = Progress(TextColumn("  load"), BarColumn(bar_width=20), TimeRemainingColumn(),
                       TextColumn("{task.fields[sent]:>5} req {task.fields[failed]:>3} failed "
                                  "p95 {task.fields[p95]:>5.0f} ms  [cyan]{task.fields[phase]}[/]"),
                       console=console, transient=False)
        with bar:
            task = bar.add_task("load", total=total, phase="", sent=0, failed=0, p95=0.0)

            def tick(stats, phase):
                bar.update(task, completed=min(total, time.time() - schedule.start), phase=phase,
                           sent=stats.sent, failed=stats.failed, p95=stats.p95_ms())
            return run_load(api_url, schedule, rate=rate, canary_url=canary_url, on_tick=tick, labels=labels)

    last_phase = [""]

    def tick_plain(stats, phase):
        if phase != last_phase[0]:
            last_phase[0] = phase
            console.print(f"  load +{max(0.0, time.time() - schedule.start):4.1f}s phase {phase}: "
                          f"{stats.sent} sent, {stats.failed} failed")
    return run_load(api_url, schedule, rate=rate, canary_url=canary_url, on_tick=tick_plain, labels=labels)


def _retry_store(read: Callable[[], T], attempts: int = 3) -> T:
    """Reading a store the collector is still writing can race with its
    compaction; such a read is simply repeated."""
    from stagetrace.errors import BackendError

    for attempt in range(attempts):
        try:
            return read()
        except BackendError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.3)
    raise AssertionError("unreachable")


def _count_spans(data_dir: Path, query: Any) -> int:
    from stagetrace.backend import open_backend

    def read() -> int:
        backend = open_backend(kind="embedded", data_dir=str(data_dir))
        try:
            return len(backend.find_spans(query))
        finally:
            backend.close()
    return _retry_store(read)


def _wait_for_telemetry(data_dir: Path, schedule: Schedule, console: Console) -> int:
    """Poll the store until the count of the *last* spans (those that started in
    the final seconds of the load, the ones still in the SDKs' queues) stops
    growing; bounded by FLUSH_TIMEOUT_S. Returns the total span count."""
    from stagetrace.backend import TraceQuery

    tail = TraceQuery(start_ns=int((schedule.end - 3) * 1e9), limit=None)
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    last, stable = -1, 0
    time.sleep(0.5)  # one export interval
    while time.monotonic() < deadline:
        count = _count_spans(data_dir, tail)
        if count > 0 and count == last:
            stable += 1
            if stable >= 2:  # unchanged for two export intervals
                break
        else:
            stable = 0
        last = count
        time.sleep(0.5)
    total = _count_spans(data_dir, TraceQuery(start_ns=int((schedule.start - 5) * 1e9), limit=None))
    console.print(f"  telemetry      {total} spans stored")
    if total == 0:
        raise UserError(f"no spans reached the collector; see the logs under {data_dir.parent / 'logs'}")
    return total
