"""Group relative policy optimisation: the model learns from completions it samples, scored by reward functions.

Each step samples `grpo.num_generations` completions per prompt, scores them with the recipe's reward
functions (train/rewards.py) and pushes the policy towards the completions that beat their group.
TRL logs `reward`, `reward_std` and `rewards/<name>/mean|std` per step; MetricsLog writes them to metrics.jsonl.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tunesmith import method_sections
from tunesmith.data.formats import to_prompt_only
from tunesmith.data.lengths import Fit, fit_prompt
from tunesmith.data.template import prompt_as_text
from tunesmith.data.tool_shapes import row_tools
from tunesmith.eval import metrics
from tunesmith.method_details import GRPODetails
from tunesmith.method_sections import GRPOSection
from tunesmith.records import Tokens
from tunesmith.run import read_metrics
from tunesmith.train import _trl, rewards
from tunesmith.train.method import Datasets, Method, Parts
from tunesmith.train.rows import PROMPT_MESSAGES, apply_length_policy, dataset_row, prompt_row, prompt_split, recipe_rows

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example


class GRPO(Method[GRPOSection]):
    declared = method_sections.get("grpo")
    details = GRPODetails
    row_shape = "a prompt (any shape with a user turn; its answer, when present, becomes the `reference` column)"
    measured_as = "prompt + grpo.max_completion_length"
    reference = "the reference answer of each held-out prompt (its `reference` column or its answer)"
    no_reference = "none: prompt-only rows are scored by the run's GRPO rewards (metric `reward`)"
    samples_completions = True
    needs_answers = False
    scores_labels = True

    def completion_room(self, recipe: Recipe | None) -> int:
        return (self.settings(recipe) if recipe is not None else GRPOSection()).max_completion_length

    def fit_row(self, tokenizer: Any, obj: dict[str, Any], max_length: int, overlong: str, room: int) -> Fit | None:
        return fit_prompt(tokenizer, to_prompt_only(obj), room, max_length, overlong, row_tools(obj))

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
        return prompt_split(recipe, with_context)  # each held-out prompt with its reference as the answer

    def starter_section(self, answers: list[str]) -> dict[str, Any]:
        """Rewards for the data's answers: exact match on the reference, and valid JSON where the answers are JSON."""
        exact: dict[str, Any] = {"type": "exact_match", "field": "reference"}
        return {"rewards": ["json_valid", exact] if answers and metrics.references_are_json(answers) else [exact]}

    def prepare(self, recipe: Recipe, resume: bool) -> Recipe:
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
        from tunesmith.train.reward_watch import RewardWatch

        g = self.settings(recipe)
        watch = RewardWatch(g.num_generations, parts.run_dir / "metrics.jsonl")  # a reward GRPO cannot learn from
        parts.callbacks.append(watch)
        fns = rewards.for_recipe(recipe, parts.tokenizer)
        return _trl.grpo_trainer(recipe, g, parts, [watch.wrap(fn) for fn in fns])

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> GRPODetails:
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
