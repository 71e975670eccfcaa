"""PyTorch: a top-level ``nn.Module`` call -> inference.

We wrap ``Module.__call__`` once; sub-module calls happen inside the top-level
module's inference span, so the nesting rule gives them no span: one forward
pass, one span, however deep the model.

A forward pass in a training step is not inference: a module in train mode
(``model.training``, i.e. no ``model.eval()``) called with gradients on (no
``torch.no_grad()``/``inference_mode()``) makes no span, nor does anything inside it.
A served model is expected to be in eval mode or called without gradients.
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


def _training_check():
    from torch._C import is_grad_enabled  # loaded before torch.nn: safe inside torch's own import

    def in_training(instance, args, kwargs) -> bool:
        """A module in train mode called with gradients on: a training step."""
        return instance is not None and instance.training is True and is_grad_enabled()

    return in_training


def on_import(module: ModuleType) -> None:
    wrap(module.Module, "__call__", StageSpec(semconv.STAGE_INFERENCE, "Module.__call__", FRAMEWORK, describe,
                                              training=_training_check()))
