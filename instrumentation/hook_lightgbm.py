"""LightGBM: ``Booster.predict`` and the sklearn wrappers -> inference.

Training is not serving: ``lightgbm.train``/``cv``, the sklearn wrappers' ``fit`` and a
Booster's own ``update``/``refit`` are wrapped quietly (no span, and no stage span for a
prediction inside, such as a callback scoring a validation set).
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap, wrap_quiet

DIST = "lightgbm"
FRAMEWORK = "lightgbm"
WATCH = (("lightgbm.basic", False), ("lightgbm.sklearn", False), ("lightgbm.engine", False), ("lightgbm", False))

_SKLEARN_CLASSES = ("LGBMModel", "LGBMClassifier", "LGBMRegressor", "LGBMRanker")


def describe(instance, args, kwargs):
    attrs = describe_input(first_arg(args, kwargs, "X", "data"))
    if instance is not None:
        attrs[semconv.ML_MODEL_NAME] = type(instance).__name__
    return attrs


def raw_output(args, kwargs) -> bool:
    """Margins, leaf indices or contributions instead of probabilities (``raw_score``,
    ``pred_leaf``, ``pred_contrib``, by keyword or among the first positional flags of either predict)."""
    return any(kwargs.get(k) for k in ("raw_score", "pred_leaf", "pred_contrib")) or any(bool(v) for v in args[1:6]
                                                                                        if isinstance(v, bool))


def on_import(module: ModuleType) -> None:
    if module.__name__ in ("lightgbm.engine", "lightgbm"):
        wrap_quiet(module, ("train", "cv"), "lightgbm", FRAMEWORK)
        return
    if module.__name__ == "lightgbm.basic":
        targets = [(module.Booster, ("predict",))]
        wrap_quiet(module.Booster, ("update", "refit"), "Booster", FRAMEWORK)
    else:
        targets = [(getattr(module, n, None), ("predict", "predict_proba")) for n in _SKLEARN_CLASSES]
        for cls, _ in targets:
            if isinstance(cls, type):
                wrap_quiet(cls, ("fit",), cls.__qualname__, FRAMEWORK)
    for cls, names in targets:
        if not isinstance(cls, type):
            continue
        for meth in names:
            if meth in cls.__dict__:
                wrap(cls, meth, StageSpec(semconv.STAGE_INFERENCE, f"{cls.__qualname__}.{meth}", FRAMEWORK, describe,
                                          raw_output=raw_output))
