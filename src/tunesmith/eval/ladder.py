"""The ladder: the same held-out prompts through each way of solving the task, and which one to ship.

Rungs, simplest first: base zero-shot (the recipe's system prompt), base few-shot (k training examples
before the prompt), base + RAG, tuned, tuned + RAG, and a distilled student. Every rung is scored with
the eval's own metrics (`metrics.score_example` / `aggregate`) on generations from the one generation
function, and timed: latency per request, tokens per request and cost per 1,000 requests.
Base and tuned are one loaded model (the adapter disabled for base), like `tunesmith eval`; the RAG rungs
get byte-identical retrieved context through `rag.prompt.augment`, the prompt builder training used.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import RUNGS, Recipe
from tunesmith.data.template import prompt_messages, reference
from tunesmith.eval import metrics
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.generate import Completion, generate_detailed
from tunesmith.eval.ladder_report import CostBasis, LadderReport, RungResult
from tunesmith.eval.recommend import recommend, target_checks

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
    """The prompts every rung shares: eval conversations, their references, few-shot turns, retrieved versions."""

    ids: list[str]
    convs: list[Conversation]
    refs: list[str]
    shots: list[Conversation]  # each a (user..., assistant) run of turns from a training example
    rag_convs: list[Conversation] | None  # convs with retrieved context; None without a rag section
    sources: list[list[str]]  # per prompt, the passages' source:line


def few_shot_prompt(conv: Conversation, shots: list[Conversation]) -> Conversation:
    """The conversation with the shots' turns between its system message(s) and its own turns."""
    system = [m for m in conv if m["role"] == "system"]
    rest = [m for m in conv if m["role"] != "system"]
    return system + [m for shot in shots for m in shot] + rest


def pick_shots(train: list[Any], k: int, seed: int) -> list[Conversation]:
    """k training examples (seeded pick) as their non-system turns ending with the reference answer."""
    chosen = random.Random(seed).sample(train, min(k, len(train)))
    return [
        [m for m in prompt_messages(e.messages) if m["role"] != "system"]
        + [{"role": "assistant", "content": reference(e.messages)}]
        for e in chosen
    ]


def ladder_inputs(recipe: Recipe, max_examples: int | None = None, retriever: Any = None) -> LadderInputs:
    """The recipe's held-out prompts (capped), few-shot turns from its train split, and their retrieved contexts.

    `retriever` (anything with `.search(query, k, mode)`) overrides the recipe's index; without either, no RAG rungs.
    """
    from tunesmith.data.dataset import split_examples
    from tunesmith.rag import prompt as rag_prompt

    train, evaluation = split_examples(recipe.data, recipe.training.seed)
    cap = max_examples if max_examples is not None else (recipe.ladder.max_examples or recipe.eval.max_examples)
    evaluation = evaluation[:cap] if cap else evaluation
    convs = [prompt_messages(e.messages) for e in evaluation]
    rag_convs: list[Conversation] | None = None
    sources: list[list[str]] = [[] for _ in convs]
    if recipe.rag is not None:
        retriever = retriever if retriever is not None else rag_prompt.recipe_retriever(recipe)
        rag = recipe.rag
        pairs = [rag_prompt.augment(c, retriever, rag.k, rag.template, rag.mode) for c in convs]
        rag_convs = [p[0] for p in pairs]
        sources = [[f"{x.source}:{x.line}" for x in p[1]] for p in pairs]
    return LadderInputs(
        ids=[e.id for e in evaluation],
        convs=convs,
        refs=[reference(e.messages) for e in evaluation],
        shots=pick_shots(train, recipe.ladder.few_shot_k, recipe.training.seed),
        rag_convs=rag_convs,
        sources=sources,
    )


def rung_prompts(spec: RungSpec, inputs: LadderInputs) -> list[Conversation]:
    """The prompts one rung generates from: the shared eval prompts, with shots or retrieved context added."""
    if spec.rag:
        assert inputs.rag_convs is not None
        return inputs.rag_convs
    if spec.few_shot:
        return [few_shot_prompt(c, inputs.shots) for c in inputs.convs]
    return inputs.convs


def timed_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Completion], list[float], float]:
    """Completions in input order, each request's latency (ms: the wall time of the batch that produced it), total seconds."""
    completions: list[Completion] = []
    latencies: list[float] = []
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        began = time.perf_counter()
        completions += generate_detailed(model, tokenizer, batch, max_new_tokens, len(batch))
        took = time.perf_counter() - began
        total += took
        latencies += [took * 1000.0] * len(batch)
        if on_batch:
            on_batch(len(batch))
    return completions, latencies, total


def cost_per_1k(
    basis: CostBasis, price: float, prompt_tokens: float, completion_tokens: float, seconds_per_request: float
) -> float:
    """Cost of 1,000 requests: tokens x price per 1,000 tokens, or machine seconds x price per hour."""
    if basis == "tokens":
        return (prompt_tokens + completion_tokens) * price
    return seconds_per_request * 1000.0 * price / 3600.0


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else 0.0


def score_rung(
    spec: RungSpec,
    completions: list[Completion],
    latencies: list[float],
    seconds: float,
    refs: list[str],
    json_mode: bool,
    basis: CostBasis,
    price: float,
    targets: dict[str, float],
) -> RungResult:
    """A rung's quality (the eval's metrics), latency, tokens and cost, and which targets it meets."""
    texts = [c.text for c in completions]
    quality = metrics.aggregate([metrics.score_example(t, r, json_mode) for t, r in zip(texts, refs)])
    quality["bleu"] = metrics.corpus_bleu(texts, refs)  # corpus BLEU, as `tunesmith eval` reports it
    n = max(len(completions), 1)
    prompt_tokens = sum(c.prompt_tokens for c in completions) / n
    completion_tokens = sum(c.completion_tokens for c in completions) / n
    # Requests in a batch share the machine, so compute cost is charged on total seconds / requests, not on latency.
    rung = RungResult(
        name=spec.name,
        label=spec.label,
        n_examples=len(completions),
        metrics=quality,
        p50_latency_ms=_percentile(latencies, 50),
        p95_latency_ms=_percentile(latencies, 95),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        generation_s=seconds,
        cost_per_1k=cost_per_1k(basis, price, prompt_tokens, completion_tokens, seconds / n),
    )
    rung.meets = target_checks(rung, targets)
    return rung


@dataclass
class Answerer:
    """A loaded model for some rungs; `adapter_off` answers as the base with the run's adapter disabled."""

    model: Any
    tokenizer: Any
    adapter_off: bool = False

    def context(self) -> Any:
        return self.model.disable_adapter() if self.adapter_off else nullcontext()


def load_answerers(recipe: Recipe, kinds: set[str]) -> tuple[dict[str, Answerer], dict[str, str]]:
    """Models for the wanted kinds (base, tuned, student), loaded once; and why a kind is unavailable."""
    from tunesmith.loader import load_base, load_run_model, load_target
    from tunesmith.run import is_run_dir, load_run

    found: dict[str, Answerer] = {}
    missing: dict[str, str] = {}
    if kinds & {"base", "tuned"}:
        if is_run_dir(recipe.run_dir):
            run = load_run(recipe.run_dir)
            loaded = load_run_model(run)
            found["tuned"] = Answerer(loaded.model, loaded.tokenizer)
            if loaded.has_adapter:  # one model in memory: base = the same object with its adapter disabled
                found["base"] = Answerer(loaded.model, loaded.tokenizer, adapter_off=True)
            elif "base" in kinds:
                found["base"] = Answerer(load_base(run).eval(), loaded.tokenizer)
        else:
            missing["tuned"] = f"no trained run at {recipe.run_dir}: train first (`tunesmith train`)"
            if "base" in kinds:
                base = load_target(recipe.model.base, recipe.model.dtype)
                found["base"] = Answerer(base.model, base.tokenizer)
    if "student" in kinds:
        if recipe.ladder.student:
            student = load_target(recipe.ladder.student, recipe.model.dtype)
            found["student"] = Answerer(student.model, student.tokenizer)
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
    lad = recipe.ladder
    inputs = ladder_inputs(recipe, max_examples, retriever)
    json_mode = metrics.references_are_json(inputs.refs)
    basis: CostBasis = "tokens" if lad.price_per_1k_tokens is not None else "compute"
    price = lad.price_per_1k_tokens if lad.price_per_1k_tokens is not None else lad.hourly_price
    max_new = lad.max_new_tokens or resolve_max_new_tokens(recipe, None, inputs.refs).tokens  # eval.max_new_tokens: auto
    batch = lad.batch_size or recipe.eval.batch_size
    targets = recipe.targets.as_dict()
    specs = [SPECS[name] for name in RUNGS if name in lad.rungs]
    answerers, missing = load_answerers(recipe, {s.model for s in specs})
    rows: list[dict[str, Any]] = [
        {"id": i, "prompt": c[-1]["content"] if c else "", "reference": r, "passages": p, "outputs": {}}
        for i, c, r, p in zip(inputs.ids, inputs.convs, inputs.refs, inputs.sources)
    ]
    results: list[RungResult] = []
    for spec in specs:
        why = missing.get(spec.model) or ("the recipe has no rag section" if spec.rag and inputs.rag_convs is None else None)
        if why:
            results.append(RungResult(name=spec.name, label=spec.label, status="skipped", reason=why))
            continue
        who = answerers[spec.model]
        task = progress.add_task(f"ladder: {spec.label}", total=len(inputs.convs)) if progress else None
        with who.context():
            completions, latencies, seconds = timed_generate(
                who.model,
                who.tokenizer,
                rung_prompts(spec, inputs),
                max_new,
                batch,
                on_batch=functools.partial(progress.advance, task) if progress else None,
            )
        results.append(score_rung(spec, completions, latencies, seconds, inputs.refs, json_mode, basis, price, targets))
        for row, c in zip(rows, completions):
            row["outputs"][spec.name] = c.text
    quality_targets = [t for t in targets if t in metrics.score_example("", "", True)]
    any_model = next(iter(answerers.values()), None)
    report = LadderReport(
        run=recipe.name,
        base_model=recipe.model.base,
        n_examples=len(inputs.convs),
        json_mode=json_mode,
        primary_metric=quality_targets[0] if quality_targets else metrics.primary_metrics(json_mode)[0],
        targets=targets,
        cost_basis=basis,
        price=price,
        rungs=results,
        recommendation=recommend(results, targets),
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
