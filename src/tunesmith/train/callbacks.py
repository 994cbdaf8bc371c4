"""Trainer callbacks: rich progress, metrics.jsonl + loss.png, atomic checkpoints with a COMPLETE marker, trackers."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

COMPLETE = "COMPLETE"
STAGING = ".staging"  # inside checkpoints/: where a checkpoint is written before it is renamed into place


class RichProgress(TrainerCallback):
    """A rich progress bar over optimizer steps, with the latest loss."""

    def __init__(self, description: str = "training"):
        self.description = description
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.on_train_end(args, state, control)  # a retried train() (OOM back-off) starts a fresh bar
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step, loss="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class MetricsLog(TrainerCallback):
    """Append every log event to metrics.jsonl (NaN/inf kept as strings, never filtered out)."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.started, 2)}
        for key, value in logs.items():
            row[key] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        # Every run folder gets its loss curve, also runs that stop early (signal, divergence).
        if state.is_world_process_zero and self.path.exists():
            from tunesmith.eval.report import loss_curve_png
            from tunesmith.run import read_metrics

            loss_curve_png(read_metrics(self.path.parent), self.path.parent / "loss.png")


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

    def on_train_begin(self, args, state, control, **kwargs):
        self.final_dir = Path(args.output_dir)
        if args.should_save:  # a crash mid-save leaves a staging folder: never trusted, always discarded
            shutil.rmtree(self.final_dir / STAGING, ignore_errors=True)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and self.final_dir is not None:
            args.output_dir = str(self.final_dir / STAGING)

    on_epoch_end = on_step_end

    def on_save(self, args, state, control, **kwargs):
        from tunesmith.train.faults import barrier

        if self.final_dir is None:
            return
        args.output_dir = str(self.final_dir)
        name = f"checkpoint-{state.global_step}"
        staged, final = self.final_dir / STAGING / name, self.final_dir / name
        barrier()
        if args.should_save:
            # A save nobody redirected (e.g. requested after on_step_end) was written in place: mark it there.
            target = staged if staged.is_dir() else final
            marker = {"step": state.global_step, "fingerprint": self.fingerprint}
            (target / COMPLETE).write_text(json.dumps(marker), encoding="utf-8")
            if target is staged:
                _fsync_tree(staged)
                _replace_dir(staged, final)
                shutil.rmtree(staged.parent, ignore_errors=True)  # e.g. the model card TRL writes beside it
            self._rotate()
        barrier()

    def abort(self, args) -> None:
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
        doomed = [p for _, p in complete[:-self.keep]]
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


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


def _trackers(recipe: Any, run_dir: Path) -> list[TrainerCallback]:
    """transformers' TensorBoard/MLflow callbacks, writing under the run folder instead of the cwd."""
    out: list[TrainerCallback] = []
    if "tensorboard" in recipe.training.report_to:
        from transformers.integrations import TensorBoardCallback

        tb = TensorBoardCallback()
        tb.logging_dir = tb.logging_dir or str(run_dir / "tensorboard")  # TENSORBOARD_LOGGING_DIR still wins
        out.append(tb)
    if "mlflow" in recipe.training.report_to:
        out.append(_mlflow_callback(f"sqlite:///{run_dir / 'mlflow.db'}"))
    return out


def _mlflow_callback(uri: str) -> TrainerCallback:
    from transformers.integrations import MLflowCallback

    class RunDirMLflow(MLflowCallback):
        """MLflowCallback with a store in the run folder unless MLFLOW_TRACKING_URI says otherwise.

        MLflow 3 refuses the plain ./mlruns file store and defaults to sqlite in the cwd; an sqlite file per run
        keeps runs self-contained: `mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`.
        """

        def setup(self, args, state, model):
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                self._ml_flow.set_tracking_uri(uri)
            super().setup(args, state, model)

    return RunDirMLflow()


def standard_callbacks(recipe: Any, run_dir: Path) -> list[TrainerCallback]:
    """The callbacks every trainer of every method gets, in the order they must run.

    Signal stop and the NaN guard decide `should_save` before AtomicCheckpoints reads it; the guard adds its
    count to the logs before MetricsLog writes them. Train through `faults.fit` to turn their flags into errors.
    """
    from tunesmith.train.faults import NonFiniteGuard, StopOnSignal, fingerprint

    return [
        RichProgress(f"{recipe.method} {recipe.name}"),
        StopOnSignal(),
        NonFiniteGuard(recipe.training.max_bad_steps),
        MetricsLog(run_dir / "metrics.jsonl"),
        AtomicCheckpoints(recipe.training.save_total_limit, fingerprint(recipe)),
        *_trackers(recipe, run_dir),
    ]


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
