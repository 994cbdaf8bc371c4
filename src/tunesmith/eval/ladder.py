"""The ladder: the same held-out prompts through each way of solving the task, and which one to ship.

Rungs, simplest first: base zero-shot (the recipe's system prompt), base few-shot (k training examples
before the prompt), base + RAG, tuned, tuned + RAG, and a distilled student. The prompts are the run's own
held-out rows (before training: the rows its split will hold out). Every rung is answered and scored through
the path `tunesmith eval` uses (tunesmith.eval.scoring), timed by the same clock, and checked against the same
release gates (eval.gates); the cheapest rung that passes them is recommended.
Base and tuned are one loaded model (the adapter disabled for base), like `tunesmith eval`; the RAG rungs
get byte-identical retrieved context through `rag.prompt.augment`, the prompt builder training used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import RUNGS, Recipe
from tunesmith.data.template import prompt_messages, reference
from tunesmith.errors import DataError
from tunesmith.eval import metrics, registry, scoring, tool_metrics
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.ladder_report import CostBasis, LadderReport, RungResult
from tunesmith.eval.recommend import recommend

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class RungSpec:
    """How a rung builds its prompts and which model answers them."""

    name: str
    label: str
    model: str  # "base", "tuned" or "student"
    few_shot: bool = False
    rag: bool = False


SPECS: dict[str, RungSpec] = {
    "base": RungSpec("base", "base, zero-shot", "base"),
    "base_few_shot": RungSpec("base_few_shot", "base, few-shot", "base", few_shot=True),
    "base_rag": RungSpec("base_rag", "base + RAG", "base", rag=True),
    "tuned": RungSpec("tuned", "tuned", "tuned"),
    "tuned_rag": RungSpec("tuned_rag", "tuned + RAG", "tuned", rag=True),
    "student": RungSpec("student", "distilled student", "student"),
}
assert tuple(SPECS) == RUNGS


@dataclass
class LadderInputs:
    """The prompts every rung shares: the held-out conversations, their references, few-shot turns, retrieved versions."""

    ids: list[str]
    convs: list[Conversation]
    refs: list[str]
    tools: list[list[dict[str, Any]] | None]  # the tools each prompt offers (every rung renders them)
    shots: list[Conversation]  # each a (user..., assistant) run of turns from a training example
    rag_convs: list[Conversation] | None  # convs with retrieved context; None without a rag section
    sources: list[list[str]]  # per prompt, the passages' source:line
    reference: str = ""  # what the references are, as the method defines them
    no_shots: str | None = None  # why base_few_shot cannot run


def few_shot_prompt(conv: Conversation, shots: list[Conversation]) -> Conversation:
    """The conversation with the shots' turns between its system message(s) and its own turns."""
    system = [m for m in conv if m["role"] == "system"]
    rest = [m for m in conv if m["role"] != "system"]
    return system + [m for shot in shots for m in shot] + rest


def pick_shots(train: list[Any], k: int, seed: int) -> list[Conversation]:
    """k training examples with an answer (seeded pick), as their non-system turns ending with that answer."""
    answered = [e for e in train if reference(e.messages).strip() or _last_answer(e.messages).get("tool_calls")]
    chosen = random.Random(seed).sample(answered, min(k, len(answered)))
    return [[m for m in prompt_messages(e.messages) if m["role"] != "system"] + [_last_answer(e.messages)] for e in chosen]


def _last_answer(messages: Conversation) -> dict[str, Any]:
    """The last assistant turn as a shot shows it: its text, and its tool calls when it makes any."""
    last = next(m for m in reversed(messages) if m["role"] == "assistant")
    shown = {"role": "assistant", "content": reference(messages)}
    return {**shown, "tool_calls": last["tool_calls"]} if last.get("tool_calls") else shown


def held_out(recipe: Recipe) -> list[Any]:
    """The rows the ladder scores: the trained run's own held-out rows (exactly what `tunesmith eval` scores), or,
    before training, the held-out side of the split training will use (the same rows the run will save).

    Without retrieved context: the RAG rungs add it themselves. A RAG run's saved rows carry the context it trained
    with, so its plain prompts are re-read from the recipe's data and must be the same rows.
    """
    from tunesmith.run import held_out_examples, is_run_dir, load_run
    from tunesmith.train.methods import held_out_split

    if not is_run_dir(recipe.run_dir):
        return held_out_split(recipe, with_context=False)[1]
    saved = held_out_examples(load_run(recipe.run_dir))
    if recipe.rag is None:
        return saved
    plain = {e.id: e for e in held_out_split(recipe, with_context=False)[1]}
    if missing := [e.id for e in saved if e.id not in plain]:
        raise DataError(
            f"the run's held-out rows {', '.join(missing[:5])} are no longer in the recipe's data: it changed since training",
            hint="Restore the data the run trained on, or retrain.",
        )
    return [plain[e.id] for e in saved]


def _shots(recipe: Recipe) -> tuple[list[Conversation], str | None]:
    """Few-shot turns from the training side of the split, or why there are none."""
    from tunesmith.errors import TunesmithError
    from tunesmith.train.methods import held_out_split

    if "base_few_shot" not in recipe.ladder.rungs:
        return [], None
    try:
        shots = pick_shots(held_out_split(recipe, with_context=False)[0], recipe.ladder.few_shot_k, recipe.training.seed)
    except TunesmithError as exc:
        return [], f"the training rows are not readable: {exc.message}"
    return shots, None if shots else "the training rows have no answers to show (prompt-only data)"


def ladder_inputs(recipe: Recipe, max_examples: int | None = None, retriever: Any = None) -> LadderInputs:
    """The held-out prompts (capped, as eval caps them), few-shot turns from the training split, retrieved contexts.

    `retriever` (anything with `.search(query, k, mode)`) overrides the recipe's index; without either, no RAG rungs.
    """
    from tunesmith.rag import prompt as rag_prompt
    from tunesmith.run import describe_reference

    evaluation = held_out(recipe)
    cap = max_examples if max_examples is not None else (recipe.ladder.max_examples or recipe.eval.max_examples)
    evaluation = evaluation[:cap] if cap else evaluation
    convs = [prompt_messages(e.messages) for e in evaluation]
    refs = tool_metrics.references(evaluation)
    rag_convs: list[Conversation] | None = None
    sources: list[list[str]] = [[] for _ in convs]
    if recipe.rag is not None:
        retriever = retriever if retriever is not None else rag_prompt.recipe_retriever(recipe)
        rag = recipe.rag
        pairs = [rag_prompt.augment(c, retriever, rag.k, rag.template, rag.mode) for c in convs]
        rag_convs = [p[0] for p in pairs]
        sources = [[f"{x.source}:{x.line}" for x in p[1]] for p in pairs]
    shots, no_shots = _shots(recipe)
    return LadderInputs(
        ids=[e.id for e in evaluation],
        convs=convs,
        refs=refs,
        tools=tool_metrics.tools_of(evaluation),
        shots=shots,
        rag_convs=rag_convs,
        sources=sources,
        reference=describe_reference(recipe.method, refs),
        no_shots=no_shots,
    )


def rung_prompts(spec: RungSpec, inputs: LadderInputs) -> list[Conversation]:
    """The prompts one rung generates from: the shared eval prompts, with shots or retrieved context added."""
    if spec.rag:
        assert inputs.rag_convs is not None
        return inputs.rag_convs
    if spec.few_shot:
        return [few_shot_prompt(c, inputs.shots) for c in inputs.convs]
    return inputs.convs


def cost_per_1k(
    basis: CostBasis, price: float, prompt_tokens: float, completion_tokens: float, seconds_per_request: float
) -> float:
    """Cost of 1,000 requests: tokens x price per 1,000 tokens, or machine seconds x price per hour."""
    if basis == "tokens":
        return (prompt_tokens + completion_tokens) * price
    return seconds_per_request * 1000.0 * price / 3600.0


def score_rung(
    spec: RungSpec, answers: scoring.Answers, scores: scoring.Scores, basis: CostBasis, price: float, gates: dict[str, Any]
) -> RungResult:
    """A rung's quality (the one scoring path), latency (the one clock), tokens and cost, and its gate results."""
    from tunesmith.eval.gates import check_rules
    from tunesmith.eval.registry import LADDER

    completions = answers.completions
    n = max(len(completions), 1)
    prompt_tokens = sum(c.prompt_tokens for c in completions) / n
    completion_tokens = sum(c.completion_tokens for c in completions) / n
    # Requests in a batch share the machine, so compute cost is charged on total seconds / requests, not on latency.
    rung = RungResult(
        name=spec.name,
        label=spec.label,
        n_examples=len(completions),
        metrics=scores.aggregate,
        latency=answers.latency,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_per_1k=cost_per_1k(basis, price, prompt_tokens, completion_tokens, answers.latency.total_s / n),
        per_tool=scores.per_tool,
    )
    rung.gates = check_rules(gates, rung.values(), where=LADDER)
    return rung


def load_answerers(recipe: Recipe, kinds: set[str]) -> tuple[dict[str, scoring.Answerer], dict[str, str]]:
    """Models for the wanted kinds (base, tuned, student), loaded once, as `tunesmith eval` loads them; and why a kind
    is unavailable."""
    from tunesmith.loader import load_run_model, load_target
    from tunesmith.run import is_run_dir, load_run

    found: dict[str, scoring.Answerer] = {}
    missing: dict[str, str] = {}
    if kinds & {"base", "tuned"}:
        if is_run_dir(recipe.run_dir):
            run = load_run(recipe.run_dir)
            found.update(scoring.run_answerers(run, load_run_model(run)))
        else:
            missing["tuned"] = f"no trained run at {recipe.run_dir}: train first (`tunesmith train`)"
            if "base" in kinds:
                base = load_target(recipe.model.base, recipe.model.dtype)
                found["base"] = scoring.Answerer(base.model, base.tokenizer)
    if "student" in kinds:
        if recipe.ladder.student:
            student = load_target(recipe.ladder.student, recipe.model.dtype)
            found["student"] = scoring.Answerer(student.model, student.tokenizer)
        else:
            missing["student"] = "the recipe names no distilled student (ladder.student)"
    return found, missing


def run_ladder(
    recipe: Recipe,
    *,
    max_examples: int | None = None,
    retriever: Any = None,
    progress: Any = None,
) -> tuple[LadderReport, list[dict[str, Any]]]:
    """Measure every rung of `recipe.ladder.rungs` on the same prompts; the report and one prediction row per prompt."""
    from tunesmith.train.rewards import scorer

    lad = recipe.ladder
    inputs = ladder_inputs(recipe, max_examples, retriever)
    json_mode, tool_mode = scoring.modes(inputs.refs)
    basis: CostBasis = "tokens" if lad.price_per_1k_tokens is not None else "compute"
    price = lad.price_per_1k_tokens if lad.price_per_1k_tokens is not None else lad.hourly_price
    max_new = lad.max_new_tokens or resolve_max_new_tokens(recipe, None, inputs.refs).tokens  # eval.max_new_tokens: auto
    batch = lad.batch_size or recipe.eval.batch_size
    reward = scorer(recipe, inputs.refs)
    specs = [SPECS[name] for name in RUNGS if name in lad.rungs]
    answerers, missing = load_answerers(recipe, {s.model for s in specs})
    rows: list[dict[str, Any]] = [
        {"id": i, "prompt": c[-1]["content"] if c else "", "reference": r, "passages": p, "outputs": {}}
        for i, c, r, p in zip(inputs.ids, inputs.convs, inputs.refs, inputs.sources)
    ]
    results: list[RungResult] = []
    for spec in specs:
        why = missing.get(spec.model) or ("the recipe has no rag section" if spec.rag and inputs.rag_convs is None else None)
        why = why or (inputs.no_shots if spec.few_shot else None)
        if why:
            results.append(RungResult(name=spec.name, label=spec.label, status="skipped", reason=why))
            continue
        who = answerers[spec.model]
        prompts = rung_prompts(spec, inputs)
        with who.context():
            advance = scoring.progress_advance(progress, f"ladder: {spec.label}", len(prompts))
            answers = scoring.answer(who.model, who.tokenizer, prompts, max_new, batch, advance, who.thinking, inputs.tools)
        outputs = scoring.scored_texts(answers, who.model, who.tokenizer, tool_mode)
        scores = scoring.score(outputs, inputs.refs, json_mode, reward, prompts, tools=tool_mode)
        results.append(score_rung(spec, answers, scores, basis, price, recipe.eval.gates))
        for row, text in zip(rows, answers.texts):
            row["outputs"][spec.name] = text
    quality = [g for g in recipe.eval.gates if registry.metric(g).fn is not None or g == "reward"]
    if reward is not None and not any(r.strip() for r in inputs.refs):
        quality.append("reward")  # prompt-only rows: the rewards are the only quality measure
    any_model = next(iter(answerers.values()), None)
    report = LadderReport(
        run=recipe.name,
        base_model=recipe.model.base,
        n_examples=len(inputs.convs),
        json_mode=json_mode,
        tool_mode=tool_mode,
        reference=inputs.reference,
        ids=inputs.ids,
        primary_metric=quality[0] if quality else metrics.primary_metrics(json_mode, tool_mode)[0],
        gates=dict(recipe.eval.gates),
        cost_basis=basis,
        price=price,
        rungs=results,
        recommendation=recommend(results),
        generation={"greedy": True, "max_new_tokens": max_new, "batch_size": batch, "few_shot_k": len(inputs.shots)},
        rag=None if recipe.rag is None else {"index": recipe.rag.index, "k": recipe.rag.k, "mode": recipe.rag.mode},
        device=str(any_model.model.device) if any_model else "cpu",
    )
    return report, rows


LADDER_FILES = ("ladder.json", "ladder.html", "predictions.jsonl")


def write_ladder(out: Path, report: LadderReport, rows: list[dict[str, Any]]) -> None:
    """ladder.json, ladder.html and predictions.jsonl in `out` (a folder claimed by the caller)."""
    from tunesmith.data.convert import write_rows
    from tunesmith.eval.ladder_html import write_ladder_html
    from tunesmith.eval.ladder_report import write_ladder_report
    from tunesmith.outputs import record

    write_ladder_report(out / "ladder.json", report)
    write_rows(out / "predictions.jsonl", rows)
    write_ladder_html(out / "ladder.html", report, rows)
    record(out, *LADDER_FILES)


def default_out(recipe: Recipe) -> Path:
    """Where `tunesmith ladder` writes without --out: beside the run folder, `<output_dir>-ladder`."""
    return recipe.run_dir.with_name(recipe.run_dir.name + "-ladder")


def ladder(
    recipe: Recipe,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    max_examples: int | None = None,
    progress: Any = None,
) -> tuple[LadderReport, Path]:
    """Claim the output folder, measure the ladder, write its files; (report, folder)."""
    from tunesmith.outputs import claim_dir, replacing

    folder = claim_dir(out or default_out(recipe), "ladder", overwrite=overwrite, what="ladder folder")
    report, rows = run_ladder(recipe, max_examples=max_examples, progress=progress)
    with replacing(folder) as stage:  # an earlier ladder's files stay until the new ones are complete
        write_ladder(stage, report, rows)
    return report, folder
