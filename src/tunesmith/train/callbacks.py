"""Trainer callbacks: rich progress, metrics.jsonl + loss.png, stop on a signal, skip NaN steps, trackers.

dist ← checkpoints ← callbacks ← faults: the callbacks set flags; `faults.fit` turns them into errors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from tunesmith.eval.report import loss_curve_png
from tunesmith.run import read_metrics
from tunesmith.train import _private, dist
from tunesmith.train.checkpoints import (  # noqa: F401  (re-exported: the names callers know)
    COMPLETE,
    STAGING,
    AtomicCheckpoints,
    checkpoint_step,
    fingerprint,
    latest_complete_checkpoint,
)
from tunesmith.train.speed import release_freed_memory, releases_memory  # on import: bounds oneDNN's kernel cache

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

Logs = dict[str, Any] | None  # the Trainer's log event: metric name -> value

log = logging.getLogger(__name__)


class RichProgress(TrainerCallback):
    """A rich progress bar over optimizer steps, with the latest loss."""

    def __init__(self, description: str = "training"):
        self.description = description
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
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
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step, loss="-")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Logs = None, **kwargs: Any
    ) -> None:
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class MetricsLog(TrainerCallback):
    """Append every log event to metrics.jsonl (NaN/inf kept as strings, never filtered out)."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.time()

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Logs = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.started, 2)}
        for key, value in logs.items():
            row[key] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # Every run folder gets its loss curve, also runs that stop early (signal, divergence).
        if state.is_world_process_zero and self.path.exists():
            loss_curve_png(read_metrics(self.path.parent), self.path.parent / "loss.png")


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint, stop; a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = 0  # signal number, 0 = none
        self.stopped_at: int | None = None
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        # The same signal twice: the user means it. A different one is the launcher relaying (torchrun turns
        # the terminal's SIGINT into a SIGTERM to each worker): keep stopping gracefully. Under a launch a second
        # SIGTERM is the launcher relaying too: a scheduler that signals every process of a node (Slurm) reaches
        # each rank directly and again through torchrun's agent, which kills the ranks itself after its
        # shutdown timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default).
        relayed = signum == signal.SIGTERM and dist.world_size() > 1
        if self.requested == signum and not relayed:
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        if self.requested:
            return
        self.requested = signum
        log.warning("%s received: finishing the current step, then saving a checkpoint", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._restore()  # a train() retried after an exception never reached on_train_end
        self.requested, self.stopped_at = 0, None
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            self._previous.clear()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # All ranks must stop at the same step, or the ones that go on hang in the next all-reduce.
        signum = dist.world_max(self.requested, args.device)
        if signum:
            self.requested = self.requested or signum
            self.signal_name = signal.Signals(signum).name
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._restore()


class NonFiniteGuard(TrainerCallback):
    """Skip (and count) optimizer steps whose gradient is NaN/inf; stop after `max_bad_steps` in a row.

    Gradients are already all-reduced when `on_pre_optimizer_step` runs, so every rank decides alike.
    Dropping the gradients (`grad = None`) makes torch optimizers leave those parameters and their state untouched.
    """

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.total = 0
        self.in_a_row = 0
        self.aborted_at: int | None = None
        self.bad_steps: list[int] = []

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        import torch

        # FSDP2 gradients are DTensors: this rank's shard (to_local) is what it can check without a collective;
        # any rank's NaN then skips the step everywhere (world_max below).
        grads = [_local(p.grad) for p in model.parameters() if p.grad is not None] if model is not None else []
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else torch.tensor(0.0)
        if not dist.world_max(int(not torch.isfinite(norm)), args.device):
            self.in_a_row = 0
            return
        for p in model.parameters():
            p.grad = None
        self.total += 1
        self.in_a_row += 1
        self.bad_steps.append(state.global_step + 1)
        log.warning(
            "step %d: non-finite gradient norm (%s), step skipped (%d in a row, %d in all)",
            state.global_step + 1,
            norm.item(),
            self.in_a_row,
            self.total,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.in_a_row >= self.max_bad_steps:
            self.aborted_at = state.global_step
            control.should_save = False  # keep the last good checkpoint as the newest one
            control.should_training_stop = True

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Logs = None, **kwargs: Any
    ) -> None:
        if logs is not None and self.total:
            logs["skipped_nonfinite_steps"] = self.total
        # The Trainer resets its running loss with `tr_loss -= tr_loss`, which leaves NaN in place: every
        # later log would read NaN although those steps were fine. Zero it once the NaN has been logged.
        if self.trainer is not None:
            _private.reset_running_loss_if_nonfinite(self.trainer)

    trainer: Any = None  # bound by fit(); without it a NaN step also shows in the logs that follow it


def _local(tensor: Any) -> Any:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _trackers(recipe: Any, run_dir: Path) -> list[TrainerCallback]:
    """transformers' TensorBoard/MLflow callbacks, writing under the run folder instead of the cwd."""
    out: list[TrainerCallback] = []
    if "tensorboard" in recipe.training.report_to:
        from transformers.integrations import TensorBoardCallback

        tb = TensorBoardCallback()  # type: ignore[no-untyped-call]  # untyped __init__ upstream
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

        def setup(self, args: TrainingArguments, state: TrainerState, model: Any) -> None:
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                _private.mlflow_module(self).set_tracking_uri(uri)
            super().setup(args, state, model)  # type: ignore[no-untyped-call]  # transformers leaves setup() untyped

    return RunDirMLflow()  # type: ignore[no-untyped-call]  # MLflowCallback.__init__ is untyped upstream


class ReleaseFreedMemory(TrainerCallback):
    """After every optimizer step and evaluation, hand the freed heap back to the OS (speed.release_memory)."""

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        release_freed_memory()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        release_freed_memory()


def standard_callbacks(recipe: Any, run_dir: Path) -> list[TrainerCallback]:
    """The callbacks every trainer of every method gets, in the order they must run.

    Signal stop and the NaN guard decide `should_save` before AtomicCheckpoints reads it; the guard adds its
    count to the logs before MetricsLog writes them. Train through `faults.fit` to turn their flags into errors.
    """
    return [
        RichProgress(f"{recipe.method} {recipe.name}"),
        StopOnSignal(),
        NonFiniteGuard(recipe.training.max_bad_steps),
        MetricsLog(run_dir / "metrics.jsonl"),
        AtomicCheckpoints(recipe.training.save_total_limit, fingerprint(recipe)),
        *_trackers(recipe, run_dir),
        *([ReleaseFreedMemory()] if releases_memory(recipe) else []),
    ]
