"""The Recipe: one typed config for a run, validated once, before any model is loaded.

Every parameter is documented once, at its field: the description feeds `--help`,
the YAML written by `tunesmith init`, and the JSON schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tunesmith.errors import RecipeError

DEFAULT_BASE = "smollm2-135m-instruct"


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """Resolve a data path against the recipe's folder and check that it exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return str(path)


DataPath = Annotated[str, AfterValidator(_resolve_path)]
"""A data file path, resolved against the recipe's folder; a missing file is a field error."""


class ModelSection(Section):
    base: str = Field(
        DEFAULT_BASE,
        description="Base model: a catalog name (`tunesmith models list`), a local HF folder, a local .gguf file, or a hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (commit SHA) to pin; required with trust_remote_code.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off by default.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto = bfloat16 on a GPU that supports it, float32 on CPU."
    )

    @model_validator(mode="after")
    def _remote_code_needs_revision(self) -> "ModelSection":
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



class AdapterSection(Section):
    type: Literal["lora", "full"] = Field("lora", description="lora = train a LoRA adapter; full = train all weights.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get LoRA: 'all-linear' or a list of module names (q_proj, v_proj, ...)."
    )
    modules_to_save: list[str] = Field(default_factory=list, description="Extra modules trained fully and saved with the adapter.")


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training set (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 = use epochs.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Micro-batch size per device.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (global batch = batch_size x grad_accum x devices).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="LR schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, description="Seed for data order, dropout and initialisation.")
    logging_steps: int = Field(5, ge=1, description="Log loss every N steps (metrics.jsonl and the loss curve).")
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    eval_steps: int = Field(0, ge=0, description="Compute eval loss every N steps; 0 = only at the end.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (useful on GPU for long sequences).")


class EvalSection(Section):
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per eval prompt.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (greedy, left-padded).")
    max_examples: int = Field(0, ge=0, description="Evaluate at most this many held-out examples; 0 = all.")


class Recipe(Section):
    """A complete fine-tuning run."""

    name: str = Field("run", description="A name for this run (shown in reports).")
    method: Literal["sft"] = Field("sft", description="Training method: sft (demonstrations).")
    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    data: DataSection = Field(..., description="Training and eval data.")
    adapter: AdapterSection = Field(default_factory=AdapterSection, description="What is trained.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Base-vs-tuned evaluation.")
    output_dir: str = Field("runs/run", description="Run directory (relative to this recipe).")

    @field_validator("output_dir", mode="after")
    @classmethod
    def _output_abs(cls, value: str, info: ValidationInfo) -> str:
        base = Path((info.context or {}).get("base_dir", "."))
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


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


def recipe_from_dict(data: dict[str, Any], base_dir: Path, source: str | None = None) -> Recipe:
    """Validate a dict into a Recipe; every problem is reported at once as a RecipeError."""
    try:
        return Recipe.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        problems = [(_format_loc(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        raise RecipeError(problems, source=source) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply `--set` overrides, validate. Paths resolve against the YAML's folder."""
    path = Path(path)
    if not path.exists():
        raise RecipeError([("(file)", f"recipe not found: {path}")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError([("(yaml)", str(exc))], source=str(path)) from None
    if not isinstance(data, dict):
        raise RecipeError([("(recipe)", "the top level must be a mapping of sections")], source=str(path))
    apply_overrides(data, overrides or [])
    return recipe_from_dict(data, path.parent.resolve(), source=str(path))


def dump_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe (absolute paths, every default filled in)."""
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


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
            dumped = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=None).rstrip("\n")
            out.extend(pad + line for line in dumped.splitlines())
    return "\n".join(out)
