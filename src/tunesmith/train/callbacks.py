"""Trainer callbacks: rich progress, metrics.jsonl, and completion markers on checkpoints."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

COMPLETE = "COMPLETE"


class RichProgress(TrainerCallback):
    """A rich progress bar over optimizer steps, with the latest loss."""

    def __init__(self, description: str = "training"):
        self.description = description
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


class CompletionMarker(TrainerCallback):
    """Write COMPLETE into a checkpoint once the Trainer has finished saving it.

    Resume only trusts checkpoints with the marker, so a crash mid-save is never resumed from.
    """

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / COMPLETE).write_text(json.dumps({"step": state.global_step}))


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
