"""What the stagetrace instrumentor supports.

contrib instrumentors declare ``_instruments`` so ``opentelemetry-instrument``
skips them when their library is missing. Our instrumentor is different: its
user-code stages (``STAGETRACE_STAGES``) work with no ML library at all, and each
library hook switches itself on only when *its* library is imported. So the
hard requirement list is empty on purpose, and the per-library version ranges
live in ``_hooked_libraries`` and are checked hook by hook at import time.
"""

from __future__ import annotations

# Distribution name -> supported version range, one entry per library hook.
_hooked_libraries: dict[str, str] = {
    "scikit-learn": ">=1.3",
    "xgboost": ">=1.7",
    "lightgbm": ">=4.0",
    "torch": ">=2.0",
    "onnxruntime": ">=1.16",
    "transformers": ">=4.40",
    "feast": ">=0.35",
}

# Hard requirements checked by BaseInstrumentor.instrument(): none (see above).
_instruments: tuple[str, ...] = ()

_supports_metrics = True
