"""Supervised fine-tuning: recipe → tokenizer → model (+adapter) → data → SFTTrainer → adapter + manifest."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.config import Recipe, dump_recipe
from tunesmith.data.dataset import split_examples, tokenize_examples
from tunesmith.errors import RunError
from tunesmith.run import Run, git_sha, load_run, peak_memory_mb, read_metrics, versions, write_json_atomic
from tunesmith.train import _trl
from tunesmith.train.callbacks import CompletionMarker, MetricsLog, RichProgress, latest_complete_checkpoint

log = logging.getLogger(__name__)


def _prepare_run_dir(recipe: Recipe, resume: bool) -> tuple[Path, Path | None]:
    """Create the run folder; refuse to overwrite a finished run unless resuming."""
    run_dir = recipe.run_dir
    checkpoint = latest_complete_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        raise RunError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}", hint="Start without --resume.")
    if not resume and (run_dir / "manifest.json").exists():
        raise RunError(f"{run_dir} already holds a finished run", hint="Choose another output_dir (--set output_dir=...).")
    if not resume and (run_dir / "checkpoints").exists():
        raise RunError(
            f"{run_dir} holds checkpoints of an unfinished run",
            hint="Continue it with --resume, or choose another output_dir.",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    dump_recipe(recipe, run_dir / "run.yaml")
    return run_dir, checkpoint


def _datasets(recipe: Recipe, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset

    train_ex, eval_ex = split_examples(recipe.data, recipe.training.seed)
    d = recipe.data
    train_rows, train_stats = tokenize_examples(tokenizer, train_ex, d.max_length, d.overlong)
    eval_rows, eval_stats = tokenize_examples(tokenizer, eval_ex, d.max_length, d.overlong)
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()}
    for split, s in (("train", train_stats), ("eval", eval_stats)):
        if s.dropped_overlong or s.dropped_no_trained_tokens or s.truncated:
            log.warning(
                "%s: dropped %d over max_length=%d, %d with no trained tokens; truncated %d (%d tokens lost)",
                split, s.dropped_overlong, d.max_length, s.dropped_no_trained_tokens, s.truncated, s.tokens_lost,
            )
    return Dataset.from_list(train_rows), Dataset.from_list(eval_rows), stats


def run(recipe: Recipe, resume: bool = False) -> Run:
    """Train an SFT run end to end and return it (read back from its folder)."""
    import torch
    from trl import SFTTrainer

    started = time.time()
    run_dir, checkpoint = _prepare_run_dir(recipe, resume)
    base_path = models.resolve_base(recipe.model.base)
    tokenizer = models.load_tokenizer(base_path, recipe.model.revision, recipe.model.trust_remote_code)
    train_ds, eval_ds, token_stats = _datasets(recipe, tokenizer)

    torch.manual_seed(recipe.training.seed)
    model = models.load_model(base_path, recipe.model.dtype, recipe.model.revision, recipe.model.trust_remote_code)
    trainer = SFTTrainer(
        model=model,
        args=_trl.build_sft_config(recipe, run_dir, has_eval=True),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=_trl.build_peft_config(recipe.adapter),
        callbacks=[RichProgress(f"sft {recipe.name}"), MetricsLog(run_dir / "metrics.jsonl"), CompletionMarker()],
    )
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_eval = trainer.evaluate()  # logged to metrics.jsonl by MetricsLog

    adapter_dir = run_dir / "adapter"
    tmp_dir = run_dir / ".adapter.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    trainer.model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp_dir.rename(adapter_dir)

    wall = time.time() - started
    trained = token_stats["train"]["tokens"] * (result.global_step * recipe.training.batch_size * recipe.training.grad_accum) / max(1, token_stats["train"]["kept"])
    manifest = {
        "run": recipe.name,
        "method": recipe.method,
        "adapter": recipe.adapter.type,
        "base_model": {"spec": recipe.model.base, "path": base_path},
        "chat_template_sha256": models.chat_template_hash(tokenizer),
        "data": {path: models.sha256_file(Path(path)) for path in recipe.data.train + ([recipe.data.eval] if recipe.data.eval else [])},
        "tokens": token_stats,
        "figures": {
            "global_step": result.global_step,
            "train_loss": result.training_loss,
            "eval_loss": final_eval.get("eval_loss"),
            "wall_time_s": round(wall, 1),
            "train_runtime_s": round(result.metrics.get("train_runtime", wall), 1),
            "tokens_per_s": round(trained / max(result.metrics.get("train_runtime", wall), 1e-9), 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in trainer.model.parameters()),
        },
        "resumed_from": str(checkpoint) if checkpoint else None,
        "device": models.device(),
        "versions": versions(),
        "git_sha": git_sha(),
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    _write_loss_png(run_dir)
    return load_run(run_dir)


def _write_loss_png(run_dir: Path) -> None:
    from tunesmith.eval.report import loss_curve_png

    loss_curve_png(read_metrics(run_dir), run_dir / "loss.png")
