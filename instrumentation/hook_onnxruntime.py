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


def describe(instance, args, kwargs):
    feed = args[1] if len(args) > 1 else kwargs.get("input_feed")
    attrs: dict = {}
    if isinstance(feed, dict) and feed:
        attrs.update(describe_input(next(iter(feed.values()))))
    if instance is not None:
        attrs.update(_model_attrs(instance))
    return attrs


def model_input(args, kwargs):
    """The first array of ``run(output_names, input_feed)``'s feed."""
    feed = args[1] if len(args) > 1 else kwargs.get("input_feed")
    if isinstance(feed, dict) and feed:
        return next(iter(feed.values()))
    return None


def on_import(module: ModuleType) -> None:
    wrap(module.Session, "run", StageSpec(semconv.STAGE_INFERENCE, "InferenceSession.run", FRAMEWORK, describe,
                                          model_input=model_input))
