"""`--adapter-only`: the LoRA alone as a llama.cpp GGUF adapter (`general.type = adapter`), with the tensor layout of
llama.cpp's convert_lora_to_gguf (lora_a/lora_b per weight, Q/K rows permuted like the base's)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.errors import RunError
from tunesmith.export.gguf import (
    LINEAGE_KEY,
    ExportLineage,
    claim_output,
    converter_for,
    publish_export,
    run_lineage,
    staging_dir,
)
from tunesmith.loader import resolve_run_base
from tunesmith.run import Run, load_run, read_json_record


def refuse_adapter(run: Run) -> dict[str, Any]:
    """The adapter's peft config when llama.cpp can apply it as a GGUF LoRA; a clear refusal otherwise."""
    path = run.adapter_dir / "adapter_config.json"
    if not path.exists():
        raise RunError(
            f"{run.dir} is a full fine-tune: there is no adapter to export alone", hint="Export the model: drop --adapter-only."
        )
    cfg = read_json_record(path, "peft adapter config", "train the run again")
    kind = cfg.get("peft_type", "LORA")
    hint = "Export the merged model instead: drop --adapter-only."
    if kind != "LORA":
        raise RunError(
            f"cannot export a {kind.lower().replace('_', ' ')} adapter as a GGUF LoRA: it adds virtual tokens, "
            "which llama.cpp adapters cannot express",
            hint="Serve it with its base: tunesmith chat RUN_DIR.",
        )
    if cfg.get("use_dora"):
        raise RunError(
            "cannot export a DoRA adapter as a GGUF LoRA: llama.cpp applies W + s*B*A, DoRA also rescales "
            "each weight's magnitude",
            hint=hint,
        )
    if cfg.get("modules_to_save") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise RunError(
            "cannot export this adapter as a GGUF LoRA: it trains whole modules (modules_to_save) or uses "
            "per-module ranks, which a GGUF LoRA cannot hold",
            hint=hint,
        )
    if not all(isinstance(cfg.get(k), (int, float)) and not isinstance(cfg.get(k), bool) for k in ("r", "lora_alpha")):
        raise RunError(f"{path} is not a readable peft adapter config: it lacks a numeric r and lora_alpha")
    return dict(cfg)


def _lora_tensors(adapter_dir: Path) -> dict[str, tuple[Any, Any]]:
    """HF weight name (e.g. model.layers.0.self_attn.q_proj.weight) -> (lora_A, lora_B)."""
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise RunError(f"unexpected tensor {key} in {adapter_dir}: not a LoRA A/B matrix")
        pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = tensor.float()
    return {name: (ab["A"], ab["B"]) for name, ab in pairs.items()}


def lora_to_gguf(base_dir: Path, adapter_dir: Path, cfg: dict[str, Any], out: Path, lineage: ExportLineage) -> int:
    """Write the LoRA as a llama.cpp GGUF adapter; returns the number of adapted weights."""
    import gguf
    import torch

    converter = converter_for(base_dir, "f32", out)
    alpha = float(cfg["lora_alpha"]) * (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else 1.0)  # llama.cpp scales alpha/r
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[converter.model_arch])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    writer.add_string(LINEAGE_KEY, lineage.model_dump_json())
    pairs = _lora_tensors(adapter_dir)
    with torch.inference_mode():
        for name, (a, b) in sorted(pairs.items()):
            layer = re.search(r"\.(\d+)\.", name)
            bid = int(layer.group(1)) if layer else None
            # B carries the output rows: the base's own row permutation (Q/K in llama) must apply to it too.
            mapped = list(converter.modify_tensors(b, name, bid))
            if len(mapped) != 1 or tuple(mapped[0][1].shape) != tuple(b.shape):
                raise RunError(f"{name}: llama.cpp reshapes this weight on conversion; a LoRA on it cannot be exported alone")
            gguf_name, b_mapped = mapped[0]
            writer.add_tensor(gguf_name + ".lora_a", a.contiguous().numpy())
            writer.add_tensor(gguf_name + ".lora_b", b_mapped.contiguous().numpy())
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(pairs)


def export_adapter_gguf(run_dir: Path, out: Path, overwrite: bool = False) -> ExportLineage:
    """The run's LoRA alone as a GGUF adapter (f32) for llama.cpp's --lora; refused for DoRA and prompt tuning."""
    run = load_run(run_dir)
    cfg = refuse_adapter(run)
    out, sidecar = claim_output(out, overwrite)
    tokenizer = models.load_tokenizer(str(run.adapter_dir))

    lineage = ExportLineage(artifact=out.name, kind="gguf-lora", type="f32", **run_lineage(run, tokenizer, {}))
    with staging_dir(out) as stage:
        tmp = stage / out.name
        count = lora_to_gguf(Path(resolve_run_base(run)), run.adapter_dir, cfg, tmp, lineage)
        lineage = lineage.model_copy(
            update={
                "check": {"adapted_weights": count, "alpha": cfg["lora_alpha"], "r": cfg["r"]},
                "sha256": models.sha256_file(tmp),
            }
        )
        publish_export(tmp, out, sidecar, lineage)
    return lineage
