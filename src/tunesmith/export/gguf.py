"""GGUF export for llama.cpp / Ollama / LM Studio: llama.cpp's own converter, verified before the file is published.

A run is merged first (export.merge, into a temp folder beside --out); a merged folder is converted as it is.
The file is written to a temp name beside --out, reloaded by transformers and compared with the merged model on
held-out prompts (greedy tokens, prompts rendered in the run's thinking mode), and only then renamed into place,
with its lineage embedded under the GGUF key `tunesmith.lineage` and beside it as FILE.gguf.lineage.json. The file
carries the chat template and the chat family's stop tokens (end of turn as `eot`/`eom`, beside `eos`), which
llama.cpp stops on. An architecture, or a vocabulary, that llama.cpp's converter cannot read is refused before
anything is merged, naming the architecture.
`--adapter-only` is export/gguf_lora.py.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from tunesmith import families, models, outputs
from tunesmith.atomic import new_parents, publish, write_text_atomic
from tunesmith.data.template import prompt_messages
from tunesmith.errors import ModelError, RunError
from tunesmith.eval import generate
from tunesmith.eval.generate import stop_token_ids
from tunesmith.export.merge import merge
from tunesmith.loader import resolve_run_base, run_thinking
from tunesmith.records import Record, read_eval_report
from tunesmith.run import Run, is_run_dir, load_run, read_json_record, versions
from tunesmith.train.methods import held_out_examples
from tunesmith.verify.compare import Divergent
from tunesmith.verify.paths import verify_files

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


def run_lineage(run: Run | None, tokenizer: Any, merged_lineage: dict[str, Any]) -> dict[str, Any]:
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


def architecture(model_dir: Path) -> str:
    """The architecture llama.cpp's converter reads from config.json (e.g. Qwen3ForCausalLM)."""
    from conversion import ModelBase, ModelType, get_model_architecture

    return str(get_model_architecture(ModelBase.load_hparams(model_dir, False), ModelType.TEXT))


# Qwen 2's pre-tokenizer regex (transformers' Qwen2Tokenizer writes it before a byte-level step without its own regex).
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _by_structure(spec: dict[str, Any]) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer it implements: byte-level with GPT-2's regex and no
    normalizer is "gpt-2"; Qwen 2's regex split then byte-level (NFC, which llama.cpp leaves out for Qwen 2 too) is
    "qwen2"; None otherwise."""
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if norm is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if (norm is None or norm.get("type") == "NFC") and isinstance(steps, list) and len(steps) == 2:
        split, byte = steps
        regex = (split.get("pattern") or {}).get("Regex")
        if (
            split.get("type") == "Split"
            and regex == QWEN2_REGEX
            and byte.get("type") == "ByteLevel"
            and not byte.get("use_regex")
        ):
            return "qwen2"
    return None


def converter_for(model_dir: Path, type_: str, out: Path) -> Any:
    """llama.cpp's converter class for this architecture, instantiated on model_dir (nothing written yet)."""
    import gguf
    from conversion import get_model_class

    arch = architecture(model_dir)
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
        # misses. A pre-tokenizer whose structure is one llama.cpp implements is that one, whatever the vocabulary
        # (_by_structure); anything else stays refused, as the converter refuses it.
        try:
            return str(by_hash(tokenizer))
        except NotImplementedError:
            spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
            name = _by_structure(spec)
            if name is not None:
                log.warning("%s: pre-tokenizer not in llama.cpp's list; its structure is %r, written as such", model_dir, name)
                return name
            raise ModelError(
                f"llama.cpp's converter does not recognise the pre-tokenizer of {model_dir}",
                hint="See llama.cpp's convert_hf_to_gguf_update.py for adding it.",
            ) from None

    converter.get_vocab_base_pre = pre_tokenizer
    return converter


def refuse_unconvertible(model_dir: Path) -> None:
    """ModelError naming the architecture when llama.cpp's converter cannot convert this model: one it does not
    know, or a vocabulary its converter for that architecture cannot read (Gemma 2 and Phi-3 expect SentencePiece's
    tokenizer.model; Phi-4 a GPT-2 tokenizer). Reads the vocabulary only: nothing is written."""
    arch = architecture(model_dir)
    try:
        with _quiet():
            converter_for(model_dir, "f16", model_dir / ".never-written.gguf").set_vocab()
    except (ValueError, OSError, KeyError, ImportError, NotImplementedError) as exc:
        raise ModelError(
            f"cannot export {model_dir} as GGUF: llama.cpp's converter for {arch} cannot read its vocabulary ({exc})",
            hint="Export safetensors (tunesmith merge) and serve that folder, or use the model's original tokenizer files.",
        ) from None


def carry_stops(writer: Any, model_dir: Path) -> dict[str, int]:
    """Write the chat family's end-of-turn tokens into the GGUF's `eot` (and `eom`: Llama 3's <|eom_id|>) keys, where
    llama.cpp looks for the tokens that end generation beside `eos`; returns the ids written by key."""
    import gguf

    tokenizer = models.load_tokenizer(str(model_dir))
    ends = families.detect(models.read_config(str(model_dir)), tokenizer).end_of_turn_ids(tokenizer)
    written: dict[str, int] = {}
    for key, token in zip((gguf.Keys.Tokenizer.EOT_ID, gguf.Keys.Tokenizer.EOM_ID), ends):
        writer.kv_data[0].pop(key, None)  # the converter may have set it: ours replaces it, without a duplicate
        writer.add_uint32(key, token)
        written[key] = token
    return written


@contextmanager
def _quiet() -> Iterator[None]:
    """llama.cpp's converter logs per-tensor INFO lines and a banner for unknown pre-tokenizers: errors only."""
    chatter = logging.getLogger("hf-to-gguf")
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        yield
    finally:
        chatter.setLevel(level)


def convert(model_dir: Path, out: Path, type_: str, lineage: ExportLineage) -> None:
    """Write model_dir (an HF folder) as a GGUF file at `out`, lineage embedded."""
    import torch

    with _quiet(), torch.inference_mode():
        converter = converter_for(model_dir, type_, out)
        converter.gguf_writer.add_string(LINEAGE_KEY, lineage.model_dump_json())
        # ModelBase.write() with the writer's per-byte tqdm bar off (the CLI shows its own status).
        converter.prepare_tensors()
        converter.prepare_metadata(vocab_only=False)
        carry_stops(converter.gguf_writer, model_dir)
        converter.gguf_writer.write_header_to_file(path=out)
        converter.gguf_writer.write_kv_data_to_file()
        converter.gguf_writer.write_tensors_to_file(progress=False)
        converter.gguf_writer.close()


def _conversations(run: Run | None, n: int) -> list[list[dict[str, Any]]]:
    """Held-out prompts of the run (without their answers), else a few fixed ones."""
    if run is not None:
        convs = [prompt_messages(e.messages) for e in held_out_examples(run)[:n]]
        if convs:
            return convs
    return [[{"role": "user", "content": p}] for p in FALLBACK_PROMPTS[:n]]


def check(
    model_dir: Path,
    gguf_path: Path,
    conversations: list[list[dict[str, Any]]],
    max_new_tokens: int,
    thinking: bool | None = None,
) -> dict[str, Any]:
    """Greedy tokens of the GGUF (reloaded by transformers, its own tokenizer and template) vs the HF folder's, both
    prompted in the run's thinking mode; and whether the template and the family's stop tokens were carried."""
    ref_model = models.load_model(str(model_dir), "float32").eval()
    ref_tok = models.load_tokenizer(str(model_dir))
    done = generate.generate_detailed(ref_model, ref_tok, conversations, max_new_tokens, batch_size=1, thinking=thinking)
    ref, stops = [c.token_ids for c in done], stop_token_ids(ref_model, ref_tok)
    del ref_model
    model, tokenizer = models.load_gguf(gguf_path)
    done = generate.generate_detailed(model.eval(), tokenizer, conversations, max_new_tokens, batch_size=1, thinking=thinking)
    got = [c.token_ids for c in done]
    prefix = [a[:EXACT_PREFIX] == b[:EXACT_PREFIX] for a, b in zip(ref, got)]
    carried = models.stops_of(gguf_path)
    return {
        "prompts": len(ref),
        "identical": sum(a == b for a, b in zip(ref, got)),
        "prefix_identical": sum(prefix),
        "max_new_tokens": max_new_tokens,
        "template_carried": tokenizer.chat_template == ref_tok.chat_template,
        "stop_tokens": carried,
        # the end of turn must be among llama.cpp's end-of-generation keys, and every key a stop tokenizer knows
        "stops_carried": stops[0] in carried.values() and set(carried.values()) <= set(stops),
        "rule": f"f16/bf16: the first {EXACT_PREFIX} greedy tokens of every prompt equal the merged model's; q8_0: reported",
    }


def claim_output(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """--out and its sidecar must both be new, or (with overwrite) unchanged earlier tunesmith outputs."""
    if out.suffix != ".gguf":
        raise RunError(f"--out {out} must end in .gguf")
    out = outputs.claim_file(out, overwrite=overwrite)
    sidecar = outputs.claim_file(out.with_name(out.name + ".lineage.json"), overwrite=overwrite, what="lineage sidecar")
    return out, sidecar


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A private temp folder beside `out` (random name, mode 0700, so nothing can be planted in it), removed after;
    on a failure, so are the folders made for `out`."""
    with new_parents(out), tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as stage:
        yield Path(stage)


def publish_export(tmp: Path, out: Path, sidecar: Path, lineage: ExportLineage) -> None:
    write_text_atomic(sidecar, lineage.model_dump_json(indent=2))
    publish(tmp, out)
    outputs.record_file(out)
    outputs.record_file(sidecar)


def _source(source: Path, stage: Path) -> tuple[Path, Run | None, dict[str, Any]]:
    """(HF folder to convert, its run when known, the merge's lineage): a run is merged into `stage` first."""
    if is_run_dir(source):
        run = load_run(source)
        if not (run.adapter_dir / "adapter_config.json").exists():
            refuse_unconvertible(run.adapter_dir)
            return run.adapter_dir, run, {}  # a full fine-tune's adapter/ is already a complete model
        refuse_unconvertible(Path(resolve_run_base(run)))  # before the merge: the base has the run's architecture
        result = merge(run, stage / "merged", dtype="float32")
        return Path(result["out"]), run, result["lineage"]
    if not (source / "config.json").exists():
        raise RunError(f"{source} is neither a run folder (run.yaml) nor a model folder (config.json)")
    refuse_unconvertible(source)
    merged = source / "tunesmith_lineage.json"
    lineage = read_json_record(merged, "lineage record", "merge the run again") if merged.exists() else {}
    parent = lineage.get("merged_from_run")
    return source, (load_run(parent) if isinstance(parent, str) and is_run_dir(parent) else None), lineage


def _verified(run: Run, merged: Path, gguf_file: Path, prompts: int, max_new_tokens: int) -> dict[str, Any]:
    """tunesmith verify on the file about to be published (the served path aside); Divergent when a path differs."""
    report = verify_files(run, merged, gguf_file, prompts, max_new_tokens)
    if not report.passed:
        raise Divergent(report)
    return {"passed": True, "checks": {c.path: c.status for c in report.checks}, "max_new_tokens": max_new_tokens}


def export_gguf(
    source: Path, out: Path, type_: str = "f16", n_check: int = 3, max_new_tokens: int = 32, overwrite: bool = False
) -> ExportLineage:
    """Convert a run (merged first) or a merged folder to a verified GGUF at `out`; returns the sidecar's lineage."""
    if type_ not in TYPES:
        raise RunError(f"--type {type_}: choose one of {', '.join(TYPES)}")
    out, sidecar = claim_output(out, overwrite)
    with staging_dir(out) as stage:
        model_dir, run, merged = _source(source.expanduser().resolve(), stage)
        lineage = ExportLineage(
            artifact=out.name, kind="gguf", type=type_, **run_lineage(run, models.load_tokenizer(str(model_dir)), merged)
        )
        tmp = stage / out.name
        convert(model_dir, tmp, type_, lineage)
        thinking = merged.get("thinking") if run is None else run_thinking(run)
        result = check(model_dir, tmp, _conversations(run, n_check), max_new_tokens, thinking)
        if not result["template_carried"]:
            raise RunError(f"refusing to write {out}: the chat template did not survive the conversion")
        if not result["stops_carried"]:
            raise RunError(f"refusing to write {out}: the family's stop tokens did not survive ({result['stop_tokens']})")
        if run is not None:  # training render, adapter, merged folder and this file compared (exit 3 on a divergence)
            result["verify"] = _verified(run, model_dir, tmp, n_check, min(max_new_tokens, EXACT_PREFIX))
        if type_ != "q8_0" and result["prefix_identical"] < result["prompts"]:
            raise RunError(
                f"refusing to write {out}: {result['prompts'] - result['prefix_identical']} of {result['prompts']} prompts "
                f"gave different greedy tokens within the first {EXACT_PREFIX} after conversion to {type_}",
                hint="Try --type f16 (or bf16 for a bf16-trained model) and compare again.",
            )
        lineage = lineage.model_copy(update={"check": result, "sha256": models.sha256_file(tmp)})
        publish_export(tmp, out, sidecar, lineage)
        return lineage
