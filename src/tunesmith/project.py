"""`tunesmith init DIR --data FILE...`: a recipe for the user's own data, with defaults chosen from that data.

The demo's schedule (60 steps at lr 1e-3 on 400 short rows) is wrong for most data: on a word-problem set with
long worked answers it made answers worse than the base's, mostly greedy loops. Here the schedule follows the
data: epochs by data size, the usual LoRA learning rate, a warm-up, max_length from the rows' real token
lengths, an eval split proposed from the row count, and eval.max_new_tokens `auto` (from the longest reference).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import models, outputs
from tunesmith.atomic import write_text_atomic
from tunesmith.config import (
    DEFAULT_BASE,
    AdapterSection,
    EvalSection,
    ModelSection,
    TrainingSection,
    commented_yaml,
    recipe_from_dict,
)
from tunesmith.errors import DataError
from tunesmith.train import methods

LORA_LR = 2e-4  # the usual LoRA learning rate (QLoRA paper, peft and TRL examples)
MAX_LENGTH_CAP = 4096  # tokens; longer rows are dropped and counted rather than making every batch that long


def schedule_for(n_rows: int) -> dict[str, Any]:
    """Epochs by data size (3 under 1k rows, 2 under 10k, 1 above), lr 2e-4, warm-up 10% / 5% / 3% of steps."""
    epochs, warmup = (3, 0.1) if n_rows < 1_000 else (2, 0.05) if n_rows < 10_000 else (1, 0.03)
    return {"epochs": float(epochs), "max_steps": -1, "learning_rate": LORA_LR, "warmup_ratio": warmup}


def max_length_for(lengths: list[int]) -> int:
    """The longest row in tokens, rounded up to a multiple of 64; at least 256, at most 4096 tokens."""
    longest = max(lengths, default=0)
    return min(MAX_LENGTH_CAP, max(256, 64 * math.ceil(longest / 64)))


def eval_fraction_for(n_rows: int) -> float:
    """About 10% held out, at least 10 rows and at most 200 (20% of very small sets), within (0, 0.5)."""
    if n_rows < 50:
        return 0.2
    wanted = min(200, max(10, round(0.1 * n_rows)))
    return round(min(0.49, wanted / n_rows), 4)


@dataclass
class UserProject:
    """What `init` wrote and what it found in the data (for the terminal)."""

    recipe: Path
    shapes: dict[str, int]
    n_train: int
    n_eval: int
    eval_from: str
    max_length: int
    n_over: int
    schedule: dict[str, Any]
    steps: int
    audit: Any = None
    notes: list[str] = field(default_factory=list)


def _rel(path: Path, directory: Path) -> str:
    return os.path.relpath(path.resolve(), directory.resolve())


def user_recipe_values(
    name: str,
    method: str,
    model: str,
    train: list[str],
    eval_file: str | None,
    eval_fraction: float,
    max_length: int,
    schedule: dict[str, Any],
    refs: list[str],
) -> dict[str, Any]:
    """The recipe as plain values: every section's defaults, the data-derived choices on top."""
    values: dict[str, Any] = {"name": name, "method": method, "model": {**ModelSection().model_dump(), "base": model}}
    values["data"] = {
        "train": train,
        "eval": eval_file,
        "eval_fraction": eval_fraction,
        "max_length": max_length,
        "overlong": "drop",
    }
    values["adapter"] = AdapterSection().model_dump()
    values["training"] = {**TrainingSection().model_dump(), **schedule}
    values["eval"] = EvalSection().model_dump()
    section = methods.get(method).starter_section(refs)  # e.g. grpo's rewards, chosen from the data's answers
    if section is not None:
        values[method] = section
    values["output_dir"] = f"runs/{name}"
    return values


def write_user_project(
    directory: Path,
    data: list[Path],
    eval_file: Path | None = None,
    model: str | None = None,
    method: str = "sft",
    overwrite: bool = False,
) -> UserProject:
    """Audit the user's files with the base's tokenizer, choose the schedule, write DIRECTORY/recipe.yaml."""
    from tunesmith.data.audit import audit, load_rows
    from tunesmith.data.checks import last_answer

    missing = [str(p) for p in [*data, *([eval_file] if eval_file else [])] if not Path(p).is_file()]
    if missing:
        raise DataError(f"data file not found: {', '.join(missing)}")
    spec = model or DEFAULT_BASE
    tokenizer = models.load_tokenizer(models.resolve_base(spec))
    train = [str(Path(p).resolve()) for p in data]
    evals = [str(Path(eval_file).resolve())] if eval_file else []
    rows = load_rows(train)
    chosen = methods.get(method)
    budget = chosen.completion_room(None)  # the room a sampled completion needs (grpo)
    first = audit(train, evals, tokenizer, None, "drop", method=chosen, completion_budget=budget, near=False)
    max_length = max_length_for(first.lengths.get("total", []))
    report = audit(train, evals, tokenizer, max_length, "drop", method=chosen, completion_budget=budget)
    n_rows = len(rows.rows)
    fraction = eval_fraction_for(n_rows)
    n_eval = len(load_rows(evals).rows) if evals else max(1, round(n_rows * fraction))
    n_train = n_rows - (0 if evals else n_eval)
    if n_train < 1:  # nothing to train on: no recipe is written
        problems = "".join(f"\n  - {f.where}: [{f.code}] {f.message}" for f in report.errors[:5])
        raise DataError(
            f"no usable training rows in {', '.join(map(str, data))} ({n_rows} usable, {n_eval} needed for eval){problems}",
            hint="Check the files with `tunesmith data check FILE`; init needs at least two usable rows.",
        )
    schedule = schedule_for(n_train)
    directory = outputs.claim_dir(directory, "init", overwrite=overwrite, what="project folder")
    values = user_recipe_values(
        directory.name,
        method,
        spec,
        [_rel(Path(p), directory) for p in train],
        _rel(Path(evals[0]), directory) if evals else None,
        fraction,
        max_length,
        schedule,
        [last_answer(r) for r in rows.rows if r.trained],
    )
    recipe_from_dict(values, directory)  # a recipe init writes always loads (e.g. dpo refuses rows that are not pairs)
    shapes = dict(Counter(r.shape for r in rows.rows))
    header = (
        "# tunesmith recipe for your data. Every field is documented above it; `--set a.b=c` overrides one.\n"
        f"# Data: {n_rows} usable rows ({', '.join(f'{n} {s}' for s, n in shapes.items())}); "
        f"eval: {'your file' if evals else f'{fraction:.0%} held out ({n_eval} rows)'}.\n"
        f"# Chosen from the data: max_length {max_length} (longest row, rounded up), {schedule['epochs']:g} epochs at lr "
        f"{schedule['learning_rate']:g} with {schedule['warmup_ratio']:.0%} warm-up; eval.max_new_tokens auto.\n"
    )
    recipe = directory / "recipe.yaml"
    write_text_atomic(recipe, header + commented_yaml(values) + "\n")
    outputs.record(directory, "recipe.yaml")
    steps = math.ceil(n_train / (TrainingSection().batch_size * TrainingSection().grad_accum)) * int(schedule["epochs"])
    return UserProject(
        recipe,
        shapes,
        n_train,
        n_eval,
        "file" if evals else "held out",
        max_length,
        report.stats.get("tokens", {}).get("n_too_long", 0),
        schedule,
        steps,
        report,
    )
