"""XGBoost: ``Booster.predict`` / ``inplace_predict`` and the sklearn wrappers -> inference.

``XGBClassifier.predict_proba`` calls ``Booster.inplace_predict``: the nesting
rule makes that one span, named for the outermost model class.

Training is not serving: ``xgboost.train``/``cv``, the sklearn wrappers' ``fit`` and
a Booster's own ``update``/``boost``/``eval_set`` are wrapped quietly (no span, and no
stage span for a prediction inside: custom metrics and callbacks predict on eval sets),
and ``Booster.predict(..., training=True)`` (a custom objective's) makes no span.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap, wrap_quiet

DIST = "xgboost"
FRAMEWORK = "xgboost"
WATCH = (("xgboost.core", False), ("xgboost.sklearn", False), ("xgboost.training", False), ("xgboost", False))

_SKLEARN_CLASSES = ("XGBModel", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")
_TRAIN_FUNCTIONS = ("train", "cv")  # in xgboost.training, re-exported by the package


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


def raw_output(args, kwargs) -> bool:
    """Margins, leaf indices or feature contributions instead of probabilities (keyword-only
    in ``Booster.predict``; ``predict_type="margin"`` in ``inplace_predict``)."""
    return any(kwargs.get(k) for k in ("output_margin", "pred_leaf", "pred_contribs", "pred_interactions")) \
        or kwargs.get("predict_type") == "margin"


def in_training(instance, args, kwargs) -> bool:
    """``Booster.predict(training=True)``: what a custom objective calls during ``update``."""
    return bool(kwargs.get("training"))


def _wrap_methods(cls, names) -> None:
    for meth in names:
        if meth in cls.__dict__:
            wrap(cls, meth, StageSpec(semconv.STAGE_INFERENCE, f"{cls.__qualname__}.{meth}", FRAMEWORK, describe,
                                      raw_output=raw_output, training=in_training))


def on_import(module: ModuleType) -> None:
    if module.__name__ == "xgboost.core":
        _wrap_methods(module.Booster, ("predict", "inplace_predict"))
        wrap_quiet(module.Booster, ("update", "boost", "eval_set"), "Booster", FRAMEWORK)
    elif module.__name__ in ("xgboost.training", "xgboost"):
        wrap_quiet(module, _TRAIN_FUNCTIONS, "xgboost", FRAMEWORK)
    else:
        for cls_name in _SKLEARN_CLASSES:
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type):
                _wrap_methods(cls, ("predict", "predict_proba"))
                wrap_quiet(cls, ("fit",), cls.__qualname__, FRAMEWORK)
