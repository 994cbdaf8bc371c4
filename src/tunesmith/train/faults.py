"""Runs that survive faults: stop cleanly on a signal, skip non-finite steps, back off on OOM, keep checkpoints on disk full.

Every method trains through `fit(trainer, recipe, checkpoint)` instead of `trainer.train(...)`; the trainer
carries the callbacks of `callbacks.standard_callbacks`, two of which live here (StopOnSignal, NonFiniteGuard).

Exit codes (errors.TunesmithError.exit_code, shown by the CLI):
  3  diverged: `training.max_bad_steps` NaN/inf steps in a row
  4  out of memory at micro-batch 1
  74 disk full while saving (EX_IOERR)
  75 stopped by SIGTERM/SIGINT after saving a checkpoint; `--resume` continues (EX_TEMPFAIL: requeue)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError
from tunesmith.train.launch import rank

log = logging.getLogger(__name__)


class TrainingInterrupted(RunError):
    """A signal stopped training at a step boundary, after a complete checkpoint was written."""

    exit_code = 75


class TrainingDiverged(RunError):
    """Too many optimizer steps in a row had a NaN/inf gradient."""

    exit_code = 3


class OutOfMemory(RunError):
    """The device ran out of memory even at micro-batch 1."""

    exit_code = 4


class DiskFull(RunError):
    """The disk filled up while saving; the previous complete checkpoint is intact."""

    exit_code = 74


def is_main_process() -> bool:
    """True on the one process that writes run files (run.yaml, manifest, metrics, plots, adapter)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _world_max(value: int, device: Any) -> int:
    """The largest `value` over all ranks, so every rank takes the same decision."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint, stop; a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = 0  # signal number, 0 = none
        self.stopped_at: int | None = None
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        # The same signal twice: the user means it. A different one is the launcher relaying (torchrun turns
        # the terminal's SIGINT into a SIGTERM to each worker): keep stopping gracefully.
        if self.requested == signum:
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

    def on_train_begin(self, args, state, control, **kwargs):
        self._restore()  # a train() retried after an exception never reached on_train_end
        self.requested, self.stopped_at = 0, None
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        # All ranks must stop at the same step, or the ones that go on hang in the next all-reduce.
        signum = _world_max(self.requested, args.device)
        if signum:
            self.requested = self.requested or signum
            self.signal_name = signal.Signals(signum).name
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
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

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else torch.tensor(0.0)
        # Sharded (FSDP/ZeRO) gradients differ per rank: any rank's NaN skips the step everywhere.
        if not _world_max(int(not torch.isfinite(norm)), args.device):
            self.in_a_row = 0
            return
        for p in model.parameters():
            p.grad = None
        self.total += 1
        self.in_a_row += 1
        self.bad_steps.append(state.global_step + 1)
        log.warning("step %d: non-finite gradient norm (%s), step skipped (%d in a row, %d in all)",
                    state.global_step + 1, norm.item(), self.in_a_row, self.total)

    def on_step_end(self, args, state, control, **kwargs):
        if self.in_a_row >= self.max_bad_steps:
            self.aborted_at = state.global_step
            control.should_save = False  # keep the last good checkpoint as the newest one
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.total:
            logs["skipped_nonfinite_steps"] = self.total
        # The Trainer resets its running loss with `tr_loss -= tr_loss`, which leaves NaN in place: every
        # later log would read NaN although those steps were fine. Zero it once the NaN has been logged.
        running = getattr(self.trainer, "_tr_loss", None)
        if running is not None and not bool(running.isfinite().all()):
            running.zero_()

    trainer: Any = None  # bound by fit(); without it a NaN step also shows in the logs that follow it


def _callback(trainer: Any, kind: type) -> Any | None:
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kind)), None)


def _is_oom(exc: BaseException) -> bool:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, Exception) and should_reduce_batch_size(exc))


def _smaller_batch(batch: int) -> int:
    """Largest divisor of `batch` at most half of it, so batch x grad_accum stays exactly the same."""
    return max(d for d in range(1, batch // 2 + 1) if batch % d == 0)


def _back_off(trainer: Any, resume: str | None, start_step: int, exc: BaseException) -> str | None:
    """Shrink the micro-batch after an OOM; return the checkpoint to restart from (None = from the start)."""
    from tunesmith.train.callbacks import checkpoint_step, latest_complete_checkpoint

    a = trainer.args
    bs, ga = a.per_device_train_batch_size, a.gradient_accumulation_steps
    if bs == 1:
        raise OutOfMemory(
            f"out of memory at micro-batch 1 (grad_accum {ga}): {str(exc).splitlines()[0][:200]}",
            hint="Lower data.max_length, set training.gradient_checkpointing: true, use adapter.type: qlora, or a larger device.",
        ) from None
    if a.world_size > 1:
        raise OutOfMemory(
            f"out of memory at micro-batch {bs} on a {a.world_size}-process run (back-off works on one process only)",
            hint=f"Restart with --set training.batch_size={_smaller_batch(bs)} --set training.grad_accum={ga * bs // _smaller_batch(bs)}.",
        ) from None
    new_bs = _smaller_batch(bs)
    new_ga = ga * bs // new_bs
    if trainer.state.global_step > start_step:  # weights moved: only a checkpoint gives them back
        ckpt = latest_complete_checkpoint(Path(a.output_dir))
        if ckpt is None or checkpoint_step(ckpt) < start_step:
            raise OutOfMemory(
                f"out of memory at step {trainer.state.global_step} (micro-batch {bs}) with no checkpoint to go back to",
                hint=f"Restart with --set training.batch_size={new_bs} --set training.grad_accum={new_ga}.",
            ) from None
        resume = str(ckpt)
    log.warning("out of memory at micro-batch %d: retrying with micro-batch %d x grad_accum %d (global batch unchanged)",
                bs, new_bs, new_ga)
    a.per_device_train_batch_size = new_bs
    a.gradient_accumulation_steps = new_ga
    # The Trainer sizes its dataloader from this private copy; auto_find_batch_size updates it the same way.
    trainer._train_batch_size = a.train_batch_size
    trainer.model.zero_grad(set_to_none=True)
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)
    event = {"event": "oom_backoff", "step": trainer.state.global_step, "batch_size": new_bs, "grad_accum": new_ga,
             "resume_from": resume}
    trainer._tunesmith_oom = getattr(trainer, "_tunesmith_oom", []) + [event]
    _append_metrics(Path(a.output_dir).parent, event)
    return resume


def _append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    if is_main_process():
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def trim_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics.jsonl rows logged after `step` (they are re-logged on resume); returns how many were dropped."""
    path = run_dir / "metrics.jsonl"
    if not is_main_process() or not path.exists():
        return 0
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if (json.loads(ln).get("step") or 0) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(ln + "\n" for ln in kept))
    return len(lines) - len(kept)


def fingerprint(recipe: Any) -> dict[str, Any]:
    """What must not change between a checkpoint and the run that resumes it."""
    from tunesmith.models import sha256_file

    t = recipe.training
    data = list(recipe.data.train) + ([recipe.data.eval] if recipe.data.eval else [])
    return {
        "method": recipe.method, "base": recipe.model.base, "adapter": recipe.adapter.type,
        "seed": t.seed, "batch_size": t.batch_size, "grad_accum": t.grad_accum, "max_length": recipe.data.max_length,
        "data_sha256": {Path(p).name: sha256_file(Path(p)) for p in data},
    }


def check_resume(recipe: Any, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint under a different seed, batch, data or base: the result would be neither run."""
    from tunesmith.train.callbacks import COMPLETE

    try:
        saved = json.loads((checkpoint / COMPLETE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        saved = None
    if not saved:
        return  # a marker from before fingerprints: nothing to compare
    now = fingerprint(recipe)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, recipe {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diffs:
        raise RunError(
            f"refusing to resume {checkpoint.name}: the recipe changed since it was written\n  " + "\n  ".join(diffs),
            hint="Resume with the original values, or start a fresh run in another output_dir.",
        )


def fit(trainer: Any, recipe: Any, checkpoint: Path | None) -> Any:
    """`trainer.train()` under the fault policy; returns its TrainOutput or raises one of this module's errors."""
    from tunesmith.train.callbacks import AtomicCheckpoints, checkpoint_step

    if checkpoint is not None:
        check_resume(recipe, checkpoint)
        dropped = trim_metrics(recipe.run_dir, checkpoint_step(checkpoint))
        _append_metrics(recipe.run_dir, {"event": "resumed", "step": checkpoint_step(checkpoint),
                                         "checkpoint": checkpoint.name, "dropped_rows": dropped})
    resume = str(checkpoint) if checkpoint else None
    quiet_stdout(trainer)
    if checkpoint is not None and (done := _already_finished(trainer, checkpoint)) is not None:
        return done
    saver = _callback(trainer, AtomicCheckpoints)
    guard = _callback(trainer, NonFiniteGuard)
    if guard is not None:
        guard.trainer = trainer
    while True:
        start_step = checkpoint_step(Path(resume)) if resume else 0
        try:
            result = trainer.train(resume_from_checkpoint=resume)
            break
        except OSError as exc:
            if saver is not None:
                saver.abort(trainer.args)
            if (full := disk_full(exc, f"writing under {recipe.run_dir} at step {trainer.state.global_step}",
                                  recipe.run_dir)) is None:
                raise
            raise full from None
        except Exception as exc:
            if saver is not None:
                saver.abort(trainer.args)
            if not (_is_oom(exc) and recipe.training.oom_backoff):
                raise
            resume = _back_off(trainer, resume, start_step, exc)

    raise_if_stopped(trainer, recipe.run_dir)
    return result


def _already_finished(trainer: Any, checkpoint: Path) -> Any | None:
    """A checkpoint written at the last step (stopped by a signal, or the final save hit a full disk): load it and
    return its TrainOutput. `Trainer.train` would run one step past max_steps from it, unlike the uninterrupted run."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    state_file = checkpoint / "trainer_state.json"
    if not state_file.exists():
        return None
    state = TrainerState.load_from_json(str(state_file))
    a = trainer.args
    target = a.max_steps if a.max_steps > 0 else state.max_steps
    if a.max_steps <= 0 and state.num_train_epochs != a.num_train_epochs:
        return None  # epochs changed: let the Trainer work out the new total
    if not target or state.global_step < target:
        return None
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = state
    losses = [row["loss"] for row in state.log_history if "loss" in row]
    log.warning("%s is the last step (%d): nothing left to train, finishing the run", checkpoint.name, state.global_step)
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def quiet_stdout(trainer: Any) -> None:
    """Drop transformers' PrinterCallback: with tqdm off it prints every raw log dict over the rich progress bar
    (the same figures go to metrics.jsonl and the trackers)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def raise_if_stopped(trainer: Any, run_dir: Path) -> None:
    """Turn an early stop by the guard or a signal into its error, so no stopped run is saved as finished."""
    guard = _callback(trainer, NonFiniteGuard)
    if guard is not None and guard.aborted_at is not None:
        raise TrainingDiverged(
            f"stopped at step {guard.aborted_at}: {guard.in_a_row} steps in a row had a NaN/inf gradient "
            f"({guard.total} skipped in all, steps {guard.bad_steps[-10:]}); see metrics.jsonl",
            hint=_kept_hint(run_dir) + " Lower training.learning_rate or check the data for broken rows.",
        )
    stop = _callback(trainer, StopOnSignal)
    if stop is not None and stop.stopped_at is not None:
        raise TrainingInterrupted(
            f"{stop.signal_name} received: stopped after step {stop.stopped_at} and saved checkpoint-{stop.stopped_at}",
            hint="Continue with: tunesmith train RECIPE --resume",
        )


def disk_full(exc: OSError, what: str, run_dir: Path, then: str = "") -> DiskFull | None:
    """The DiskFull error for an ENOSPC/EDQUOT `exc` raised while `what`; None for any other OSError."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return DiskFull(f"disk full while {what}: {exc.strerror}", hint=" ".join(filter(None, (_kept_hint(run_dir), then))))


def _kept_hint(run_dir: Path) -> str:
    from tunesmith.train.callbacks import latest_complete_checkpoint

    ckpt = latest_complete_checkpoint(run_dir / "checkpoints")
    return f"Newest complete checkpoint kept: {ckpt}." if ckpt else "No complete checkpoint was written yet."


def summary(trainer: Any) -> dict[str, Any]:
    """Faults met during training, for manifest.json: OOM back-offs, skipped non-finite steps, the final batch shape."""
    guard = _callback(trainer, NonFiniteGuard)
    return {
        "oom_backoffs": getattr(trainer, "_tunesmith_oom", []),
        "skipped_nonfinite_steps": guard.bad_steps if guard is not None else [],
        "final_batch_size": trainer.args.per_device_train_batch_size,
        "final_grad_accum": trainer.args.gradient_accumulation_steps,
    }
