"""Feast: ``FeatureStore.get_online_features`` -> feature_fetch.

Records how many features and entity rows were asked for, never their values.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, wrap

DIST = "feast"
FRAMEWORK = "feast"
WATCH = (("feast.feature_store", False),)


def describe(instance, args, kwargs):
    features = args[0] if args else kwargs.get("features")
    rows = args[1] if len(args) > 1 else kwargs.get("entity_rows")
    attrs: dict = {}
    if isinstance(features, (list, tuple)):
        attrs[semconv.ML_FEATURE_COUNT] = len(features)
    if isinstance(rows, (list, tuple)):
        attrs[semconv.ML_BATCH_SIZE] = len(rows)
    elif isinstance(rows, dict) and rows:  # columnar {entity: [values...]}
        first = next(iter(rows.values()))
        if isinstance(first, (list, tuple)):
            attrs[semconv.ML_BATCH_SIZE] = len(first)
    return attrs


def on_import(module: ModuleType) -> None:
    cls = getattr(module, "FeatureStore", None)
    if isinstance(cls, type) and "get_online_features" in cls.__dict__:
        wrap(cls, "get_online_features",
             StageSpec(semconv.STAGE_FEATURE_FETCH, "FeatureStore.get_online_features", FRAMEWORK, describe))
    cls_async = "get_online_features_async"
    if isinstance(cls, type) and cls_async in cls.__dict__:
        wrap(cls, cls_async, StageSpec(semconv.STAGE_FEATURE_FETCH, f"FeatureStore.{cls_async}", FRAMEWORK, describe))
