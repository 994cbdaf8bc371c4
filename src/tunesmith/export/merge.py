"""Merge a LoRA adapter into its base (16/32-bit only) and prove the merge changed nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.data.template import prompt_messages
from tunesmith.errors import RunError
from tunesmith.loader import resolve_run_base
from tunesmith.run import Run, versions, write_json_atomic
from tunesmith.train.rows import eval_examples


def _greedy_tokens(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], max_new_tokens: int) -> list[list[int]]:
    """Greedy generated ids per conversation, one at a time so no padding differs between the two models."""
    from tunesmith.eval.generate import generate_detailed

    return [c.token_ids for c in generate_detailed(model, tokenizer, conversations, max_new_tokens, batch_size=1)]


def merge(run: Run, out_dir: Path, dtype: str = "float32", n_check: int = 3, max_new_tokens: int = 48) -> dict[str, Any]:
    """Write a plain HF folder (base + adapter merged) to out_dir; greedy tokens must match the adapter's."""
    from peft import PeftModel

    if not (run.adapter_dir / "adapter_config.json").exists():
        raise RunError(f"{run.dir} holds a full fine-tune, not an adapter: its adapter/ folder is already a complete model")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise RunError(f"cannot merge into dtype {dtype}: merge into a 16/32-bit base, never a 4-bit one")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} exists and is not empty", hint="Choose a new --out folder.")
    tokenizer = models.load_tokenizer(str(run.adapter_dir))
    # Always a 16/32-bit base, even for a QLoRA run: merging into 4-bit weights changes the model (peft #2321).
    base = models.load_model(resolve_run_base(run), dtype)
    model = PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()

    eval_ex = eval_examples(run.recipe)
    prompts = [prompt_messages(e.messages) for e in eval_ex[:n_check]]
    before = _greedy_tokens(model, tokenizer, prompts, max_new_tokens)
    merged = model.merge_and_unload()
    after = _greedy_tokens(merged, tokenizer, prompts, max_new_tokens)
    agree = [a == b for a, b in zip(before, after)]

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    check = {"prompts": len(prompts), "identical": sum(agree), "max_new_tokens": max_new_tokens}
    lineage = {
        "merged_from_run": str(run.dir), "base_model": run.manifest.base_model.model_dump(), "adapter": str(run.adapter_dir),
        "dtype": dtype, "chat_template_sha256": models.chat_template_hash(tokenizer),
        "data": run.manifest.data, "check": check, "versions": versions(),
    }
    write_json_atomic(tmp / "tunesmith_lineage.json", lineage)
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    if not all(agree):
        raise RunError(
            f"merged model written to {out_dir}, but {len(agree) - sum(agree)} of {len(agree)} check prompts "
            "produced different greedy tokens than the adapter",
            hint="Merge in float32 (--dtype float32) and compare again.",
        )
    return {"out": str(out_dir), **check, "lineage": json.loads((out_dir / "tunesmith_lineage.json").read_text())}
