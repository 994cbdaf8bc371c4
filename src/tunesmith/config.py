"""The Recipe: one typed config for a run, validated once, before any model is loaded.

Every parameter is documented once, at its field: the description feeds `--help`,
the YAML written by `tunesmith init`, and the JSON schema.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tunesmith import method_sections
from tunesmith.atomic import write_text_atomic
from tunesmith.errors import RecipeError
from tunesmith.eval.gates import parse_rule
from tunesmith.eval.graders import load_graders
from tunesmith.eval.registry import canonical, metric
from tunesmith.preflight import environment, preflight
from tunesmith.sections import DataPath, Section, absolute, base_dir

DEFAULT_BASE = "smollm2-135m-instruct"


class ModelSection(Section):
    base: str = Field(
        DEFAULT_BASE,
        description="Base model: a catalog name (`tunesmith models list`), a local HF folder, a local .gguf file, or a hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (commit SHA) to pin; required with trust_remote_code.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off by default.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype: auto = bfloat16 on a GPU that supports it, float32 on CPU (eval, serve, merge); "
        "adapter training under speed.precision bf16 stores the frozen base in bfloat16.",
    )

    @model_validator(mode="after")
    def _remote_code_needs_revision(self) -> ModelSection:
        if self.trust_remote_code and not self.revision:
            raise ValueError("trust_remote_code: true requires a pinned `revision`")
        return self


class DataSection(Section):
    train: list[DataPath] = Field(
        ..., min_length=1, description="Training files (JSONL, JSON, Parquet or CSV; paths relative to this recipe)."
    )
    eval: DataPath | None = Field(None, description="Held-out eval file. When empty, eval_fraction of train is held out.")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5, description="Fraction of train held out when no eval file is given.")
    max_length: int = Field(1024, ge=16, description="Maximum tokens per example after the chat template.")
    overlong: Literal["drop", "truncate", "error"] = Field(
        "drop", description="What to do with examples over max_length: drop (counted), truncate (tokens lost counted) or error."
    )
    reasoning: Literal["train", "mask", "drop"] = Field(
        "train",
        description="Reasoning traces (reasoning_content, reasoning, thinking or <think>…</think>): train = the model "
        "learns them; mask = rendered in the text but not learned; drop = removed (counted).",
    )
    tools: DataPath | None = Field(
        None,
        description="A JSON file with a list of OpenAI tools offered by every row (train and eval) that has no `tools` "
        "of its own; each family's template renders them (docs/tools.md).",
    )


class RagSection(Section):
    """Retrieval-augmented prompts: training, eval, the ladder and serving put the same retrieved passages in each prompt."""

    index: DataPath = Field(..., description="Retrieval index folder made by `tunesmith index build` (relative to this recipe).")
    k: int = Field(4, ge=1, le=50, description="Passages retrieved per prompt.")
    mode: Literal["hybrid", "vector", "fts"] = Field(
        "hybrid",
        description="hybrid = vector and full-text hits fused by reciprocal rank; vector = embeddings only; fts = BM25 only.",
    )
    template: str | None = Field(
        None,
        description="How passages enter the prompt. Empty: a block 'Context:\\n[1] (source:line) text ...' appended to the "
        "system message. Otherwise the last user turn is replaced by this template, with placeholders {context} (the numbered "
        "passages) and {question} (the user's text); str.format syntax, or Jinja2 ({{ context }}) when it contains '{{' or '{%'.",
    )
    embedder: str | None = Field(
        None, description="Embedding model for queries; empty = the one the index was built with (it must match the index)."
    )

    @field_validator("template", mode="after")
    @classmethod
    def _template_renders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import jinja2

        from tunesmith.rag.prompt import render_template

        if "context" not in value:
            raise ValueError("the template must place the passages: {context} (or {{ context }} in Jinja2)")
        try:  # a typo in a placeholder fails here, not hours later in the first training batch
            render_template(value, "[1] (guide.md:1) text", "question")
        except (KeyError, IndexError, ValueError, jinja2.TemplateError) as exc:
            raise ValueError(f"the template does not render: {type(exc).__name__}: {exc}") from None
        return value


class AdapterSection(Section):
    type: Literal["lora", "qlora", "dora", "full", "prompt_tuning"] = Field(
        "lora",
        description="lora = LoRA adapter; qlora = LoRA on a 4-bit NF4 base (double quantization, needs bitsandbytes); "
        "dora = weight-decomposed LoRA; full = train all weights; prompt_tuning = learn num_virtual_tokens soft-prompt vectors.",
    )
    use_rslora: bool = Field(
        False, description="Rank-stabilised LoRA: scale = alpha / sqrt(r) instead of alpha / r (lora, qlora, dora)."
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="LoRA dropout on each adapter's input. 0 by default: at 0.05 a step took 40% longer and held 500 MB "
        "more on SmolLM2-135M (docs/benchmarks.md); set it for long runs on little data that overfit.",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: 'all-linear' or a list of module names (q_proj, v_proj, ...)."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Extra modules trained fully and saved with the adapter."
    )
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="prompt_tuning: number of learned soft-prompt tokens.")
    prompt_tuning_init_text: str | None = Field(
        None, description="prompt_tuning: initialise the soft prompt from this text's token embeddings; empty = random init."
    )


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training set (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 = use epochs.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Micro-batch size per device.")
    grad_accum: int = Field(
        1, ge=1, description="Gradient accumulation steps (global batch = batch_size x grad_accum x devices)."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="LR schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, description="Seed for data order, dropout and initialisation.")
    logging_steps: int = Field(5, ge=1, description="Log loss every N steps (metrics.jsonl and the loss curve).")
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    eval_steps: int = Field(0, ge=0, description="Compute eval loss every N steps; 0 = only at the end.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass: less memory, ~30-60% more time per step. auto = on only "
        "when the planner's estimate of the run's peak memory does not fit this machine (SFT; other methods: off).",
    )
    unfreeze_top_layers: int = Field(
        0,
        ge=0,
        description="Hybrid: train the top N decoder layers in full (saved with the adapter) and LoRA/DoRA on the layers below.",
    )
    auto_resume: bool = Field(
        False, description="Continue from the newest complete checkpoint in output_dir when there is one (as --resume does)."
    )
    max_bad_steps: int = Field(
        3,
        ge=1,
        description="Abort after this many optimizer steps in a row with a NaN/inf gradient (each one is skipped and counted).",
    )
    oom_backoff: bool = Field(
        True, description="On GPU out-of-memory: halve the micro-batch and double grad_accum (same global batch), down to 1."
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Extra trackers, written under the run folder (tensorboard/, mlflow.db); needs `pip install tunesmith[tracking]`. "
        "metrics.jsonl and loss.png are always written.",
    )

    @field_validator("max_steps", mode="after")
    @classmethod
    def _steps_positive(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"must be a positive number of steps, or -1 to train for `epochs` (got {value})")
        return value

    @field_validator("report_to", mode="after")
    @classmethod
    def _trackers_once(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class JudgeSection(Section):
    """An LLM judge: pairwise tuned-vs-base preference (both orders) and unsupported claims in free-text answers."""

    model: str = Field(
        ...,
        description="A run folder, a model spec (catalog name, folder, hub id) or an OpenAI-compatible "
        "endpoint URL (http://host:port/v1).",
    )
    endpoint_model: str = Field("default", description="Endpoint only: the model name sent with each request.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Endpoint only: environment variable holding the API key (may be unset)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Judge answer budget, in tokens.")
    max_examples: int = Field(0, ge=0, description="Judge at most this many held-out examples; 0 = all evaluated.")


Check = Literal["inputs_unchanged", "loss_converged", "beats_base"]


class EvalSection(Section):
    max_new_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Generation budget per eval prompt, in tokens. auto = the longest reference answer x 1.25 + 16, "
        "capped by data.max_length (the report says the value used and how many outputs hit it).",
    )
    batch_size: int = Field(8, ge=1, description="Prompts generated together (greedy, left-padded).")
    max_examples: int = Field(0, ge=0, description="Evaluate at most this many held-out examples; 0 = all.")
    gates: dict[str, str | float] = Field(
        default_factory=dict,
        description="What 'good enough' means: metric -> rule, e.g. exact_match: '>=0.85', forgetting: '<=0.02', "
        "p95_batch_ms: '<=800', cost_per_1k: 0.5. A bare number means >= (<= for lower-is-better metrics). "
        "`tunesmith eval` exits non-zero when one fails; `tunesmith ladder` recommends the cheapest rung that passes "
        "them (docs/gates.md).",
    )
    checks: list[Check] = Field(
        ["inputs_unchanged", "loss_converged", "beats_base"],
        description="Built-in checklist items that join the gates whenever gates or graders are set.",
    )
    graders: list[dict[str, Any]] | DataPath = Field(
        default_factory=list,
        description="Graders in the OpenAI evals shape (string_check, text_similarity, python, score_model, multi), or a JSON "
        "file holding such a list; each grader's pass rate is reported and usable in gates as graders.<name>.",
    )
    judge: JudgeSection | None = Field(None, description="LLM judge for pairwise win rate and free-text hallucination.")
    forgetting: bool = Field(
        False, description="Run the bundled general-capability probe on base and tuned (also on when a gate names forgetting)."
    )
    similarity: bool = Field(
        False,
        description="Embedding cosine similarity to the references even when they are JSON "
        "(always computed for free-text references).",
    )
    select_checkpoint: str | None = Field(
        None,
        description="At the end of training, score each kept checkpoint on the first select_examples held-out rows by "
        "this metric (exact_match, json_field_accuracy, eval_loss, ...) and keep the best as the run's adapter.",
    )
    select_examples: int = Field(16, ge=1, description="Held-out rows each checkpoint is scored on by select_checkpoint.")
    reward_model: DataPath | None = Field(
        None,
        description="A finished reward run (method: reward): base and tuned answers get its score, the metric "
        "reward_model (usable in gates).",
    )

    @field_validator("gates")
    @classmethod
    def _rules_parse(cls, value: dict[str, str | float]) -> dict[str, str | float]:
        for name, rule in value.items():
            parse_rule(name, rule)  # ValueError names the gate and its unknown metric or unreadable rule
        return {canonical(name): rule for name, rule in value.items()}

    @field_validator("select_checkpoint")
    @classmethod
    def _selectable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        m = metric(value)  # ValueError naming the known metrics
        if m.fn is None and m.name not in ("eval_loss", "perplexity", "reward"):
            raise ValueError(f"{value} is not measured per checkpoint; use a per-example metric, reward, eval_loss or perplexity")
        return m.name

    @field_validator("graders")
    @classmethod
    def _graders_load(cls, value: list[dict[str, Any]] | str) -> list[dict[str, Any]] | str:
        if isinstance(value, str):  # a file: read by preflight
            return value
        return [g.model_dump(mode="json", exclude_none=True) for g in load_graders(value)]


Rung = Literal["base", "base_few_shot", "base_rag", "tuned", "tuned_rag", "student"]
RUNGS: tuple[Rung, ...] = ("base", "base_few_shot", "base_rag", "tuned", "tuned_rag", "student")
"""The ladder's rungs, simplest first: the order breaks cost ties (prompt, then RAG, then fine-tune, then distill)."""


class LadderSection(Section):
    rungs: list[Rung] = Field(
        list(RUNGS),
        description="Rungs to measure: base (zero-shot, the recipe's system prompt), base_few_shot, base_rag, tuned, tuned_rag, "
        "student (ladder.student). A rung whose ingredient is missing (no rag section, no trained run, no student) is skipped.",
    )
    few_shot_k: int = Field(
        3, ge=1, le=32, description="base_few_shot: training examples shown before each prompt (seeded pick)."
    )
    max_examples: int = Field(0, ge=0, description="Held-out prompts per rung; 0 = eval.max_examples (or all).")
    max_new_tokens: int | None = Field(None, ge=1, description="Generation budget per prompt; empty = eval.max_new_tokens.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Prompts generated together; empty = eval.batch_size. A request's latency is the wall time of "
        "its batch, so 1 measures single-request latency.",
    )
    price_per_1k_tokens: float | None = Field(
        None, ge=0, description="Cost basis 'tokens': price of 1,000 prompt + completion tokens. Empty = cost basis 'compute'."
    )
    hourly_price: float = Field(
        1.0,
        ge=0,
        description="Cost basis 'compute' (when price_per_1k_tokens is empty): price of one hour of the machine the "
        "ladder runs on, charged for the measured generation seconds.",
    )
    student: str | None = Field(None, description="student rung: a distilled student's run folder or a model spec.")


class SpeedSection(Section):
    """How training is made fast. Every method takes precision, fused_optimizer, compile, release_memory and
    shared_prefix; labelled_logits applies to SFT, DPO and GRPO; the row levers (packing, attention,
    micro_batch_tokens) are SFT's. Every lever is measured in docs/benchmarks.md and recorded in the manifest."""

    packing: Literal["auto", "padding_free", "group_by_length", "off"] = Field(
        "auto",
        description="Batching. padding_free: the batch's rows are concatenated without padding and kept apart by "
        "position_ids (transformers builds a per-row mask for sdpa, varlen kernels for flash attention); group_by_length: "
        "rows of similar length batched together; off: shuffled rows padded to the longest. auto = padding_free "
        "(group_by_length for prompt tuning).",
    )
    attention: Literal["auto", "varlen", "mask"] = Field(
        "auto",
        description="How padding-free rows are kept apart in attention. varlen: causal attention run on each row "
        "(the rows' own work); mask: one block-diagonal mask over the whole packed sequence (sdpa computes every "
        "row against every other before masking). auto = varlen on CPU, mask on CUDA (where flash-attention's varlen "
        "kernels do this when installed).",
    )
    labelled_logits: bool = Field(
        True,
        description="Only positions whose next token is trained reach the LM head: prompt positions never produce vocabulary-sized logits.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="bf16: bf16 autocast with fp32 master weights (adapter methods also store the frozen base in bf16); "
        "fp32: no autocast. auto = bf16 on GPUs that support it and on CPUs with bf16 units (AVX512-BF16, AMX), else fp32.",
    )
    fused_optimizer: bool = Field(
        True, description="torch's fused AdamW (one kernel for all parameters) instead of the per-tensor loop."
    )
    compile: bool = Field(False, description="torch.compile the model (pays only after warm-up on long runs; GPU mostly).")
    liger: bool | Literal["auto"] = Field(
        "auto",
        description="Liger's Triton kernels for the model's RMSNorm, SwiGLU MLP and rotary embedding (SFT on CUDA), "
        "from the optional package `liger-kernel` (pip install 'tunesmith[liger]'); TRL's chunked LM head stays the "
        "loss. auto = on where CUDA is available and liger-kernel is installed, else off; true without either is refused.",
    )
    release_memory: bool | Literal["auto"] = Field(
        "auto",
        description="Hand the memory freed by each optimizer step and evaluation back to the operating system "
        "(glibc malloc_trim), so a CPU run's resident memory does not creep up step after step as padding-free batches "
        "change shape. auto = true for CPU runs on glibc. (oneDNN's cache of per-shape matmul kernels is bounded to 32 "
        "whatever this says, unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set in the environment.)",
    )
    eval_batch_size: int = Field(
        4,
        ge=1,
        description="Rows per batch when computing the eval loss during and after training (bounds its peak memory: on "
        "the benchmark CPU 8 rows took 8.5-9.1 s and +417-472 MB, 4 rows 8.2-9.1 s and +282-351 MB).",
    )
    shared_prefix: bool | Literal["auto"] = Field(
        "auto",
        description="Rows of one forward pass that begin with the same tokens (the system prompt of SFT rows, the prompt "
        "of a DPO pair, a GRPO group's prompt) run those tokens once, and padded batches (DPO, GRPO) run without their "
        "padding; the loss and every gradient are the plain forward's (the shared tokens' gradient is summed over the "
        "rows). auto = on for CPU runs; off with gradient checkpointing (its recomputation in the backward runs outside the compacted forward).",
    )
    frozen_bf16: bool | Literal["auto"] = Field(
        "auto",
        description="Under fp32 training on CPU, store the frozen base's decoder linear layers in bf16 and cast each "
        "to fp32 for its matmul: half their memory, the fp32 model with its weights rounded to bf16 (the rounding bf16 "
        "autocast applies anyway). LoRA and prompt tuning without fully trained layers. auto = on for such CPU runs "
        "in fp32 (a CPU without bf16 units); bf16 runs store the base in bf16 already.",
    )
    micro_batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto", "off"] = Field(
        "auto",
        description="Most tokens one forward/backward pass takes (SFT). A batch of training.batch_size rows whose "
        "expected length (rows x the mean training row) exceeds it runs as several passes of whole rows, the largest "
        "divisor of batch_size that fits (at least one row), and their gradients are accumulated before the optimizer "
        "step: the same rows, the same gradient, the same steps, less memory. auto on CPU = 256 when training in bf16 "
        "(there a pass of one ~240-token row ran as fast as whole 944-token batches at 0.7x the memory) and 640 in fp32 "
        "(a CPU without bf16 units: two such rows a pass kept its steps steady and fast where one did not; "
        "docs/benchmarks.md), off on CUDA "
        "(a GPU wants long passes; the planner and gradient checkpointing handle its memory). Under "
        "speed.shared_prefix only each row's own tokens count: the prefix every row has (a system prompt, a tool "
        "list) runs once a pass whatever its rows. Not applied with packing: group_by_length, whose sampler groups "
        "by micro-batch.",
    )


class MonitorSection(Section):
    """`tunesmith monitor`: the recent traffic window against the training data and the window before it; a signal
    whose threshold is crossed makes the command exit non-zero (docs/monitoring.md)."""

    window_hours: float = Field(24.0, gt=0, description="Length of the recent window (and of the earlier one before it), hours.")
    min_requests: int = Field(20, ge=2, description="Fewer requests than this in a window: its signals are skipped, not judged.")
    max_samples: int = Field(300, ge=10, description="Texts per side fed to the embedding test (a seeded sample beyond this).")
    embedder: Literal["minilm", "char-ngrams"] = Field(
        "minilm",
        description="Input embeddings for the MMD test: minilm (the bundled all-MiniLM-L6-v2) or char-ngrams "
        "(hashed character trigrams: no model, for quick checks).",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Input embedding drift: MMD permutation p-value below this is drift.")
    permutations: int = Field(500, ge=50, description="Permutations behind the MMD p-value.")
    seed: int = Field(0, description="Seed of the sampling and the permutations (the same log gives the same report).")
    max_length_change: float = Field(
        0.5,
        gt=0,
        description="Mean prompt or answer length (words) changed by more than this share of the reference (0.5 = +-50%).",
    )
    max_vocab_shift: float = Field(
        0.5, gt=0, le=1, description="Jensen-Shannon divergence (base 2, 0-1) of the prompts' word frequencies above this."
    )
    max_refusal_increase: float = Field(0.05, gt=0, le=1, description="Share of refusal-looking answers up by more than this.")
    max_json_valid_drop: float = Field(
        0.05, gt=0, le=1, description="JSON tasks: share of valid-JSON answers down by more than this."
    )
    max_down_rate: float = Field(
        0.3, gt=0, le=1, description="Share of rated answers in the recent window rated down above this."
    )
    max_latency_increase: float = Field(0.5, gt=0, description="p95 latency up by more than this share of the earlier window's.")
    max_error_rate_increase: float = Field(
        0.02, gt=0, le=1, description="Share of failed requests (HTTP >= 400) up by more than this."
    )
    max_regression: float = Field(
        0.0,
        ge=0,
        le=1,
        description="`tunesmith retrain`: the new version may score at most this much "
        "below the served one on the primary metric of its held-out prompts.",
    )
    reward_model: DataPath | None = Field(
        None,
        description="A finished reward run (method: reward): the mean score of served answers per window, rollout "
        "variant and hour (signal reward_model).",
    )
    max_reward_drop: float = Field(
        0.5, gt=0, description="reward_model: mean score of the recent window below the earlier one by more than this."
    )


def _known_method(name: str) -> str:
    if name not in method_sections.names():
        raise ValueError(f"unknown method `{name}`: one of {', '.join(method_sections.names())}")
    return name


class RecipeCore(Section):
    """A complete fine-tuning run: the sections every method shares (Recipe adds each method's own)."""

    name: str = Field("run", description="A name for this run (shown in reports).")
    method: Annotated[str, AfterValidator(_known_method)] = Field(
        "sft",
        description="Training method: " + "; ".join(f"{m.name} ({m.help})" for m in method_sections.declared()) + ".",
        json_schema_extra=lambda schema: schema.update(enum=list(method_sections.names())),
    )
    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    data: DataSection = Field(..., description="Training and eval data.")
    adapter: AdapterSection = Field(default_factory=AdapterSection, description="What is trained.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Base-vs-tuned evaluation.")
    speed: SpeedSection = Field(default_factory=SpeedSection, description="Training speed levers.")
    rag: RagSection | None = Field(
        None, description="Retrieval: put passages from an index into every prompt (train, eval, serve)."
    )
    ladder: LadderSection = Field(
        default_factory=LadderSection,
        description="`tunesmith ladder`: prompt, few-shot, RAG, tuned, tuned + RAG, student on the same prompts.",
    )
    monitor: MonitorSection = Field(
        default_factory=MonitorSection, description="`tunesmith monitor`: drift thresholds for served traffic."
    )
    output_dir: str = Field("runs/run", description="Run directory (relative to this recipe).")

    @model_validator(mode="before")
    @classmethod
    def _targets_are_gates(cls, data: Any) -> Any:
        """`targets:` (earlier recipes) is read as `eval.gates`: one engine decides "good enough" for eval and ladder."""
        if not isinstance(data, dict) or "targets" not in data:
            return data
        import logging

        data = dict(data)
        targets = data.pop("targets") or {}
        if not isinstance(targets, dict):
            raise ValueError("targets: must be a mapping of metric -> value (now written as eval.gates)")
        targets = {k: v for k, v in targets.items() if v is not None}  # a run.yaml lists every target, unset ones too
        if targets:
            section = dict(data.get("eval") or {})
            section["gates"] = {**targets, **(section.get("gates") or {})}  # a gate of the same metric wins
            data["eval"] = section
            logging.getLogger(__name__).warning(
                "`targets:` is deprecated: it is read as eval.gates (which `tunesmith eval` checks too); move %s there",
                ", ".join(targets),
            )
        return data

    @field_validator("output_dir", mode="after")
    @classmethod
    def _output_abs(cls, value: str, info: ValidationInfo) -> str:
        return absolute(value, base_dir(info))

    @field_validator("training", mode="after")
    @classmethod
    def _hybrid_needs_lora(cls, value: TrainingSection, info: ValidationInfo) -> TrainingSection:
        adapter = info.data.get("adapter")
        if value.unfreeze_top_layers and adapter is not None and adapter.type not in ("lora", "dora"):
            raise ValueError(f"unfreeze_top_layers needs adapter.type lora or dora, not {adapter.type}")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


def _with_method_sections(core: type[RecipeCore]) -> type[RecipeCore]:
    """The Recipe: the shared sections, then one section per declared method that has settings, named after the
    method (`dpo:`, `grpo:`, `distill:`), with the method's cross-field rules as validators (method_sections.py)."""
    fields: dict[str, Any] = {
        m.name: (
            m.section,
            Field(default_factory=m.section, validate_default=True, description=f"{m.name} settings (method: {m.name})."),
        )
        for m in method_sections.declared()
        if m.section is not None
    }
    rules: dict[str, Callable[..., Any]] = {
        f"_{m.name}_{field}": field_validator(field, mode="after")(staticmethod(rule))
        for m in method_sections.declared()
        for field, rule in m.rules.items()
    }
    return create_model("Recipe", __base__=core, __module__=__name__, __doc__=core.__doc__, __validators__=rules, **fields)


if TYPE_CHECKING:  # type checkers see the shared sections; a method reads its own through Method.settings
    Recipe = RecipeCore
else:
    Recipe = _with_method_sections(RecipeCore)


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(recipe)"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError([(item, "an override must look like section.field=value")])
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError([(key, f"`{part}` is not a section")])
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return data


def recipe_from_dict(data: dict[str, Any], base_dir: Path, source: str | None = None, check_files: bool = True) -> Recipe:
    """Validate a dict into a Recipe, then preflight it (tunesmith.preflight: files exist, needed packages are
    installed, a graders file is read); every problem of a step is reported at once as a RecipeError.

    check_files=False validates the schema only (no file existence, importability or installed extras).
    """
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        problems = [(_format_loc(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        if check_files:  # the missing files and packages too, so one attempt lists everything to fix
            listed = {where for where, _ in problems}
            problems += [p for p in environment(Recipe, data, base_dir) if p[0] not in listed]
        raise RecipeError(problems, source=source) from None
    return preflight(recipe, base_dir, source) if check_files else recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Read a recipe YAML, apply `--set` overrides, validate. Paths resolve against the YAML's folder.

    check_files=False: the schema only (e.g. to find the output_dir of a finished run whose data moved).
    """
    path = Path(path)
    if not path.exists():
        raise RecipeError([("(file)", f"recipe not found: {path}")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError([("(yaml)", str(exc))], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, an unreadable or a binary file
        raise RecipeError([("(file)", f"cannot read {path} as a YAML recipe: {exc}")]) from None
    if not isinstance(data, dict):
        raise RecipeError([("(recipe)", "the top level must be a mapping of sections")], source=str(path))
    apply_overrides(data, overrides or [])
    return recipe_from_dict(data, path.parent.resolve(), source=str(path), check_files=check_files)


def dump_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe (absolute paths, every default filled in)."""
    write_text_atomic(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def commented_yaml(values: dict[str, Any], model: type[BaseModel] = Recipe, indent: int = 0) -> str:
    """Render `values` as YAML with each field's description as a comment above it."""
    pad = "  " * indent
    out: list[str] = []
    for name, field in model.model_fields.items():
        if name not in values:
            continue
        value = values[name]
        if field.description:
            out.append(f"{pad}# {field.description}")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out.append(f"{pad}{name}:")
            out.append(commented_yaml(value, sub, indent + 1))
        else:
            dumped = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")
            out.extend(pad + line for line in dumped.splitlines())
    return "\n".join(out)
