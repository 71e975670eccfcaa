"""stagetrace: OpenTelemetry instrumentation and trace forensics for ML inference services.

The data path reads: app -> :mod:`stagetrace.instrumentation` -> OTLP ->
:mod:`stagetrace.collector` (receive -> store) -> :class:`stagetrace.backend.Backend`
(query) -> :mod:`stagetrace.forensics` (analyses -> reports).
"""

__version__ = "0.1.0"
