"""Direct preference optimisation: the model learns to prefer each row's chosen answer over its rejected one.

The reference policy is the frozen base under the adapter (TRL disables the adapter to score it), so no
second copy of the model is loaded; a full fine-tune precomputes the reference log-probs once instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith import method_sections
from tunesmith.data.formats import detect_shape, to_preference
from tunesmith.data.lengths import Fit, fit_pair
from tunesmith.data.tool_shapes import row_tools
from tunesmith.method_details import DPODetails
from tunesmith.method_sections import PAIR_SHAPES, DPOSection
from tunesmith.records import Tokens
from tunesmith.train import _trl
from tunesmith.train.method import Datasets, Method, Parts
from tunesmith.train.rows import apply_length_policy, pair_tools, preference_row, prompt_split, recipe_rows

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.data.formats import Example


class DPO(Method[DPOSection]):
    declared = method_sections.get("dpo")
    details = DPODetails
    row_shape = "prompt + chosen + rejected (or input + preferred_output + non_preferred_output)"
    measured_as = "prompt + the longer of chosen/rejected"
    reference = "the chosen answer of each held-out preference pair"
    scores_labels = True

    def fit_row(self, tokenizer: Any, obj: dict[str, Any], max_length: int, overlong: str, room: int) -> Fit | None:
        if detect_shape(obj) not in PAIR_SHAPES:  # the format check and the recipe rule report it; nothing to measure
            return Fit(0)
        pair = to_preference(obj)
        return fit_pair(tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], max_length, overlong, row_tools(obj))

    def held_out_split(self, recipe: Recipe, with_context: bool = True) -> tuple[list[Example], list[Example]]:
        return prompt_split(recipe, with_context)  # each held-out prompt with its reference as the answer

    def datasets(self, recipe: Recipe, tokenizer: Any) -> Datasets:
        """Train/eval pairs within data.max_length (data.lengths.fit_pair), with the manifest's counts."""
        from datasets import Dataset

        d = recipe.data
        fit = lambda r: fit_pair(
            tokenizer,
            r["prompt"],
            r["chosen"],
            r["rejected"],
            d.max_length,
            d.overlong,
            pair_tools(r),
        )
        train, evaluation = recipe_rows(recipe, preference_row)
        train, train_counts = apply_length_policy(train, fit, d, self.measured_as)
        evaluation, eval_counts = apply_length_policy(evaluation, fit, d, self.measured_as)

        def pairs(rows: list[dict[str, Any]]) -> Any:
            # `tools` (JSON text, "null" for a row without: one column type for every row) is rendered by TRL per row
            keys = ("prompt", "chosen", "rejected", *(("tools",) if any("tools" in r for r in rows) else ()))
            return Dataset.from_list([{k: r.get(k, "null") for k in keys} for r in rows])

        return Datasets(pairs(train), pairs(evaluation) if evaluation else None, Tokens(train=train_counts, eval=eval_counts))

    def trainer(self, recipe: Recipe, parts: Parts) -> Any:
        return _trl.dpo_trainer(recipe, self.settings(recipe), parts)

    def record(self, recipe: Recipe, trainer: Any, final_eval: dict[str, float]) -> DPODetails:
        d = self.settings(recipe)
        figures = {k.removeprefix("eval_"): v for k, v in final_eval.items() if k.startswith(("eval_rewards/", "eval_logps/"))}
        full = recipe.adapter.type == "full"
        reference = "precomputed log-probs of the initial model" if full else "base under the adapter"
        return DPODetails(beta=d.beta, loss_type=d.loss_type, reference=reference, final_eval=figures)

    def summary(self, details: DPODetails) -> list[str]:
        margin = details.final_eval.get("rewards/margins")
        return [] if margin is None else [f"eval reward margin (chosen - rejected): {margin:.4f}"]


METHOD = DPO()
