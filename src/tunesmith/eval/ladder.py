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
from tunesmith.data.convert import write_rows
from tunesmith.data.template import prompt_messages, reference
from tunesmith.errors import DataError, TunesmithError
from tunesmith.eval import generate, metrics, registry, scoring, tool_metrics
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.gates import check_rules, parse_rule
from tunesmith.eval.ladder_html import write_ladder_html
from tunesmith.eval.ladder_report import CostBasis, LadderReport, RungResult, write_ladder_report
from tunesmith.eval.recommend import recommend
from tunesmith.eval.registry import LADDER
from tunesmith.loader import load_run_model, load_target
from tunesmith.outputs import claim_dir, record, replacing
from tunesmith.run import is_run_dir, load_run
from tunesmith.train import methods
from tunesmith.train.methods import held_out_examples, held_out_split
from tunesmith.train.rewards import scorer

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
        reference=methods.get(recipe.method).describe_reference(refs),
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


PROBE_ROWS = 8  # prompts a rung answers first once another rung passes every gate (the rest only if it still can)


def cannot_pass(gates: dict[str, Any], per_example: list[dict[str, float | None]], total: int) -> str | None:
    """Why a rung whose first answers scored `per_example` cannot pass `gates` over all `total` prompts, or None.

    Decided only for gates on metrics averaged over examples within a bounded range (the registry's low/high): the
    best the rung can still reach gives every unanswered prompt the metric's best value. The mean over the answers
    given then fails the gate as well (it is at most that bound), so stopping changes no verdict.
    """
    for name, rule in gates.items():
        m = registry.metric(name)
        if m.fn is None or m.corpus is not None or m.low is None or m.high is None:
            continue
        op, threshold = parse_rule(name, rule)
        if op == "==":
            continue
        values = [float(v) for row in per_example if (v := row.get(m.name)) is not None]
        rest = total - len(per_example)
        bound = (sum(values) + rest * (m.high if op in (">=", ">") else m.low)) / max(len(values) + rest, 1)
        if check_rules({name: rule}, {m.name: bound}, where=LADDER)[0].status == "fail":
            return (
                f"{name} {m.fmt(sum(values) / max(len(values), 1))} on its first {len(per_example)} prompts: at best "
                f"{m.fmt(bound)} over all {total}, which misses {op} {threshold:g}"
            )
    return None


def _measure(
    spec: RungSpec, who: scoring.Answerer, inputs: LadderInputs, ask: dict[str, Any], decided: RungResult | None
) -> tuple[RungResult, list[str]]:
    """One rung's answers, scores and result. Once `decided` (a rung that passes every gate) exists, this rung first
    answers PROBE_ROWS prompts and stops there when it can no longer pass: it cannot change the recommendation."""
    prompts, refs, total = rung_prompts(spec, inputs), inputs.refs, len(inputs.refs)
    head = PROBE_ROWS if decided is not None and total > PROBE_ROWS else total
    advance = scoring.progress_advance(ask["progress"], f"ladder: {spec.label}", total)
    clock = scoring.Clock(ask["batch"], advance)  # the one clock, across both parts

    def answer(lo: int, hi: int) -> list[Any]:
        clock.start()
        return generate.generate_detailed(
            who.model,
            who.tokenizer,
            prompts[lo:hi],
            ask["max_new"],
            ask["batch"],
            on_batch=clock,
            thinking=who.thinking,
            tools=inputs.tools[lo:hi],
        )

    def scored(done: list[Any], n: int) -> scoring.Scores:
        outputs = scoring.scored_texts(scoring.Answers(done, clock.latency()), who.model, who.tokenizer, ask["tool_mode"])
        return scoring.score(outputs, refs[:n], ask["json_mode"], ask["reward"], prompts[:n], tools=ask["tool_mode"])

    with who.context():
        done = answer(0, head)
        scores = scored(done, head)
        why = cannot_pass(ask["gates"], scores.per_example, total) if head < total else None
        if head < total and why is None:
            done += answer(head, total)
            scores = scored(done, total)
    answers = scoring.Answers(done, clock.latency())
    rung = score_rung(spec, answers, scores, ask["basis"], ask["price"], ask["gates"])
    if why is not None and decided is not None:
        rung.reason = (
            f"stopped after {head} of {total} prompts, as it cannot change the recommendation: {why}, "
            f"and {decided.label} passes every gate"
        )
    return rung, answers.texts


def _why_not(spec: RungSpec, missing: dict[str, str], inputs: LadderInputs) -> str | None:
    """Why a rung cannot run at all (no model, no index, no shots), or None."""
    why = missing.get(spec.model) or ("the recipe has no rag section" if spec.rag and inputs.rag_convs is None else None)
    return why or (inputs.no_shots if spec.few_shot else None)


def run_ladder(
    recipe: Recipe,
    *,
    max_examples: int | None = None,
    retriever: Any = None,
    progress: Any = None,
    stop_early: bool = True,
) -> tuple[LadderReport, list[dict[str, Any]]]:
    """Measure every rung of `recipe.ladder.rungs` on the same prompts; the report and one prediction row per prompt.

    Rungs are measured from the top of the ladder down (tuned + RAG before base), so a rung that passes every gate is
    known early; with `stop_early`, a rung measured after one that passes answers PROBE_ROWS prompts first and stops
    when it can no longer pass (cannot_pass): it then cannot change the recommendation, and its reason says so.
    """
    lad = recipe.ladder
    inputs = ladder_inputs(recipe, max_examples, retriever)
    price = lad.price_per_1k_tokens if lad.price_per_1k_tokens is not None else lad.hourly_price
    json_mode, tool_mode = scoring.modes(inputs.refs)
    ask: dict[str, Any] = {
        "json_mode": json_mode,
        "tool_mode": tool_mode,
        "basis": "tokens" if lad.price_per_1k_tokens is not None else "compute",
        "price": price,
        "max_new": lad.max_new_tokens or resolve_max_new_tokens(recipe, None, inputs.refs).tokens,  # eval.max_new_tokens: auto
        "batch": lad.batch_size or recipe.eval.batch_size,
        "reward": scorer(recipe, methods.get(recipe.method), inputs.refs),
        "gates": recipe.eval.gates,
        "progress": progress,
    }
    specs = [SPECS[name] for name in RUNGS if name in lad.rungs]
    answerers, missing = load_answerers(recipe, {s.model for s in specs})
    rows: list[dict[str, Any]] = [
        {"id": i, "prompt": c[-1]["content"] if c else "", "reference": r, "passages": p, "outputs": {}}
        for i, c, r, p in zip(inputs.ids, inputs.convs, inputs.refs, inputs.sources)
    ]
    found: dict[str, RungResult] = {}
    decided: RungResult | None = None
    for who in {id(a.model): a for a in answerers.values()}.values():  # the first batch of a model is not timed cold
        generate.generate_detailed(
            who.model, who.tokenizer, inputs.convs[:2], 2, 2, thinking=who.thinking, tools=inputs.tools[:2]
        )
    for spec in reversed(specs):
        why = _why_not(spec, missing, inputs)
        if why:
            found[spec.name] = RungResult(name=spec.name, label=spec.label, status="skipped", reason=why)
            continue
        found[spec.name], texts = _measure(spec, answerers[spec.model], inputs, ask, decided if stop_early else None)
        for row, text in zip(rows, texts):
            row["outputs"][spec.name] = text
        if decided is None and found[spec.name].passed and any(g.status != "skip" for g in found[spec.name].gates):
            decided = found[spec.name]
    results = [found[s.name] for s in specs]
    return _report(recipe, inputs, ask, results, answerers), rows


def _report(
    recipe: Recipe, inputs: LadderInputs, ask: dict[str, Any], results: list[RungResult], answerers: dict[str, Any]
) -> LadderReport:
    quality = [g for g in recipe.eval.gates if registry.metric(g).fn is not None or g == "reward"]
    if ask["reward"] is not None and not any(r.strip() for r in inputs.refs):
        quality.append("reward")  # prompt-only rows: the rewards are the only quality measure
    any_model = next(iter(answerers.values()), None)
    return LadderReport(
        run=recipe.name,
        base_model=recipe.model.base,
        n_examples=len(inputs.convs),
        json_mode=ask["json_mode"],
        tool_mode=ask["tool_mode"],
        reference=inputs.reference,
        ids=inputs.ids,
        primary_metric=quality[0] if quality else metrics.primary_metrics(ask["json_mode"], ask["tool_mode"])[0],
        gates=dict(recipe.eval.gates),
        cost_basis=ask["basis"],
        price=ask["price"],
        rungs=results,
        recommendation=recommend(results),
        generation={
            "greedy": True,
            "max_new_tokens": ask["max_new"],
            "batch_size": ask["batch"],
            "few_shot_k": len(inputs.shots),
        },
        rag=None if recipe.rag is None else {"index": recipe.rag.index, "k": recipe.rag.k, "mode": recipe.rag.mode},
        device=str(any_model.model.device) if any_model else "cpu",
    )


LADDER_FILES = ("ladder.json", "ladder.html", "predictions.jsonl")


def write_ladder(out: Path, report: LadderReport, rows: list[dict[str, Any]]) -> None:
    """ladder.json, ladder.html and predictions.jsonl in `out` (a folder claimed by the caller)."""
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
    stop_early: bool = True,
) -> tuple[LadderReport, Path]:
    """Claim the output folder, measure the ladder, write its files; (report, folder)."""
    folder = claim_dir(out or default_out(recipe), "ladder", overwrite=overwrite, what="ladder folder")
    report, rows = run_ladder(recipe, max_examples=max_examples, progress=progress, stop_early=stop_early)
    with replacing(folder) as stage:  # an earlier ladder's files stay until the new ones are complete
        write_ladder(stage, report, rows)
    return report, folder
