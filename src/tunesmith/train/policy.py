"""The model a method trains: the base (4-bit for QLoRA) and the peft config that goes on it.

Shared by every method so that `adapter.type` and `training.unfreeze_top_layers` mean the same
thing for SFT, DPO, GRPO and distillation.
"""

from __future__ import annotations

import os
from typing import Any

from tunesmith import models
from tunesmith.config import Recipe
from tunesmith.errors import RecipeError
from tunesmith.train import _trl, dist


def load(recipe: Recipe, base_path: str, dtype: str | None = None, num_labels: int | None = None) -> Any:
    """The base model to train, quantized to 4-bit NF4 for `adapter.type: qlora`; dtype overrides model.dtype;
    num_labels: a sequence-classification head instead of the language-model head (a reward model).

    The distributed state comes first (dist.prepare): FSDP and ZeRO-3 can only shard a model whose loading
    already saw the process group / DeepSpeed config; QLoRA lands on this rank's GPU (models.local_device).
    """
    if recipe.adapter.type == "qlora" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # FSDP can only flatten 4-bit weights stored in the compute dtype (bnb_4bit_quant_storage) and loaded
        # without a device_map; that path is not wired or tested here, so it is refused rather than half-working.
        raise RecipeError(
            [
                (
                    "adapter.type",
                    "qlora is not supported under FSDP; use --accelerate-config ddp "
                    "(each GPU holds the small 4-bit base) or adapter.type: lora with FSDP",
                )
            ]
        )
    dist.prepare()
    m = recipe.model
    bnb = _trl.build_bnb_config(recipe.adapter)
    return models.load_model(base_path, dtype or m.dtype, m.revision, m.trust_remote_code, bnb, num_labels)


def decoder_layers(model: Any) -> tuple[str, int]:
    """(dotted path, count) of the model's stack of decoder layers: the longest ModuleList named `*layers`/`h`/`blocks`."""
    import torch

    found = [
        (name, len(module))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")
    ]
    if not found:
        raise RecipeError([("training.unfreeze_top_layers", f"cannot find the decoder layers of {type(model).__name__}")])
    return max(found, key=lambda item: item[1])


def peft_config(recipe: Recipe, model: Any, base_path: str) -> Any | None:
    """The peft config for this recipe and model (None for a full fine-tune)."""
    n_top = recipe.training.unfreeze_top_layers
    if not n_top:
        return _trl.build_peft_config(recipe.adapter, base_path)
    path, count = decoder_layers(model)
    if n_top >= count:
        raise RecipeError([("training.unfreeze_top_layers", f"{n_top} is not below the model's {count} decoder layers")])
    adapter = recipe.adapter
    if adapter.target_modules == "all-linear":  # peft needs names when LoRA is limited to some layers
        adapter = adapter.model_copy(update={"target_modules": linear_names(model, path)})
    return _trl.build_peft_config(adapter, base_path, unfreeze_top_layers=n_top, num_layers=count, layers_path=path)


def linear_names(model: Any, layers_path: str) -> list[str]:
    """Names (last component) of the Linear modules inside the decoder layers: what `all-linear` means there."""
    import torch

    prefix = layers_path + "."
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, torch.nn.Linear)
        }
    )
