"""Base vs tuned on the same held-out prompts, with one model in memory.

The tuned model is the base with its adapter; the base outputs come from the same object with
the adapter disabled, so both see byte-identical prompts, the same weights and the same template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import models, outputs
from tunesmith.data.convert import write_rows
from tunesmith.data.template import prompt_messages
from tunesmith.eval import gates, metrics, release, scoring, tool_metrics
from tunesmith.eval import report as report_module
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.loss import perplexity, reference_loss
from tunesmith.eval.notes import eval_warnings
from tunesmith.eval.reward_model import add_scores
from tunesmith.loader import load_run_model
from tunesmith.rag.index import changed_since
from tunesmith.records import EvalReport, Judgement, write_eval_report
from tunesmith.run import Run, changed_inputs, held_out_examples, read_metrics
from tunesmith.train.rewards import scorer

if TYPE_CHECKING:
    from tunesmith.train.method import Method

log = logging.getLogger(__name__)
SIDES = ("base", "tuned")


def evaluate(run: Run, method: Method[Any], max_examples: int | None = None, progress: Any = None) -> EvalReport:
    """Run every held-out prompt through base and tuned, score both, write report.json/predictions.jsonl/report.html.
    `method`: the run's own (train/methods.py's `evaluate` finds it by name)."""
    recipe = run.recipe
    if (own := method.evaluate(run, max_examples, progress)) is not None:  # a reward model scores pairs
        return own  # type: ignore[no-any-return]
    eval_ex = held_out_examples(run, method)  # the run's own held-out rows, the only evaluation prompts
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
    tokenizer, sides = loaded.tokenizer, scoring.run_answerers(run, loaded)
    if loaded.template_warning:
        log.warning(loaded.template_warning)
    convs = [prompt_messages(e.messages) for e in eval_ex]
    refs = tool_metrics.references(eval_ex)  # a row offering tools is scored on its answer turn's calls
    offered = tool_metrics.tools_of(eval_ex)
    json_mode, tool_mode = scoring.modes(refs)
    budget = resolve_max_new_tokens(recipe, tokenizer, refs)  # `auto`: from the longest reference
    fields = [e.extra for e in eval_ex]  # each held-out row's own fields: rewards' columns, graders' item.<field>
    reward = scorer(recipe, method, refs, fields)

    answers: dict[str, scoring.Answers] = {}
    scores: dict[str, scoring.Scores] = {}
    losses: dict[str, float] = {}
    for side in SIDES:
        who = sides[side]
        with who.context():
            advance = scoring.progress_advance(progress, f"generating ({side})", len(convs))
            batch = recipe.eval.batch_size
            answers[side] = scoring.answer(who.model, tokenizer, convs, budget.tokens, batch, advance, who.thinking, offered)
            if any(r.strip() for r in refs):  # the likelihood of an empty answer measures nothing
                held = [e.messages for e in eval_ex]
                losses[side] = reference_loss(who.model, tokenizer, held, recipe.data.max_length, recipe.data.reasoning)
    traces = scoring.trace_rows(answers, tokenizer)  # reasoning models: trace length, traces never closed
    scored = {side: scoring.scored_texts(answers[side], loaded.model, tokenizer, tool_mode) for side in SIDES}
    for side in SIDES:
        scores[side] = scoring.score(scored[side], refs, json_mode, reward, convs, traces.get(side, ()), tool_mode)
    outputs = {side: answers[side].texts for side in SIDES}  # the final answers, after any trace
    hit_budget = {side: [c.finish_reason == "length" for c in answers[side].completions] for side in SIDES}

    rows: list[dict[str, Any]] = []
    for i, ex in enumerate(eval_ex):
        s_base, s_tuned = scores["base"].per_example[i], scores["tuned"].per_example[i]
        rows.append(
            {
                "id": ex.id,
                "prompt": convs[i][-1]["content"] if convs[i] else "",
                "reference": refs[i],
                "base": outputs["base"][i],
                "tuned": outputs["tuned"][i],
                "base_metrics": s_base,
                "tuned_metrics": s_tuned,
                "judgement": metrics.judge(s_base, s_tuned, json_mode, tool_mode),
                "hit_budget": {side: hit_budget[side][i] for side in SIDES},
                **{f"{side}_reasoning": answers[side].completions[i].reasoning for side in SIDES if traces},
                **({f"{side}_turn": json.loads(scored[side][i]) for side in SIDES} if tool_mode else {}),
            }
        )
    summary: dict[str, dict[str, float]] = {}
    for side in SIDES:
        summary[side] = dict(scores[side].aggregate)
        if side in losses:
            summary[side].update(eval_loss=losses[side], perplexity=perplexity(losses[side]))
    generated = release.EvalOutputs([e.id for e in eval_ex], convs, refs, outputs, json_mode, fields)
    for side, value in release.similarity_summary(recipe.eval, generated).items():
        summary[side]["semantic_similarity"] = value
    # eval.reward_model: metric reward_model; a row offering tools is scored on its turn (its calls as messages)
    judged = {side: [s if t else o for s, o, t in zip(scored[side], outputs[side], offered)] for side in SIDES}
    add_scores(recipe.eval.reward_model, convs, judged, summary, rows, offered)
    extra = release.measure(recipe.eval, generated, sides, tokenizer, recipe.data.max_length, progress)
    for side, values in release.grader_summary(extra).items():  # graders.<name>: metrics like any other
        summary[side].update(values)
    summary["delta"] = {k: summary["tuned"][k] - summary["base"][k] for k in summary["base"] if k in summary["tuned"]}
    extra.changed_inputs = changed
    extra.latency = {side: answers[side].latency for side in SIDES}
    degenerate = {side: metrics.degeneration(outputs[side], hit_budget[side]) for side in SIDES}
    judgement = Judgement(**metrics.compare(scores["base"].per_example, scores["tuned"].per_example, json_mode, tool_mode))
    warnings += eval_warnings(degenerate, budget.tokens, judgement, loaded.quantized_base) + release.grader_warnings(extra)
    report = EvalReport(
        run=recipe.name,
        base_model=recipe.model.base,
        n_examples=len(eval_ex),
        json_mode=json_mode,
        tool_mode=tool_mode,
        per_tool={side: scores[side].per_tool for side in SIDES} if tool_mode else {},
        reference=method.describe_reference(refs),
        summary=summary,
        judgement=judgement,
        chat_template_sha256=models.chat_template_hash(tokenizer),
        template_warning=loaded.template_warning,
        warnings=warnings,
        generation={
            "greedy": True,
            "max_new_tokens": budget.tokens,
            "max_new_tokens_from": budget.source,
            "batch_size": recipe.eval.batch_size,
            "hit_budget": {side: sum(hit_budget[side]) for side in SIDES},
            "base_weights": "4-bit NF4 (QLoRA, as trained)" if loaded.quantized_base else "as trained",
        },
        degenerate=degenerate,
        extra=extra,
    )
    history = read_metrics(run.dir)
    report.gates = gates.check_report(report, recipe.eval, history)
    write_outputs(run.dir / "eval", report, rows, history)
    return report


def write_outputs(
    out: Path, report: EvalReport, rows: list[dict[str, Any]], history: list[dict[str, Any]], extra: dict[str, str] | None = None
) -> None:
    """report.json, predictions.jsonl, report.html and `extra` (name -> text, e.g. a reward run's calibration.json)."""
    out = outputs.claim_dir(out, "eval", overwrite=True, what="eval folder")  # replaces only an earlier eval's files
    with outputs.replacing(out) as stage:  # the earlier report stays until the new one is complete
        write_eval_report(stage / "report.json", report)
        write_rows(stage / "predictions.jsonl", rows)
        report_module.write_html(
            stage / "report.html", report.model_dump(mode="json"), rows, history
        )  # the page reads plain JSON
        for name, text in (extra or {}).items():
            (stage / name).write_text(text, encoding="utf-8")
