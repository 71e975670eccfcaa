"""LightGBM: ``Booster.predict`` and the sklearn wrappers -> inference."""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap

DIST = "lightgbm"
FRAMEWORK = "lightgbm"
WATCH = (("lightgbm.basic", False), ("lightgbm.sklearn", False))


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
    if module.__name__ == "lightgbm.basic":
        targets = [(module.Booster, ("predict",))]
    else:
        targets = [(getattr(module, n, None), ("predict", "predict_proba")) for n in ("LGBMModel", "LGBMClassifier", "LGBMRegressor", "LGBMRanker")]
    for cls, names in targets:
        if not isinstance(cls, type):
            continue
        for meth in names:
            if meth in cls.__dict__:
                wrap(cls, meth, StageSpec(semconv.STAGE_INFERENCE, f"{cls.__qualname__}.{meth}", FRAMEWORK, describe,
                                          raw_output=raw_output))
