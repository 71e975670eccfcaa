"""ONNX Runtime: ``InferenceSession.run`` -> inference (defined on the ``Session`` base)."""

from __future__ import annotations

import os
import weakref
from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, wrap

DIST = "onnxruntime"
FRAMEWORK = "onnxruntime"
WATCH = (("onnxruntime.capi.onnxruntime_inference_collection", False),)

_meta: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _model_attrs(session) -> dict:
    """Model name (file name, or graph name) and version from the model's metadata, cached per session."""
    try:
        cached = _meta.get(session)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    attrs: dict = {}
    path = getattr(session, "_model_path", None)
    if isinstance(path, (str, os.PathLike)):
        attrs[semconv.ML_MODEL_NAME] = os.path.basename(os.fspath(path))
    try:
        meta = session.get_modelmeta()
        if not attrs and meta.graph_name:
            attrs[semconv.ML_MODEL_NAME] = meta.graph_name
        if meta.version:
            attrs[semconv.ML_MODEL_VERSION] = str(meta.version)
    except Exception:
        pass
    attrs.setdefault(semconv.ML_MODEL_NAME, type(session).__name__)
    try:
        _meta[session] = attrs
    except TypeError:
        pass
    return attrs


def _feed(args, kwargs):
    feed = args[1] if len(args) > 1 else kwargs.get("input_feed")
    return feed if isinstance(feed, dict) and feed else None


def describe(instance, args, kwargs):
    feed = _feed(args, kwargs)
    attrs: dict = {}
    if feed is not None:
        attrs.update(describe_input(next(iter(feed.values()))))
        if isinstance(model_input(args, kwargs), dict):
            attrs[semconv.ML_FEATURE_COUNT] = len(feed)
    if instance is not None:
        attrs.update(_model_attrs(instance))
    return attrs


def _one_column(x) -> bool:
    shape = getattr(x, "shape", None)  # (an OrtValue's shape is a method: not a column)
    return isinstance(shape, tuple) and (len(shape) == 1 or len(shape) == 2 and shape[1] == 1)


def model_input(args, kwargs):
    """What ``run(output_names, input_feed)`` profiles. A feed of one matrix: that array
    (feature names from config, else ``f0``...). A feed whose inputs are each one column
    (skl2onnx's conversion of a DataFrame: one named input per column): the columns by
    input name, so the input names are the feature names."""
    feed = _feed(args, kwargs)
    if feed is None:
        return None
    first = next(iter(feed.values()))
    if not all(_one_column(v) for v in feed.values()):
        return first
    rows = first.shape[0]
    if any(v.shape[0] != rows for v in feed.values()):
        return first
    return {str(name): v.reshape(-1) for name, v in feed.items()}


def on_import(module: ModuleType) -> None:
    wrap(module.Session, "run", StageSpec(semconv.STAGE_INFERENCE, "InferenceSession.run", FRAMEWORK, describe,
                                          model_input=model_input))
