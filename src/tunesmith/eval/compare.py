"""Base vs tuned on the same held-out prompts, with one model in memory.

The tuned model is the base with its adapter; the base outputs come from the same object with
the adapter disabled, so both see byte-identical prompts, the same weights and the same template.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.data.template import prompt_messages, reference
from tunesmith.eval import gates, metrics, release
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.generate import generate_detailed, perplexity, reference_loss
from tunesmith.eval.notes import eval_warnings
from tunesmith.loader import load_base, load_run_model
from tunesmith.rag.index import changed_since
from tunesmith.records import EvalReport, Judgement, write_eval_report
from tunesmith.run import Run, changed_inputs, held_out_examples, read_metrics

log = logging.getLogger(__name__)


def evaluate(run: Run, max_examples: int | None = None, progress: Any = None) -> EvalReport:
    """Run every held-out prompt through base and tuned, score both, write report.json/predictions.jsonl/report.html."""
    recipe = run.recipe
    # The run's own copy of its held-out rows (dpo/grpo: prompts with the chosen / reference answer as expected).
    eval_ex = held_out_examples(run)
    warnings = changed_inputs(run)  # inputs that differ from the manifest's SHA-256; gates fail on these
    if (stale_index := changed_since(run)) is not None:  # recipe.rag: the index differs from the one trained with
        warnings.append(stale_index)
    for warning in warnings:
        log.warning(warning)
    changed = list(warnings)  # the inputs_unchanged gate fails on these
    limit = max_examples if max_examples is not None else recipe.eval.max_examples
    if limit:
        eval_ex = eval_ex[:limit]
    loaded = load_run_model(run)
    model, tokenizer, has_adapter = loaded.model, loaded.tokenizer, loaded.has_adapter
    if loaded.template_warning:
        log.warning(loaded.template_warning)
    convs = [prompt_messages(e.messages) for e in eval_ex]
    refs = [reference(e.messages) for e in eval_ex]
    json_mode = metrics.references_are_json(refs)
    budget = resolve_max_new_tokens(recipe, tokenizer, refs)  # `auto`: from the longest reference

    outputs: dict[str, list[str]] = {}
    hit_budget: dict[str, list[bool]] = {}
    losses: dict[str, float] = {}
    base_model = None if has_adapter else load_base(run).eval()
    clocks: dict[str, release.BatchClock] = {}
    for side in ("base", "tuned"):
        ctx, target = release.side_model(model, base_model, has_adapter, side)
        task = progress.add_task(f"generating ({side})", total=len(convs)) if progress else None
        with ctx:
            advance = None
            if progress is not None:

                def advance(n: int, t: Any = task) -> None:
                    progress.advance(t, n)

            clocks[side] = release.BatchClock(advance)
            done = generate_detailed(target, tokenizer, convs, budget.tokens, recipe.eval.batch_size, on_batch=clocks[side])
            outputs[side] = [c.text for c in done]
            hit_budget[side] = [c.finish_reason == "length" for c in done]
            losses[side] = reference_loss(target, tokenizer, [e.messages for e in eval_ex], recipe.data.max_length)

    rows: list[dict[str, Any]] = []
    scores: dict[str, list[dict[str, float | None]]] = {"base": [], "tuned": []}
    for i, ex in enumerate(eval_ex):
        s_base = metrics.score_example(outputs["base"][i], refs[i], json_mode)
        s_tuned = metrics.score_example(outputs["tuned"][i], refs[i], json_mode)
        scores["base"].append(s_base)
        scores["tuned"].append(s_tuned)
        rows.append(
            {
                "id": ex.id,
                "prompt": convs[i][-1]["content"] if convs[i] else "",
                "reference": refs[i],
                "base": outputs["base"][i],
                "tuned": outputs["tuned"][i],
                "base_metrics": s_base,
                "tuned_metrics": s_tuned,
                "judgement": metrics.judge(s_base, s_tuned, json_mode),
                "hit_budget": {side: hit_budget[side][i] for side in ("base", "tuned")},
            }
        )
    summary: dict[str, dict[str, float]] = {}
    for side in ("base", "tuned"):
        agg = metrics.aggregate(scores[side])
        agg["bleu"] = metrics.corpus_bleu(outputs[side], refs)  # corpus BLEU, not a mean of sentence BLEU
        agg["eval_loss"] = losses[side]
        agg["perplexity"] = perplexity(losses[side])
        summary[side] = agg
    generated = release.EvalOutputs([e.id for e in eval_ex], convs, refs, outputs, json_mode)
    for side, value in release.similarity_summary(recipe.eval, generated).items():
        summary[side]["semantic_similarity"] = value
    summary["delta"] = {k: summary["tuned"][k] - summary["base"][k] for k in summary["base"] if k in summary["tuned"]}
    extra = release.measure(
        recipe.eval,
        generated,
        lambda side: release.side_model(model, base_model, has_adapter, side),
        tokenizer,
        recipe.data.max_length,
        progress,
    )
    extra.update(changed_inputs=changed, latency={side: clock.summary() for side, clock in clocks.items()})
    degenerate = {side: metrics.degeneration(outputs[side], hit_budget[side]) for side in ("base", "tuned")}
    judgement = Judgement(**metrics.compare(scores["base"], scores["tuned"], json_mode))
    warnings += eval_warnings(degenerate, budget.tokens, judgement, loaded.quantized_base)
    report = EvalReport(
        run=recipe.name,
        base_model=recipe.model.base,
        n_examples=len(eval_ex),
        json_mode=json_mode,
        summary=summary,
        judgement=judgement,
        chat_template_sha256=models.chat_template_hash(tokenizer),
        template_warning=loaded.template_warning,
        warnings=warnings,
        generation={
            "greedy": True,
            "max_new_tokens": budget.tokens,
            "max_new_tokens_from": budget.source,
            "hit_budget": {side: sum(hit_budget[side]) for side in hit_budget},
            "base_weights": "4-bit NF4 (QLoRA, as trained)" if loaded.quantized_base else "as trained",
        },
        degenerate=degenerate,
        extra=extra,
    )
    history = read_metrics(run.dir)
    report.gates = [g.model_dump() for g in gates.check_report(report, recipe.eval, history)]
    write_outputs(run.dir / "eval", report, rows, history)
    return report


def write_outputs(out: Path, report: EvalReport, rows: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
    from tunesmith import outputs
    from tunesmith.data.convert import write_rows
    from tunesmith.eval.report import write_html

    out = outputs.claim_dir(out, "eval", overwrite=True, what="eval folder")  # replaces only an earlier eval's files
    with outputs.replacing(out) as stage:  # the earlier report stays until the new one is complete
        write_eval_report(stage / "report.json", report)
        write_rows(stage / "predictions.jsonl", rows)
        write_html(stage / "report.html", report.model_dump(mode="json"), rows, history)  # the page reads plain JSON
