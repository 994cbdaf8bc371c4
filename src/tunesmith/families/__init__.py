"""Model families as data: what each chat format needs to be trained, prompted, stopped and parsed the same way.

One `Family` per documented chat format (Llama 3.x, Qwen 2.5, Qwen 3, Gemma 2/3, Mistral v0.3, Phi-3/3.5/4-mini,
Phi-4, plain ChatML such as SmolLM2) plus `UNKNOWN`, which reads the model's own template and falls back to its EOS.
Training masks (data.template), prompts (render_prompt), stop tokens, reasoning (data.reasoning) and tool calls
(families.tools) all ask the family instead of special-casing a model. Detection reads the chat template's markers
and the config's `model_type`; a model folder without a template is matched on its vocabulary and gets the
family's template from templates/ (written for tunesmith from each family's documented format).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

SystemStyle = Literal["role", "first_user", "last_user"]
ReasoningStyle = Literal["native", "inline"]


@dataclass(frozen=True)
class Family:
    """One chat format. Token fields are token strings; `*_ids(tokenizer)` turns them into ids."""

    name: str
    title: str
    template_markers: tuple[str, ...]  # all present in a chat template of this family
    vocab_markers: tuple[str, ...]  # all in the vocabulary when a folder has no template
    model_types: tuple[str, ...]  # config.model_type values; empty = any
    end_of_turn: tuple[str, ...]  # tokens that close an assistant turn: trained, and they stop generation
    stop: tuple[str, ...]  # further tokens that stop generation (never trained as turn ends)
    generation_prompt: str  # what the prompt ends with, after the last user turn
    system: SystemStyle  # role: its own turn; first_user / last_user: folded into that user turn
    reasoning: ReasoningStyle  # native: the template reads `reasoning_content`; inline: <think>…</think> in content
    tools: str | None  # tool-call style (families.tools.STYLES), None: the family documents no tool format
    template: str | None = None  # file under templates/ rendering this family
    thinking_switch: bool = False  # the template takes enable_thinking (false: an empty trace opens the answer)
    think: tuple[str, str] = ("<think>", "</think>")
    fixed_kwargs: tuple[tuple[str, Any], ...] = ()  # template variables pinned so every render is byte-identical
    notes: str = ""

    def template_text(self) -> str | None:
        """The committed template for this family, or None (UNKNOWN)."""
        if self.template is None:
            return None
        return (resources.files(__package__) / "templates" / self.template).read_text(encoding="utf-8")

    def render_kwargs(self, thinking: bool | None = None) -> dict[str, Any]:
        """Extra template variables for every render: pinned values, and enable_thinking when the family has it."""
        kwargs = dict(self.fixed_kwargs)
        if self.thinking_switch and thinking is not None:
            kwargs["enable_thinking"] = thinking
        return kwargs

    def end_of_turn_ids(self, tokenizer: Any) -> list[int]:
        """Ids of the end-of-turn tokens in this vocabulary; the tokenizer's EOS when the family knows none."""
        ids = _token_ids(tokenizer, self.end_of_turn)
        if not ids and tokenizer.eos_token_id is not None:
            ids = [int(tokenizer.eos_token_id)]
        return ids

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that stop generation: end-of-turn tokens, the family's other stop tokens, then the tokenizer's EOS."""
        ids = self.end_of_turn_ids(tokenizer)
        for i in [*_token_ids(tokenizer, self.stop), tokenizer.eos_token_id]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
        return ids


def _token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [int(vocab[t]) for t in tokens if t in vocab]


_LLAMA3 = Family(
    name="llama3",
    title="Llama 3.x",
    template_markers=("<|start_header_id|>", "<|eot_id|>"),
    vocab_markers=("<|start_header_id|>", "<|eot_id|>"),
    model_types=("llama",),
    end_of_turn=("<|eot_id|>", "<|eom_id|>"),
    stop=("<|end_of_text|>",),
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    system="role",
    reasoning="inline",
    tools="llama3_json",
    template="llama3.jinja",
    # Llama 3.1+ templates write today's date into the system turn: pinned, or a prompt rendered on another day
    # differs from the one trained on.
    fixed_kwargs=(("date_string", "26 Jul 2024"),),
    notes="The system turn always carries the knowledge cut-off and a date (pinned to the template's own default).",
)
_QWEN3 = Family(
    name="qwen3",
    title="Qwen 3",
    template_markers=("<|im_start|>", "<think>"),
    vocab_markers=("<|im_start|>", "<think>"),
    model_types=("qwen3", "qwen3_moe"),
    end_of_turn=("<|im_end|>",),
    stop=("<|endoftext|>",),
    generation_prompt="<|im_start|>assistant\n",
    system="role",
    reasoning="native",
    tools="hermes",
    template="qwen3.jinja",
    thinking_switch=True,
    notes="The template strips the reasoning of turns before the last user message and always opens the last "
    "turn with a <think> block (empty when there is no trace); thinking off puts that empty block in the prompt.",
)
_QWEN25 = Family(
    name="qwen2.5",
    title="Qwen 2.5",
    template_markers=("<|im_start|>", "You are Qwen"),
    vocab_markers=("<|im_start|>",),
    model_types=("qwen2",),
    end_of_turn=("<|im_end|>",),
    stop=("<|endoftext|>",),
    generation_prompt="<|im_start|>assistant\n",
    system="role",
    reasoning="inline",
    tools="hermes",
    template="qwen2.5.jinja",
    notes="A default system prompt is rendered when the row has none.",
)
_PHI4 = Family(
    name="phi4",
    title="Phi-4",
    template_markers=("<|im_sep|>",),
    vocab_markers=("<|im_sep|>",),
    model_types=("phi3",),
    end_of_turn=("<|im_end|>",),
    stop=("<|endoftext|>",),
    generation_prompt="<|im_start|>assistant<|im_sep|>",
    system="role",
    reasoning="inline",
    tools=None,
    template="phi4.jinja",
    notes="Phi-4 documents no tool format: rows with tools are refused.",
)
_PHI3 = Family(
    name="phi3",
    title="Phi-3 / Phi-3.5 / Phi-4-mini",
    template_markers=("<|assistant|>", "<|end|>"),
    vocab_markers=("<|assistant|>", "<|end|>"),
    model_types=("phi3",),
    end_of_turn=("<|end|>",),
    stop=("<|endoftext|>",),
    generation_prompt="<|assistant|>\n",
    system="role",
    reasoning="inline",
    tools="phi4_mini",
    template="phi3.jinja",
    notes="The template ends a conversation with the tokenizer's EOS after the last <|end|>: not trained.",
)
_GEMMA = Family(
    name="gemma",
    title="Gemma 2 / 3",
    template_markers=("<start_of_turn>",),
    vocab_markers=("<start_of_turn>", "<end_of_turn>"),
    model_types=("gemma", "gemma2", "gemma3", "gemma3_text"),
    end_of_turn=("<end_of_turn>",),
    stop=("<eos>",),
    generation_prompt="<start_of_turn>model\n",
    system="first_user",
    reasoning="inline",
    tools="json",
    template="gemma.jinja",
    notes="No system role: the system prompt opens the first user turn (folded by tunesmith when a template, "
    "as Gemma 2's, refuses it).",
)
_MISTRAL = Family(
    name="mistral",
    title="Mistral (v0.3 [INST])",
    template_markers=("[INST]",),
    vocab_markers=("[INST]", "[/INST]"),
    model_types=("mistral", "mixtral"),
    end_of_turn=("</s>",),
    stop=(),
    generation_prompt="[/INST]",
    system="last_user",
    reasoning="inline",
    tools="mistral",
    template="mistral.jinja",
    notes="The system prompt joins the last user message, so in a multi-turn row the earlier answers are seen in "
    "a context inference never builds: they are not trained (counted).",
)
_CHATML = Family(
    name="chatml",
    title="ChatML (SmolLM2 and others)",
    template_markers=("<|im_start|>",),
    vocab_markers=("<|im_start|>", "<|im_end|>"),
    model_types=(),
    end_of_turn=("<|im_end|>",),
    stop=("<|endoftext|>",),
    generation_prompt="<|im_start|>assistant\n",
    system="role",
    reasoning="inline",
    tools="hermes",
    template="chatml.jinja",
)
UNKNOWN = Family(
    name="unknown",
    title="Other (the model's own template)",
    template_markers=(),
    vocab_markers=(),
    model_types=(),
    end_of_turn=(),
    stop=(),
    generation_prompt="",
    system="role",
    reasoning="inline",
    tools=None,
    notes="Rendered by the model's own template; the turn ends at the tokenizer's EOS (appended and trained when "
    "the template omits it).",
)

# Detection order matters: more specific formats before the ChatML they share markers with.
FAMILIES: dict[str, Family] = {f.name: f for f in (_LLAMA3, _QWEN3, _QWEN25, _PHI4, _PHI3, _GEMMA, _MISTRAL, _CHATML)}
FAMILIES[UNKNOWN.name] = UNKNOWN


def get(name: str) -> Family:
    """The family called `name` (KeyError names the known ones)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family `{name}`; known: {', '.join(FAMILIES)}") from None


def template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template text ('' when none; the `default` one of a named set)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), "")
    return str(template)


def model_type_of(config: Any) -> str | None:
    """config.model_type from a transformers config, a config.json dict, or None."""
    if config is None:
        return None
    value = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    return str(value) if value else None


def detect(config: Any, tokenizer: Any) -> Family:
    """The family of a model from its config (or None) and tokenizer: template markers first, the vocabulary
    when the tokenizer has no template. A model_type the family does not list vetoes it."""
    template = template_of(tokenizer)
    return _detect(model_type_of(config), template, None if template else frozenset(tokenizer.get_vocab()))


def for_tokenizer(tokenizer: Any) -> Family:
    """The family of a tokenizer alone (no config): cached per chat template, used when rendering rows."""
    return _detect_cached(None, template_of(tokenizer)) if template_of(tokenizer) else detect(None, tokenizer)


@functools.lru_cache(maxsize=64)
def _detect_cached(model_type: str | None, template: str) -> Family:
    return _detect(model_type, template, None)


def _detect(model_type: str | None, template: str, vocab: frozenset[str] | None) -> Family:
    for family in FAMILIES.values():
        if family is UNKNOWN:
            continue
        type_ok = not family.model_types or model_type in family.model_types
        if template:
            if all(m in template for m in family.template_markers) and (model_type is None or type_ok):
                return family
        elif vocab is not None and type_ok and all(m in vocab for m in family.vocab_markers):
            return family
    return UNKNOWN


def ensure_template(tokenizer: Any, config: Any) -> Family | None:
    """Give a tokenizer without a chat template its family's committed one (a base model folder of a known
    family). Returns the family used, or None when the tokenizer already had a template or none is known."""
    if template_of(tokenizer):
        return None
    family = detect(config, tokenizer)
    text = family.template_text()
    if text is None:
        return None
    tokenizer.chat_template = text
    return family


def describe(family: Family, tokenizer: Any | None = None) -> dict[str, Any]:
    """What `models info`, the manifest and the docs show about a family (ids when a tokenizer is given)."""
    out: dict[str, Any] = {
        "family": family.name,
        "title": family.title,
        "end_of_turn": list(family.end_of_turn),
        "stop": list(family.end_of_turn + family.stop),
        "generation_prompt": family.generation_prompt,
        "system": family.system,
        "reasoning": family.reasoning,
        "thinking_switch": family.thinking_switch,
        "tools": family.tools,
    }
    if tokenizer is not None:
        out["stop_token_ids"] = family.stop_token_ids(tokenizer)
        committed = family.template_text()
        out["template_is_tunesmith"] = committed is not None and committed == template_of(tokenizer)
    return out
