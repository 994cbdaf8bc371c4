"""What the recipe knows of each training method: its section (`dpo:`, `grpo:`, ...), its cross-field rules and its
preflight checks, declared here, below the Recipe (config.py) that is built from them.

The schema part (sections and rules) does no file I/O; the checks that touch files and installed packages are each
declaration's `preflight`, run by tunesmith.preflight after the schema validated. The training side of a method
(train/<name>.py) takes its name, help and section from its declaration here, so config.py imports no training
code. train/methods.py declares any method registered later (a test's own) through `declare`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from tunesmith.data.formats import detect_shape, read_records
from tunesmith.errors import DataError
from tunesmith.sections import Section, absolute, base_dir

if TYPE_CHECKING:
    from tunesmith.config import Recipe

Problem = tuple[str, str]
"""(field path, what is wrong and what to do), as RecipeError lists them."""

Rule = Callable[[Any, ValidationInfo], Any]
"""An after-validator of one recipe field (field value, validation info) -> value; ValueError names the problem."""

Check = Callable[["Recipe", Path], list[Problem]]
"""A preflight check: (the validated recipe, the recipe's folder) -> problems. It may complete the recipe in place
(preflight hands it a copy): inline a file, resolve a path next to the recipe."""


@dataclass(frozen=True)
class Declaration:
    """One method as the recipe sees it."""

    name: str
    help: str  # one line: what it trains on (the recipe's `method` field documentation)
    section: type[Section] | None = None  # its recipe section, named after it (`dpo:`); None: no settings
    # Cross-field rules: recipe field -> after-validator, added to the Recipe for every recipe; a rule checks
    # `chosen(info, name)` itself where it applies only to recipes of this method.
    rules: Mapping[str, Rule] = field(default_factory=dict)
    preflight: Check | None = None  # run for every recipe after the schema; checks `recipe.method` itself


def chosen(info: ValidationInfo, name: str) -> bool:
    """Inside a recipe rule: whether the recipe being validated picked method `name`."""
    return bool(info.data.get("method") == name)


def picked(recipe: Recipe, name: str) -> bool:
    """Inside a preflight check: whether the recipe picked method `name`."""
    return bool(recipe.method == name)


# dpo and reward: preference pairs -----------------------------------------------------------------------------------

PAIR_SHAPES = ("preference", "openai_dpo")


class DPOSection(Section):
    beta: float = Field(
        0.1, gt=0, description="DPO temperature: how far the tuned model may move from the reference (higher = stay closer)."
    )
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down"] = Field(
        "sigmoid", description="DPO loss: sigmoid (the original), ipo, hinge, robust (noisy labels), ... (TRL's names)."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed fraction of flipped preference labels (sigmoid/robust losses)."
    )


class RewardSection(Section):
    center_rewards_coefficient: float | None = Field(
        None,
        ge=0,
        description="Penalty on the mean squared reward, keeping scores centred near 0 (TRL's; e.g. 0.01). Empty: none.",
    )


def needs_pairs(method: str) -> Check:
    """The check of a method that trains on preference pairs: its recipe's training files hold pairs (read on each
    file's first row)."""

    def check(recipe: Recipe, base: Path) -> list[Problem]:
        if not picked(recipe, method):
            return []
        for path in recipe.data.train:
            if not Path(path).is_file():  # reported as a missing file
                continue
            try:
                first = next((r.obj for r in read_records(path) if isinstance(r.obj, dict)), None)
            except DataError as exc:
                return [("data", str(exc))]
            if first is None or detect_shape(first) not in PAIR_SHAPES:
                shape = detect_shape(first) if first is not None else "no rows"
                return [
                    (
                        "data",
                        f"method {method} needs preference pairs (prompt/chosen/rejected or input/preferred_output/"
                        f"non_preferred_output); {Path(path).name} holds `{shape}` rows",
                    )
                ]
        return []

    return check


# grpo: rewards ------------------------------------------------------------------------------------------------------


class RewardSpec(Section):
    """One GRPO reward. A bare string in the recipe is shorthand: `json_valid`, `run:PATH` for a reward model, or
    `package.module:function` for custom."""

    type: Literal[
        "json_valid",
        "json_schema_valid",
        "exact_match",
        "regex",
        "length_penalty",
        "grader",
        "custom",
        "reward_model",
        "tool_call_valid",
        "tool_name_match",
        "tool_arguments_match",
        "tool_arguments_valid",
        "tool_decision",
        "tool_trajectory_match",
    ] = Field(
        ...,
        description="json_valid, json_schema_valid (json_schema), exact_match (field), regex (pattern), length_penalty "
        "(max_chars), grader (grader), custom (function), reward_model (run), or a tool metric (tool_call_valid, "
        "tool_name_match, tool_arguments_match, tool_arguments_valid, tool_decision, tool_trajectory_match: the row's "
        "answer turn as its reference, docs/tools.md).",
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO normalises per group.")
    json_schema: dict[str, Any] | str | None = Field(
        None, description="json_schema_valid: a JSON schema, inline or a .json file path (relative to the recipe)."
    )
    field: str = Field("reference", description="exact_match: the data column holding the expected answer.")
    pattern: str | None = Field(None, description="regex: a Python regular expression the whole completion must match.")
    max_chars: int = Field(256, ge=1, description="length_penalty: completions longer than this lose reward in proportion.")
    function: str | None = Field(None, description="custom: `module:function` (module importable, or a .py next to the recipe).")
    grader: str | None = Field(
        None,
        description="grader: the name of an eval.graders entry; each completion scores what that grader gives it, the "
        "same definition `tunesmith eval` reports as graders.<name> (score_model / label_model ask the judge).",
    )
    run: str | None = Field(
        None, description="reward_model: a finished reward run folder (method: reward), relative to the recipe."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("run:"):
            return {"type": "reward_model", "run": value.removeprefix("run:")}
        if isinstance(value, str):
            return {"type": "custom", "function": value} if ":" in value else {"type": value}
        return value

    @model_validator(mode="after")
    def _options_present(self) -> RewardSpec:
        if self.type == "json_schema_valid" and self.json_schema is None:
            raise ValueError("json_schema_valid needs `json_schema` (inline or a file path)")
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("regex needs `pattern`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        if self.type == "grader" and not self.grader:
            raise ValueError("grader needs `grader`: the name of an eval.graders entry")
        if self.type == "custom" and not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", self.function or ""):
            raise ValueError("custom needs `function` as `module:function` (or `file.py:function`)")
        if self.type == "reward_model" and not self.run:
            raise ValueError("reward_model needs `run`: a finished reward run folder (or write `run:PATH`)")
        return self


class GRPOSection(Section):
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="Reward functions, summed with their weights (method grpo needs at least one)."
    )
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt; rewards are normalised within each group.")
    max_completion_length: int = Field(128, ge=1, description="Token budget of each sampled completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty towards the reference (the base under the adapter); 0 = none.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, the batch, or not at all."
    )


def _rewards(value: GRPOSection, info: ValidationInfo) -> GRPOSection:
    """A grpo recipe has rewards and whole groups per batch; every recipe's reward paths (reward runs, schema files)
    are made absolute against the recipe's folder, so run.yaml finds them from anywhere."""
    training = info.data.get("training")
    if chosen(info, "grpo"):
        if not value.rewards:
            raise ValueError("method grpo needs at least one entry in `rewards` (e.g. json_valid)")
        if training is not None and (training.batch_size * training.grad_accum) % value.num_generations:
            # TRL groups the completions of one prompt inside one generation batch.
            raise ValueError(
                f"training.batch_size x grad_accum ({training.batch_size * training.grad_accum}) must be a multiple of "
                f"num_generations ({value.num_generations}): the batch counts completions, num_generations per prompt"
            )
    graders = getattr(info.data.get("eval"), "graders", None)
    if isinstance(graders, list):  # a graders file is read by preflight, which checks the names then
        _graders_named(value, graders)
    for reward in value.rewards:
        if reward.type == "reward_model" and reward.run:
            reward.run = absolute(reward.run, base_dir(info))
        if isinstance(reward.json_schema, str):
            reward.json_schema = absolute(reward.json_schema, base_dir(info))
    return value


def _graders_named(value: GRPOSection, graders: list[dict[str, Any]]) -> None:
    """Each `grader` reward names a grader of eval.graders."""
    names = [str(g.get("name")) for g in graders if isinstance(g, dict)]
    for reward in value.rewards:
        if reward.type == "grader" and reward.grader not in names:
            raise ValueError(f"reward grader `{reward.grader}` is not in eval.graders (it has: {', '.join(names) or 'none'})")


def schema_file(path: str) -> dict[str, Any]:
    """A json_schema_valid reward's schema read from its file; ValueError naming the file and what is wrong."""
    try:
        loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"reward schema {path}: {exc}") from exc
    return loaded


def _rewards_found(recipe: Recipe, base: Path) -> list[Problem]:
    """Every recipe's rewards: the reward runs exist, schema files are inlined (run.yaml stays self-contained),
    custom reward modules import or lie next to the recipe (kept as absolute paths, so the run finds them later)."""
    section: GRPOSection = getattr(recipe, "grpo")  # noqa: B009 (the method sections are added to the Recipe)
    problems: list[Problem] = []
    if isinstance(recipe.eval.graders, list):
        try:
            _graders_named(section, recipe.eval.graders)
        except ValueError as exc:
            problems.append(("grpo", str(exc)))
    for reward in section.rewards:
        if reward.type == "reward_model" and reward.run and not Path(reward.run).is_dir():
            problems.append(("grpo", f"reward model run not found: {reward.run}"))
        if isinstance(reward.json_schema, str):
            try:
                reward.json_schema = schema_file(reward.json_schema)
            except ValueError as exc:
                problems.append(("grpo", str(exc)))
        if reward.type == "custom" and reward.function:
            problem = _custom_found(reward, base)
            if problem:
                problems.append(("grpo", problem))
    return problems


def _custom_found(reward: RewardSpec, base: Path) -> str | None:
    """Resolve a custom reward's module: a .py next to the recipe becomes its absolute path; else it must import."""
    module, _, function = (reward.function or "").rpartition(":")
    local = base / (module if module.endswith(".py") else module.replace(".", "/") + ".py")
    if local.is_file():
        reward.function = f"{local.resolve()}:{function}"
    elif not module.endswith(".py") and importlib.util.find_spec(module.split(".")[0]) is None:
        return f"reward function module `{module}` is not importable and no {local.name} next to the recipe"
    elif module.endswith(".py") and not Path(module).is_file():
        return f"reward function file not found: {module}"
    return None


# distill: a teacher -------------------------------------------------------------------------------------------------


class DistillSection(Section):
    teacher: str | None = Field(
        None, description="Teacher: a base model spec (like model.base) or a finished tunesmith run folder."
    )
    mode: Literal["sequence", "logits"] = Field(
        "sequence",
        description="sequence = the teacher writes answers, saved and audited as a dataset, and the student is SFT-trained on them; "
        "logits = the student matches the teacher's next-token distributions (needs the same tokenizer).",
    )
    max_new_tokens: int = Field(128, ge=1, description="Teacher's generation budget per prompt (sequence mode).")
    batch_size: int = Field(8, ge=1, description="Prompts the teacher generates together (sequence mode).")
    beta: float = Field(0.5, ge=0, le=1, description="logits: generalised JSD interpolation (0 = forward KL, 1 = reverse KL).")
    temperature: float = Field(1.0, gt=0, description="logits: softmax temperature of both distributions.")
    lmbda: float = Field(
        0.0,
        ge=0,
        le=1,
        description="logits: fraction of steps trained on student-generated answers (on-policy); 0 = the data's answers.",
    )


def _teacher(value: DistillSection, info: ValidationInfo) -> DistillSection:
    """A distill recipe names its teacher."""
    if chosen(info, "distill") and not value.teacher:
        raise ValueError("method distill needs `teacher` (a base model spec or a tunesmith run folder)")
    return value


def _teacher_found(recipe: Recipe, base: Path) -> list[Problem]:
    """A teacher given as a folder next to the recipe is kept as its absolute path (a model spec stays as written)."""
    section: DistillSection = getattr(recipe, "distill")  # noqa: B009 (the method sections are added to the Recipe)
    if not picked(recipe, "distill") or not section.teacher or Path(section.teacher).is_absolute():
        return []
    local = base / Path(section.teacher).expanduser()
    if local.exists():
        section.teacher = str(local.resolve())
    return []


# the declarations ---------------------------------------------------------------------------------------------------

_DECLARED: dict[str, Declaration] = {}


def declare(declaration: Declaration) -> None:
    """Make a method's name (and section, rules, checks) known to the recipe; a second one under a name replaces it."""
    _DECLARED[declaration.name] = declaration


def get(name: str) -> Declaration:
    return _DECLARED[name]


def names() -> list[str]:
    return list(_DECLARED)


def declared() -> list[Declaration]:
    return list(_DECLARED.values())


for _declaration in (
    Declaration("sft", "demonstrations: the model learns to write each row's answers"),
    Declaration(
        "dpo",
        "preference pairs: the model learns to prefer each chosen answer over its rejected one",
        DPOSection,
        preflight=needs_pairs("dpo"),
    ),
    Declaration(
        "grpo",
        "prompts + reward functions: the model learns from the completions it samples",
        GRPOSection,
        {"grpo": _rewards},
        _rewards_found,
    ),
    Declaration(
        "distill",
        "a teacher model writes the answers (sequence) or scores every token (logits)",
        DistillSection,
        {"distill": _teacher},
        _teacher_found,
    ),
    Declaration(
        "reward",
        "preference pairs: a score head learns to rank each chosen answer above its rejected one (a reward model)",
        RewardSection,
        preflight=needs_pairs("reward"),
    ),
):
    declare(_declaration)
