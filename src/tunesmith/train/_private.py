"""Every access to a private attribute of transformers' Trainer (and its integrations) lives here, nowhere else.

They are not API: an upgrade may rename them without notice. Each accessor fails loudly (UpstreamMoved) instead
of silently doing nothing, and `missing()` lists what the installed versions lack, so
tests/unit/test_private_upstream.py fails the day an upgrade moves one.
"""

from __future__ import annotations

import inspect
from typing import Any

from tunesmith.errors import TunesmithError

# (owner, attribute, where it is set or defined): what `missing()` checks against the installed source.
REQUIRED = (
    ("transformers.Trainer", "_tr_loss", "the running loss between logging steps"),
    ("transformers.Trainer", "_train_batch_size", "the micro-batch the dataloader is sized from"),
    ("transformers.Trainer", "_load_from_checkpoint", "loading a checkpoint's weights"),
    ("transformers.integrations.MLflowCallback", "_ml_flow", "the mlflow module the callback logs through"),
)


class UpstreamMoved(TunesmithError):
    """An installed transformers no longer has a private attribute tunesmith relies on."""

    exit_code = 70  # EX_SOFTWARE: not the user's mistake


def _moved(owner: str, name: str) -> UpstreamMoved:
    import transformers

    return UpstreamMoved(
        f"transformers {transformers.__version__}: {owner}.{name} no longer exists (private attribute moved by an upgrade)",
        hint="Install the transformers version pinned in pyproject.toml, or update tunesmith/train/_private.py.",
    )


def _owner(dotted: str) -> type:
    import importlib

    module, _, cls = dotted.rpartition(".")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def missing() -> list[str]:
    """The REQUIRED attributes the installed libraries lack (an empty list when all are there).

    Instance attributes exist only on live objects, so for those the class source is searched for `self.<name>`.
    """
    out = []
    for dotted, name, _ in REQUIRED:
        cls = _owner(dotted)
        if hasattr(cls, name):
            continue
        source = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("transformers"))
        if f"self.{name} =" not in source:
            out.append(f"{dotted}.{name}")
    return out


def reset_running_loss_if_nonfinite(trainer: Any) -> None:
    """Zero the Trainer's running loss when it holds NaN/inf.

    The Trainer resets it with `tr_loss -= tr_loss` after each log, which leaves NaN in place: every later log
    would read NaN although those steps were fine. Absent before the first training step, which is fine.
    """
    running = getattr(trainer, "_tr_loss", None)
    if running is not None and not bool(running.isfinite().all()):
        running.zero_()


def set_train_batch_size(trainer: Any, batch_size: int) -> None:
    """Resize the dataloader the next `train()` builds (what transformers' auto_find_batch_size does)."""
    if not hasattr(trainer, "_train_batch_size"):
        raise _moved("transformers.Trainer", "_train_batch_size")
    trainer._train_batch_size = batch_size


def load_checkpoint_weights(trainer: Any, checkpoint: str) -> None:
    """Load a checkpoint's model weights into the trainer's model (adapter or full model)."""
    loader = getattr(trainer, "_load_from_checkpoint", None)
    if loader is None:
        raise _moved("transformers.Trainer", "_load_from_checkpoint")
    loader(checkpoint)


def mlflow_module(callback: Any) -> Any:
    """The `mlflow` module an MLflowCallback logs through."""
    module = getattr(callback, "_ml_flow", None)
    if module is None:
        raise _moved("transformers.integrations.MLflowCallback", "_ml_flow")
    return module
