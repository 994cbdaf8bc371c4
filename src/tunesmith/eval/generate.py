"""The one generation function: batched, greedy or sampled (eval/stream.py streams one completion with the same
prompt, stops and decoding; eval/loss.py scores reference answers with the same prefix sharing).

Every caller (eval, merge check, chat, distillation teacher, synth, serve) goes through here, so prompts, stop
tokens, padding side, decoding and the trace/answer split are decided once. Prompts are rendered by
data.template.render_prompt in the run's thinking mode (the bytes training put before each answer). Stop tokens
are the chat family's end-of-turn and stop tokens, the model's generation_config eos list (Llama-3 / Qwen ship
several) and the tokenizer's eos, never the tokenizer's alone: a Gemma whose generation_config lacks
<end_of_turn> still stops there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunesmith import families
from tunesmith.data.reasoning import split_output
from tunesmith.data.template import render_prompt
from tunesmith.train.compact import common_prefix

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class Completion:
    """One generated answer. Token counts are in tokens of the model's tokenizer. `text` is the whole decoded
    completion; `reasoning` / `answer` / `closed` are its split (data.reasoning.split_output): the answer is what
    eval scores and serve returns as content, the trace is served as reasoning_content."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the closing stop token included
    finish_reason: FinishReason  # "stop": eos or a stop string; "length": max_new_tokens reached
    token_ids: list[int] = field(default_factory=list)  # generated ids, stop token included, padding excluded
    opened: bool = False  # the prompt already opened a trace (the completion starts inside it)
    think: tuple[str, str] = ("<think>", "</think>")
    raw: str = ""  # the completion decoded with its special tokens (the stop token aside): tool calls are parsed from it
    reasoning: str | None = field(init=False, default=None)  # None: the completion has no trace
    answer: str = field(init=False, default="")
    closed: bool = field(init=False, default=True)  # False: a trace was opened and never closed

    def __post_init__(self) -> None:
        split = split_output(self.text, self.opened, self.think)
        self.reasoning, self.answer, self.closed = split.reasoning, split.answer.strip(), split.closed


def family_of(model: Any, tokenizer: Any) -> families.Family:
    """The chat family of a loaded model (its config's model_type and its tokenizer's template)."""
    return families.detect(getattr(model, "config", None), tokenizer)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that end a turn: the family's end-of-turn tokens, the generation_config's eos (int or list), then the
    family's other stop tokens and the tokenizer's eos."""
    family = family_of(model, tokenizer)
    ids = family.end_of_turn_ids(tokenizer)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, family.stop_token_ids(tokenizer)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def prompt_text(
    model: Any, tokenizer: Any, conversation: list[dict[str, Any]], thinking: bool | None = None, tools: list[Any] | None = None
) -> str:
    """The prompt generation sends for `conversation`: render_prompt in the thinking mode given (the run's), with the
    tools it offers."""
    return render_prompt(tokenizer, conversation, thinking=thinking, tools=tools or None, family=family_of(model, tokenizer))


def opens_trace(prompt: str, family: families.Family) -> bool:
    """Whether a prompt ends inside an opened trace (a template that starts the model's reasoning for it)."""
    return prompt.rstrip().endswith(family.think[0])


def generation_config_for(model: Any, tokenizer: Any, max_new_tokens: int, temperature: float, top_p: float) -> Any:
    """A copy of the model's generation_config with this call's decoding (keeps its other fields)."""
    import copy

    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()  # type: ignore[no-untyped-call]  # untyped upstream
    sample = temperature > 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_token_ids(model, tokenizer)[0]
    # Greedy clears the sampling knobs a hub config may carry, so transformers does not warn they are unused.
    config.update(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        num_beams=1,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=pad,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None if not sample else config.top_k,
        max_length=None,
    )
    return config


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text before the earliest stop string (the stop string itself is not returned), and whether one was found."""
    hits = [text.find(s) for s in stop or [] if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def seeded(seed: int | None) -> Any:
    """A context in which sampling is reproducible for `seed` without touching the caller's global RNG."""
    import contextlib

    import torch

    if seed is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(seed)
    return stack


def _finish(
    tokenizer: Any,
    new_ids: list[int],
    stops: set[int],
    pad: int | None,
    stop: list[str] | None,
    prompt_tokens: int,
    family: families.Family,
    opened: bool,
) -> Completion:
    """Trim one row's generated ids at its first stop token and decode it."""
    end = next((j for j, t in enumerate(new_ids) if t in stops), None)
    ids = new_ids[: end + 1] if end is not None else new_ids
    if end is None and pad is not None:
        # A row that hit a stop string is padded to the batch's length afterwards.
        while ids and ids[-1] == pad:
            ids = ids[:-1]
    text, cut = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
    reason: FinishReason = "stop" if end is not None or cut else "length"
    raw = cut_at_stop(raw_completion(tokenizer, ids, stops), stop)[0]
    return Completion(text.strip(), prompt_tokens, len(ids), reason, ids, opened, family.think, raw.strip())


def raw_completion(tokenizer: Any, ids: list[int], stops: set[int]) -> str:
    """Generated ids decoded with their special tokens (a family's call marker may be one), up to the first stop
    token: what tool calls are parsed from (eval.tool_metrics.completion_turn)."""
    end = next((j for j, t in enumerate(ids) if t in stops), len(ids))
    return str(tokenizer.decode(ids[:end], skip_special_tokens=False))


MIN_SHARED_PREFIX = 16  # tokens; a shorter shared prefix saves less prefill than its own forward pass costs


def _forward_parameters(model: Any) -> set[str]:
    """Parameter names of the transformers model's forward() (under a peft wrapper, the wrapped model's)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(inner.forward).parameters)


def shares_prefix(model: Any, config: Any = None) -> bool:
    """Whether a batch's shared prompt prefix can be run once and its KV cache handed to generate().

    Needs a decoder whose positions generate() derives from the attention mask (the rows are padded between the
    shared prefix and their own tokens), no cache type fixed by the generation_config, and no virtual prompt
    tokens (peft's prompt tuning puts its own in front of every row).
    """
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "is_encoder_decoder", False) or getattr(config, "cache_implementation", None):
        return False
    return "position_ids" in _forward_parameters(model)


def cache_argument(model: Any) -> str:
    """The KV cache's name in forward()/generate() and in model outputs: `cache` from transformers 5.24 on
    (`past_key_values` is deprecated there), `past_key_values` before."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def prefix_kv_cache(model: Any, prefix: list[int]) -> Any:
    """The KV cache of one forward pass over `prefix`, or None when the model hands back no transformers Cache."""
    import torch

    out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    cache = getattr(out, cache_argument(model), None)
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def _right_aligned(rows: list[list[int]], pad: int) -> tuple[Any, Any]:
    """input_ids and attention_mask (on the CPU), each row right-aligned after `pad` tokens the mask hides."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _left_padded(model: Any, rows: list[list[int]], pad: int) -> dict[str, Any]:
    """generate() inputs, each row right-aligned (decoder-only models continue from the right edge)."""
    ids, mask = _right_aligned(rows, pad)
    return {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}


def _prefilled(model: Any, rows: list[list[int]], shared: int, pad: int) -> dict[str, Any]:
    """generate() inputs whose first `shared` tokens (the same in every row) are already in a KV cache.

    The shared prefix (a system prompt, the chat template's header) runs once instead of once per row; each row
    is [prefix][padding][own tokens], masked so that no token attends to padding, with positions from the mask,
    so every row's tokens see exactly what they would see alone.
    """
    import torch

    cache = prefix_kv_cache(model, rows[0][:shared])
    if cache is None:  # generate as usual
        return _left_padded(model, rows, pad)
    cache.batch_repeat_interleave(len(rows))
    own_ids, own_mask = _right_aligned([r[shared:] for r in rows], pad)
    prefix = torch.tensor(rows[0][:shared]).expand(len(rows), shared)
    ids = torch.cat([prefix, own_ids], dim=1)
    mask = torch.cat([torch.ones_like(prefix), own_mask], dim=1)
    return {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device), cache_argument(model): cache}


def generate_detailed(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    max_new_tokens: int,
    batch_size: int = 8,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
    thinking: bool | None = None,
    tools: Sequence[list[Any] | None] | None = None,
) -> list[Completion]:
    """Completions in input order, generated in left-padded batches of similar prompt length.

    Greedy when temperature == 0. A batch ends as soon as every row has produced a stop token
    (or a stop string), so short answers do not pay for max_new_tokens. When a batch's prompts start with the
    same tokens (a shared system prompt), that prefix is computed once for the batch (see `_prefilled`).
    thinking: the run's thinking mode (Manifest.family.thinking), for families with a switch; tools: per conversation,
    the tools its prompt offers (None: none).
    """
    import torch

    family = family_of(model, tokenizer)
    offered = list(tools) if tools is not None else [None] * len(conversations)
    prompts = [prompt_text(model, tokenizer, conv, thinking, t) for conv, t in zip(conversations, offered, strict=True)]
    config = generation_config_for(model, tokenizer, max_new_tokens, temperature, top_p)
    stops = set(config.eos_token_id)
    done: dict[int, Completion] = {}
    # Similar lengths together waste less padding; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    can_share = shares_prefix(model, config)
    with seeded(seed):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in idx]
            extra: dict[str, Any] = {"stop_strings": stop, "tokenizer": tokenizer} if stop else {}
            with torch.inference_mode():
                shared = common_prefix(rows, own=1) if can_share else 0
                if shared >= MIN_SHARED_PREFIX:
                    enc = _prefilled(model, rows, shared, config.pad_token_id)
                else:
                    enc = _left_padded(model, rows, config.pad_token_id)
                out = model.generate(**enc, generation_config=config, **extra)
            width = enc["input_ids"].shape[1]
            for row, i in enumerate(idx):
                n_prompt = int(enc["attention_mask"][row].sum())
                new_ids = out[row, width:].tolist()
                opened = opens_trace(prompts[i], family)
                done[i] = _finish(tokenizer, new_ids, stops, config.pad_token_id, stop, n_prompt, family, opened)
            if on_batch:
                on_batch(len(idx))
    return [done[i] for i in range(len(prompts))]


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    max_new_tokens: int,
    batch_size: int = 8,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
    thinking: bool | None = None,
) -> list[str]:
    """Completion texts in input order, trace included (see generate_detailed)."""
    return [
        c.text
        for c in generate_detailed(
            model,
            tokenizer,
            conversations,
            max_new_tokens,
            batch_size,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            on_batch=on_batch,
            thinking=thinking,
        )
    ]
