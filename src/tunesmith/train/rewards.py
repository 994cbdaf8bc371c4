"""GRPO reward functions: built-ins selected by the recipe, and user functions given as `module:function`.

Every reward has TRL's signature `f(prompts, completions, **columns) -> list[float]`, one float per
completion. Completions arrive as text or as a list of chat messages (conversational prompts); both
are reduced to the assistant's text. Built-ins score 1.0 for a pass and 0.0 for a fail, except the
length penalty, which is 0 within budget and negative beyond it.

The pass/fail rewards are the registry's metrics themselves (tunesmith.eval.registry: json_valid, exact_match),
so a run is trained on exactly the objective `tunesmith eval` scores it on; eval and the ladder also report the
recipe's weighted reward (`scorer`) as the metric `reward`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunesmith import families
from tunesmith.errors import RecipeError
from tunesmith.eval import metrics, registry, tool_metrics
from tunesmith.eval.generate import raw_completion
from tunesmith.eval.graders import grade, grader_items, load_graders
from tunesmith.eval.judge import judges_for_graders
from tunesmith.eval.reward_model import RewardModel, is_reward_run
from tunesmith.method_sections import schema_file
from tunesmith.train.rows import PROMPT_MESSAGES, ROW_FIELDS, dataset_row

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tunesmith.method_sections import RewardSpec
    from tunesmith.train.method import Method

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The generated text of one completion (a string, or TRL's list of assistant messages; eval's tool turns give
    the answer text they were parsed from)."""
    if isinstance(completion, str):
        turn = tool_metrics.parse_turn(completion)
        if turn is not None and turn.text is not None:
            return turn.text.strip()
        return completion.strip()
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict)).strip()
    return str(completion).strip()


def json_valid(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """eval's json_valid: 1.0 when the completion is a JSON object or array (one ``` fence allowed), else 0.0."""
    valid = registry.METRICS["json_valid"].fn
    assert valid is not None
    return [float(valid(completion_text(c), "") or 0.0) for c in completions]


def _schema(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """A reward's JSON schema: inline, as preflight leaves it, or still the file a schema-only load points at."""
    if isinstance(value, str):
        try:
            return schema_file(value)
        except ValueError as exc:
            raise RecipeError([("grpo", str(exc))]) from exc
    return value or {}


def make_json_schema_valid(schema: dict[str, Any]) -> RewardFn:
    """1.0 when the completion is JSON that validates against `schema`, else 0.0."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)

    def json_schema_valid(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        out = []
        for c in completions:
            value = metrics.parse_json(completion_text(c))
            out.append(float(value is not None and validator.is_valid(value)))
        return out

    return json_schema_valid


def make_exact_match(field: str) -> RewardFn:
    """eval's exact_match: 1.0 when the completion equals the row's `field` after whitespace normalisation, else 0.0."""

    def exact_match(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        refs = columns.get(field)
        if refs is None:
            raise KeyError(f"exact_match reward: the data has no `{field}` column")
        match = registry.METRICS["exact_match"].fn
        assert match is not None
        return [
            float(match(completion_text(c), ref if isinstance(ref, str) else json.dumps(ref)) or 0.0)
            for c, ref in zip(completions, refs)
        ]

    return exact_match


def turn_reader(tokenizer: Any = None) -> Callable[[Any, Any], str]:
    """f(completion, its ids or None) -> the completion as eval's tool turn: parsed in the family's tool format as
    eval parses it (its ids decoded with special tokens when TRL passes them and the tokenizer is known); a
    completion that already is a tool turn (eval's) as it is."""
    style, stops = None, set()
    if tokenizer is not None:
        family = families.for_tokenizer(tokenizer)
        style, stops = family.tools, set(family.stop_token_ids(tokenizer))

    def read(completion: Any, ids: Any = None) -> str:
        if isinstance(completion, str) and tool_metrics.parse_turn(completion) is not None:
            return completion
        raw = raw_completion(tokenizer, list(ids), stops) if tokenizer is not None and ids is not None else None
        return tool_metrics.completion_turn(raw if raw is not None else completion_text(completion), style)

    return read


def make_tool_reward(name: str, tokenizer: Any = None) -> RewardFn:
    """A tool metric of the registry (eval.tool_metrics) as a reward: each completion read as a tool turn
    (`turn_reader`), scored against the row's `reference` (its tool turn). A row where the metric does not apply
    scores 0."""
    metric = registry.METRICS[name].fn
    assert metric is not None
    read = turn_reader(tokenizer)

    def reward(prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any) -> list[float]:
        refs = columns.get("reference")
        if refs is None:
            raise KeyError(f"{name} reward: the data has no `reference` column (the rows' answer turns)")
        out = []
        for k, (c, ref) in enumerate(zip(completions, refs)):
            text = read(c, completion_ids[k] if completion_ids else None)
            out.append(float(metric(text, str(ref or "")) or 0.0))
        return out

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


def make_regex(pattern: str) -> RewardFn:
    """1.0 when the whole completion matches `pattern`, else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)

    def regex_match(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [float(compiled.fullmatch(completion_text(c)) is not None) for c in completions]

    return regex_match


def make_length_penalty(max_chars: int) -> RewardFn:
    """0 within `max_chars`; beyond it, minus the excess as a fraction of the budget (-1.0 at twice the budget)."""

    def length_penalty(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [-max(0, len(completion_text(c)) - max_chars) / max_chars for c in completions]

    return length_penalty


def make_reward_model(run: str, tokenizer: Any = None) -> RewardFn:
    """The score of a reward run (tunesmith.eval.reward_model, the one scorer); RecipeError when `run` is not one.
    Each prompt is scored with the tools its row offers (`row_fields`) as its messages (`prompt_messages`, for rows
    TRL receives as rendered text), and a completion on such a row as its tool turn (`turn_reader`, with the
    policy's `tokenizer`): the rendering the reward model was trained on."""
    if not is_reward_run(run):
        raise RecipeError([("grpo.rewards", f"{run} is not a finished reward run (train one with method: reward)")])
    read = turn_reader(tokenizer)

    def reward_model(prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any) -> list[float]:
        n = len(completions)
        fields = [json.loads(f) if isinstance(f, str) else {} for f in columns.get(ROW_FIELDS) or [None] * n]
        tools = [f.get("tools") if isinstance(f.get("tools"), list) else None for f in fields]
        given = columns.get(PROMPT_MESSAGES) or [None] * n
        convs = [json.loads(m) if isinstance(m, str) else p for m, p in zip(given, prompts)]
        answers = [
            read(c, completion_ids[k] if completion_ids else None) if tools[k] else completion_text(c)
            for k, c in enumerate(completions)
        ]
        return RewardModel.load(run).score(convs, answers, tools=tools)

    return reward_model


def load_function(spec: str) -> RewardFn:
    """Import `module:function` or `/path/file.py:function`; RecipeError when it cannot be found."""
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            module = _file_module(Path(target))
        else:
            module = importlib.import_module(target)
    except (ImportError, OSError, SyntaxError) as exc:
        raise RecipeError([("grpo.rewards", f"cannot import `{target}`: {exc}")]) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RecipeError([("grpo.rewards", f"`{target}` has no function `{name}`")])
    return cast(RewardFn, fn)  # user code: TRL's reward signature is the documented contract


def _file_module(path: Path) -> Any:
    """The module of a reward file, loaded once per resolved path: two projects' files of one name (each with a
    grader_reward.py) are two modules."""
    resolved = path.expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    module_name = f"tunesmith_user_reward_{resolved.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    loader_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"cannot load {resolved}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]  # a file that failed to load is read again next time, not half-cached
        raise
    return module


def prompt_text(prompt: Any) -> str:
    """The last message of a prompt (what eval's item.input holds), or the prompt text itself."""
    if isinstance(prompt, list) and prompt:
        last = prompt[-1]
        return str(last.get("content") or "") if isinstance(last, dict) else str(last)
    return str(prompt)


def make_grader(grader: Any, judge_for: Any) -> RewardFn:
    """An eval grader (tunesmith.eval.graders) as a reward: each completion scored with the item eval gives it (the
    row's fields from `row_fields`, its reference, its prompt), by the same definition `tunesmith eval` reports as
    graders.<name>. A completion the grader cannot score gets 0, as in eval; the first such reason is logged."""
    failures = [0]

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        n = len(completions)
        refs = ["" if r is None else str(r) for r in columns.get("reference") or [""] * n]
        rows = [json.loads(f) if isinstance(f, str) else {} for f in columns.get(ROW_FIELDS) or [None] * n]
        items = grader_items([str(k) for k in range(n)], [prompt_text(p) for p in prompts or [""] * n], refs, rows)
        done = grade(grader, [completion_text(c) for c in completions], items, judge_for)
        if done.failed and not failures[0]:
            log.warning("grader %s could not score a completion (scored 0): %s", grader.name, done.first_error)
        failures[0] += done.failed
        return done.scores

    reward.__name__ = grader.name  # TRL logs rewards/<name>/mean
    return reward


def build(
    specs: list[RewardSpec], graders: list[dict[str, Any]] | None = None, judge: Any = None, tokenizer: Any = None
) -> list[RewardFn]:
    """The reward functions of a recipe, in order (their weights go to GRPOConfig.reward_weights). `graders`: the
    recipe's eval.graders, which `grader` rewards name; `judge`: its eval.judge section (for model graders);
    `tokenizer`: the model's, whose family format the tool rewards (and a reward model's tool rows) read completions in."""
    out: list[RewardFn] = []
    for spec in specs:
        if spec.type in registry.TOOL_METRICS:
            out.append(make_tool_reward(spec.type, tokenizer))
        elif spec.type == "grader":
            out.append(_grader_reward(spec.grader or "", graders or [], judge))
        elif spec.type == "json_valid":
            out.append(json_valid)
        elif spec.type == "json_schema_valid":
            out.append(make_json_schema_valid(_schema(spec.json_schema)))
        elif spec.type == "exact_match":
            out.append(make_exact_match(spec.field))
        elif spec.type == "regex":
            out.append(make_regex(spec.pattern or ""))
        elif spec.type == "length_penalty":
            out.append(make_length_penalty(spec.max_chars))
        elif spec.type == "reward_model":
            out.append(make_reward_model(spec.run or "", tokenizer))
        else:
            out.append(load_function(spec.function or ""))
    return out


def _grader_reward(name: str, graders: list[dict[str, Any]], judge: Any) -> RewardFn:
    try:
        found = [g for g in load_graders(graders) if g.name == name]
    except ValueError as exc:
        raise RecipeError([("eval.graders", str(exc))]) from None
    if not found:
        known = ", ".join(g.get("name", "?") for g in graders) or "none"
        raise RecipeError([("grpo.rewards", f"no grader named `{name}` in eval.graders (it has: {known})")])
    return make_grader(found[0], judges_for_graders(judge))


def for_recipe(recipe: Any, tokenizer: Any = None) -> list[RewardFn]:
    """The reward functions of a GRPO recipe (its grpo.rewards, with its eval.graders and eval.judge)."""
    graders = recipe.eval.graders if isinstance(recipe.eval.graders, list) else []
    return build(recipe.grpo.rewards, graders, recipe.eval.judge, tokenizer)


def columns(refs: list[str], rows: list[dict[str, Any]] | None) -> dict[str, list[Any]]:
    """The columns GRPO's dataset gives rewards (train.rows.dataset_row), for held-out rows: reference, the rows'
    scalar fields, row_fields."""
    per_row = [dataset_row({"prompt": None, "reference": ref, **fields}) for ref, fields in zip(refs, rows or [{}] * len(refs))]
    keys = list(dict.fromkeys(k for row in per_row for k in row if k != "prompt"))
    return {k: [row.get(k) for row in per_row] for k in keys}


def scorer(
    recipe: Any, method: Method[Any], refs: list[str], rows: list[dict[str, Any]] | None = None
) -> Callable[[list[Any], list[str]], list[float]] | None:
    """The run's GRPO rewards as one scorer for eval and the ladder: outputs -> the weighted sum GRPO trains on,
    with the columns training gave them (`refs` as `reference`; `rows`: each held-out row's own fields). None for
    other methods (`method`: the recipe's), or when a reward cannot be built here (the report then says so through
    the missing metric)."""
    if not method.samples_completions:  # only a method that learns from rewards has them
        return None
    specs = recipe.grpo.rewards
    try:
        fns = for_recipe(recipe)
    except RecipeError as exc:  # a user reward whose module moved with the data: eval goes on without `reward`
        log.warning("the GRPO rewards are not scored: %s", exc.message)
        return None
    given = columns(refs, rows)

    def total(prompts: list[Any], outputs: list[str]) -> list[float]:
        sums = [0.0] * len(outputs)
        for spec, fn in zip(specs, fns, strict=True):
            for i, value in enumerate(fn(prompts, outputs, **given)):
                sums[i] += spec.weight * float(value)
        return sums

    return total
