"""Pick the checkpoint by the task, not the loss (eval.select_checkpoint).

At the end of training, before manifest.json is written (so a finished run is never rewritten), every kept
checkpoint and the final adapter are scored on the first eval.select_examples rows of the run's held-out set
(data/eval.jsonl, already saved) by the chosen metric: any metric of the one scoring path (tunesmith.eval.scoring),
or eval_loss / perplexity, in the direction the registry declares. The best becomes the run's adapter/; every
score goes into Manifest.checkpoint_selection. Ties keep the later one (the final adapter last).
Those rows are also in the held-out set `tunesmith eval` scores, so that eval is slightly optimistic; the manifest
records how many rows the selection saw.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import models
from tunesmith.config import Recipe
from tunesmith.data.template import prompt_messages
from tunesmith.errors import RecipeError
from tunesmith.eval import registry, scoring, tool_metrics
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.loss import perplexity, reference_loss
from tunesmith.records import CheckpointSelection
from tunesmith.run import HELD_OUT, read_held_out
from tunesmith.train.rewards import scorer

if TYPE_CHECKING:
    from tunesmith.train.method import Method

LOSSES = frozenset({"eval_loss", "perplexity"})  # measured on the references' likelihood, not on generations
# What a checkpoint contributes to adapter/: the adapter (or full model) weights and config, never optimizer state.
_WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
)


def candidates(run_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every complete kept checkpoint, oldest first, then the final adapter ("final")."""
    from tunesmith.train.checkpoints import COMPLETE, checkpoint_step

    kept = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / COMPLETE).exists()]
    return [(p.name, p) for p in sorted(kept, key=checkpoint_step)] + [("final", run_dir / "adapter")]


def choose(scores: dict[str, float], metric: str) -> str:
    """The best-scoring name (in the registry's direction for `metric`); on a tie the later one in `scores`' order."""
    sign = 1.0 if registry.higher_is_better(metric) else -1.0
    best = None
    for name, value in scores.items():
        if best is None or sign * value >= sign * scores[best]:
            best = name
    assert best is not None, "no candidates"
    return best


def score(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    method: Method[Any],
    examples: list[Any],
    metric: str,
    thinking: bool | None = None,
) -> float:
    """One model's value of `metric` on the examples (greedy answers and scores through the one scoring path, with
    the rewards of the recipe's `method`), prompted in the run's thinking mode."""
    if metric in LOSSES:
        loss = reference_loss(model, tokenizer, [e.messages for e in examples], recipe.data.max_length, recipe.data.reasoning)
        return loss if metric == "eval_loss" else perplexity(loss)
    refs = tool_metrics.references(examples)
    convs = [prompt_messages(e.messages) for e in examples]
    json_mode, tool_mode = scoring.modes(refs)
    budget = resolve_max_new_tokens(recipe, tokenizer, refs).tokens
    offered = tool_metrics.tools_of(examples)
    answers = scoring.answer(model, tokenizer, convs, budget, recipe.eval.batch_size, thinking=thinking, tools=offered)
    outputs = scoring.scored_texts(answers, model, tokenizer, tool_mode)
    agg = scoring.score(outputs, refs, json_mode, scorer(recipe, method, refs), convs, tools=tool_mode).aggregate
    if metric not in agg:
        known = ", ".join(sorted(agg) + sorted(LOSSES))
        raise RecipeError([("eval.select_checkpoint", f"{metric} is not measured on these rows; use one of {known}")])
    return agg[metric]


def load_checkpoint(recipe: Recipe, base_path: str, folder: Path) -> Any:
    """One checkpoint's model (its adapter on a fresh base, or a full fine-tune's weights), as selection scores it."""
    return _load(recipe, base_path, folder, None)


def _load(recipe: Recipe, base_path: str, folder: Path, peft_model: Any) -> Any:
    """The model of one candidate: its adapter loaded into the one PeftModel, or a full fine-tune's weights."""
    if not (folder / "adapter_config.json").exists():
        return models.load_model(str(folder), recipe.model.dtype).eval()
    if peft_model is None:
        from peft import PeftModel

        bnb = models.build_bnb_config(recipe.adapter) if recipe.adapter.type == "qlora" else None
        base = models.load_model(base_path, recipe.model.dtype, recipe.model.revision, recipe.model.trust_remote_code, bnb)
        return PeftModel.from_pretrained(base, str(folder), adapter_name=folder.name).eval()
    peft_model.load_adapter(str(folder), adapter_name=folder.name)
    peft_model.set_adapter(folder.name)
    return peft_model


def select_checkpoint(
    recipe: Recipe, method: Method[Any], run_dir: Path, base_path: str, thinking: bool | None = None
) -> CheckpointSelection:
    """Score every candidate (scored as the recipe's `method` scores answers), make the best run_dir/adapter, and
    return what the manifest records."""
    metric = recipe.eval.select_checkpoint
    assert metric is not None
    examples = read_held_out(run_dir / HELD_OUT)[: recipe.eval.select_examples]  # saved before selection runs
    tokenizer = models.load_tokenizer(str(run_dir / "adapter"))
    scores: dict[str, float] = {}
    peft_model = None
    for name, folder in candidates(run_dir):
        model = _load(recipe, base_path, folder, peft_model)
        peft_model = model if hasattr(model, "load_adapter") and hasattr(model, "peft_config") else None
        scores[name] = score(model, tokenizer, recipe, method, examples, metric, thinking)
    chosen = choose(scores, metric)
    if chosen != "final":
        install(run_dir / "checkpoints" / chosen, run_dir / "adapter")
    return CheckpointSelection(
        metric=metric,
        scores=scores,
        chosen=chosen,
        n_examples=len(examples),
        rows=f"first {len(examples)} held-out rows",
        ids=[e.id for e in examples],
    )


def install(checkpoint: Path, adapter_dir: Path) -> None:
    """Replace adapter/'s weights with the checkpoint's (tokenizer files stay): staged in a copy, then renamed."""
    staged = adapter_dir.with_name(".adapter.select")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(adapter_dir, staged)
    for name in _WEIGHT_FILES:
        if (staged / name).exists():
            (staged / name).unlink()
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, staged / name)
    shutil.rmtree(adapter_dir)
    staged.rename(adapter_dir)
