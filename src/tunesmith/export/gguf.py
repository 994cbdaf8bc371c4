"""GGUF export for llama.cpp / Ollama / LM Studio: llama.cpp's own converter, verified before the file is published.

A run is merged first (export.merge, into a temp folder beside --out); a merged folder is converted as it is.
The file is written to a temp name beside --out, reloaded by transformers and compared with the merged model on
held-out prompts (greedy tokens), and only then renamed into place, with its lineage embedded under the GGUF key
`tunesmith.lineage` and beside it as FILE.gguf.lineage.json.

`--adapter-only` writes the LoRA alone as a llama.cpp GGUF adapter (`general.type = adapter`), with the tensor
layout of llama.cpp's convert_lora_to_gguf (lora_a/lora_b per weight, Q/K rows permuted like the base's).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith import models, outputs
from tunesmith.errors import ModelError, RunError
from tunesmith.records import Record
from tunesmith.run import Run, is_run_dir, load_run, read_json_record, versions

log = logging.getLogger(__name__)
LINEAGE_KEY = "tunesmith.lineage"
LINEAGE_VERSION = 1
TYPES = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
EXACT_PREFIX = 16  # f16/bf16: every prompt's first 16 greedy tokens must equal the merged model's
FALLBACK_PROMPTS = ("Write one sentence about the sea.", "What is 12 plus 30?", "Name three colours.")


class ExportLineage(Record):
    """Where an exported artifact came from; embedded in the GGUF and written beside it as FILE.lineage.json."""

    schema_version: int = LINEAGE_VERSION
    artifact: str = Field(..., description="File name of the exported artifact.")
    kind: str = Field(..., description="gguf (a full model) or gguf-lora (the adapter alone).")
    type: str = Field(..., description="Tensor type: f16, bf16, q8_0 (f32 for adapters).")
    run: str | None = Field(None, description="Run folder the model was trained in, when known.")
    recipe: dict[str, Any] | None = Field(None, description="The run's resolved recipe (run.yaml).")
    base_model: dict[str, Any] = Field(default_factory=dict, description="Base model spec and path.")
    adapter: str | None = None
    data: dict[str, str] = Field(default_factory=dict, description="Training data path -> SHA-256.")
    chat_template_sha256: str
    eval_summary: dict[str, Any] | None = Field(
        None, description="eval/report.json summary and gates, when the run was evaluated."
    )
    check: dict[str, Any] | None = Field(None, description="Reload check (sidecar only: the file cannot hold its own result).")
    sha256: str | None = Field(None, description="SHA-256 of the artifact (sidecar only).")
    versions: dict[str, str] = Field(default_factory=dict)


def _run_lineage(run: Run | None, tokenizer: Any, merged_lineage: dict[str, Any]) -> dict[str, Any]:
    """The lineage fields known before conversion: run, recipe, base, data, template, eval summary."""
    out: dict[str, Any] = {"chat_template_sha256": models.chat_template_hash(tokenizer), "versions": versions()}
    if run is None:
        out.update(base_model=merged_lineage.get("base_model", {}), data=merged_lineage.get("data", {}))
        return out
    out.update(
        run=str(run.dir),
        recipe=run.recipe.model_dump(mode="json"),
        base_model=run.manifest.base_model.model_dump(),
        adapter=run.manifest.adapter,
        data=run.manifest.data,
    )
    report = run.dir / "eval" / "report.json"
    if report.exists():
        from tunesmith.records import read_eval_report

        r = read_eval_report(report)
        out["eval_summary"] = {"n_examples": r.n_examples, "summary": r.summary, "gates": r.gates}
    return out


def read_lineage(path: Path) -> ExportLineage:
    """The lineage embedded in a GGUF file written by tunesmith."""
    import gguf

    field = gguf.GGUFReader(path).fields.get(LINEAGE_KEY)
    if field is None:
        raise ModelError(f"{path} carries no {LINEAGE_KEY} metadata: it was not exported by tunesmith")
    return ExportLineage.model_validate_json(bytes(field.parts[field.data[0]]).decode("utf-8"))


def gguf_string(path: Path, key: str) -> str | None:
    """A string metadata value of a GGUF file (None when absent)."""
    import gguf

    field = gguf.GGUFReader(path).fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def _converter(model_dir: Path, type_: str, out: Path) -> Any:
    """llama.cpp's converter class for this architecture, instantiated on model_dir (nothing written yet)."""
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(model_dir, False)
    arch = get_model_architecture(hparams, ModelType.TEXT)
    try:
        cls = get_model_class(arch, mmproj=False)
    except NotImplementedError:
        raise ModelError(
            f"llama.cpp's converter does not support {arch}", hint="Export safetensors (tunesmith merge) instead."
        ) from None
    converter = cls(model_dir, getattr(gguf.LlamaFileType, TYPES.get(type_, "ALL_F32")), out)
    by_hash = converter.get_vocab_base_pre

    def pre_tokenizer(tokenizer: Any) -> str:
        # llama.cpp names a BPE pre-tokenizer by the hash of a test string's tokens, which any new vocabulary
        # misses. A plain byte-level pre-tokenizer with GPT-2's regex and no normalizer *is* llama.cpp's
        # "gpt-2", whatever the vocabulary; anything else stays refused, as the converter refuses it.
        try:
            return str(by_hash(tokenizer))
        except NotImplementedError:
            spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
            pre = spec.get("pre_tokenizer") or {}
            if spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
                log.warning(
                    "%s: pre-tokenizer not in llama.cpp's list; byte-level with GPT-2's regex, written as 'gpt-2'", model_dir
                )
                return "gpt-2"
            raise ModelError(
                f"llama.cpp's converter does not recognise the pre-tokenizer of {model_dir}",
                hint="See llama.cpp's convert_hf_to_gguf_update.py for adding it.",
            ) from None

    converter.get_vocab_base_pre = pre_tokenizer
    return converter


def convert(model_dir: Path, out: Path, type_: str, lineage: ExportLineage) -> None:
    """Write model_dir (an HF folder) as a GGUF file at `out`, lineage embedded."""
    import torch

    chatter = logging.getLogger("hf-to-gguf")  # per-tensor INFO lines and a banner for unknown pre-tokenizers
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        with torch.inference_mode():
            converter = _converter(model_dir, type_, out)
            converter.gguf_writer.add_string(LINEAGE_KEY, lineage.model_dump_json())
            # ModelBase.write() with the writer's per-byte tqdm bar off (the CLI shows its own status).
            converter.prepare_tensors()
            converter.prepare_metadata(vocab_only=False)
            converter.gguf_writer.write_header_to_file(path=out)
            converter.gguf_writer.write_kv_data_to_file()
            converter.gguf_writer.write_tensors_to_file(progress=False)
            converter.gguf_writer.close()
    finally:
        chatter.setLevel(level)


def _conversations(run: Run | None, n: int) -> list[list[dict[str, Any]]]:
    """Held-out prompts of the run (without their answers), else a few fixed ones."""
    if run is not None:
        from tunesmith.data.template import prompt_messages
        from tunesmith.run import held_out_examples

        convs = [prompt_messages(e.messages) for e in held_out_examples(run)[:n]]
        if convs:
            return convs
    return [[{"role": "user", "content": p}] for p in FALLBACK_PROMPTS[:n]]


def check(model_dir: Path, gguf_path: Path, conversations: list[list[dict[str, Any]]], max_new_tokens: int) -> dict[str, Any]:
    """Greedy tokens of the GGUF (reloaded by transformers, its own tokenizer and template) vs the HF folder's."""
    from tunesmith.eval.generate import generate_detailed

    ref_model = models.load_model(str(model_dir), "float32").eval()
    ref_tok = models.load_tokenizer(str(model_dir))
    ref = [c.token_ids for c in generate_detailed(ref_model, ref_tok, conversations, max_new_tokens, batch_size=1)]
    del ref_model
    model, tokenizer = models.load_gguf(gguf_path)
    got = [c.token_ids for c in generate_detailed(model.eval(), tokenizer, conversations, max_new_tokens, batch_size=1)]
    prefix = [a[:EXACT_PREFIX] == b[:EXACT_PREFIX] for a, b in zip(ref, got)]
    return {
        "prompts": len(ref),
        "identical": sum(a == b for a, b in zip(ref, got)),
        "prefix_identical": sum(prefix),
        "max_new_tokens": max_new_tokens,
        "template_carried": tokenizer.chat_template == ref_tok.chat_template,
        "rule": f"f16/bf16: the first {EXACT_PREFIX} greedy tokens of every prompt equal the merged model's; q8_0: reported",
    }


def _claim(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """--out and its sidecar must both be new, or (with overwrite) unchanged earlier tunesmith outputs."""
    if out.suffix != ".gguf":
        raise RunError(f"--out {out} must end in .gguf")
    out = outputs.claim_file(out, overwrite=overwrite)
    sidecar = outputs.claim_file(out.with_name(out.name + ".lineage.json"), overwrite=overwrite, what="lineage sidecar")
    return out, sidecar


@contextmanager
def _stage(out: Path) -> Iterator[Path]:
    """A private temp folder beside `out` (random name, mode 0700, so nothing can be planted in it), removed after;
    on a failure, so are the folders made for `out`."""
    from tunesmith.atomic import new_parents

    with new_parents(out), tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as stage:
        yield Path(stage)


def _publish(tmp: Path, out: Path, sidecar: Path, lineage: ExportLineage) -> None:
    from tunesmith.atomic import publish, write_text_atomic

    write_text_atomic(sidecar, lineage.model_dump_json(indent=2))
    publish(tmp, out)
    outputs.record_file(out)
    outputs.record_file(sidecar)


def _source(source: Path, stage: Path) -> tuple[Path, Run | None, dict[str, Any]]:
    """(HF folder to convert, its run when known, the merge's lineage): a run is merged into `stage` first."""
    from tunesmith.export.merge import merge

    if is_run_dir(source):
        run = load_run(source)
        if not (run.adapter_dir / "adapter_config.json").exists():
            return run.adapter_dir, run, {}  # a full fine-tune's adapter/ is already a complete model
        result = merge(run, stage / "merged", dtype="float32")
        return Path(result["out"]), run, result["lineage"]
    if not (source / "config.json").exists():
        raise RunError(f"{source} is neither a run folder (run.yaml) nor a model folder (config.json)")
    merged = source / "tunesmith_lineage.json"
    lineage = read_json_record(merged, "lineage record", "merge the run again") if merged.exists() else {}
    parent = lineage.get("merged_from_run")
    return source, (load_run(parent) if isinstance(parent, str) and is_run_dir(parent) else None), lineage


def export_gguf(
    source: Path, out: Path, type_: str = "f16", n_check: int = 3, max_new_tokens: int = 32, overwrite: bool = False
) -> ExportLineage:
    """Convert a run (merged first) or a merged folder to a verified GGUF at `out`; returns the sidecar's lineage."""
    if type_ not in TYPES:
        raise RunError(f"--type {type_}: choose one of {', '.join(TYPES)}")
    out, sidecar = _claim(out, overwrite)
    with _stage(out) as stage:
        model_dir, run, merged = _source(source.expanduser().resolve(), stage)
        lineage = ExportLineage(
            artifact=out.name, kind="gguf", type=type_, **_run_lineage(run, models.load_tokenizer(str(model_dir)), merged)
        )
        tmp = stage / out.name
        convert(model_dir, tmp, type_, lineage)
        result = check(model_dir, tmp, _conversations(run, n_check), max_new_tokens)
        if not result["template_carried"]:
            raise RunError(f"refusing to write {out}: the chat template did not survive the conversion")
        if type_ != "q8_0" and result["prefix_identical"] < result["prompts"]:
            raise RunError(
                f"refusing to write {out}: {result['prompts'] - result['prefix_identical']} of {result['prompts']} prompts "
                f"gave different greedy tokens within the first {EXACT_PREFIX} after conversion to {type_}",
                hint="Try --type f16 (or bf16 for a bf16-trained model) and compare again.",
            )
        lineage = lineage.model_copy(update={"check": result, "sha256": models.sha256_file(tmp)})
        _publish(tmp, out, sidecar, lineage)
        return lineage


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

    converter = _converter(base_dir, "f32", out)
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
    out, sidecar = _claim(out, overwrite)
    tokenizer = models.load_tokenizer(str(run.adapter_dir))
    from tunesmith.loader import resolve_run_base

    lineage = ExportLineage(artifact=out.name, kind="gguf-lora", type="f32", **_run_lineage(run, tokenizer, {}))
    with _stage(out) as stage:
        tmp = stage / out.name
        count = lora_to_gguf(Path(resolve_run_base(run)), run.adapter_dir, cfg, tmp, lineage)
        lineage = lineage.model_copy(
            update={
                "check": {"adapted_weights": count, "alpha": cfg["lora_alpha"], "r": cfg["r"]},
                "sha256": models.sha256_file(tmp),
            }
        )
        _publish(tmp, out, sidecar, lineage)
    return lineage
