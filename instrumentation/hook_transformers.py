"""Hugging Face transformers: pipeline call -> inference; tokenizer call -> preprocess.

Inside a pipeline, the tokenizer call is a preprocess span under the pipeline's
inference span, and the model's forward (a torch Module) adds no span of its own.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap

DIST = "transformers"
FRAMEWORK = "transformers"
WATCH = (("transformers.pipelines.base", False), ("transformers.tokenization_utils_base", False))


def _text_batch(x) -> dict:
    if isinstance(x, str):
        return {semconv.ML_BATCH_SIZE: 1}
    if isinstance(x, (list, tuple)):
        return {semconv.ML_BATCH_SIZE: len(x)}
    return describe_input(x)


def describe_pipeline(instance, args, kwargs):
    attrs = _text_batch(first_arg(args, kwargs, "inputs", "text_inputs"))
    model = getattr(instance, "model", None)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    attrs[semconv.ML_MODEL_NAME] = name or (type(model).__name__ if model is not None else type(instance).__name__)
    return attrs


def describe_tokenizer(instance, args, kwargs):
    attrs = _text_batch(first_arg(args, kwargs, "text"))
    name = getattr(instance, "name_or_path", None)
    attrs[semconv.ML_MODEL_NAME] = name or type(instance).__name__
    return attrs


def on_import(module: ModuleType) -> None:
    if module.__name__.endswith("pipelines.base"):
        wrap(module.Pipeline, "__call__", StageSpec(semconv.STAGE_INFERENCE, "Pipeline.__call__", FRAMEWORK, describe_pipeline))
    else:
        wrap(module.PreTrainedTokenizerBase, "__call__",
             StageSpec(semconv.STAGE_PREPROCESS, "PreTrainedTokenizerBase.__call__", FRAMEWORK, describe_tokenizer))
