"""Typed records passed between stages: the run `Manifest`, the base-vs-tuned `EvalReport` and its parts.

Each is written and read here only. Later stages (ladder, serve, studio, monitor) take these
objects and read attributes, never raw dict keys, so a renamed field fails in one place.
A record carries `schema_version`; reading a newer version than this code knows is an error
that says so, reading an older one fills defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError

MANIFEST_VERSION = 1
EVAL_REPORT_VERSION = 2


class Record(BaseModel):
    """Base of every stored record: unknown keys are errors, so a typo never reads as a default."""

    model_config = ConfigDict(extra="forbid")


class BaseModelRef(Record):
    spec: str = Field(..., description="model.base as the recipe gave it (catalog name, folder, .gguf, hub id).")
    path: str = Field(..., description="What from_pretrained loaded: a local folder or a hub id.")


class Figures(Record):
    global_step: int = 0
    train_loss: float | None = None
    eval_loss: float | None = None
    wall_time_s: float = 0.0
    train_runtime_s: float = 0.0
    tokens_per_s: float | None = Field(None, description="Trained (non-padding) tokens per second, all ranks together.")
    peak_memory_mb: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    world_size: int = Field(1, description="Processes that trained (DDP/FSDP ranks).")


class HeldOut(Record):
    """The held-out rows a run is scored on, copied into the run folder at training time."""

    path: str = Field(..., description="Path relative to the run folder (data/eval.jsonl).")
    rows: int = 0
    sha256: str = Field(..., description="SHA-256 of that file when training finished.")


class Manifest(Record):
    """manifest.json: what a finished run is, traceable to its data, recipe and base model."""

    schema_version: int = MANIFEST_VERSION
    run: str
    method: str
    adapter: str
    base_model: BaseModelRef
    chat_template_sha256: str
    data: dict[str, str] = Field(default_factory=dict, description="Absolute data path -> SHA-256 at training time.")
    tokens: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per split: examples, kept, dropped, truncated, tokens."
    )
    figures: Figures = Field(default_factory=Figures)
    resumed_from: str | None = None
    faults: dict[str, Any] = Field(default_factory=dict)
    device: str = "cpu"
    versions: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    quantized_base: bool = Field(False, description="The adapter was trained on a 4-bit base (QLoRA); eval loads the same.")
    speed: dict[str, Any] = Field(default_factory=dict, description="Speed levers in force (packing, bf16, ...), as resolved.")
    plan: dict[str, Any] | None = Field(
        None, description="The planner's estimate made before training, next to what was measured."
    )
    rag: dict[str, Any] | None = Field(None, description="Retrieval index the run trained with: path, content hash, k.")
    golden: list[dict[str, Any]] = Field(
        default_factory=list, description="Golden prompts with the tuned model's greedy answers."
    )
    checkpoint_selection: dict[str, Any] | None = None
    held_out: HeldOut | None = Field(None, description="The eval rows saved in the run folder; eval, merge and chat read them.")
    dpo: dict[str, Any] | None = None
    grpo: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None


class Judgement(Record):
    """Per-example wins of tuned over base (ties count against the win rate)."""

    wins: int = 0
    losses: int = 0
    ties: int = 0
    win_rate: float = 0.0


class GateResult(Record):
    """One checklist line. status "skip": the gate does not apply where it was checked (e.g. the ladder has no forgetting)."""

    name: str
    rule: str = Field(..., description="'>= 0.85', or what a built-in check demands.")
    threshold: float | None = Field(None, description="The rule's number (None for a built-in check).")
    value: float | None = None
    status: Literal["pass", "fail", "skip"]
    detail: str = ""
    passed: bool = Field(True, description="status != fail (skipped gates do not block); set from status.")

    @model_validator(mode="after")
    def _passed_from_status(self) -> GateResult:
        self.passed = self.status != "fail"
        return self


class Latency(Record):
    """One clock's figures (tunesmith.eval.scoring.Clock): each generation batch timed from its start to its answers."""

    batch_size: int = Field(0, description="Prompts per batch asked for (0: not recorded, an earlier report).")
    requests: int = 0
    batches: int = 0
    total_s: float = Field(0.0, description="Wall seconds of every batch together.")
    p50_batch_ms: float | None = Field(None, description="Median wall time of one batch (ms).")
    p95_batch_ms: float | None = Field(None, description="95th percentile of the same (ms).")
    p50_request_ms: float | None = Field(None, description="Median latency of one request: measured at batch size 1 only.")
    p95_request_ms: float | None = Field(None, description="95th percentile of the same (ms).")

    def values(self) -> dict[str, float]:
        """The measured figures by metric name (tunesmith.eval.registry)."""
        names = ("p50_batch_ms", "p95_batch_ms", "p50_request_ms", "p95_request_ms")
        return {n: v for n in names if (v := getattr(self, n)) is not None}


class ForgettingCategory(Record):
    base: float
    tuned: float
    drop: float
    n: int


class TextLoss(Record):
    base: float
    tuned: float
    increase: float = Field(..., description="Tuned minus base, nats/token.")


class Forgetting(Record):
    """The general-capability probe on base and tuned (eval.forgetting)."""

    score: float = Field(..., description="Base accuracy minus tuned accuracy over every probe item.")
    base_accuracy: float
    tuned_accuracy: float
    categories: dict[str, ForgettingCategory]
    n_items: int
    text_loss: TextLoss


class Hallucination(Record):
    rate: float | None = Field(None, description="Hallucinated claims / claims; None when nothing could be scored.")
    claims: int = 0
    hallucinated: int = 0
    scored: int = 0
    examples: int = 0
    method: str = ""


class JudgeResult(Judgement):
    """The LLM judge's pairwise verdicts, both orders; a verdict counts only when both orders agree."""

    agreement: float = 0.0
    n: int = 0
    unparsed: int = 0
    orders: dict[str, Judgement] = Field(default_factory=dict)


class GraderScore(Record):
    mean: float
    pass_rate: float


class EvalExtra(Record):
    """The measurements beyond the summary's metrics; each is None (or empty) when it was not asked for."""

    latency: dict[str, Latency] = Field(default_factory=dict, description="Per side (base, tuned): the one clock.")
    changed_inputs: list[str] = Field(default_factory=list, description="Inputs whose SHA-256 differs from the manifest.")
    forgetting: Forgetting | None = None
    hallucination: Hallucination | None = None
    judge: JudgeResult | None = None
    graders: dict[str, dict[str, GraderScore]] = Field(default_factory=dict, description="Grader -> side -> scores.")

    @field_validator("latency", mode="before")
    @classmethod
    def _v1_latency(cls, value: Any) -> Any:
        # Schema 1 stored {side: {p50_ms, p95_ms}}: the wall time of the batch each request was generated in.
        if isinstance(value, dict):
            return {
                side: {"p50_batch_ms": v.get("p50_ms"), "p95_batch_ms": v.get("p95_ms")} if "p50_ms" in v else v
                for side, v in value.items()
                if isinstance(v, dict)
            }
        return value


class EvalReport(Record):
    """eval/report.json: the same held-out prompts through base and tuned."""

    schema_version: int = EVAL_REPORT_VERSION
    run: str
    base_model: str
    n_examples: int
    json_mode: bool
    reference: str = Field("", description="What each held-out prompt's expected answer is, as the method defines it.")
    summary: dict[str, dict[str, float]] = Field(..., description="base / tuned / delta -> metric -> value.")
    judgement: Judgement
    chat_template_sha256: str
    template_warning: str | None = None
    warnings: list[str] = Field(default_factory=list, description="Input hash changes, quantized base, degenerate output, ...")
    generation: dict[str, Any] = Field(default_factory=dict)
    degenerate: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per model: share of outputs that hit the token budget, repetition-loop rate."
    )
    gates: list[GateResult] = Field(default_factory=list, description="Release gate results, in checklist order.")
    extra: EvalExtra = Field(default_factory=EvalExtra, description="Latency, forgetting, hallucination, judge, graders.")

    @model_validator(mode="after")
    def _current_version(self) -> EvalReport:
        self.schema_version = EVAL_REPORT_VERSION  # an earlier report reads into this shape (see EvalExtra)
        return self


R = TypeVar("R", bound=Record)


def _read(path: Path, model: type[R], version: int) -> R:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is not readable JSON: {exc}") from None
    if isinstance(data, dict) and int(data.get("schema_version", 1)) > version:
        raise RunError(
            f"{path} has schema_version {data['schema_version']}, newer than this tunesmith reads ({version})",
            hint="Upgrade tunesmith to read it.",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise RunError(f"{path} does not match the {model.__name__} schema: {problems}") from None


def _write(path: Path, record: Record) -> None:
    write_text_atomic(path, record.model_dump_json(indent=2))


# Record modules outside this file (the ladder report, request-log rows, ...) read and write through these.
read_record = _read
write_record = _write


def read_manifest(path: Path) -> Manifest:
    return _read(path, Manifest, MANIFEST_VERSION)


def write_manifest(path: Path, manifest: Manifest) -> None:
    _write(path, manifest)


def read_eval_report(path: Path) -> EvalReport:
    return _read(path, EvalReport, EVAL_REPORT_VERSION)


def write_eval_report(path: Path, report: EvalReport) -> None:
    _write(path, report)
