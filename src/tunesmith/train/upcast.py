"""A frozen base stored in bf16 and multiplied in fp32: `speed.frozen_bf16`, for CPUs that train in fp32.

On a CPU without bf16 units training multiplies in fp32 (train/speed.py), and an fp32 base is the largest single
item of a LoRA run's memory after the process itself (540 MB of SmolLM2-135M's 135M parameters). Its decoder's
linear layers are frozen: stored in bf16 they take half, and each is cast back to fp32 for its matmul, in the
forward and again in the backward (the autograd function saves the bf16 weight, not the fp32 copy). The embeddings
(the tied LM head) and the norms stay fp32. The model then computes exactly what the fp32 model computes with its
weights rounded to bf16 (tests/unit/test_compact.py), the rounding bf16 autocast applies to every matmul anyway.

An fp32 checkpoint loads without a copy: every fp32 tensor is a view of the safetensors file mapped into memory, so
converting the linears reads the whole file into the process's resident pages. The tensors left in fp32 are then
copied out of the mapping, which closes it: otherwise it stays open for the embeddings' sake and the pages the
conversion read stay resident (SmolLM2-135M: 415 MB of the file, 308 MB net of the embeddings' copy).
"""

from __future__ import annotations

import types
from typing import Any


def _function() -> Any:
    import torch

    class Upcast(torch.autograd.Function):
        """y = x @ W.T + b with W stored in bf16, multiplied in x's dtype; only the input gets a gradient."""

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any) -> Any:
            ctx.save_for_backward(weight)
            return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, None, None]:
            (weight,) = ctx.saved_tensors
            return grad @ weight.to(grad.dtype), None, None

    return Upcast


def _forward(self: Any, x: Any) -> Any:
    return _UPCAST.apply(x, self.weight, self.bias)


_UPCAST: Any = None


def install(model: Any) -> int:
    """Store the frozen linear layers of `model`'s decoder (a transformers causal LM, before peft wraps it) in bf16,
    multiplied in fp32; the LM head and the embeddings keep their dtype. Returns how many layers were converted."""
    import torch

    global _UPCAST
    if _UPCAST is None:
        _UPCAST = _function()
    head = model.get_output_embeddings()
    count = 0
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and module.weight.dtype == torch.float32:
            module.weight.requires_grad_(False)
            module.weight.data = module.weight.data.to(torch.bfloat16)
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]  # this instance only
            count += 1
    # what still views the checkpoint's mapping, if anything (each tensor once: tied weights are listed once)
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype != torch.bfloat16:
            tensor.data = tensor.data.clone()  # the same Parameter object: tied weights stay tied
    return count
