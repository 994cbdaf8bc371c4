"""The one loader for inference: a run folder or a model spec -> (model, tokenizer, what it is).

Eval, chat, merge, the distillation teacher, synth, the ladder, serve and the studio all load
through here, so "the tuned model" means the same object everywhere: the base (4-bit when the
run trained QLoRA on a 4-bit base) with the run's adapter, or a full fine-tune's saved weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith import families, models
from tunesmith.errors import ModelError
from tunesmith.eval.generate import stop_token_ids
from tunesmith.run import Run, is_run_dir, load_run


@dataclass
class Loaded:
    """A model ready for generation. `run` is None for a plain model; `has_adapter` means peft can disable it."""

    model: Any
    tokenizer: Any
    run: Run | None = None
    has_adapter: bool = False
    quantized_base: bool = False
    template_warning: str | None = None

    @property
    def template_hash(self) -> str:
        return models.chat_template_hash(self.tokenizer)

    @property
    def family(self) -> families.Family:
        """The chat family of the loaded model (its config's model_type and its tokenizer's template)."""
        return families.detect(getattr(self.model, "config", None), self.tokenizer)

    @property
    def thinking(self) -> bool | None:
        """The thinking mode prompts are rendered with: the run's (Manifest.family), None for a plain model (the
        template's default)."""
        return run_thinking(self.run) if self.run is not None else None

    def stop_token_ids(self) -> list[int]:
        """Ids that end generation (eval.generate.stop_token_ids: the family's end of turn first)."""
        return stop_token_ids(self.model, self.tokenizer)


def run_thinking(run: Run) -> bool | None:
    """The thinking mode a run trained in and serves with (None: no switch, or an earlier run that did not say)."""
    family = run.manifest.family
    return family.thinking if family is not None else None


def template_warning(run: Run, tokenizer: Any) -> str | None:
    """A loud message when the chat template in use differs from the one the run was trained with."""
    now = models.chat_template_hash(tokenizer)
    if now != run.template_hash:
        return f"chat template differs from training ({now[:12]} != {run.template_hash[:12]}): outputs may degrade"
    return None


def resolve_run_base(run: Run) -> str:
    """The run's base model, as recorded; a clear error (not a traceback) when it is not on this machine."""
    path = run.base_path
    looks_local = path.startswith(("/", ".", "~")) or Path(path).is_absolute()
    if looks_local and not (Path(path) / "config.json").exists():
        spec = run.manifest.base_model.spec
        if spec in models.CATALOG:  # a catalog model is re-imported on demand on a new machine
            return str(models.pull(spec))
        raise ModelError(
            f"the base model of run {run.dir.name} is not on this machine: {path}",
            hint=f"Make `{spec}` available at that path (or pull it), then retry.",
        )
    return path


def load_base(run: Run) -> Any:
    """The run's base model as training saw it (4-bit NF4 for a QLoRA run)."""
    m = run.recipe.model
    bnb = models.build_bnb_config(run.recipe.adapter) if run.manifest.quantized_base else None
    return models.load_model(resolve_run_base(run), m.dtype, m.revision, m.trust_remote_code, bnb)


def load_run_model(run: Run) -> Loaded:
    """Base + adapter for adapter runs (the base is its adapter-disabled self), the saved model for full fine-tunes."""
    tokenizer = models.load_tokenizer(str(run.adapter_dir))
    if (run.adapter_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(run), str(run.adapter_dir)).eval()
        return Loaded(model, tokenizer, run, True, run.manifest.quantized_base, template_warning(run, tokenizer))
    model = models.load_model(str(run.adapter_dir), run.recipe.model.dtype).eval()
    return Loaded(model, tokenizer, run, False, False, template_warning(run, tokenizer))


def load_target(target: str | Path, dtype: str = "auto") -> Loaded:
    """A run folder (see load_run_model) or a model spec: catalog name, local folder, .gguf file, hub id."""
    if is_run_dir(target):
        return load_run_model(load_run(target))
    spec = str(target)
    local = Path(spec).expanduser()
    path = models.resolve_base(str(local) if local.exists() else spec)
    return Loaded(models.load_model(path, dtype).eval(), models.load_tokenizer(path))


def model_info(spec: str) -> dict[str, Any]:
    """What `models info` shows: where a model is, its model_type, and its chat family (stop ids, system
    handling, reasoning, tools, template hash)."""
    if is_run_dir(spec):  # a run: the family and thinking mode it trained with, as its manifest recorded them
        run = load_run(spec)
        recorded = run.manifest.family
        if recorded is None:  # a run from before families were recorded: detected now
            tokenizer = models.load_tokenizer(str(run.adapter_dir))
            recorded_info: dict[str, Any] = families.describe(
                families.detect(models.read_config(run.base_path), tokenizer), tokenizer
            )
            recorded_info["recorded"] = "no (an earlier run: detected now)"
        else:
            recorded_info = recorded.model_dump()
        where: dict[str, Any] = {"spec": spec, "run": str(run.dir), "base": run.base_path}
        return {**where, **recorded_info, "template_sha256": run.template_hash}
    path = models.resolve_base(spec)
    tokenizer = models.load_tokenizer(path)
    config = models.read_config(path)
    family = families.detect(config, tokenizer)
    where = {"spec": spec, "path": path, "model_type": families.model_type_of(config)}
    return {**where, **families.describe(family, tokenizer), "template_sha256": models.chat_template_hash(tokenizer)}
