"""PyTorch: a top-level ``nn.Module`` call -> inference.

We wrap ``Module.__call__`` once; sub-module calls happen inside the top-level
module's inference span, so the nesting rule gives them no span: one forward
pass, one span, however deep the model.
"""

from __future__ import annotations

from types import ModuleType

from stagetrace import semconv

from .wrapping import StageSpec, describe_input, first_arg, wrap

DIST = "torch"
FRAMEWORK = "pytorch"
WATCH = (("torch.nn.modules.module", False),)


def describe(instance, args, kwargs):
    attrs = describe_input(first_arg(args, kwargs, "input", "x", "input_ids"))
    if instance is not None:
        attrs[semconv.ML_MODEL_NAME] = type(instance).__name__
    return attrs


def on_import(module: ModuleType) -> None:
    wrap(module.Module, "__call__", StageSpec(semconv.STAGE_INFERENCE, "Module.__call__", FRAMEWORK, describe))
