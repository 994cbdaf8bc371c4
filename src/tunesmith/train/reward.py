"""Reward models: a sequence-classification head learns to score each pair's chosen answer above its rejected one.

The model is the base with a one-output score head (transformers' *ForSequenceClassification) and, by default, a
LoRA adapter; TRL's RewardTrainer trains it with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected). Pairs
come from any preference file the data layer reads: prompt/chosen/rejected, OpenAI's DPO shape, the studio's review
exports and `tunesmith feedback export --to dpo`. Each pair is tokenized by tunesmith.eval.reward_model.encode, the
function that scores answers later (GRPO rewards, eval's `reward_model` metric, the monitor), so a served answer is
scored exactly as a training pair was. `tunesmith eval` on a reward run reports pairwise accuracy and calibration on
its held-out pairs (tunesmith.eval.reward_eval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith import method_sections
from tunesmith.data.convert import write_rows
from tunesmith.data.formats import row_id
from tunesmith.data.lengths import Fit, fit_pair
from tunesmith.eval.reward_eval import evaluate_pairs
from tunesmith.eval.reward_model import encode
from tunesmith.method_details import PAIRS, RewardDetails
from tunesmith.method_sections import RewardSection
from tunesmith.records import Tokens
from tunesmith.train import _trl, dist, policy
from tunesmith.train.dpo import METHOD as DPO
from tunesmith.train.method import Datasets, Method, Parts
from tunesmith.train.rows import apply_length_policy, pair_tools, preference_row, recipe_rows

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example


def _pair_rows(recipe: Recipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return recipe_rows(recipe, preference_row)


class Reward(Method[RewardSection]):
    declared = method_sections.get("reward")
    details = RewardDetails
    # the rows, their length policy and their held-out prompts are DPO's: the same pairs, measured the same way
    row_shape, measured_as, reference = DPO.row_shape, DPO.measured_as, DPO.reference

    def fit_row(self, tokenizer: Any, obj: dict[str, Any], max_length: int, overlong: str, room: int) -> Fit | None:
        return DPO.fit_row(tokenizer, obj, max_length, overlong, room)

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
        return DPO.held_out_split(recipe, with_context)  # each held-out prompt with its chosen answer

    def load_model(self, recipe: Recipe, base_path: str, dtype: str | None) -> Any:

        return policy.load(recipe, base_path, dtype, num_labels=1)  # the base with a new one-output score head

    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        """Pairs within data.max_length (data.lengths.fit_pair, as DPO measures them), tokenized by the scorer's
        `encode` into TRL's chosen_ids / rejected_ids."""
        from datasets import Dataset

        d = recipe.data
        fit = lambda r: fit_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], d.max_length, d.overlong, pair_tools(r))
        train, evaluation = _pair_rows(recipe)
        train, train_counts = apply_length_policy(train, fit, d, self.measured_as)
        evaluation, eval_counts = apply_length_policy(evaluation, fit, d, self.measured_as)

        def pairs(rows: list[dict[str, Any]]) -> Any:
            return Dataset.from_list(
                [
                    {
                        "chosen_ids": encode(tokenizer, r["prompt"], r["chosen"], pair_tools(r)),
                        "rejected_ids": encode(tokenizer, r["prompt"], r["rejected"], pair_tools(r)),
                    }
                    for r in rows
                ]
            )

        return Datasets(pairs(train), pairs(evaluation) if evaluation else None, Tokens(train=train_counts, eval=eval_counts))

    def trainer(self, recipe: Recipe, parts: Parts) -> Any:
        return _trl.reward_trainer(recipe, self.settings(recipe), parts)

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> RewardDetails:
        """The held-out pairs saved with the run (data/eval_pairs.jsonl, as read from the files with the tools each
        offers, before any length policy: eval scores the pairs as they are), and TRL's final held-out figures."""
        _, evaluation = _pair_rows(recipe)
        if dist.is_main_process():
            keys = ("prompt", "chosen", "rejected", "tools", "source")  # tools: JSON text, as pair_tools reads them
            rows = [{"id": row_id(r, r["source"]), **{k: r[k] for k in keys if k in r}} for r in evaluation]
            write_rows(recipe.run_dir / PAIRS, rows)
        figures = {k.removeprefix("eval_"): v for k, v in final_eval.items() if k.startswith("eval_")}
        return RewardDetails(held_out_pairs=len(evaluation), final_eval=figures)

    def summary(self, details: RewardDetails) -> list[str]:
        accuracy = details.final_eval.get("accuracy")
        if accuracy is None:
            return []
        return [f"held-out pairwise accuracy at the end of training: {accuracy:.3f} ({details.held_out_pairs} pairs)"]

    def evaluate(self, run: Any, max_examples: int | None = None, progress: Any = None) -> Any:

        return evaluate_pairs(run, max_examples, progress)


METHOD = Reward()
