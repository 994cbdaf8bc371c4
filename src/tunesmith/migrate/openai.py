"""`tunesmith import openai`: an OpenAI fine-tuning job -> a tunesmith project folder.

Everything is read, checked, converted and validated in a staging folder first; only then is the output folder
claimed (tunesmith.outputs: new, or made by an earlier import) and the files moved in. A bad input therefore
leaves nothing behind. The project: recipe.yaml (the mapping as comments), data/ (the files, converted where
needed, same line numbers), graders.json when there are graders, import-report.json/.txt.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith import models, outputs
from tunesmith.data.formats import detect_shape
from tunesmith.errors import DataError
from tunesmith.migrate import openai_data, openai_graders
from tunesmith.migrate.openai_data import RULES, Staged
from tunesmith.migrate.openai_hparams import HyperMapping, map_hyperparameters, project_name
from tunesmith.migrate.openai_job import Job, job_from_flags, parse_job, read_job_file
from tunesmith.migrate.recipe import recipe_text
from tunesmith.migrate.report import DataFileReport, ImportReport, Mapped, RuleHit, Unmapped, summary_lines
from tunesmith.project import max_length_for
from tunesmith.train import methods

COMMAND = "import openai"
GRADERS_FILE = "graders.json"
TRAIN_FILE, EVAL_FILE = "data/train.jsonl", "data/validation.jsonl"


@dataclass
class Imported:
    directory: Path
    report: ImportReport
    summary: list[str]


def _job(
    job_file: Path | None,
    training_file: Path | None,
    validation_file: Path | None,
    method: str | None,
    files_dir: Path | None,
    graders: list[dict[str, Any]],
) -> Job:
    if job_file is not None and (training_file or validation_file or method):
        raise DataError("give a job file or --training-file (with --validation-file, --method), not both")
    if job_file is not None:
        return parse_job(read_job_file(Path(job_file)), Path(job_file).resolve(), files_dir)
    if training_file is None:
        raise DataError("nothing to import: give a job file (JOB.json) or --training-file")
    reward = None
    if method == "reinforcement":
        if len(graders) != 1:
            raise DataError(
                f"--method reinforcement takes one grader in --grader (found {len(graders)})",
                hint="OpenAI's reinforcement jobs take a single grader; combine several with a `multi` grader.",
            )
        reward = graders.pop()
    job = job_from_flags(training_file, validation_file, method, reward)
    if not job.method_given and _first_shape(job.training_file) in ("openai_dpo", "preference"):
        job.openai_method = "dpo"
        job.notes.append("method: dpo, from the training rows' shape (no --method)")
    return job


def _first_shape(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return detect_shape(obj)
    except OSError:
        pass
    return "unknown"


def _stage_files(job: Job, staging: Path, fields: list[str]) -> list[Staged]:
    (staging / "data").mkdir()
    files = [openai_data.stage("train", job.training_file, staging / TRAIN_FILE, job.openai_method, fields, job.training_id)]
    if job.validation_file is not None:
        files.append(
            openai_data.stage("eval", job.validation_file, staging / EVAL_FILE, job.openai_method, fields, job.validation_id)
        )
    return files


def _audit(files: list[Staged], tokenizer: Any, method: str, budget: int) -> tuple[int, Any, list[int]]:
    """(max_length chosen from the rows, tunesmith's audit at that length with `method`'s length policy, every row's
    token count)."""
    from tunesmith.data.audit import audit

    train, evals = [str(files[0].path)], [str(f.path) for f in files[1:]]
    first = audit(train, evals, tokenizer, None, "drop", method=methods.get(method), completion_budget=budget, near=False)
    lengths = first.lengths.get("total", [])
    max_length = max_length_for(lengths)
    return (
        max_length,
        audit(train, evals, tokenizer, max_length, "drop", method=methods.get(method), completion_budget=budget),
        lengths,
    )


def _hosted_limit(job: Job, files: list[Staged], tokenizer: Any, lengths: list[int], budget: int) -> None:
    """Rows over the hosted model's per-example limit (counted with the new tokenizer), as an OpenAI rule hit."""
    from tunesmith.data.audit import load_rows
    from tunesmith.data.checks import check_tokens

    model = job.hosted_model or ""
    limit = openai_data.EXAMPLE_LIMITS.get(model.split(":")[1] if model.startswith("ft:") else model)
    if limit is None or max(lengths, default=0) <= limit:
        return
    for f in files:
        for row in load_rows([str(f.path)]).rows:
            if check_tokens(row, tokenizer, None, "drop", methods.get(job.method), budget)[0].total > limit:
                f.hits["openai_over_example_limit"].append(row.line)


def _graders(job: Job, extra: list[dict[str, Any]], files: list[Staged], judge: str | None) -> Any:
    """The job's grader and the --grader ones, translated; each may read tunesmith's item keys and the fields
    every row of the files has."""
    common = set.intersection(*[f.fields or set() for f in files]) if files else set()
    pairs = [("method.reinforcement.grader", job.grader)] if job.reinforcement and job.grader else []
    pairs += [(f"--grader[{i}]", g) for i, g in enumerate(extra)]
    return openai_graders.translate(pairs, set(openai_graders.TUNESMITH_ITEM) | common, judge)


def _reward(job: Job, translation: Any, unmapped: list[Unmapped]) -> list[dict[str, Any]]:
    """grpo.rewards: the job's grader itself (type grader, the eval.graders entry of that name); where it could not
    be translated, exact match on the first row field it reads, the closest working reward."""
    if not job.reinforcement:
        return []
    report = translation.reports[0]
    if report.used_as:
        report.used_as.append("reward")
        return [{"type": "grader", "grader": report.name}]
    read = openai_graders.item_fields(job.grader or {})
    target = read[0] if read else "reference"
    why = "the grader could not be translated (see its entry above)"
    instead = f"grpo.rewards: exact_match on each row's `{target}`, the closest working reward"
    unmapped.append(Unmapped(field="method.reinforcement.grader (as the reward)", value=report.name, why=why, instead=instead))
    return [{"type": "exact_match", "field": target}]


def _rule_hits(files: list[Staged]) -> list[RuleHit]:
    out = []
    for f in files:
        for code, lines in sorted(f.hits.items(), key=lambda kv: (RULES[kv[0]][0] != "error", kv[0])):
            severity, rule, does = RULES[code]
            out.append(
                RuleHit(
                    code=code,
                    severity=severity,
                    file=str(f.source),
                    count=len(lines),
                    lines=sorted(lines),
                    description=rule,
                    tunesmith_does=does,
                )
            )
    return out


def _audit_by_code(report: Any, files: list[Staged]) -> dict[str, Any]:
    """The audit by code, places named by the source files (the copies keep their line numbers)."""
    groups: dict[str, Any] = report.by_code()
    for g in groups.values():
        for f in files:
            g["first"] = [w.replace(str(f.path), str(f.source)) for w in g["first"]]
    return groups


def _data_reports(files: list[Staged]) -> list[DataFileReport]:
    return [
        DataFileReport(
            split=f.split,
            source=str(f.source),
            file_id=f.file_id,
            written=TRAIN_FILE if f.split == "train" else EVAL_FILE,
            rows=f.rows,
            left_out=len(f.left_out),
        )
        for f in files
    ]


def _model_spec(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _write(staging: Path, name: str, text: str) -> str:
    (staging / name).write_text(text, encoding="utf-8")
    return name


def import_openai(
    out: Path,
    model: str,
    job_file: Path | None = None,
    training_file: Path | None = None,
    validation_file: Path | None = None,
    method: str | None = None,
    grader_file: Path | None = None,
    files_dir: Path | None = None,
    judge: str | None = None,
    overwrite: bool = False,
) -> Imported:
    """Read, audit, map and write the project into `out`; returns it with the report and its printed summary."""
    if files_dir is not None and not Path(files_dir).is_dir():
        raise DataError(f"--files {files_dir}: not a folder", hint="Give the folder the job's files were downloaded into.")
    extra = openai_graders.load_grader_file(grader_file) if grader_file else []
    job = _job(job_file, training_file, validation_file, method, files_dir, extra)
    fields = openai_graders.item_fields(job.grader) if job.reinforcement and job.grader else []
    staging = Path(tempfile.mkdtemp(prefix="tunesmith-import-"))
    try:
        files = _stage_files(job, staging, fields)
        tokenizer = models.load_tokenizer(models.resolve_base(model))
        budget = methods.get(job.method).completion_room(None)  # the method's default: the recipe keeps it
        max_length, audit, lengths = _audit(files, tokenizer, job.method, budget)
        _hosted_limit(job, files, tokenizer, lengths, budget)
        hp = map_hyperparameters(job, files[0].rows)
        translation = _graders(job, extra, files, judge)
        unmapped = job.unmapped + hp.unmapped + translation.unmapped
        rewards = _reward(job, translation, unmapped)
        written = [TRAIN_FILE] + ([EVAL_FILE] if len(files) > 1 else [])  # each file listed: an edit is seen
        if translation.graders:
            written.append(_write(staging, GRADERS_FILE, json.dumps(translation.graders, indent=2) + "\n"))
        name = project_name(job, Path(out).expanduser().resolve().name)
        report = _report(job, _model_spec(model), files, hp, unmapped, translation, rewards, audit)
        recipe = recipe_text(
            job,
            report,
            hp,
            name,
            max_length,
            len(files) > 1,
            files[0].rows,
            rewards,
            GRADERS_FILE if translation.graders else None,
            staging,
        )
        written.append(_write(staging, "recipe.yaml", recipe))
        summary = summary_lines(report, str(out))
        written.append(_write(staging, "import-report.json", report.model_dump_json(indent=1) + "\n"))
        written.append(_write(staging, "import-report.txt", "\n".join(summary) + "\n"))
        directory = _publish(staging, Path(out), written, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Imported(directory, report, summary)


def _report(
    job: Job,
    base: str,
    files: list[Staged],
    hp: HyperMapping,
    unmapped: list[Unmapped],
    translation: Any,
    rewards: list[dict[str, Any]],
    audit: Any,
) -> ImportReport:
    mapped = [Mapped(openai="model", value=job.hosted_model, tunesmith="model.base", result=base, rule="--model")]
    mapped += [Mapped(openai="method.type", value=job.openai_method, tunesmith="method", result=job.method, rule="")]
    if job.suffix:
        mapped.append(Mapped(openai="suffix", value=job.suffix, tunesmith="name, output_dir", result=job.suffix, rule="kept"))
    notes = list(job.notes)
    if job.reinforcement and job.validation_file is None:
        notes.append("OpenAI required a validation file for reinforcement jobs; tunesmith holds out a share of the training rows")
    return ImportReport(
        source=job.source,
        job_id=job.job_id,
        openai_method=job.openai_method,
        method=job.method,
        hosted_model=job.hosted_model,
        base_model=base,
        files=_data_reports(files),
        mapped=mapped + hp.mapped,
        unmapped=unmapped,
        recorded={**job.recorded, **hp.auto},
        openai_rules=_rule_hits(files),
        audit=_audit_by_code(audit, files),
        audit_errors=len(audit.errors),
        graders=translation.reports,
        reward=rewards,
        notes=notes,
    )


def _publish(staging: Path, out: Path, names: list[str], overwrite: bool) -> Path:
    """Claim `out` (new, or made by an earlier import) and move the staged entries in, each over its earlier version
    only once all are in place (an earlier import stays whole until then); recorded in its marker."""
    directory = outputs.claim_dir(out, COMMAND, overwrite=overwrite, what="project folder")
    with outputs.replacing(directory, *names) as stage:
        for name in names:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staging / name), str(stage / name))
    return directory
