"""Checkpoints that appear whole or not at all, the fingerprint that guards a resume, and the final collective save.

dist ← checkpoints ← callbacks ← faults: this module knows ranks and files, nothing about fault policy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from tunesmith.atomic import fsync_dir as _fsync_dir
from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError
from tunesmith.models import sha256_file
from tunesmith.train import dist

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

COMPLETE = "COMPLETE"
STAGING = ".staging"  # inside checkpoints/: where a checkpoint is written before it is renamed into place


class AtomicCheckpoints(TrainerCallback):
    """Checkpoints appear whole or not at all: staged, fsynced, marked COMPLETE, then renamed into place.

    When a save is due (`on_step_end` sees `should_save`), the Trainer's output_dir points at
    `checkpoints/.staging` for the length of that one save, so every rank writes its part (model, optimizer,
    rng_state_<rank>.pth) there. In `on_save` all ranks meet at a barrier, then only the saving process
    (rank 0, or each node's first with save_on_each_node) writes the marker, renames, and rotates old
    checkpoints; a second barrier keeps the others from running ahead. transformers' own atomic-save
    attempts renamed while other ranks were still writing (#27925, #36076); the barrier is the difference.
    """

    def __init__(self, keep: int, fingerprint: dict[str, Any] | None = None):
        self.keep = keep
        self.fingerprint = fingerprint or {}
        self.final_dir: Path | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        assert args.output_dir is not None  # TrainingArguments.__post_init__ fills in a default
        self.final_dir = Path(args.output_dir)
        if args.should_save:  # a crash mid-save leaves a staging folder: never trusted, always discarded
            shutil.rmtree(self.final_dir / STAGING, ignore_errors=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if control.should_save and self.final_dir is not None:
            args.output_dir = str(self.final_dir / STAGING)

    on_epoch_end = on_step_end

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.final_dir is None:
            return
        args.output_dir = str(self.final_dir)
        name = f"checkpoint-{state.global_step}"
        staged, final = self.final_dir / STAGING / name, self.final_dir / name
        dist.barrier()
        if args.should_save:
            # A save nobody redirected (e.g. requested after on_step_end) was written in place: mark it there.
            target = staged if staged.is_dir() else final
            marker = {"step": state.global_step, "fingerprint": self.fingerprint}
            write_text_atomic(target / COMPLETE, json.dumps(marker))
            if target is staged:
                _fsync_tree(staged)
                _replace_dir(staged, final)
                shutil.rmtree(staged.parent, ignore_errors=True)  # e.g. the model card TRL writes beside it
            self._rotate()
        dist.barrier()

    def abort(self, args: TrainingArguments) -> None:
        """After a failed save: point the Trainer back at checkpoints/ and free the half-written staging folder."""
        if self.final_dir is not None:
            args.output_dir = str(self.final_dir)
            if args.should_save:
                shutil.rmtree(self.final_dir / STAGING, ignore_errors=True)

    def _rotate(self) -> None:
        assert self.final_dir is not None
        complete = sorted((checkpoint_step(p), p) for p in _checkpoint_dirs(self.final_dir) if (p / COMPLETE).exists())
        if not complete:
            return
        newest = complete[-1][0]
        doomed = [p for _, p in complete[: -self.keep]]
        # Unmarked folders older than the newest complete one are leftovers of an older crash.
        doomed += [p for p in _checkpoint_dirs(self.final_dir) if not (p / COMPLETE).exists() and checkpoint_step(p) < newest]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)


def _checkpoint_dirs(root: Path) -> list[Path]:
    return [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]


def checkpoint_step(path: Path) -> int:
    """The step N of a checkpoint-N folder."""
    return int(Path(path).name.split("-", 1)[1])


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under root to disk, so the rename publishes bytes that are really there."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename src onto dst; a stale dst (unmarked leftover of the same step) is moved aside first, then deleted."""
    aside = None
    if dst.exists():
        aside = src.parent / f"replaced-{dst.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(dst, aside)
    os.rename(src, dst)
    _fsync_dir(dst.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def fingerprint(recipe: Any) -> dict[str, Any]:
    """What must not change between a checkpoint and the run that resumes it.

    world_size: processes of all nodes together; with batch_size and grad_accum it makes the global batch, and it
    decides which rows each rank reads, so a resume on fewer or more processes would be neither run.
    """
    t = recipe.training
    data = list(recipe.data.train) + ([recipe.data.eval] if recipe.data.eval else [])
    return {
        "method": recipe.method,
        "base": recipe.model.base,
        "adapter": recipe.adapter.type,
        "seed": t.seed,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "max_length": recipe.data.max_length,
        "world_size": dist.world_size(),
        "data_sha256": {Path(p).name: sha256_file(Path(p)) for p in data},
    }


def check_resume(recipe: Any, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint under a different seed, batch, data or base: the result would be neither run."""
    try:
        saved = json.loads((checkpoint / COMPLETE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        saved = None
    if not saved:
        return  # a marker from before fingerprints: nothing to compare
    now = fingerprint(recipe)
    # A key the checkpoint predates (world_size) is not compared: such a checkpoint did not record it.
    diffs = [
        f"{k}: checkpoint {saved[k]!r}, {'this launch' if k == 'world_size' else 'recipe'} {now[k]!r}"
        for k in now
        if k in saved and saved[k] != now[k]
    ]
    if diffs:
        raise RunError(
            f"refusing to resume {checkpoint.name}: the recipe or the launch changed since it was written\n  "
            + "\n  ".join(diffs),
            hint="Resume with the original values (and as many processes on as many nodes), "
            "or start a fresh run in another output_dir.",
        )


def latest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest checkpoint-N folder that carries the COMPLETE marker; partial ones are skipped."""
    if not checkpoints_dir.is_dir():
        return None
    found = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / COMPLETE).exists():
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def kept_hint(run_dir: Path) -> str:
    """One sentence for an error's hint: the newest complete checkpoint of the run, which a resume continues from."""
    ckpt = latest_complete_checkpoint(run_dir / "checkpoints")
    return f"Newest complete checkpoint kept: {ckpt}." if ckpt else "No complete checkpoint was written yet."


def save_final_model(trainer: Any, out_dir: Path) -> None:
    """Save the trained adapter (or full model) to out_dir; every rank must call it, rank 0 writes.

    `trainer.save_model` is collective: under FSDP it gathers the full state dict from the shards (the run's
    checkpoints stay sharded, the final save must not be), under DeepSpeed ZeRO-3 it consolidates the 16-bit
    weights; rank 0 alone writing `trainer.model.save_pretrained` there would save its own shard.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir))
