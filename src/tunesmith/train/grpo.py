"""Group relative policy optimisation: the model learns from completions it samples, scored by reward functions.

Each step samples `grpo.num_generations` completions per prompt, scores them with the recipe's reward
functions (train/rewards.py) and pushes the policy towards the completions that beat their group.
TRL logs `reward`, `reward_std` and `rewards/<name>/mean|std` per step; MetricsLog writes them to metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from tunesmith.data.formats import to_prompt_only
from tunesmith.data.lengths import Fit, fit_prompt
from tunesmith.data.template import prompt_as_text
from tunesmith.data.tool_shapes import row_tools
from tunesmith.records import MethodDetails, Tokens
from tunesmith.sections import Section, checks_environment
from tunesmith.train import _trl
from tunesmith.train.method import Datasets, Method, Parts, chosen
from tunesmith.train.rows import PROMPT_MESSAGES, apply_length_policy, dataset_row, prompt_row, prompt_split, recipe_rows

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example


class RewardSpec(Section):
    """One GRPO reward. A bare string in the recipe is shorthand: `json_valid`, `run:PATH` for a reward model, or
    `package.module:function` for custom."""

    type: Literal[
        "json_valid",
        "json_schema_valid",
        "exact_match",
        "regex",
        "length_penalty",
        "grader",
        "custom",
        "reward_model",
        "tool_call_valid",
        "tool_name_match",
        "tool_arguments_match",
        "tool_arguments_valid",
        "tool_decision",
        "tool_trajectory_match",
    ] = Field(
        ...,
        description="json_valid, json_schema_valid (json_schema), exact_match (field), regex (pattern), length_penalty "
        "(max_chars), grader (grader), custom (function), reward_model (run), or a tool metric (tool_call_valid, "
        "tool_name_match, tool_arguments_match, tool_arguments_valid, tool_decision, tool_trajectory_match: the row's "
        "answer turn as its reference, docs/tools.md).",
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO normalises per group.")
    json_schema: dict[str, Any] | str | None = Field(
        None, description="json_schema_valid: a JSON schema, inline or a .json file path (relative to the recipe)."
    )
    field: str = Field("reference", description="exact_match: the data column holding the expected answer.")
    pattern: str | None = Field(None, description="regex: a Python regular expression the whole completion must match.")
    max_chars: int = Field(256, ge=1, description="length_penalty: completions longer than this lose reward in proportion.")
    function: str | None = Field(None, description="custom: `module:function` (module importable, or a .py next to the recipe).")
    grader: str | None = Field(
        None,
        description="grader: the name of an eval.graders entry; each completion scores what that grader gives it, the "
        "same definition `tunesmith eval` reports as graders.<name> (score_model / label_model ask the judge).",
    )
    run: str | None = Field(
        None, description="reward_model: a finished reward run folder (method: reward), relative to the recipe."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("run:"):
            return {"type": "reward_model", "run": value.removeprefix("run:")}
        if isinstance(value, str):
            return {"type": "custom", "function": value} if ":" in value else {"type": value}
        return value

    @model_validator(mode="after")
    def _options_present(self) -> RewardSpec:
        if self.type == "json_schema_valid" and self.json_schema is None:
            raise ValueError("json_schema_valid needs `json_schema` (inline or a file path)")
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("regex needs `pattern`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        if self.type == "grader" and not self.grader:
            raise ValueError("grader needs `grader`: the name of an eval.graders entry")
        if self.type == "custom" and not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", self.function or ""):
            raise ValueError("custom needs `function` as `module:function` (or `file.py:function`)")
        if self.type == "reward_model" and not self.run:
            raise ValueError("reward_model needs `run`: a finished reward run folder (or write `run:PATH`)")
        return self


class GRPOSection(Section):
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="Reward functions, summed with their weights (method grpo needs at least one)."
    )
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt; rewards are normalised within each group.")
    max_completion_length: int = Field(128, ge=1, description="Token budget of each sampled completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty towards the reference (the base under the adapter); 0 = none.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, the batch, or not at all."
    )


class GRPODetails(MethodDetails):
    rewards: list[RewardSpec] = Field(default_factory=list)
    num_generations: int
    first_step_reward: float | None = Field(None, description="Mean reward of the first logged step.")
    last_step_reward: float | None = Field(None, description="Mean reward of the last logged step.")
    logged_steps: int = 0
    warnings: list[str] = Field(default_factory=list, description="Rewards GRPO could not learn from (train/reward_watch.py).")


def _rewards(value: GRPOSection, info: ValidationInfo) -> GRPOSection:
    """A grpo recipe has rewards and whole groups per batch; every recipe's reward schema files are inlined (run.yaml
    stays self-contained) and its custom reward modules resolved next to the recipe."""
    training = info.data.get("training")
    if chosen(info, "grpo"):
        if not value.rewards:
            raise ValueError("method grpo needs at least one entry in `rewards` (e.g. json_valid)")
        if training is not None and (training.batch_size * training.grad_accum) % value.num_generations:
            # TRL groups the completions of one prompt inside one generation batch.
            raise ValueError(
                f"training.batch_size x grad_accum ({training.batch_size * training.grad_accum}) must be a multiple of "
                f"num_generations ({value.num_generations}): the batch counts completions, num_generations per prompt"
            )
    _graders_named(value, info.data.get("eval"))
    base = Path((info.context or {}).get("base_dir", "."))
    for reward in value.rewards:
        if reward.type == "reward_model" and reward.run:  # kept absolute in run.yaml, so the run finds it later
            path = Path(reward.run).expanduser()
            reward.run = str(path if path.is_absolute() else (base / path).resolve())
            if checks_environment(info) and not Path(reward.run).is_dir():
                raise ValueError(f"reward model run not found: {reward.run}")
        if isinstance(reward.json_schema, str):
            path = Path(reward.json_schema).expanduser()
            path = path if path.is_absolute() else base / path
            try:
                reward.json_schema = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"reward schema {path}: {exc}") from None
        if reward.type == "custom" and reward.function:
            module, _, _ = reward.function.rpartition(":")
            local = base / (module if module.endswith(".py") else module.replace(".", "/") + ".py")
            if local.is_file():  # a file next to the recipe: keep its absolute path so the run finds it later
                reward.function = f"{local.resolve()}:{reward.function.rpartition(':')[2]}"
            elif not checks_environment(info):
                continue
            elif not module.endswith(".py") and importlib.util.find_spec(module.split(".")[0]) is None:
                raise ValueError(f"reward function module `{module}` is not importable and no {local.name} next to the recipe")
            elif module.endswith(".py") and not Path(module).is_file():
                raise ValueError(f"reward function file not found: {module}")
    return value


def _graders_named(value: GRPOSection, section: Any) -> None:
    """Each `grader` reward names a grader of eval.graders (inlined by then; a file not read yet is checked later)."""
    graders = getattr(section, "graders", None)
    if not isinstance(graders, list):
        return
    names = [str(g.get("name")) for g in graders if isinstance(g, dict)]
    for reward in value.rewards:
        if reward.type == "grader" and reward.grader not in names:
            raise ValueError(f"reward grader `{reward.grader}` is not in eval.graders (it has: {', '.join(names) or 'none'})")


class GRPO(Method[GRPOSection]):
    name = "grpo"
    help = "prompts + reward functions: the model learns from the completions it samples"
    section = GRPOSection
    rules = {"grpo": _rewards}
    details = GRPODetails
    row_shape = "a prompt (any shape with a user turn; its answer, when present, becomes the `reference` column)"
    measured_as = "prompt + grpo.max_completion_length"
    reference = "the reference answer of each held-out prompt (its `reference` column or its answer)"
    no_reference = "none: prompt-only rows are scored by the run's GRPO rewards (metric `reward`)"
    samples_completions = True
    scores_labels = True

    def completion_room(self, recipe: Recipe | None) -> int:
        return (self.settings(recipe) if recipe is not None else GRPOSection()).max_completion_length

    def fit_row(self, tokenizer: Any, obj: dict[str, Any], max_length: int, overlong: str, room: int) -> Fit | None:
        return fit_prompt(tokenizer, to_prompt_only(obj), room, max_length, overlong, row_tools(obj))

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
        return prompt_split(recipe, with_context)  # each held-out prompt with its reference as the answer

    def starter_section(self, answers: list[str]) -> dict[str, Any]:
        """Rewards for the data's answers: exact match on the reference, and valid JSON where the answers are JSON."""
        from tunesmith.eval import metrics

        exact: dict[str, Any] = {"type": "exact_match", "field": "reference"}
        return {"rewards": ["json_valid", exact] if answers and metrics.references_are_json(answers) else [exact]}

    def prepare(self, recipe: Recipe, resume: bool) -> Recipe:
        from tunesmith.train import rewards

        rewards.for_recipe(recipe)  # a broken user reward fails before any model loads
        return recipe

    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        """The train prompts within data.max_length (prompt + grpo.max_completion_length; data.lengths.fit_prompt),
        with the counts of both splits. GRPO learns from its own samples: held-out rows stay out of training."""
        from datasets import Dataset

        d, room = recipe.data, self.completion_room(recipe)
        fit = lambda r: fit_prompt(tokenizer, r["prompt"], room, d.max_length, d.overlong, r.get("tools"))
        measured = f"{self.measured_as} {room}"
        train, evaluation = recipe_rows(recipe, prompt_row)
        train, train_counts = apply_length_policy(train, fit, d, measured)
        _, eval_counts = apply_length_policy(evaluation, fit, d, measured)
        rows = [dataset_row(r) for r in train]  # rewards receive these columns
        if any(r.get("tools") for r in train):
            # TRL renders a conversational prompt with one tool list for every row: each row's own tools are rendered
            # here instead, by the prompt builder eval and serve use, and TRL receives the text.
            for row, r in zip(rows, train, strict=True):
                row["prompt"] = prompt_as_text(tokenizer, r["prompt"], r.get("tools"))
                row[PROMPT_MESSAGES] = json.dumps(r["prompt"], ensure_ascii=False)  # what a reward model reads
        return Datasets(Dataset.from_list(rows), None, Tokens(train=train_counts, eval=eval_counts))

    def trainer(self, recipe: Recipe, parts: Parts) -> Any:
        from tunesmith.train import rewards
        from tunesmith.train.reward_watch import RewardWatch

        g = self.settings(recipe)
        watch = RewardWatch(g.num_generations, parts.run_dir / "metrics.jsonl")  # a reward GRPO cannot learn from
        parts.callbacks.append(watch)
        fns = rewards.for_recipe(recipe, parts.tokenizer)
        return _trl.grpo_trainer(recipe, g, parts, [watch.wrap(fn) for fn in fns])

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> GRPODetails:
        from tunesmith.run import read_metrics
        from tunesmith.train.reward_watch import RewardWatch

        g = self.settings(recipe)
        logged = [r["reward"] for r in read_metrics(recipe.run_dir) if "reward" in r]
        watch = next((c for c in trainer.callback_handler.callbacks if isinstance(c, RewardWatch)), None)
        return GRPODetails(
            rewards=g.rewards,
            num_generations=g.num_generations,
            first_step_reward=logged[0] if logged else None,
            last_step_reward=logged[-1] if logged else None,
            logged_steps=len(logged),
            warnings=watch.warnings if watch is not None else [],
        )

    def summary(self, details: GRPODetails) -> list[str]:
        first, last = details.first_step_reward, details.last_step_reward
        if first is None or last is None:
            return []
        return [f"reward: {first:.3f} at the first logged step, {last:.3f} at the last"]


METHOD = GRPO()
