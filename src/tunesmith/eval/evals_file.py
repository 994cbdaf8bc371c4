"""`tunesmith eval --grader G.json --data evals.jsonl`: an OpenAI Evals-style data file scored by its graders.

Each line is `{"item": {...}, "sample": {...}}` (the shape of OpenAI Evals' file_content source) or a bare item
object. Rows that carry `sample.output_text` are scored as they are (outputs recorded elsewhere, e.g. the hosted
model's); with a run, base and tuned answer each item's prompt (item.messages, item.input or item.prompt: a chat
list or a string) through the one generation function and both are scored. Every grader sees the item's fields as
item.<field>, as in OpenAI's graders; the report is the same GraderScore per grader and side as `tunesmith eval`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith.data.formats import read_records
from tunesmith.errors import DataError
from tunesmith.eval import scoring
from tunesmith.eval.budget import resolve_max_new_tokens
from tunesmith.eval.graders import grader_items, run_graders
from tunesmith.eval.judge import judges_for_graders
from tunesmith.loader import load_run_model
from tunesmith.records import GraderScore, Record

SAMPLES = "samples"  # the side name of outputs given in the file


@dataclass
class EvalsRow:
    where: str  # file:line
    item: dict[str, Any]
    output: str | None  # sample.output_text, when the row carries one


class GradersReport(Record):
    """What `tunesmith eval --grader --data` measured: per grader and side (samples, or base and tuned)."""

    schema_version: int = 1
    data: str
    n_examples: int
    run: str | None = None
    graders: dict[str, dict[str, GraderScore]] = Field(default_factory=dict)
    unmapped: list[str] = Field(default_factory=list, description="Graders of the file that could not be used, and why.")


def read_rows(path: Path) -> list[EvalsRow]:
    """The rows of an Evals JSONL; one DataError naming every bad line."""
    rows, bad = [], []
    for rec in read_records(path):
        obj = rec.obj
        if rec.error is not None or not isinstance(obj, dict):
            bad.append(f"{rec.where}: {rec.error or 'not a JSON object'}")
            continue
        item = obj.get("item", obj)
        sample = obj.get("sample")
        output = sample.get("output_text") if isinstance(sample, dict) else None
        if not isinstance(item, dict) or (output is not None and not isinstance(output, str)):
            bad.append(f"{rec.where}: `item` must be an object and sample.output_text a string")
            continue
        rows.append(EvalsRow(rec.where, item, output))
    if bad or not rows:
        raise DataError(
            f"{path}: " + ("; ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "") if bad else "no rows"),
            hint='Each line: {"item": {...}, "sample": {"output_text": "..."}} (sample optional with a run), or an item.',
        )
    return rows


def prompt_of(row: EvalsRow) -> list[dict[str, Any]]:
    """The chat prompt an item asks: item.messages, item.input or item.prompt (a message list or a string)."""
    for key in ("messages", "input", "prompt"):
        value = row.item.get(key)
        if isinstance(value, str) and value.strip():
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            msgs = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m.get("content", "")} for m in value]
            return [m for m in msgs if m["role"] != "assistant"] if msgs[-1]["role"] == "assistant" else msgs
    raise DataError(
        f"{row.where}: the item has no prompt to answer (item.messages, item.input or item.prompt)",
        hint="Give each row a prompt, or sample.output_text to score recorded outputs without a model.",
    )


def items_for(rows: list[EvalsRow], prompts: list[str]) -> list[dict[str, Any]]:
    """The `item` each grader sees: the row's item fields, with tunesmith's reference (item.reference, or "")."""
    refs = [str(r.item.get("reference", "")) for r in rows]
    return grader_items([str(r.item.get("id", r.where)) for r in rows], prompts, refs, [r.item for r in rows])


def score_file(
    graders: list[Any], rows: list[EvalsRow], outputs: dict[str, list[str]], prompts: list[str], judge_for: Any
) -> dict[str, dict[str, GraderScore]]:
    """grader -> side -> GraderScore, every output graded with its row's item."""
    graded = run_graders(graders, outputs, items_for(rows, prompts), judge_for)
    return {name: {side: GraderScore(**s) for side, s in sides.items()} for name, sides in graded.items()}


def recorded_outputs(rows: list[EvalsRow], path: Path) -> dict[str, list[str]]:
    """{samples: outputs} when every row carries sample.output_text; DataError naming a row that does not."""
    missing = [r.where for r in rows if r.output is None]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} row(s) carry no sample.output_text (first: {missing[0]}) and no run was given",
            hint="Give a run (tunesmith eval RUN --grader G --data F) to answer the items, or record every sample.",
        )
    return {SAMPLES: [r.output or "" for r in rows]}


def answer_with_run(run: Any, prompts: list[list[dict[str, Any]]], progress: Any = None) -> dict[str, list[str]]:
    """{base, tuned}: the run's base and tuned answers to the prompts (greedy, the run's eval budget and batch)."""
    loaded = load_run_model(run)
    budget = resolve_max_new_tokens(run.recipe, loaded.tokenizer, [])
    out = {}
    for side, who in scoring.run_answerers(run, loaded).items():
        with who.context():
            advance = scoring.progress_advance(progress, f"generating ({side})", len(prompts))
            answers = scoring.answer(who.model, loaded.tokenizer, prompts, budget.tokens, run.recipe.eval.batch_size, advance)
        out[side] = answers.texts
    return out


def evaluate_file(path: Path, graders: list[Any], run: Any = None, progress: Any = None) -> GradersReport:
    """Score the file's recorded samples (no run) or the run's base and tuned answers to its items."""
    rows = read_rows(path)
    if run is None:
        outputs = recorded_outputs(rows, path)
        prompts = [_prompt_text(r) for r in rows]
    else:
        convs = [prompt_of(r) for r in rows]
        outputs = answer_with_run(run, convs, progress)
        prompts = [str(c[-1].get("content", "")) for c in convs]
    judge = run.recipe.eval.judge if run is not None else None
    scored = score_file(graders, rows, outputs, prompts, judges_for_graders(judge))
    return GradersReport(data=str(path), n_examples=len(rows), run=str(run.dir) if run else None, graders=scored)


def _prompt_text(row: EvalsRow) -> str:
    try:
        return str(prompt_of(row)[-1].get("content", ""))
    except DataError:
        return ""  # recorded samples need no prompt; item.input is then empty
