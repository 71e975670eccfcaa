"""Nothing stagetrace runs in an import hook, a fork handler or a signal handler may wait
for another thread (issue 19: a worker hung at start-up).

Each test forces the interleaving that used to hang, in a subprocess with a deadline:

* import hooks: a thread holds the OTLP log handler's lock and needs the very import
  whose post-import hook wants to warn (tests/apps/hooklock.py), under the real
  ``opentelemetry-instrument``, for each kind of warning a hook can give;
* fork handlers: another thread holds a lock a handler used to take when the process forks;
* the SIGTERM flush handler: the signal lands while the main thread holds
  ``threading``'s own lock (as inside ``Thread.start``). There the old handler did not
  hang, but its ``threading.Thread`` helper waited for that lock, so nothing was
  flushed and the whole flush timeout was spent for nothing.

The 2-worker uvicorn start-up stress is tests/test_instrumentation_startup_stress.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otlp_sink import OtlpSink

APPS = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent
DEADLINE_S = 60  # a hang shows as this; the runs take about 2 s


def instrumented_env(sink: OtlpSink, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(APPS),
        "OTEL_SERVICE_NAME": "hooklock",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.http_endpoint,
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi,requests",  # not under test; start faster
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path = APPS,
        timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on a hang, kill the whole group (a forked
    child stuck on a lock included) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s: {out[-2000:]!r} {err[-4000:]!r}")
    finally:
        try:  # a child the process forked and left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# --- import hooks --------------------------------------------------------------------------

CASES = {
    # name: (STAGETRACE_STAGES, module imported, hooklock options, text of the warning)
    "missing attribute": ("inference=lockvictim:NoSuchScorer.score", "lockvictim", [],
                          "ignoring stage entry 'inference=lockvictim:NoSuchScorer.score'"),
    "not callable": ("preprocess=lockvictim:LIMIT", "lockvictim", [],
                     "ignoring stage entry 'preprocess=lockvictim:LIMIT'"),
    "hook raises": ("", "lockvictim", ["--raising-hook"], "post-import hook for lockvictim failed"),
    "library out of range": ("", "lockvictim_sklearn", ["--unsupported", "scikit-learn"],
                             "is outside the supported range <0.0.1; its hook is off"),
    # not a hook: a wrapped call made while a module is imported (a model warmed up at module level)
    "internal error in a call during an import": (
        "inference=lockvictim:score", "lockvictim_warmup", [],
        "internal error in describe for score; the call itself is unaffected"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_hook_that_warns_never_waits_for_a_logging_handler(case):
    stages, module, options, warning = CASES[case]
    with OtlpSink() as sink:
        env = instrumented_env(sink, STAGETRACE_STAGES=stages)
        p = run([str(BIN / "opentelemetry-instrument"), sys.executable, "-m", "hooklock", module, *options], env)
        # on a deadlock hooklock's fault handler prints every thread's stack and exits 1
        assert p.returncode == 0, f"status {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-6000:]}"
        assert f"imported {module}" in p.stdout
        # the deferred warning still went out, through the same OTLP log handler
        assert sink.wait_for(lambda s: any(warning in str(lg.body) for lg in s.logs), timeout=20), \
            [lg.body for lg in sink.store.logs]
        assert len([lg for lg in sink.store.logs if warning in str(lg.body)]) == 1


def test_deferred_logs_at_once_outside_an_import_and_later_inside_one(caplog, tmp_path, monkeypatch):
    """The rule itself, in process: outside an import nothing changes (same thread, at
    once); inside one the message is queued and logged by another thread, in order,
    with its traceback, even while a handler's lock is held until the import is over."""
    import logging
    import threading

    from stagetrace.instrumentation import deferred

    logger = logging.getLogger("stagetrace.test.deferred")
    caplog.set_level(logging.INFO, logger=logger.name)
    deferred.warning(logger, "outside %s", "import")
    assert [(r.getMessage(), r.thread) for r in caplog.records] == [("outside import", threading.get_ident())]
    assert not deferred.in_import()

    busy = threading.Lock()  # a handler busy emitting on another thread
    seen: list[tuple[str, int, bool, str]] = []

    class Recording(logging.Handler):
        def emit(self, record):
            with busy:
                seen.append((record.getMessage(), record.thread, bool(record.exc_info), record.pathname))

    (tmp_path / "deferred_probe.py").write_text(textwrap.dedent('''
        import logging
        from stagetrace.instrumentation import deferred
        IN_IMPORT = deferred.in_import()
        log = logging.getLogger("stagetrace.test.deferred")
        for i in range(3):
            deferred.warning(log, "inside %d", i)
        try:
            raise ValueError("boom")
        except ValueError:
            deferred.warning(log, "with traceback", exc_info=True)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    h = Recording()
    logger.addHandler(h)
    try:
        with busy:
            import deferred_probe  # a synchronous warning would wait for `busy` forever here

            assert deferred_probe.IN_IMPORT and seen == []
        assert deferred.flush(10)
    finally:
        logger.removeHandler(h)
        sys.modules.pop("deferred_probe", None)
    assert [s[0] for s in seen] == ["inside 0", "inside 1", "inside 2", "with traceback"]
    assert all(s[1] != threading.get_ident() for s in seen)  # logged from the helper thread
    assert seen[-1][2]  # the traceback travelled with the message
    assert all(s[3].endswith("deferred_probe.py") for s in seen)  # and the record names the caller


# --- fork handlers ---------------------------------------------------------------------------

FORK_SCRIPT = textwrap.dedent('''
    import os, sys, threading
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from stagetrace.instrumentation import importhook, metrics, shutdown
    from stagetrace.instrumentation.instrumentor import StagetraceInstrumentor

    trace.set_tracer_provider(TracerProvider())
    reader = InMemoryMetricReader()
    inst = StagetraceInstrumentor()
    inst.instrument(meter_provider=MeterProvider(metric_readers=[reader]), stages="inference=forkvictim:score")
    shutdown.setup()  # registers the fork handler that hooks uvicorn.server in gunicorn workers

    which = sys.argv[1]
    lock = {"importhook": importhook._registry.lock, "metrics": metrics._decide_lock}[which]
    held, done = threading.Event(), threading.Event()

    def holder():  # another thread of the master, in the middle of its critical section
        with lock:
            held.set()
            done.wait()

    threading.Thread(target=holder, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        # the worker: fork handlers have run; first stage call and a hooked import
        with open("forkvictim.py", "w") as f:
            f.write("def score(x):\\n    return x * 2\\n")
        sys.path.insert(0, os.getcwd())
        import forkvictim
        assert forkvictim.score(2) == 4
        reader.collect()
        print("child ok", flush=True)
        os._exit(0)
    done.set()
    _, status = os.waitpid(pid, 0)
    print("parent ok", os.waitstatus_to_exitcode(status), flush=True)
''')


@pytest.mark.parametrize("lock", ["importhook", "metrics"])
def test_fork_handlers_need_no_lock_another_thread_held(lock, tmp_path):
    """gunicorn forks its workers from a master that may have other threads. A lock one of
    them held at fork time stays held forever in the child: the child's fork handlers
    (shutdown's, which registers a post-import hook) and its first stage call (which
    decides how to record ml.stage.duration) must not wait for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    p = run([sys.executable, "-c", FORK_SCRIPT, lock], env, cwd=tmp_path)
    assert p.returncode == 0 and "child ok" in p.stdout and "parent ok 0" in p.stdout, (p.stdout, p.stderr[-3000:])


# --- signal handler ------------------------------------------------------------------------------

SIGNAL_SCRIPT = textwrap.dedent('''
    import os, signal, sys, threading
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from stagetrace.instrumentation import shutdown

    provider = TracerProvider()
    # a long schedule delay: only the SIGTERM flush can export the span in time
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout), schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
    assert shutdown.install()
    trace.get_tracer("t").start_span("before-sigterm").end()
    # SIGTERM lands while the main thread is inside threading's bookkeeping (as in
    # Thread.start): the handler runs right here, with the lock held.
    with threading._active_limbo_lock:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10):  # bytecodes: the handler runs between two of them
            pass
    print("survived SIGTERM", flush=True)
''')


def test_sigterm_flush_needs_no_lock_the_main_thread_may_hold(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env["STAGETRACE_SIGNAL_FLUSH_TIMEOUT"] = "5"
    p = run([sys.executable, "-c", SIGNAL_SCRIPT], env, cwd=tmp_path)
    assert p.returncode == -signal.SIGTERM, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert '"name": "before-sigterm"' in p.stdout  # flushed before the process died of the signal
    assert "survived" not in p.stdout
