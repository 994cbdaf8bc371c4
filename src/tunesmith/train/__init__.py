"""Training methods. Each module exposes `run(recipe, resume, force) -> Run`; `run` here picks one by `recipe.method`."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.run import Run


def run(recipe: Recipe, resume: bool = False, force: bool = False) -> Run:
    """Train with the recipe's method (sft | dpo | grpo | distill) and return the finished run."""
    module = import_module(f"tunesmith.train.{recipe.method}")  # one module per method, named after it
    finished: Run = module.run(recipe, resume=resume, force=force)
    return finished


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
    tok = m.tokens.get("train", {})
    if "dropped_overlong" in tok:
        lines.append(
            f"data: {tok['kept']} of {tok['examples']} train rows used ({tok['dropped_overlong']} over max_length, "
            f"{tok['dropped_no_trained_tokens']} without trained tokens dropped)"
        )
    if m.grpo and "last_step_reward" in m.grpo:
        first, last = m.grpo["first_step_reward"], m.grpo["last_step_reward"]
        lines.append(f"reward: {first:.3f} at the first logged step, {last:.3f} at the last")
    if m.dpo and "rewards/margins" in m.dpo.get("final_eval", {}):
        lines.append(f"eval reward margin (chosen - rejected): {m.dpo['final_eval']['rewards/margins']:.4f}")
    if m.distill:
        lines.append(f"teacher: {m.distill.get('teacher') or m.distill.get('teacher_spec')}")
    return "\n".join(lines)
