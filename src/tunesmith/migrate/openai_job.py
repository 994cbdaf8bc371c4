"""An OpenAI fine-tuning job, read from its JSON (the job object or the create request) or from flags.

Handles the current shape (`method: {type, supervised|dpo|reinforcement: {hyperparameters, grader}}`) and the
legacy top-level `hyperparameters`. `training_file` / `validation_file` may be OpenAI file ids (`file-abc123`),
looked up in the `--files` folder (named by id, with or without .jsonl) and next to the job file, or paths
relative to the job file. Every job field lands in exactly one place: used, recorded, or listed as unmapped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError
from tunesmith.migrate.report import Unmapped

METHODS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
"""OpenAI's method types and the tunesmith method each becomes."""

FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]+$")

# Fields of the job object that describe the hosted run itself; recorded in the report, no effect on the recipe.
RECORD_FIELDS = (
    "id",
    "object",
    "created_at",
    "finished_at",
    "estimated_finish",
    "status",
    "organization_id",
    "result_files",
    "trained_tokens",
    "fine_tuned_model",
    "error",
    "usage_metrics",
    "user_provided_suffix",
    "shared_with_openai",
)
USED_FIELDS = ("model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed")
UNMAPPED_FIELDS = {
    "integrations": (
        "tunesmith has no Weights & Biases integration",
        "every run writes metrics.jsonl and loss.png; training.report_to adds tensorboard or mlflow",
    ),
    "metadata": ("tunesmith runs carry no free-form metadata", "kept here in import-report.json"),
}


@dataclass
class Job:
    """What the import needs from a job; `unmapped` and `recorded` hold what it does not use."""

    source: str  # the job file, or "flags"
    openai_method: str  # supervised | dpo | reinforcement
    training_file: Path
    validation_file: Path | None = None
    training_id: str | None = None
    validation_id: str | None = None
    hosted_model: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    hp_path: str = "hyperparameters"  # where hyperparameters came from, for the report
    method_given: bool = True  # False: --method was left out, the data's shape decides
    grader: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = None
    job_id: str | None = None
    unmapped: list[Unmapped] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        """The tunesmith method the job becomes."""
        return METHODS[self.openai_method]

    @property
    def reinforcement(self) -> bool:
        """A reinforcement fine-tuning job: the grader is the reward (GRPO)."""
        return self.openai_method == "reinforcement"

    @property
    def preference(self) -> bool:
        """A preference job (OpenAI's DPO): pairs of a preferred and a non-preferred answer."""
        return self.openai_method not in ("supervised", "reinforcement")


def check_method(value: str, where: str) -> str:
    if value not in METHODS:
        raise DataError(f"{where}: unknown method `{value}`", hint="OpenAI's methods are supervised, dpo and reinforcement.")
    return value


def resolve_file(value: str, what: str, job_dir: Path, files_dir: Path | None) -> tuple[Path, str | None]:
    """(path, file id or None) for a job's training_file / validation_file."""
    is_id = bool(FILE_ID.match(value))
    looked: list[Path] = []
    folders = ([files_dir] if files_dir is not None else []) + [job_dir]
    if is_id:
        looked = [folder / name for folder in folders for name in (value, f"{value}.jsonl")]
    else:
        path = Path(value).expanduser()
        looked = [path if path.is_absolute() else job_dir / path]
    for path in looked:
        if path.is_file():
            return path.resolve(), value if is_id else None
    where = ", ".join(str(p) for p in looked)
    if is_id:
        hint = (
            "Download each file the job names from the OpenAI Files API (GET /v1/files/{id}/content) into one "
            "folder, named by its id (with or without .jsonl), and pass it as --files FOLDER."
        )
        if files_dir is None:
            hint = "No --files folder was given. " + hint
        raise DataError(f"{what} `{value}` is an OpenAI file id that was not found (looked for {where})", hint=hint)
    raise DataError(f"{what} `{value}` not found (looked for {where})", hint="Paths in a job file are relative to it.")


def read_job_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"job file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the job file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: the job file is not JSON ({exc.msg}, column {exc.colno})",
            hint="Save the job as returned by GET /v1/fine_tuning/jobs/{id} (or the body sent to create it).",
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the job file must hold one JSON object (a fine-tuning job), not a {type(data).__name__}")
    return data


def _method_block(data: dict[str, Any], job: Job) -> tuple[str, dict[str, Any]]:
    """(method type, its sub-object) from `method`, else supervised with the legacy hyperparameters."""
    method = data.get("method")
    if method is None:
        return "supervised", {}
    if not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise DataError(f"{job.source}: `method` must be an object with a `type` (supervised, dpo or reinforcement)")
    kind = check_method(method["type"], f"{job.source}: method.type")
    for key, value in method.items():
        if key not in ("type", kind):
            job.unmapped.append(
                Unmapped(field=f"method.{key}", value=value, why="not part of the job's method", instead="ignored")
            )
    block = method.get(kind) or {}
    if not isinstance(block, dict):
        raise DataError(f"{job.source}: method.{kind} must be an object")
    return kind, block


def _hyperparameters(data: dict[str, Any], kind: str, block: dict[str, Any], job: Job) -> None:
    legacy = data.get("hyperparameters") or {}
    current = block.get("hyperparameters") or {}
    for name, value in (("hyperparameters", legacy), (f"method.{kind}.hyperparameters", current)):
        if not isinstance(value, dict):
            raise DataError(f"{job.source}: `{name}` must be an object")
    if current:
        job.hyperparameters, job.hp_path = dict(current), f"method.{kind}.hyperparameters"
        differs = {k: v for k, v in legacy.items() if current.get(k, v) != v}
        if differs:
            job.notes.append(f"the legacy top-level hyperparameters {differs} differ from method.{kind}'s: the method's are used")
    else:
        job.hyperparameters = dict(legacy)


def parse_job(data: dict[str, Any], job_path: Path, files_dir: Path | None) -> Job:
    """A Job from a job JSON object; files resolved, every field placed (used, recorded or unmapped)."""
    source = str(job_path)
    train = data.get("training_file")
    if not isinstance(train, str) or not train:
        raise DataError(f"{source}: the job has no `training_file`", hint="A fine-tuning job names its training file.")
    job = Job(source=source, openai_method="supervised", training_file=Path())
    kind, block = _method_block(data, job)
    job.openai_method = kind
    _hyperparameters(data, kind, block, job)
    for key, value in block.items():
        if key == "grader" and kind == "reinforcement":
            job.grader = value if isinstance(value, dict) else None
        elif key != "hyperparameters":
            why = "not a setting tunesmith knows for this method"
            job.unmapped.append(Unmapped(field=f"method.{kind}.{key}", value=value, why=why, instead="ignored"))
    if kind == "reinforcement" and job.grader is None:
        raise DataError(f"{source}: a reinforcement job needs method.reinforcement.grader (an object)")
    job_dir = job_path.parent
    job.training_file, job.training_id = resolve_file(train, "training_file", job_dir, files_dir)
    if data.get("validation_file"):
        val = str(data["validation_file"])
        job.validation_file, job.validation_id = resolve_file(val, "validation_file", job_dir, files_dir)
    job.hosted_model = data.get("model") if isinstance(data.get("model"), str) else None
    job.job_id = data.get("id") if isinstance(data.get("id"), str) else None
    job.suffix = data.get("suffix") or data.get("user_provided_suffix") or _suffix_of(data.get("fine_tuned_model"))
    seed = data.get("seed")
    job.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    for key, value in data.items():
        if key in RECORD_FIELDS:
            job.recorded[key] = value
        elif key in UNMAPPED_FIELDS and value:
            why, instead = UNMAPPED_FIELDS[key]
            job.unmapped.append(Unmapped(field=key, value=value, why=why, instead=instead))
        elif key not in USED_FIELDS and key not in UNMAPPED_FIELDS:
            job.unmapped.append(
                Unmapped(field=key, value=value, why="not an OpenAI job field tunesmith knows", instead="ignored")
            )
    return job


def _suffix_of(model: Any) -> str | None:
    """The suffix inside a fine-tuned model name, ft:BASE:ORG:SUFFIX:ID (None when there is none)."""
    if not isinstance(model, str) or not model.startswith("ft:"):
        return None
    parts = model.split(":")
    return parts[3] if len(parts) >= 5 and parts[3] else None


def job_from_flags(training: Path, validation: Path | None, method: str | None, grader: dict[str, Any] | None) -> Job:
    """A Job from --training-file/--validation-file/--method (the method inferred later from the data when None)."""
    for path, what in ((training, "--training-file"), (validation, "--validation-file")):
        if path is not None and not Path(path).is_file():
            raise DataError(f"{what} {path}: file not found")
    kind = check_method(method, "--method") if method else "supervised"
    job = Job(source="flags", openai_method=kind, training_file=Path(training).resolve())
    job.validation_file = Path(validation).resolve() if validation else None
    job.grader = grader
    job.hp_path = "(flags)"
    job.method_given = method is not None
    return job
