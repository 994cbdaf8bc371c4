"""Graders in the OpenAI evals shape, so grader definitions brought from the hosted products run as they are.

Types: string_check, text_similarity, python, score_model, multi. Templates are Jinja2 over `sample`
(output_text, output_json) and `item` (reference, reference_json, input, id). Each grader gives every output a score
and a pass/fail: string_check passes at 1; the others at score >= pass_threshold. Reported per grader and model:
mean score and pass rate (0-1); gates read the tuned pass rate as `graders.<name>`.
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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tunesmith.errors import RecipeError
from tunesmith.eval import metrics

JudgeFor = Callable[[str], Any]  # model name -> a judge.Judge


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class StringCheck(_Grader):
    type: Literal["string_check"]
    input: str = "{{ sample.output_text }}"
    reference: str = "{{ item.reference }}"
    operation: Literal["eq", "ne", "like", "ilike"] = "eq"


class TextSimilarity(_Grader):
    type: Literal["text_similarity"]
    input: str = "{{ sample.output_text }}"
    reference: str = "{{ item.reference }}"
    evaluation_metric: Literal[
        "fuzzy_match", "bleu", "gleu", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
    ] = "fuzzy_match"
    pass_threshold: float = 0.5


class PythonGrader(_Grader):
    type: Literal["python"]
    source: str = Field(..., description="Python defining grade(sample, item) -> float. Runs in this process: trusted code only.")
    pass_threshold: float = 1.0
    image_tag: str | None = None  # the hosted product's sandbox image; ignored here


class ScoreModel(_Grader):
    type: Literal["score_model"]
    model: str
    input: list[dict[str, str]]
    range: tuple[float, float] = (0.0, 1.0)
    pass_threshold: float | None = None
    sampling_params: dict[str, Any] | None = None  # greedy here; accepted so definitions load unchanged


class Multi(_Grader):
    type: Literal["multi"]
    graders: dict[str, Grader]
    calculate_output: str
    pass_threshold: float = 1.0


Grader = Annotated[StringCheck | TextSimilarity | PythonGrader | ScoreModel | Multi, Field(discriminator="type")]
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


def _render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment  # a grader's template may not reach Python internals

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - text, not HTML
    try:
        return env.from_string(template).render(sample=sample, item=item)
    except jinja2.TemplateError as exc:
        raise RecipeError(
            [
                (
                    "eval.graders",
                    f"template {template!r}: {exc}; templates see sample.output_text, "
                    "sample.output_json, item.reference, item.reference_json, item.input, item.id",
                )
            ]
        ) from None


def _like(text: str, pattern: str, flags: int = 0) -> float:
    # SQL LIKE as the hosted string_check uses it: the reference is contained in the input.
    return 1.0 if re.search(re.escape(pattern), text, flags) else 0.0


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
}


def calculate(expr: str, names: dict[str, float]) -> float:
    """multi's calculate_output: arithmetic over sub-grader scores (+ - * / **, min max abs sqrt log exp), nothing else."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return float(_BINOPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return float(_FUNCS[node.func.id](*[ev(a) for a in node.args]))
        raise RecipeError(
            [
                (
                    "eval.graders",
                    f"calculate_output {expr!r}: only numbers, the sub-grader names "
                    f"({', '.join(names)}), + - * / ** and min/max/abs/sqrt/log/exp are allowed",
                )
            ]
        )

    return ev(ast.parse(expr, mode="eval"))


def scores(grader: Grader, outputs: list[str], items: list[dict[str, Any]], judge_for: JudgeFor | None = None) -> list[float]:
    """One score per output (all of one model's outputs at once, so a score_model judge sees one batch)."""
    samples = [{"output_text": o, "output_json": metrics.parse_json(o)} for o in outputs]
    if isinstance(grader, StringCheck):
        ops: dict[str, Callable[[str, str], float]] = {
            "eq": lambda a, b: float(a == b),
            "ne": lambda a, b: float(a != b),
            "like": _like,
            "ilike": lambda a, b: _like(a, b, re.IGNORECASE),
        }
        check = ops[grader.operation]
        return [check(_render(grader.input, s, i), _render(grader.reference, s, i)) for s, i in zip(samples, items)]
    if isinstance(grader, TextSimilarity):
        pairs = [(_render(grader.input, s, i), _render(grader.reference, s, i)) for s, i in zip(samples, items)]
        if grader.evaluation_metric == "cosine":
            from tunesmith.eval.similarity import cosine_similarities

            return cosine_similarities([a for a, _ in pairs], [b for _, b in pairs])
        return [_similarity(grader.evaluation_metric, a, b) for a, b in pairs]
    if isinstance(grader, PythonGrader):
        return _python_scores(grader, samples, items)
    if isinstance(grader, ScoreModel):
        return _model_scores(grader, samples, items, judge_for)
    subs = {name: scores(g, outputs, items, judge_for) for name, g in grader.graders.items()}
    return [calculate(grader.calculate_output, {n: v[k] for n, v in subs.items()}) for k in range(len(outputs))]


def _python_scores(grader: PythonGrader, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
    namespace: dict[str, Any] = {}
    try:
        exec(compile(grader.source, f"<grader {grader.name}>", "exec"), namespace)  # noqa: S102 - the recipe's own code
        return [float(namespace["grade"](s, i)) for s, i in zip(samples, items)]
    except Exception as exc:  # noqa: BLE001 - any failure of user code is one clear recipe error
        raise RecipeError(
            [
                (
                    f"eval.graders.{grader.name}",
                    f"{type(exc).__name__}: {exc} (the source must define grade(sample, item) returning a number)",
                )
            ]
        ) from None


def _model_scores(
    grader: ScoreModel, samples: list[dict[str, Any]], items: list[dict[str, Any]], judge_for: JudgeFor | None
) -> list[float]:
    if judge_for is None:
        raise RecipeError([(f"eval.graders.{grader.name}", "score_model needs a model: set eval.judge or give a model spec/URL")])
    convs = [
        [{"role": m.get("role", "user"), "content": _render(m.get("content", ""), s, i)} for m in grader.input]
        for s, i in zip(samples, items)
    ]
    low, high = grader.range
    out = []
    for reply in judge_for(grader.model).complete(convs):
        m = re.search(r"[-+]?\d+(?:\.\d+)?", reply)
        out.append(min(high, max(low, float(m.group()))) if m else low)  # no number: the lowest score
    return out


def passed(grader: Grader, score: float) -> bool:
    if isinstance(grader, StringCheck):
        return score >= 1.0
    threshold = grader.pass_threshold
    if threshold is None:  # score_model without a threshold: the middle of its range
        threshold = sum(grader.range) / 2  # type: ignore[union-attr]
    return score >= threshold


def run_graders(
    graders: list[Grader], outputs: dict[str, list[str]], items: list[dict[str, Any]], judge_for: JudgeFor | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """grader name -> model (base, tuned) -> {mean, pass_rate}."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for g in graders:
        report[g.name] = {}
        for side, texts in outputs.items():
            s = scores(g, texts, items, judge_for)
            n = max(len(s), 1)
            report[g.name][side] = {"mean": sum(s) / n, "pass_rate": sum(passed(g, x) for x in s) / n}
    return report


def grader_items(ids: list[str], prompts: list[str], refs: list[str]) -> list[dict[str, Any]]:
    """The `item` each template sees: reference, reference_json (parsed, or None), input (the prompt), id."""
    return [{"id": i, "input": p, "reference": r, "reference_json": metrics.parse_json(r)} for i, p, r in zip(ids, prompts, refs)]
