"""Runs that survive faults: stop cleanly on a signal, skip non-finite steps, back off on OOM, keep checkpoints on disk full.

Every method trains through `fit(trainer, recipe, checkpoint)` instead of `trainer.train(...)`; the trainer
carries the callbacks of `callbacks.standard_callbacks`, whose flags (StopOnSignal, NonFiniteGuard) become errors here.
The top of train/'s dependency chain: dist ← checkpoints ← callbacks ← faults.

Exit codes (errors.TunesmithError.exit_code, shown by the CLI):
  3  diverged: `training.max_bad_steps` NaN/inf steps in a row
  4  out of memory at micro-batch 1
  74 disk full while saving (EX_IOERR)
  75 stopped by SIGTERM/SIGINT after saving a checkpoint; `--resume` continues (EX_TEMPFAIL: requeue)
  69 lost contact with the other ranks: a process (or its whole node) stopped first (EX_UNAVAILABLE)
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError
from tunesmith.records import Faults, OomBackoff
from tunesmith.train import _private
from tunesmith.train.callbacks import NonFiniteGuard, StopOnSignal
from tunesmith.train.checkpoints import (
    AtomicCheckpoints,
    check_resume,
    checkpoint_step,
    kept_hint,
    latest_complete_checkpoint,
)
from tunesmith.train.dist import barrier, is_main_process, node_rank, rank, world_size  # noqa: F401  (barrier: re-exported)

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


class PeerLost(RunError):
    """A collective failed because another rank of the run stopped (its process, or its whole node)."""

    exit_code = 69


# What gloo says when the rank at the other end of a collective is gone: torch raises it as a plain RuntimeError
# ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer ..."); NCCL and the TCP store raise DistError.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "/gloo/")


def peer_lost(exc: BaseException, run_dir: Path) -> PeerLost | None:
    """The PeerLost error for `exc` when it is a failed collective of a launched run; None for any other error."""
    import torch.distributed

    if world_size() == 1:
        return None
    text = str(exc)
    if not isinstance(exc, torch.distributed.DistError) and not (
        isinstance(exc, RuntimeError) and any(s in text for s in PEER_GONE)
    ):
        return None
    reason = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return PeerLost(
        f"rank {rank()} on node {node_rank()} lost contact with the other ranks of the run: {reason}",
        hint="Another process stopped first; the output on its node names its rank and exit code. "
        + kept_hint(run_dir)
        + " Once every node is back, continue with the same command plus --resume on every node.",
    )


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
    a = trainer.args
    bs, ga = a.per_device_train_batch_size, a.gradient_accumulation_steps
    if bs == 1:
        raise OutOfMemory(
            f"out of memory at micro-batch 1 (grad_accum {ga}): {str(exc).splitlines()[0][:200]}",
            hint="Lower data.max_length, set training.gradient_checkpointing: true, use adapter.type: qlora, or a larger device.",
        ) from None
    if a.world_size > 1:
        half = _smaller_batch(bs)
        raise OutOfMemory(
            f"out of memory at micro-batch {bs} on a {a.world_size}-process run (back-off works on one process only)",
            hint=f"Restart with --set training.batch_size={half} --set training.grad_accum={ga * bs // half}.",
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
    log.warning(
        "out of memory at micro-batch %d: retrying with micro-batch %d x grad_accum %d (global batch unchanged)",
        bs,
        new_bs,
        new_ga,
    )
    a.per_device_train_batch_size = new_bs
    a.gradient_accumulation_steps = new_ga
    _private.set_train_batch_size(trainer, a.train_batch_size)
    trainer.model.zero_grad(set_to_none=True)
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)
    event = {
        "event": "oom_backoff",
        "step": trainer.state.global_step,
        "batch_size": new_bs,
        "grad_accum": new_ga,
        "resume_from": resume,
    }
    trainer.tunesmith_oom_backoffs = getattr(trainer, "tunesmith_oom_backoffs", []) + [event]
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


def fit(trainer: Any, recipe: Any, checkpoint: Path | None) -> Any:
    """`trainer.train()` under the fault policy; returns its TrainOutput or raises one of this module's errors."""
    if checkpoint is not None:
        check_resume(recipe, checkpoint)
        dropped = trim_metrics(recipe.run_dir, checkpoint_step(checkpoint))
        _append_metrics(
            recipe.run_dir,
            {"event": "resumed", "step": checkpoint_step(checkpoint), "checkpoint": checkpoint.name, "dropped_rows": dropped},
        )
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
            if (
                full := disk_full(exc, f"writing under {recipe.run_dir} at step {trainer.state.global_step}", recipe.run_dir)
            ) is None:
                raise
            raise full from None
        except Exception as exc:
            if saver is not None:
                saver.abort(trainer.args)
            if (
                full := disk_full(exc, f"writing under {recipe.run_dir} at step {trainer.state.global_step}", recipe.run_dir)
            ) is not None:
                raise full from None
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
    _private.load_checkpoint_weights(trainer, str(checkpoint))
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
            hint=kept_hint(run_dir) + " Lower training.learning_rate or check the data for broken rows.",
        )
    stop = _callback(trainer, StopOnSignal)
    if stop is not None and stop.stopped_at is not None:
        raise TrainingInterrupted(
            f"{stop.signal_name} received: stopped after step {stop.stopped_at} and saved checkpoint-{stop.stopped_at}",
            hint="Continue with: tunesmith train RECIPE --resume",
        )


def disk_full(exc: BaseException, what: str, run_dir: Path, then: str = "") -> DiskFull | None:
    """The DiskFull error for an ENOSPC/EDQUOT `exc` raised while `what`; None for any other error.

    Not every writer raises OSError: safetensors raises SafetensorError("... No space left on device (os error 28)"),
    and torch.save's zip writer a RuntimeError ("file write failed", or "[enforce fail at inline_container.cc] ...
    unexpected pos N vs M" when a write came up short), as measured on a full tmpfs.
    """
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = exc.strerror
    elif any(s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")):
        reason = "No space left on device"
    elif isinstance(exc, RuntimeError) and (
        "file write failed" in text or ("inline_container" in text and "unexpected pos" in text)
    ):
        reason = "a write came up short (no space left on device)"
    else:
        return None
    return DiskFull(f"disk full while {what}: {reason}", hint=" ".join(filter(None, (kept_hint(run_dir), then))))


def summary(trainer: Any) -> Faults:
    """Faults met during training, for manifest.json: OOM back-offs, skipped non-finite steps, the final batch shape."""
    guard = _callback(trainer, NonFiniteGuard)
    return Faults(
        oom_backoffs=[OomBackoff.model_validate(e) for e in getattr(trainer, "tunesmith_oom_backoffs", [])],
        skipped_nonfinite_steps=guard.bad_steps if guard is not None else [],
        final_batch_size=trainer.args.per_device_train_batch_size,
        final_grad_accum=trainer.args.gradient_accumulation_steps,
    )
