"""stagetrace.instrumentation: zero-code ML stage spans and trace-correlated logs.

Loaded by ``opentelemetry-instrument`` through three entry points:
``distro.StagetraceDistro`` (defaults), ``configurator.StagetraceConfigurator``
(SDK + log correlation) and ``instrumentor.StagetraceInstrumentor`` (library
hooks ``hook_*.py`` and ``STAGETRACE_STAGES`` targets, see ``stages.py``). Every
wrapper is built by ``wrapping.py``; logs by ``logs.py``; the
``ml.stage.duration`` histogram by ``metrics.py``. Nothing here is imported
eagerly, so importing the package costs nothing. See docs/instrumentation.md.
"""
