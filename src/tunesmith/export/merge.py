"""Merge a LoRA adapter into its base (16/32-bit only) and prove the merge changed nothing.

The merged folder keeps what prompts and stops the model as trained: the run's tokenizer and chat template, and a
generation_config whose eos_token_id lists the chat family's stop tokens (a server reading only the folder stops
where eval stopped); its lineage records the family and the thinking mode prompts are rendered in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith import models, outputs
from tunesmith.atomic import new_parents, staged_dir
from tunesmith.data.template import prompt_messages
from tunesmith.errors import RunError
from tunesmith.eval import generate
from tunesmith.eval.generate import family_of, stop_token_ids
from tunesmith.loader import resolve_run_base, run_thinking
from tunesmith.run import Run, read_json_record, versions, write_json_atomic
from tunesmith.train.methods import held_out_examples
from tunesmith.verify.compare import Divergent, Report
from tunesmith.verify.paths import folder_parity, reference


def _greedy_tokens(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], max_new_tokens: int, thinking: bool | None
) -> list[list[int]]:
    """Greedy generated ids per conversation, one at a time so no padding differs between the two models."""
    done = generate.generate_detailed(model, tokenizer, conversations, max_new_tokens, batch_size=1, thinking=thinking)
    return [c.token_ids for c in done]


def keep_stops(model: Any, tokenizer: Any) -> list[int]:
    """Write the chat family's stop tokens into the model's generation_config (eos_token_id, end of turn first;
    pad_token_id when it had none), so the saved folder stops where tunesmith does; returns them."""
    from transformers import GenerationConfig

    stops = stop_token_ids(model, tokenizer)
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig()  # type: ignore[no-untyped-call]  # untyped upstream
    model.generation_config.eos_token_id = stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return stops


def _refuse(run: Run, dtype: str) -> None:
    """Every reason not to merge, before any model loads or any folder appears."""
    config = run.adapter_dir / "adapter_config.json"
    if not config.exists():
        raise RunError(f"{run.dir} holds a full fine-tune, not an adapter: its adapter/ folder is already a complete model")
    peft_type = read_json_record(config, "peft adapter config", "train the run again").get("peft_type", "LORA")
    if peft_type not in ("LORA",):  # DoRA and rsLoRA are LORA too; soft prompts have no weights to fold in
        raise RunError(
            f"cannot merge a {peft_type.lower().replace('_', '-')} adapter ({run.dir}): "
            "it adds virtual tokens, not weight deltas",
            hint="Serve it with its base instead: tunesmith chat RUN_DIR (or eval), which loads base + adapter.",
        )
    if dtype not in ("float32", "bfloat16", "float16"):
        raise RunError(f"cannot merge into dtype {dtype}: merge into a 16/32-bit base, never a 4-bit one")


def _save(merged: Any, tokenizer: Any, stage: Path, lineage: dict[str, Any], run: Run) -> None:
    """Write the merged model into the staging folder; a full disk becomes DiskFull (exit 74)."""
    from tunesmith.train.faults import disk_full

    try:
        merged.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        write_json_atomic(stage / "tunesmith_lineage.json", lineage)
    except Exception as exc:  # torch and safetensors report a full disk as RuntimeError / SafetensorError
        full = disk_full(exc, f"writing the merged model beside {stage.parent}", run.dir, then="Free space and merge again.")
        if full is None:
            raise
        raise full from None


def _same_render(run: Run, folder: Path, n: int, tokenizer: Any) -> None:
    """The saved folder, read back as another runtime reads it, renders the training prompts and stops on the family's
    end-of-turn tokens (verify.folder_parity); Divergent (exit 3) otherwise, and nothing is published."""
    ref = reference(run, n, tokenizer)
    found = folder_parity(ref, folder)
    if found:
        raise Divergent(Report(str(run.dir), "", ref.thinking, n, 0, divergences=found))


def merge(run: Run, out_dir: Path, dtype: str = "float32", n_check: int = 3, max_new_tokens: int = 48) -> dict[str, Any]:
    """Write a plain HF folder (base + adapter merged) to out_dir; greedy tokens must match the adapter's.

    The model is staged in a temp folder beside out_dir and renamed into place only after the check passed;
    a refused or failed merge leaves nothing behind.
    """
    from peft import PeftModel

    _refuse(run, dtype)
    out_dir = outputs.check_new_dir(out_dir)
    if out_dir == run.dir or run.dir in out_dir.parents:
        raise outputs.OutputError(
            f"--out {out_dir} is inside the run folder {run.dir}; a finished run is never changed",
            hint="Choose an --out outside the run folder.",
        )
    tokenizer = models.load_tokenizer(str(run.adapter_dir))
    # Always a 16/32-bit base, even for a QLoRA run: merging into 4-bit weights changes the model (peft #2321).
    base = models.load_model(resolve_run_base(run), dtype)
    model = PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()

    eval_ex = held_out_examples(run)
    prompts = [prompt_messages(e.messages) for e in eval_ex[:n_check]]
    thinking = run_thinking(run)
    before = _greedy_tokens(model, tokenizer, prompts, max_new_tokens, thinking)
    merged = model.merge_and_unload()
    stops = keep_stops(merged, tokenizer)
    after = _greedy_tokens(merged, tokenizer, prompts, max_new_tokens, thinking)
    agree = [a == b for a, b in zip(before, after)]
    if not all(agree):
        raise RunError(
            f"refusing to write {out_dir}: {len(agree) - sum(agree)} of {len(agree)} check prompts produced different "
            "greedy tokens after merging than with the adapter",
            hint="Merge in float32 (--dtype float32) and compare again.",
        )
    check = {"prompts": len(prompts), "identical": sum(agree), "max_new_tokens": max_new_tokens}
    base_note = (
        f"dequantized: the adapter was trained (and evaluated) on a 4-bit NF4 base (QLoRA); it is merged into the "
        f"{dtype} base, so outputs can differ slightly from the 4-bit model eval scored"
        if run.manifest.quantized_base
        else f"merged into the {dtype} base the adapter was trained on"
    )
    lineage = {
        "merged_from_run": str(run.dir),
        "base_model": run.manifest.base_model.model_dump(),
        "adapter": str(run.adapter_dir),
        "dtype": dtype,
        "chat_template_sha256": models.chat_template_hash(tokenizer),
        "family": family_of(merged, tokenizer).name,
        "stop_token_ids": stops,
        "thinking": thinking,
        "data": run.manifest.data,
        "check": check,
        "versions": versions(),
        "dequantized": run.manifest.quantized_base,
        "base_note": base_note,
    }
    # Private until renamed into place (an empty --out is replaced); a failed merge leaves nothing, not even the
    # folders it made for --out.
    with new_parents(out_dir), staged_dir(out_dir) as stage:
        _save(merged, tokenizer, stage, lineage, run)
        _same_render(run, stage, len(prompts), tokenizer)
        outputs.record(stage, *[p.name for p in stage.iterdir()], command="merge")
    return {"out": str(out_dir), **check, "base_note": base_note, "lineage": lineage}
