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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RunError

MANIFEST_VERSION = 3  # 2: typed tokens, speed, plan, faults, checkpoint_selection; method figures under `details`; 3: family
EVAL_REPORT_VERSION = 2  # 2: typed extra and gates


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
    peak_memory_mb: float = Field(
        0.0, description="The largest peak of any one process (MiB): GPU allocator peak on CUDA, else max RSS."
    )
    peak_memory_rank: int = Field(0, description="The global rank (over every node) whose peak peak_memory_mb is.")
    trainable_params: int = 0
    total_params: int = 0
    world_size: int = Field(1, description="Processes that trained, on every node (DDP/FSDP ranks).")


class HeldOut(Record):
    """The held-out rows a run is scored on, copied into the run folder at training time."""

    path: str = Field(..., description="Path relative to the run folder (data/eval.jsonl).")
    rows: int = 0
    sha256: str = Field(..., description="SHA-256 of that file when training finished.")


class Speed(Record):
    """The speed levers one run trained with (train/speed.py resolves them; no "auto" left)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packing: str = "off"  # "padding_free" | "group_by_length" | "off"
    attention: str = "-"  # "varlen" (each packed row attended alone) | "mask" (transformers' default) | "-" (not packed)
    labelled_logits: bool = False  # only positions with a trained next token reach the LM head
    bf16: bool = False  # bf16 autocast, fp32 master weights (the adapter's optimizer state stays fp32)
    base_dtype: str = "auto"  # dtype the base weights load in ("bfloat16" under bf16 for adapter methods)
    adapter_input_cast: bool = True  # peft casts each adapter's input to the adapter's fp32 dtype (off under bf16)
    gradient_checkpointing: bool = False  # recompute activations in backward (auto: only when the plan does not fit)
    fused_optimizer: bool = False  # torch's fused AdamW
    compile: bool = False  # torch.compile of the model
    release_memory: bool = False  # freed heap handed back to the OS after every step and evaluation (malloc_trim)
    eval_batch_size: int = 0  # rows per loss-evaluation batch (not the generation batch)
    device: str = "cpu"
    liger: bool = False  # Liger's Triton kernels (RMSNorm, SwiGLU, RoPE) patched into the model, CUDA only
    micro_batch: int = 0  # rows per forward/backward pass (training.batch_size when batches are not split)
    passes: int = 0  # forward/backward passes accumulated per optimizer step (training.grad_accum when not split)
    shared_prefix: bool = False  # rows' common leading tokens run once per pass, padding not run (train/compact.py)
    frozen_bf16: bool = False  # fp32 training with the frozen decoder linears stored in bf16 (train/upcast.py)
    allocator: str = "system"  # the process's malloc: tcmalloc or jemalloc preloaded (allocator.py), or system


class TokenCounts(Record):
    """What one split's length policy kept and dropped (rows and tokens), counted the same way for every method."""

    examples: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    dropped_no_trained_tokens: int = 0
    truncated: int = 0
    tokens_lost: int = 0
    tokens: int = Field(0, description="Tokens of the kept rows as trained (dpo: both sequences; grpo: the prompts).")
    trained_tokens: int = Field(0, description="Answer tokens trained (0 for grpo: its completions are sampled).")
    reused: int = Field(0, description="Rows whose tokens came from the data check's pass (tokenized once).")
    dropped_ids: list[str] = Field(default_factory=list, description="The first 50 dropped rows (id or file:line).")
    max_length: int | None = None
    overlong: str | None = None
    measured_as: str | None = Field(None, description="What was measured against max_length (the method's length policy).")
    expanded_rows: int = Field(
        0, description="Rows with an answer not trainable in one render (an earlier turn), split into one row per answer."
    )
    rows_from_expansion: int = Field(0, description="Rows those expanded rows became (each ends with one of their answers).")
    turns: dict[str, int] = Field(
        default_factory=dict,
        description="Summed over the kept rows: assistant_turns, turns_trained, turns_not_trainable, traces, "
        "traces_trained, traces_masked, traces_dropped, empty_traces, history_traces_stripped (data.template).",
    )
    thinking_rows: dict[str, int] = Field(
        default_factory=dict, description="Kept rows by the thinking mode their last answer was trained in (on / off)."
    )

    def count_drop(self, reason: str, row_id: str) -> None:
        """One row dropped: `reason` is data.lengths' "overlong" or "no_trained_tokens"."""
        if reason == "overlong":
            self.dropped_overlong += 1
        else:
            self.dropped_no_trained_tokens += 1
        if len(self.dropped_ids) < 50:
            self.dropped_ids.append(row_id)


class FamilyRecord(Record):
    """The chat family a run trained in (tunesmith.families.describe) and the thinking mode it serves with."""

    family: str
    title: str = ""
    end_of_turn: list[str] = Field(default_factory=list, description="Tokens that close an answer: trained, and stops.")
    stop: list[str] = Field(default_factory=list, description="Every token that stops generation (end of turn first).")
    stop_token_ids: list[int] = Field(default_factory=list, description="Their ids in the run's tokenizer (+ its EOS).")
    generation_prompt: str = ""
    system: str = "role"
    reasoning: str = "inline"
    thinking_switch: bool = False
    tools: str | None = None
    template_is_tunesmith: bool = False
    reasoning_policy: str = Field("train", description="data.reasoning the run trained with: train | mask | drop.")
    thinking: bool | None = Field(
        None,
        description="The thinking mode eval, chat, serve, the studio and the ladder render prompts with: on when a "
        "trained answer carried a trace; None for a family without a switch.",
    )


class Tokens(Record):
    train: TokenCounts | None = None
    eval: TokenCounts | None = None


class Measured(Record):
    peak_mb: float
    seconds: float


class Plan(Record):
    """An estimate made before training (tunesmith.plan.advisor), kept in Manifest.plan next to what was measured."""

    schema_version: int = 1
    hardware: str
    nproc: int = 1
    params: int
    trainable_params: int
    memory_mb: dict[str, float] = Field(description="Estimated peak by component (MiB), with `total`.")
    capacity_mb: float = Field(description="Memory of one device (MiB) the estimate is compared with (90% usable).")
    fits: bool
    steps: int
    micro_batch: int = Field(
        0, description="Rows per forward/backward pass the memory estimate assumes (speed.micro_batch_tokens); 0: unrecorded."
    )
    tokens: int = Field(description="Tokens processed in training (non-padding).")
    seconds: float
    precision: str = Field("", description="What the time estimate assumed training multiplies in: bf16 or fp32.")
    device_tflops: float = Field(0.0, description="Peak (GPU) or measured matmul rate (CPU) in that precision, TFLOP/s.")
    usd: float
    fix: list[str] = Field(default_factory=list, description="`--set` overrides that make it fit, when it does not.")
    measured: Measured | None = Field(None, description="Filled after training: measured peak (MiB) and seconds.")

    @property
    def peak_mb(self) -> float:
        return self.memory_mb["total"]


class OomBackoff(Record):
    event: str = "oom_backoff"
    step: int
    batch_size: int
    grad_accum: int
    resume_from: str | None = None


class Faults(Record):
    """Faults met during training: OOM back-offs, skipped non-finite steps, the batch shape training ended with."""

    oom_backoffs: list[OomBackoff] = Field(default_factory=list)
    skipped_nonfinite_steps: list[int] = Field(default_factory=list)
    final_batch_size: int | None = None
    final_grad_accum: int | None = None


class CheckpointSelection(Record):
    """eval.select_checkpoint: every candidate's score and the one that became adapter/."""

    metric: str
    scores: dict[str, float] = Field(description="Candidate (checkpoint-N or final) -> its score.")
    chosen: str
    n_examples: int
    rows: str = ""
    ids: list[str] = Field(default_factory=list, description="The held-out row ids every candidate was scored on.")


class MethodDetails(Record):
    """Base of what a training method adds to the manifest: each method's module declares its own (Method.details)."""


# method name -> its MethodDetails record; the built-in ones registered by tunesmith.method_details (which run.py
# imports), a later one by tunesmith.train.methods.register; read when a manifest is read.
_DETAILS: dict[str, type[MethodDetails]] = {}


def register_details(method: str, record: type[MethodDetails]) -> None:
    _DETAILS[method] = record


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the method's figures under a key named after it (dpo, grpo, distill; null for the others)
    and an empty speed for the methods that had no levers."""
    data = dict(data)
    for name in list(_DETAILS):
        value = data.pop(name, None)
        if name == data.get("method") and value:
            data["details"] = value
    if not data.get("speed"):
        data["speed"] = None
    data["schema_version"] = MANIFEST_VERSION
    return data


class Manifest(Record):
    """manifest.json: what a finished run is, traceable to its data, recipe and base model."""

    schema_version: int = MANIFEST_VERSION
    run: str
    method: str
    adapter: str
    base_model: BaseModelRef
    chat_template_sha256: str
    data: dict[str, str] = Field(default_factory=dict, description="Absolute data path -> SHA-256 at training time.")
    tokens: Tokens = Field(default_factory=Tokens, description="Per split: rows and tokens the length policy kept.")
    figures: Figures = Field(default_factory=Figures)
    resumed_from: str | None = None
    faults: Faults = Field(default_factory=Faults)
    device: str = "cpu"
    versions: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    quantized_base: bool = Field(False, description="The adapter was trained on a 4-bit base (QLoRA); eval loads the same.")
    speed: Speed | None = Field(None, description="Speed levers in force (packing, bf16, ...), as resolved.")
    plan: Plan | None = Field(None, description="The planner's estimate made before training, next to what was measured.")
    rag: dict[str, Any] | None = Field(None, description="Retrieval index the run trained with: path, content hash, k.")
    golden: list[dict[str, Any]] = Field(
        default_factory=list, description="Golden prompts with the tuned model's greedy answers."
    )
    checkpoint_selection: CheckpointSelection | None = None
    held_out: HeldOut | None = Field(None, description="The eval rows saved in the run folder; eval, merge and chat read them.")
    details: SerializeAsAny[MethodDetails] | None = Field(
        None, description="The method's own figures and settings (its Method.details record)."
    )
    family: FamilyRecord | None = Field(None, description="The chat family and thinking mode (None: an earlier run).")

    @model_validator(mode="before")
    @classmethod
    def _older_versions(cls, data: Any) -> Any:
        if isinstance(data, dict) and int(data.get("schema_version", 1)) < 2:
            return _from_version_1(data)
        return data

    @field_validator("details", mode="before")
    @classmethod
    def _method_record(cls, value: Any, info: ValidationInfo) -> Any:
        """A stored dict becomes the record its method declares."""
        if not isinstance(value, dict):
            return value
        record = _DETAILS.get(info.data.get("method", ""))
        if record is None:
            raise ValueError(f"no training method {info.data.get('method')!r} is known to read these details")
        return record.model_validate(value)


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
    failed: int = Field(0, description="Outputs the grader could not score (counted as 0, not passed).")
    first_error: str | None = Field(None, description="Why the first of those could not be scored.")


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
    tool_mode: bool = Field(False, description="The held-out rows offer tools: answers are scored as tool-call turns.")
    reference: str = Field("", description="What each held-out prompt's expected answer is, as the method defines it.")
    summary: dict[str, dict[str, float]] = Field(..., description="base / tuned / delta -> metric -> value.")
    per_tool: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict,
        description="Tool rows: base / tuned -> the function the reference calls -> each tool metric's mean and n (rows).",
    )
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
    return validate_record(data, model, version, str(path))


def validate_record(data: Any, model: type[R], version: int, where: str) -> R:
    """`data` (parsed JSON) as a `model` record; RunError naming `where` when it is newer than `version` or malformed."""
    try:
        newer = isinstance(data, dict) and int(data.get("schema_version", 1)) > version
    except (TypeError, ValueError):
        newer = False  # not a number: the schema check below names it
    if newer:
        raise RunError(
            f"{where} has schema_version {data['schema_version']}, newer than this tunesmith reads ({version})",
            hint="Upgrade tunesmith to read it.",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise RunError(f"{where} does not match the {model.__name__} schema: {problems}") from None


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
