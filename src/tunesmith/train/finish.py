"""The tail every method shares: save the adapter (or full model) atomically, write manifest.json and loss.png."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import families, models
from tunesmith.data.convert import write_rows
from tunesmith.data.reasoning import thinking_mode
from tunesmith.eval.report import loss_curve_png
from tunesmith.eval.select import select_checkpoint
from tunesmith.rag.index import manifest_entry
from tunesmith.records import (
    BaseModelRef,
    FamilyRecord,
    Figures,
    HeldOut,
    Manifest,
    MethodDetails,
    Plan,
    Speed,
    Tokens,
    write_manifest,
)
from tunesmith.run import (
    HELD_OUT,
    Run,
    git_sha,
    load_run,
    peak_memory_mb,
    read_metrics,
    versions,
)
from tunesmith.train.rows import fields_json

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.train.method import Method


def _raise_if_disk_full(exc: BaseException, what: str, run_dir: Path) -> None:
    from tunesmith.train.faults import disk_full

    full = disk_full(exc, what, run_dir, then="Free space, then finish with: tunesmith train RECIPE --resume")
    if full is not None:
        raise full from None


def save_adapter(trainer: Any, tokenizer: Any, run_dir: Path) -> Path:
    """Write the trained adapter (or the full model) to run_dir/adapter via a temp folder + rename.

    Every rank calls it: the save is collective (checkpoints.save_final_model), rank 0 writes and renames.
    """
    from tunesmith.train import checkpoints, dist

    adapter_dir = run_dir / "adapter"
    tmp_dir = run_dir / ".adapter.tmp"
    main = dist.is_main_process()
    if main:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        checkpoints.save_final_model(trainer, tmp_dir)
        if main:
            tokenizer.save_pretrained(tmp_dir)
    except Exception as exc:  # torch.save and safetensors report a full disk as RuntimeError / SafetensorError
        shutil.rmtree(tmp_dir, ignore_errors=True)  # no half-written adapter is left behind
        _raise_if_disk_full(exc, f"saving the final adapter under {run_dir}", run_dir)
        raise
    if main:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp_dir.rename(adapter_dir)
    return adapter_dir


def save_held_out(recipe: Recipe, method: Method[Any], run_dir: Path) -> HeldOut:
    """Copy the held-out rows this run is scored on (its `method`'s eval_examples) into run_dir/data/eval.jsonl, so
    eval, merge and chat work after the training data moved; returns what the manifest records about the copy."""
    examples = method.eval_examples(recipe)
    rows = [{"id": e.id, "messages": e.messages, "source": e.source, **_tools(e)} for e in examples]
    for row, e in zip(rows, examples, strict=True):
        fields = {k: v for k, v in e.extra.items() if k != "tools"}
        if fields:  # the row's other fields, which graders read as item.<field>
            row["fields"] = json.loads(fields_json(fields))
    path = write_rows(run_dir / HELD_OUT, rows)
    return HeldOut(path=HELD_OUT, rows=len(examples), sha256=models.sha256_file(path))


def family_record(tokenizer: Any, config: Any, policy: str, counts: Tokens) -> FamilyRecord:
    """The run's chat family (families.describe with the tokenizer's ids) and its thinking mode: on when any trained
    answer carried a trace (a family with a switch), else off; None for a family without one."""
    family = families.detect(config, tokenizer)
    modes = (counts.train.thinking_rows if counts.train is not None else {}) or {}
    # No row says (a method that tokenizes no demonstrations): None, the template's own default.
    thinking = thinking_mode([True] * modes.get("on", 0) + [False] * modes.get("off", 0)) if family.thinking_switch else None
    info = families.describe(family, tokenizer)
    if not info["stop"]:  # a template no family knows: its turns end with the tokenizer's EOS (family.end_of_turn_ids)
        info["stop"] = tokenizer.convert_ids_to_tokens(info["stop_token_ids"])
        info["end_of_turn"] = tokenizer.convert_ids_to_tokens(family.end_of_turn_ids(tokenizer))
    return FamilyRecord.model_validate({**info, "reasoning_policy": policy, "thinking": thinking})


def _tools(example: Any) -> dict[str, Any]:
    """The row's tool list, kept with its held-out copy (the prompt renders it)."""
    tools = example.extra.get("tools")
    return {"tools": tools} if isinstance(tools, list) else {}


def data_hashes(recipe: Recipe) -> dict[str, str]:
    files = (
        recipe.data.train + ([recipe.data.eval] if recipe.data.eval else []) + ([recipe.data.tools] if recipe.data.tools else [])
    )
    return {path: models.sha256_file(Path(path)) for path in files}


def finish_run(
    recipe: Recipe,
    method: Method[Any],
    trainer: Any,
    tokenizer: Any,
    result: Any,
    counts: Tokens,
    started: float,
    checkpoint: Path | None,
    *,
    base_path: str,
    final_eval: dict[str, Any] | None = None,
    details: MethodDetails | None = None,
    speed: Speed | None = None,
    plan: Plan | None = None,
) -> Run:
    """Save the adapter, write manifest.json (versions, hashes, figures) and loss.png; return the run read back.

    method: the recipe's (its held-out rows, checkpoint selection's scoring); counts: per split, what the length
    policy kept (tokens/s counts the kept train rows' tokens).
    details: the method's own record; speed: the levers trained with; plan: the planner's estimate, measured.
    """
    from tunesmith.train import checkpoints, dist, faults, start

    run_dir = recipe.run_dir
    faults.raise_if_stopped(trainer, run_dir)  # a run stopped by a signal or NaN guard is not finished
    save_adapter(trainer, tokenizer, run_dir)  # collective: every rank takes part, rank 0 writes
    peaks = dist.world_values(peak_memory_mb())  # collective too: every rank's own peak, all nodes
    peak_mb = max(peaks)
    if not dist.is_main_process():  # under --nproc N only rank 0 writes; the others read its result
        dist.barrier()
        return load_run(run_dir)
    try:
        held_out = save_held_out(recipe, method, run_dir)
    except Exception as exc:  # a full disk is not always an OSError (see faults.disk_full)
        shutil.rmtree(run_dir / "data", ignore_errors=True)
        _raise_if_disk_full(exc, f"saving the held-out rows under {run_dir}", run_dir)
        raise
    family = family_record(tokenizer, models.read_config(base_path), recipe.data.reasoning, counts)
    selection = None
    if recipe.eval.select_checkpoint:  # before the manifest: a finished run is never rewritten afterwards
        selection = select_checkpoint(recipe, method, run_dir, base_path, family.thinking)
    wall = time.time() - started
    runtime = result.metrics.get("train_runtime", wall)
    train = counts.train
    t = recipe.training
    # Each optimizer step takes batch_size x grad_accum rows on every rank of every node: tokens/s counts all of
    # them, over the steps this process trained (train_runtime does not include those before a resume).
    steps = result.global_step - (checkpoints.checkpoint_step(checkpoint) if checkpoint else 0)
    rows_seen = steps * t.batch_size * t.grad_accum * dist.world_size()
    trained = train.tokens * rows_seen / max(1, train.kept) if train is not None else 0
    manifest = Manifest(
        run=recipe.name,
        method=recipe.method,
        adapter=recipe.adapter.type,
        base_model=BaseModelRef(spec=recipe.model.base, path=base_path),
        chat_template_sha256=models.chat_template_hash(tokenizer),
        data=data_hashes(recipe),
        tokens=counts,
        figures=Figures(
            global_step=result.global_step,
            train_loss=result.training_loss,
            eval_loss=(final_eval or {}).get("eval_loss"),
            wall_time_s=round(wall, 1),
            train_runtime_s=round(runtime, 3),  # ms: tokens_per_s x train_runtime_s gives back the trained tokens
            tokens_per_s=round(trained / max(runtime, 1e-9), 1) if trained else None,
            peak_memory_mb=round(peak_mb, 1),
            peak_memory_rank=peaks.index(peak_mb),
            trainable_params=dist.param_count(trainer.model, trainable_only=True),
            total_params=dist.param_count(trainer.model),
            world_size=dist.world_size(),
        ),
        resumed_from=str(checkpoint) if checkpoint else None,
        faults=faults.summary(trainer),
        device=models.device(),
        versions=versions(),
        git_sha=git_sha(),
        quantized_base=recipe.adapter.type == "qlora",
        rag=manifest_entry(recipe),  # the retrieval index trained with: eval warns when it changes
        held_out=held_out,
        checkpoint_selection=selection,
        speed=speed,
        plan=plan,
        details=details,
        family=family,
    )
    try:
        write_loss_png(run_dir)
        write_manifest(run_dir / "manifest.json", manifest)  # last: its presence means "finished"
    except Exception as exc:  # a full disk is not always an OSError (see faults.disk_full)
        _raise_if_disk_full(exc, f"writing manifest.json under {run_dir}", run_dir)
        raise
    start.release_run_dir(run_dir)
    dist.barrier()
    return load_run(run_dir)


def write_loss_png(run_dir: Path) -> None:

    loss_curve_png(read_metrics(run_dir), run_dir / "loss.png")
