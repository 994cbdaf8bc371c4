"""The head every method shares: the run folder (fresh or resumed), the base model path, its tokenizer, the data check."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.config import Recipe, dump_recipe
from tunesmith.errors import RunError
from tunesmith.train import faults
from tunesmith.train.callbacks import latest_complete_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Start:
    started: float
    run_dir: Path
    checkpoint: Path | None  # the complete checkpoint to resume from, None for a fresh run
    base_path: str
    tokenizer: Any


def refuse_finished(run_dir: Path) -> None:
    """A fresh run never overwrites a finished one."""
    if (run_dir / "manifest.json").exists():
        raise RunError(f"{run_dir} already holds a finished run", hint="Choose another output_dir (--set output_dir=...).")


def prepare_run_dir(recipe: Recipe, resume: bool) -> tuple[Path, Path | None]:
    """Create the run folder; refuse to overwrite a finished run unless resuming."""
    run_dir = recipe.run_dir
    newest = latest_complete_checkpoint(run_dir / "checkpoints")
    if recipe.training.auto_resume and newest is not None and not (run_dir / "manifest.json").exists():
        if not resume:
            log.warning("training.auto_resume: continuing from %s", newest)
        resume = True
    checkpoint = newest if resume else None
    if resume and checkpoint is None:
        raise RunError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}", hint="Start without --resume.")
    if not resume:
        refuse_finished(run_dir)
    if not resume and (run_dir / "checkpoints").exists():
        raise RunError(
            f"{run_dir} holds checkpoints of an unfinished run",
            hint="Continue it with --resume, or choose another output_dir.",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if faults.is_main_process():  # under --nproc N only rank 0 writes run files
        if not resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        dump_recipe(recipe, run_dir / "run.yaml")
    return run_dir, checkpoint


def begin(recipe: Recipe, resume: bool, force: bool) -> Start:
    """Run folder, base model, tokenizer; then the data audit, whose blocking errors stop the run before any model loads."""
    from tunesmith.data import audit

    started = time.time()
    run_dir, checkpoint = prepare_run_dir(recipe, resume)
    base_path = models.resolve_base(recipe.model.base)
    tokenizer = models.load_tokenizer(base_path, recipe.model.revision, recipe.model.trust_remote_code)
    audit.preflight(recipe, tokenizer, force)
    return Start(started, run_dir, checkpoint, base_path, tokenizer)
