"""Training's entry: `run` trains a recipe with its method through the one path (train/skeleton.py), `summary`
describes a finished run. The package's __init__ stays empty, so importing any train module never loads them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunesmith.train import methods

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.run import Run


def run(recipe: Recipe, resume: bool = False, force: bool = False, callbacks: Sequence[Any] = ()) -> Run:
    """Train with the recipe's method and return the finished run. `callbacks`: more TrainerCallbacks, after the
    standard ones (a sweep's pruning).

    Under --nproc/--nnodes a collective that fails because another rank stopped becomes faults.PeerLost.
    """
    from tunesmith.train import faults, methods, skeleton  # torch, transformers and TRL: kept out of `tunesmith --help`

    try:
        return skeleton.run(recipe, methods.get(recipe.method), resume=resume, force=force, callbacks=callbacks)
    except Exception as exc:
        lost = faults.peer_lost(exc, recipe.run_dir)
        if lost is None:
            raise
        raise lost from None


def summary(run: Run) -> str:
    """One or two lines on what a finished run did, for the CLI (figures a method lacks are left out)."""
    m = run.manifest
    f = m.figures
    parts = [f"{f.global_step} steps"]
    if f.train_loss is not None:
        parts.append(f"train loss {f.train_loss:.4f}")
    if f.eval_loss is not None:
        parts.append(f"eval loss {f.eval_loss:.4f}")
    parts.append(f"{f.wall_time_s:.0f}s")
    if f.tokens_per_s:
        parts.append(f"{f.tokens_per_s:.0f} tokens/s")
    parts.append(f"peak {f.peak_memory_mb:.0f} MB")
    lines = [f"{m.method} + {m.adapter}: " + ", ".join(parts)]
    tok = m.tokens.train
    if tok is not None:
        lines.append(
            f"data: {tok.kept} of {tok.examples} train rows used ({tok.dropped_overlong} over max_length, "
            f"{tok.dropped_no_trained_tokens} without trained tokens dropped)"
        )
    if m.family is not None:
        lines.append(family_line(m.family, tok))
    if m.details is not None:
        lines += methods.get(m.method).summary(m.details)
    return "\n".join(lines)


def family_line(family: Any, tokens: Any = None) -> str:
    """`family qwen3 (Qwen 3) · stops ... · thinking on · reasoning train · ...` for `train` and `models info`."""
    mode = {None: "no thinking switch", True: "thinking on", False: "thinking off"}[family.thinking]
    parts = [f"family {family.family} ({family.title})", f"stops {', '.join(family.stop)}", mode]
    parts.append(f"reasoning {family.reasoning_policy}")
    if tokens is not None and tokens.expanded_rows:
        parts.append(
            f"{tokens.expanded_rows} rows expanded into {tokens.rows_from_expansion} (every answer learned as at inference)"
        )
    if tokens is not None and tokens.turns.get("turns_not_trainable"):
        parts.append(f"{tokens.turns['turns_not_trainable']} answer(s) seen as context only")
    return " · ".join(parts)
