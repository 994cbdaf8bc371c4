"""The paths `tunesmith verify` compares (adapter, merged folder, GGUF, a serving engine), each against the training
reference of a run's first held-out prompts (see tunesmith/verify/parity.py). Export and serve use these checks
on what they made; `verify` (the package) also makes the merged folder and the GGUF it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import families, models
from tunesmith.data.template import prompt_messages, render_prompt, render_turns
from tunesmith.eval import generate
from tunesmith.eval.generate import prompt_text, stop_token_ids
from tunesmith.loader import load_run_model, run_thinking
from tunesmith.run import load_run
from tunesmith.train.methods import held_out_examples
from tunesmith.verify.compare import Divergence, Report, compare_ids, compare_prompts, compare_stops
from tunesmith.verify.llamacpp import check as llama_cpp_check

DEFAULT_PROMPTS = 3
DEFAULT_TOKENS = 16  # greedy tokens compared per prompt (an f16 export must match all of them)
EXACT_FILE_TYPES = {0, 1, 32}  # GGUF general.file_type: all f32, mostly f16, mostly bf16


@dataclass
class Reference:
    """The training side of every comparison, for the first held-out prompts."""

    convs: list[list[dict[str, Any]]]
    tools: list[Any]
    prompts: list[str]  # the training render's text before each answer
    prompt_ids: list[list[int]]
    tokenizer: Any  # the run's (adapter/) tokenizer
    thinking: bool | None
    end_of_turn: list[int]  # the family's end-of-turn ids: every path must stop on them
    tokens: list[list[int]] = field(default_factory=list)  # the adapter's greedy tokens
    completions: list[Any] = field(default_factory=list)


def training_prompt(tokenizer: Any, example: Any, policy: str, thinking: bool | None) -> str:
    """The text training put before a held-out row's last answer (its tools and data.reasoning), in the run's thinking
    mode; a row trained in the other mode (or whose last answer was not trained) gets render_prompt in the run's."""
    tools = example.extra.get("tools")
    rendered = render_turns(tokenizer, example.messages, policy=policy, tools=tools)
    if rendered.spans and rendered.thinking == thinking:
        return rendered.text[: rendered.split_at]
    return render_prompt(tokenizer, prompt_messages(example.messages), thinking=thinking, tools=tools)


def reference(run: Any, n: int, tokenizer: Any | None = None) -> Reference:
    """The reference prompts and stop tokens of a run's first `n` held-out rows (no model is loaded)."""
    tok = tokenizer or models.load_tokenizer(str(run.adapter_dir))
    examples = held_out_examples(run)[:n]
    thinking = run_thinking(run)
    policy = run.recipe.data.reasoning
    prompts = [training_prompt(tok, e, policy, thinking) for e in examples]
    family = families.detect(models.read_config(run.base_path), tok)
    return Reference(
        [prompt_messages(e.messages) for e in examples],
        [e.extra.get("tools") for e in examples],
        prompts,
        [tok(p, add_special_tokens=False)["input_ids"] for p in prompts],
        tok,
        thinking,
        family.end_of_turn_ids(tok),
    )


def _greedy(model: Any, tokenizer: Any, ref: Reference, max_new_tokens: int) -> list[Any]:

    return generate.generate_detailed(model, tokenizer, ref.convs, max_new_tokens, batch_size=1, thinking=ref.thinking)


def _tokens(path: str, ref: Reference, done: list[Any], tokenizer: Any, blocking: bool = True) -> list[Divergence]:
    out: list[Divergence] = []
    for k, (want, got) in enumerate(zip(ref.tokens, done), start=1):
        out += compare_ids(path, "tokens", k, want, got.token_ids, tokenizer, blocking)
    return out


def adapter_path(run: Any, ref: Reference, max_new_tokens: int) -> list[Divergence]:
    """The run's adapter in transformers (what eval scored): its prompts and stops; its greedy tokens become the
    reference for the other paths."""
    loaded = load_run_model(run)
    found = compare_prompts(
        "adapter", ref, [prompt_text(loaded.model, loaded.tokenizer, c, ref.thinking) for c in ref.convs], loaded.tokenizer
    )
    found += compare_stops("adapter", ref.end_of_turn, stop_token_ids(loaded.model, loaded.tokenizer), ref.tokenizer)
    ref.completions = _greedy(loaded.model, loaded.tokenizer, ref, max_new_tokens)
    ref.tokens = [c.token_ids for c in ref.completions]
    return found


def _config_stops(folder: Path) -> list[int]:
    """generation_config.json's eos_token_id as a list (what HF generate and vLLM stop on when they read the folder)."""
    import json

    path = folder / "generation_config.json"
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.exists() else None
    except (OSError, ValueError):
        eos = None
    return [int(i) for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)]


def folder_parity(ref: Reference, folder: Path, path: str = "merged") -> list[Divergence]:
    """A model folder's own template and generation_config against the reference: prompt bytes, stop tokens."""
    tok = models.load_tokenizer(str(folder))
    family = families.detect(models.read_config(str(folder)), tok)
    prompts = [render_prompt(tok, c, thinking=ref.thinking, family=family, tools=t) for c, t in zip(ref.convs, ref.tools)]
    return compare_prompts(path, ref, prompts, tok) + compare_stops(path, ref.end_of_turn, _config_stops(folder), ref.tokenizer)


def merged_path(ref: Reference, folder: Path, max_new_tokens: int) -> list[Divergence]:
    """The merged folder as another runtime reads it, and its greedy tokens."""
    found = folder_parity(ref, folder)
    model = models.load_model(str(folder), "float32").eval()
    return found + _tokens("merged", ref, _greedy(model, models.load_tokenizer(str(folder)), ref, max_new_tokens), ref.tokenizer)


def gguf_path(ref: Reference, gguf_file: Path, max_new_tokens: int) -> list[Divergence]:
    """The GGUF reloaded by transformers: its embedded template, its stop keys, its greedy tokens (identical for
    f16/bf16/f32 files, reported for quantized ones)."""
    model, tok = models.load_gguf(gguf_file)
    family = families.detect(model.config, tok)
    prompts = [render_prompt(tok, c, thinking=ref.thinking, family=family, tools=t) for c, t in zip(ref.convs, ref.tools)]
    found = compare_prompts("gguf", ref, prompts, tok)
    found += compare_stops("gguf", ref.end_of_turn[:1], list(models.stops_of(gguf_file).values()), ref.tokenizer)
    done = _greedy(model.eval(), tok, ref, max_new_tokens)
    return found + _tokens("gguf", ref, done, ref.tokenizer, exact_file(gguf_file))


def exact_file(gguf_file: Path) -> bool:
    """Whether a GGUF holds f32/f16/bf16 weights (its greedy tokens must be identical) rather than quantized ones."""
    import gguf

    kind = gguf.GGUFReader(gguf_file).fields.get("general.file_type")
    return kind is None or int(kind.parts[kind.data[0]][0]) in EXACT_FILE_TYPES


def engine_parity(engine: Any, n: int = DEFAULT_PROMPTS) -> list[Divergence]:
    """`serve --check`: every served run's prompts as the engine renders them, and the engine's stop tokens, against
    its run's training render (no generation: the deploy check compares the answers)."""
    found: list[Divergence] = []
    for served in engine.models.values():
        if not served.run:
            continue
        ref = reference(load_run(served.run), n)
        path = f"served {served.name}"
        found += compare_prompts(path, ref, [engine.prompt(served.name, c) for c in ref.convs], engine.tokenizer)
        found += compare_stops(path, ref.end_of_turn, stop_token_ids(engine.model, engine.tokenizer), ref.tokenizer)
    return found


def start(run: Any, prompts: int, max_new_tokens: int) -> tuple[Reference, Report]:
    """The reference of `run`'s first held-out prompts, and a report holding the adapter's own path."""
    ref = reference(run, prompts)
    family = run.manifest.family.family if run.manifest.family is not None else "unrecorded"
    report = Report(str(run.dir), family, ref.thinking, len(ref.convs), max_new_tokens)
    report.add("adapter", adapter_path(run, ref, max_new_tokens), "the adapter in transformers: the reference tokens")
    return ref, report


def check_gguf(report: Report, ref: Reference, gguf_file: Path, max_new_tokens: int) -> None:
    """The GGUF's paths: reloaded by transformers, and run by llama.cpp where it is installed."""
    report.add("gguf", gguf_path(ref, gguf_file, max_new_tokens), f"{gguf_file.name} via transformers' GGUF loader")
    llama_cpp_check(report, ref, gguf_file, max_new_tokens, exact_file(gguf_file))


def verify_files(
    run: Any, merged: Path, gguf_file: Path, prompts: int = DEFAULT_PROMPTS, max_new_tokens: int = DEFAULT_TOKENS
) -> Report:
    """The adapter, a merged folder and the GGUF made of it, against the reference (export's check of the file it is
    about to publish; `verify` with both files given and serve=False)."""
    ref, report = start(run, prompts, max_new_tokens)
    report.add("merged", merged_path(ref, merged, max_new_tokens), str(merged))
    check_gguf(report, ref, gguf_file, max_new_tokens)
    return report
