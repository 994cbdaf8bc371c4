"""Graders in the OpenAI evals shape, so grader definitions brought from the hosted products run as they are.

Types: string_check, text_similarity, python, score_model, label_model, multi. Templates are Jinja2 over `sample`
(output_text, output_json) and `item`: every field of the held-out row, plus reference (its answer), reference_json
(the same parsed), input (the prompt) and id. Each grader gives every output a score and a pass/fail: string_check
and label_model pass at 1; the others at score >= pass_threshold. An output a grader cannot score (a template that
does not render for it, a python grader that raises, loops or runs out of memory, a judge reply without a score)
scores 0, as in OpenAI's graders, and is counted with its reason; only a definition that is wrong for every output
is an error. The same definitions are the GRPO reward (grpo.rewards type `grader`, tunesmith.train.rewards) and the
eval metric `graders.<name>` (its pass rate; tunesmith.eval.registry), so a run trains on what it is judged by.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable
from difflib import SequenceMatcher
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from tunesmith.errors import RecipeError
from tunesmith.eval import metrics, pygrader
from tunesmith.eval.grader_base import Graded, JudgeFor, Unscored, jinja_template, render
from tunesmith.eval.grader_models import model_grade
from tunesmith.eval.similarity import cosine_similarities

TEXT_PARTS = ("text", "input_text", "output_text")
ITEM_KEYS = ("reference", "reference_json", "input", "id")


def _checked(text: str) -> str:
    """The template, when it parses (a syntax error is wrong for every output: said at load)."""
    import jinja2

    try:
        jinja_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template {text!r}: {exc.message} (line {exc.lineno})") from None
    return text


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class _Compares(_Grader):
    """A grader comparing two rendered templates: the output side and the reference side."""

    input: str = "{{ sample.output_text }}"
    reference: str = "{{ item.reference }}"

    @field_validator("input", "reference")
    @classmethod
    def _templates_parse(cls, value: str) -> str:
        return _checked(value)


class StringCheck(_Compares):
    type: Literal["string_check"]
    operation: Literal["eq", "ne", "like", "ilike"] = "eq"


class TextSimilarity(_Compares):
    type: Literal["text_similarity"]
    evaluation_metric: Literal[
        "fuzzy_match", "bleu", "gleu", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
    ] = "fuzzy_match"
    pass_threshold: float = 0.5


class PythonGrader(_Grader):
    type: Literal["python"]
    source: str = Field(..., description="Python defining grade(sample, item) -> float, run in a separate process.")
    pass_threshold: float = 1.0
    image_tag: str | None = None  # the hosted product's sandbox image; ignored here
    timeout_s: float = Field(10.0, gt=0, description="Seconds grade() may take per output; beyond, that output scores 0.")
    memory_mb: int = Field(2048, ge=64, description="Address-space limit of the grader process (MiB); beyond, 0.")

    @field_validator("source")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile(value, "<grader source>", "exec")
        except SyntaxError as exc:
            raise ValueError(f"source line {exc.lineno}: {exc.msg}") from None
        return value


class Message(BaseModel):
    """One message a model grader sends its judge; content is text or OpenAI's list of text parts."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"] = "user"
    content: str | list[dict[str, Any]] = ""
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        parts = [value] if isinstance(value, str) else [p.get("text") for p in value if p.get("type") in TEXT_PARTS]
        if isinstance(value, list) and len(parts) != len(value):
            kinds = sorted({str(p.get("type")) for p in value if p.get("type") not in TEXT_PARTS})
            raise ValueError(
                f"content parts of type {', '.join(kinds)}: the judge reads text parts only ({', '.join(TEXT_PARTS)})"
            )
        for part in parts:
            if not isinstance(part, str):
                raise ValueError("a text content part needs a `text` string")
            _checked(part)
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(str(p["text"]) for p in self.content)


class _ModelGrader(_Grader):
    model: str
    input: list[Message]
    sampling_params: dict[str, Any] | None = None  # greedy here; accepted so definitions load unchanged


class ScoreModel(_ModelGrader):
    type: Literal["score_model"]
    range: tuple[float, float] = (0.0, 1.0)
    pass_threshold: float | None = None


class LabelModel(_ModelGrader):
    type: Literal["label_model"]
    labels: list[str] = Field(..., min_length=1)
    passing_labels: list[str] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _passing_are_labels(self) -> LabelModel:
        unknown = [x for x in self.passing_labels if x not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels {unknown} are not among labels {self.labels}")
        return self


class Multi(_Grader):
    type: Literal["multi"]
    graders: dict[str, Grader]
    calculate_output: str
    pass_threshold: float = 1.0

    @model_validator(mode="after")
    def _formula(self) -> Multi:
        try:
            calculate(self.calculate_output, {n: 0.5 for n in self.graders})
        except RecipeError as exc:
            raise ValueError(exc.problems[0][1]) from None
        except SyntaxError as exc:
            raise ValueError(f"calculate_output {self.calculate_output!r}: {exc.msg}") from None
        except (ArithmeticError, ValueError):
            pass  # only some values fail (a division by zero): those outputs score 0
        return self


Grader = Annotated[StringCheck | TextSimilarity | PythonGrader | ScoreModel | LabelModel | Multi, Field(discriminator="type")]
Multi.model_rebuild()
_GRADERS: TypeAdapter[list[Grader]] = TypeAdapter(list[Grader])


def load_graders(value: list[dict[str, Any]] | str | Path) -> list[Grader]:
    """Grader objects from definitions or a JSON file of them (a list, or {"graders": [...]}). ValueError when invalid."""
    if isinstance(value, (str, Path)):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"graders file {value}: {exc}") from None
        if isinstance(value, dict):
            value = value.get("graders", [value])
    try:
        graders = _GRADERS.validate_python(value)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])) from None
    names = [g.name for g in graders]
    if len(set(names)) != len(names):
        raise ValueError(f"grader names must be unique: {names}")
    return graders


def needs_model(grader: Grader) -> bool:
    """Whether the grader asks a judge model (score_model, label_model, or a multi holding one)."""
    if isinstance(grader, Multi):
        return any(needs_model(g) for g in grader.graders.values())
    return isinstance(grader, _ModelGrader)


def _like(text: str, pattern: str, flags: int = 0) -> float:
    # SQL LIKE as the hosted string_check uses it: the reference is contained in the input.
    return 1.0 if re.search(re.escape(pattern), text, flags) else 0.0


_CHECKS: dict[str, Callable[[str, str], float]] = {
    "eq": lambda a, b: float(a == b),
    "ne": lambda a, b: float(a != b),
    "like": _like,
    "ilike": lambda a, b: _like(a, b, re.IGNORECASE),
}


def _similarity(metric: str, a: str, b: str) -> float:
    if metric == "fuzzy_match":
        return SequenceMatcher(None, a, b).ratio()
    if metric == "bleu":
        return metrics.sentence_bleu(a, b) / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([b.split()], a.split())) if a.split() and b.split() else float(a == b)
    if metric == "rouge_l":
        return metrics.rouge_l(a, b)
    from rouge_score import rouge_scorer

    key = "rouge" + metric.split("_")[1]
    return float(rouge_scorer.RougeScorer([key]).score(b, a)[key].fmeasure)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Pow: operator.pow}
_FUNCS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
}


def calculate(expr: str, names: dict[str, float]) -> float:
    """multi's calculate_output: arithmetic over sub-grader scores (+ - * / **, min max abs sqrt log exp floor ceil)."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return float(_BINOPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
            return float(_FUNCS[node.func.id](*[ev(a) for a in node.args]))
        raise RecipeError(
            [
                (
                    "eval.graders",
                    f"calculate_output {expr!r}: only numbers, the sub-grader names "
                    f"({', '.join(names)}), + - * / ** and {'/'.join(_FUNCS)} are allowed",
                )
            ]
        )

    return ev(ast.parse(expr, mode="eval"))


def _each(fn: Callable[[dict[str, Any], dict[str, Any]], float], samples: list[Any], items: list[Any]) -> Graded:
    out = Graded([], [])
    for s, i in zip(samples, items, strict=True):
        try:
            out.scores.append(fn(s, i))
            out.errors.append(None)
        except Unscored as exc:
            out.scores.append(0.0)
            out.errors.append(str(exc.args[0]))
    return out


def grade(grader: Grader, outputs: list[str], items: list[dict[str, Any]], judge_for: JudgeFor | None = None) -> Graded:
    """Score every output (all of one model's outputs at once, so a judge sees one batch); unscorable ones 0."""
    samples = [{"output_text": o, "output_json": metrics.parse_json(o)} for o in outputs]
    if isinstance(grader, StringCheck):
        check = _CHECKS[grader.operation]
        return _each(lambda s, i: check(render(grader.input, s, i), render(grader.reference, s, i)), samples, items)
    if isinstance(grader, TextSimilarity):
        if grader.evaluation_metric == "cosine":
            return _cosine(grader, samples, items)
        metric = grader.evaluation_metric
        return _each(lambda s, i: _similarity(metric, render(grader.input, s, i), render(grader.reference, s, i)), samples, items)
    if isinstance(grader, PythonGrader):
        done = pygrader.run(grader.source, grader.name, samples, items, grader.timeout_s, grader.memory_mb)
        return Graded([o.score or 0.0 for o in done], [o.error for o in done])
    if isinstance(grader, (ScoreModel, LabelModel)):
        return model_grade(grader, samples, items, judge_for)
    return _multi(grader, outputs, items, judge_for)


def _cosine(grader: TextSimilarity, samples: list[Any], items: list[Any]) -> Graded:
    out = Graded([0.0] * len(samples), [None] * len(samples))
    rendered = []
    for k, (s, i) in enumerate(zip(samples, items, strict=True)):
        try:
            rendered.append((k, render(grader.input, s, i), render(grader.reference, s, i)))
        except Unscored as exc:
            out.errors[k] = str(exc.args[0])
    for (k, _, _), value in zip(rendered, cosine_similarities([a for _, a, _ in rendered], [b for _, _, b in rendered])):
        out.scores[k] = value
    return out


def _multi(grader: Multi, outputs: list[str], items: list[dict[str, Any]], judge_for: JudgeFor | None) -> Graded:
    subs = {name: grade(g, outputs, items, judge_for) for name, g in grader.graders.items()}
    out = Graded([], [])
    for k in range(len(outputs)):
        failed = [f"{name}: {sub.errors[k]}" for name, sub in subs.items() if sub.errors[k] is not None]
        try:
            value = calculate(grader.calculate_output, {n: sub.scores[k] for n, sub in subs.items()})
        except (ArithmeticError, ValueError) as exc:  # log(0), a division by zero: this output only
            out.scores.append(0.0)
            out.errors.append(f"calculate_output {grader.calculate_output!r}: {type(exc).__name__}: {exc}")
            continue
        out.scores.append(value)
        out.errors.append("; ".join(failed) or None)  # a failed sub-grader counted 0 in the formula
    return out


def scores(grader: Grader, outputs: list[str], items: list[dict[str, Any]], judge_for: JudgeFor | None = None) -> list[float]:
    """One score per output (grade(...).scores)."""
    return grade(grader, outputs, items, judge_for).scores


def passed(grader: Grader, score: float) -> bool:
    if isinstance(grader, (StringCheck, LabelModel)):
        return score >= 1.0
    threshold = grader.pass_threshold
    if threshold is None:  # score_model without a threshold: the middle of its range
        threshold = sum(grader.range) / 2  # type: ignore[union-attr]
    return score >= threshold


def run_graders(
    graders: list[Grader], outputs: dict[str, list[str]], items: list[dict[str, Any]], judge_for: JudgeFor | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """grader name -> model (base, tuned) -> {mean, pass_rate, failed, first_error}. An output that could not be
    scored counts as 0 and not passed; `failed` counts them and first_error says why the first one was not."""
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for g in graders:
        report[g.name] = {}
        for side, texts in outputs.items():
            done = grade(g, texts, items, judge_for)
            n = max(len(done.scores), 1)
            report[g.name][side] = {
                "mean": sum(done.scores) / n,
                "pass_rate": sum(passed(g, x) and e is None for x, e in zip(done.scores, done.errors)) / n,
                "failed": done.failed,
                "first_error": done.first_error,
            }
    return report


def grader_items(
    ids: list[str], prompts: list[str], refs: list[str], rows: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The `item` each template sees: every field of the row (`rows`: the held-out or training row's own fields, as
    OpenAI's graders see them), plus reference, reference_json (parsed, or None), input (the prompt) and id where the
    row has no field of that name."""
    fields = rows if rows is not None else [{} for _ in ids]
    return [
        {"id": i, "input": p, "reference": r, "reference_json": metrics.parse_json(r), **row}
        for i, p, r, row in zip(ids, prompts, refs, fields, strict=True)
    ]
