"""XGBoost: ``Booster.predict`` / ``inplace_predict`` and the sklearn wrappers -> inference.

``XGBClassifier.predict_proba`` calls ``Booster.inplace_predict``: the nesting
rule makes that one span, named for the outermost model class.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap

DIST = "xgboost"
FRAMEWORK = "xgboost"
WATCH = (("xgboost.core", False), ("xgboost.sklearn", False))


def describe_data(data) -> dict:
    """DMatrix has num_row()/num_col() instead of a shape."""
    if hasattr(data, "num_row") and hasattr(data, "num_col") and not hasattr(data, "shape"):
        rows, cols = int(data.num_row()), int(data.num_col())
        return {semconv.ML_BATCH_SIZE: rows, semconv.ML_FEATURE_COUNT: cols, semconv.ML_INPUT_SHAPE: [rows, cols]}
    return describe_input(data)


def describe(instance, args, kwargs):
    attrs = describe_data(first_arg(args, kwargs, "X", "data"))
    if instance is not None:
        attrs[semconv.ML_MODEL_NAME] = type(instance).__name__
    return attrs


def _wrap_methods(cls, names) -> None:
    for meth in names:
        if meth in cls.__dict__:
            wrap(cls, meth, StageSpec(semconv.STAGE_INFERENCE, f"{cls.__qualname__}.{meth}", FRAMEWORK, describe))


def on_import(module: ModuleType) -> None:
    if module.__name__ == "xgboost.core":
        _wrap_methods(module.Booster, ("predict", "inplace_predict"))
    else:
        for cls_name in ("XGBModel", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor"):
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type):
                _wrap_methods(cls, ("predict", "predict_proba"))
