"""The imported project's recipe: tunesmith's documented YAML (config.commented_yaml) with each OpenAI setting's
mapping as a `# from OpenAI:` comment above the field it became. Validated as a Recipe before it is written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunesmith.config import commented_yaml, recipe_from_dict
from tunesmith.method_sections import DPOSection, GRPOSection
from tunesmith.migrate.openai_hparams import HyperMapping
from tunesmith.migrate.openai_job import Job
from tunesmith.migrate.report import ImportReport
from tunesmith.project import eval_fraction_for, user_recipe_values

_KEY = re.compile(r"^( *)([A-Za-z_]\w*):")


def annotate(text: str, comments: dict[str, list[str]]) -> str:
    """Insert comments (by dotted field path, e.g. training.epochs) above the line of that field."""
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        m = _KEY.match(line)
        if m:
            indent, key = m.groups()
            path = key if not indent else f"{section}.{key}"
            section = key if not indent else section
            out += [f"{indent}# from OpenAI: {c}" for c in comments.get(path, [])]
        out.append(line)
    return "\n".join(out)


def _comments(report: ImportReport, rewards: list[dict[str, Any]], graders_file: str | None) -> dict[str, list[str]]:
    comments: dict[str, list[str]] = {}
    targets = {"model.base": "model.base", "method": "method", "name, output_dir": "name"}
    for m in report.mapped:
        path = targets.get(m.tunesmith, m.tunesmith.split("/")[0])
        rule = f" ({m.rule})" if m.rule else ""
        comments.setdefault(path, []).append(f"{m.openai} = {m.value} -> {m.result}{rule}")
    if report.hosted_model:
        comments["model.base"].append("which open model fits which former hosted one: docs/migrate-openai.md")
    if rewards and rewards[0].get("type") == "grader":
        name = rewards[0]["grader"]
        comments["grpo.rewards"] = [f"the job's grader `{name}` of eval.graders: the reward and the eval metric graders.{name}"]
    elif rewards:
        comments["grpo.rewards"] = ["the job's grader could not be the reward: see import-report.json (unmapped)"]
    if graders_file:
        comments["eval.graders"] = [f"the job's graders, translated into {graders_file}"]
    return comments


def recipe_values(
    job: Job,
    hp: HyperMapping,
    name: str,
    base: str,
    max_length: int,
    has_eval: bool,
    n_train: int,
    rewards: list[Any],
    graders_file: str | None,
) -> dict[str, Any]:
    """The recipe as plain values: `tunesmith init`'s defaults with the job's settings on top."""
    values = user_recipe_values(
        name,
        job.method,
        base,
        ["data/train.jsonl"],
        "data/validation.jsonl" if has_eval else None,
        eval_fraction_for(n_train),
        max_length,
        {"max_steps": -1, **hp.training},
        [],
    )
    if job.preference:
        values["dpo"] = {**DPOSection().model_dump(), **hp.dpo}
    if job.reinforcement:
        values["grpo"] = {**GRPOSection().model_dump(), "rewards": rewards}
    if graders_file:
        values["eval"]["graders"] = graders_file
    return values


def recipe_text(
    job: Job,
    report: ImportReport,
    hp: HyperMapping,
    name: str,
    max_length: int,
    has_eval: bool,
    n_train: int,
    rewards: list[Any],
    graders_file: str | None,
    folder: Path,
) -> str:
    """recipe.yaml for the project in `folder` (already holding its data and graders): validated, then rendered."""
    values = recipe_values(job, hp, name, report.base_model, max_length, has_eval, n_train, rewards, graders_file)
    recipe_from_dict(values, folder, source="the imported recipe")  # what the import writes always loads
    header = (
        f"# tunesmith recipe imported from the OpenAI {job.openai_method} job {job.job_id or ''} ({job.source}).\n"
        "# Each carried-over setting has a `# from OpenAI:` comment above its field; what could not be carried over\n"
        "# is listed in import-report.json (`unmapped`). Every field is documented above it; `--set a.b=c` overrides one.\n"
    ).replace("job  (", "job (")
    return header + annotate(commented_yaml(values), _comments(report, rewards, graders_file)) + "\n"
