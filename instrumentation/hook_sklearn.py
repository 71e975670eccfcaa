"""scikit-learn: predict / predict_proba / predict_log_proba / decision_function
-> inference; ``transform`` -> preprocess, but only inside an inference span (a
Pipeline's predict), so fitting and ad-hoc transforms outside serving make no spans.
``fit`` and its kin are wrapped quietly: no span, and the predictions a model makes
inside its own fit (GradientBoostingClassifier's init estimator) are not inference.

sklearn defines these methods on many classes and mixins (e.g.
``LinearClassifierMixin.predict``), so we wrap each class that defines one in its
own ``__dict__``, module by module as the app imports sklearn's submodules.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap, wrap_quiet

DIST = "scikit-learn"
FRAMEWORK = "sklearn"
WATCH = (("sklearn", True),)

INFERENCE_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function")
PREPROCESS_METHODS = ("transform",)
FIT_METHODS = ("fit", "partial_fit", "fit_transform", "fit_predict")


def describe(instance, args, kwargs):
    attrs = describe_input(first_arg(args, kwargs, "X"))
    if instance is not None:
        attrs[semconv.ML_MODEL_NAME] = type(instance).__name__
    return attrs


def on_import(module: ModuleType) -> None:
    name = module.__name__
    for obj in list(vars(module).values()):
        if not isinstance(obj, type) or obj.__module__ != name:
            continue
        for meth in INFERENCE_METHODS:
            if meth in obj.__dict__:
                wrap(obj, meth, StageSpec(semconv.STAGE_INFERENCE, f"{obj.__qualname__}.{meth}", FRAMEWORK, describe))
        wrap_quiet(obj, FIT_METHODS, obj.__qualname__, FRAMEWORK)
        for meth in PREPROCESS_METHODS:
            if meth in obj.__dict__:
                wrap(obj, meth, StageSpec(semconv.STAGE_PREPROCESS, f"{obj.__qualname__}.{meth}", FRAMEWORK, describe,
                                          only_inside=semconv.STAGE_INFERENCE))
