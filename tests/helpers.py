"""Helpers shared by the test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER = FIXTURES / "tiny-tokenizer"


def tiny_config(config_class: str, tokenizer, hidden: int = 32, **ids):
    """A 2-layer config of `config_class` (intermediate = 2 x hidden, 4 heads, 2 KV heads) sized to the tokenizer;
    ids: bos_token_id, eos_token_id, pad_token_id (default: the tokenizer's)."""
    import transformers

    defaults = {f"{r}_token_id": getattr(tokenizer, f"{r}_token_id") for r in ("bos", "eos", "pad")}
    return getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        **{**defaults, **ids},
    )


def save_tiny_llama(out: Path, hidden: int = 32) -> Path:
    """A 2-layer random Llama (intermediate = 2 x hidden, seed 0) saved with the tiny ChatML tokenizer as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config("LlamaConfig", tok, hidden)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "system", "content": "Answer with JSON."},
                    {"role": "user", "content": f"Add {a} and {b}."},
                    {"role": "assistant", "content": json.dumps({"sum": a + b})},
                ],
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# Tiny models of each chat family: the committed tiny tokenizer plus that family's special tokens, its chat
# template (the one tunesmith ships under src/tunesmith/families/templates, or a test-only one here) and a
# 2-layer random model of the family's architecture. `specials` become special tokens, `plain` added tokens
# that decode like text (Qwen's <think> and <tool_call>); `stops` is the generation_config's eos list.
FAMILY_FIXTURES: dict[str, dict] = {
    "llama3": {
        "config": "LlamaConfig",
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "stops": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
    },
    "qwen2.5": {
        "config": "Qwen2Config",
        "plain": ["<tool_call>", "</tool_call>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "stops": ["<|im_end|>", "<|endoftext|>"],
    },
    "qwen3": {
        "config": "Qwen3Config",
        "plain": ["<think>", "</think>", "<tool_call>", "</tool_call>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "stops": ["<|im_end|>", "<|endoftext|>"],
    },
    "gemma3": {
        "config": "Gemma3TextConfig",
        "template": "gemma.jinja",
        "specials": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<eos>",
        "pad": "<pad>",
        "stops": ["<eos>", "<end_of_turn>"],
    },
    "mistral": {
        "config": "MistralConfig",
        "specials": [
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "stops": ["</s>"],
    },
    "phi3": {
        "config": "Phi3Config",
        "specials": [
            "<s>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|end|>",
            "<|tool|>",
            "<|/tool|>",
            "<|tool_call|>",
            "<|/tool_call|>",
        ],
        "bos": "<s>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "stops": ["<|end|>", "<|endoftext|>"],
    },
    "phi4": {
        "config": "Phi3Config",
        "specials": ["<|im_sep|>"],
        "bos": "<|endoftext|>",
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "stops": ["<|im_end|>", "<|endoftext|>"],
    },
    "chatml": {
        "config": "LlamaConfig",
        "plain": ["<tool_call>", "</tool_call>"],
        "bos": "<|im_start|>",
        "eos": "<|im_end|>",
        "pad": "<|im_end|>",
        "stops": ["<|im_end|>"],
    },
    "unknown": {
        "config": "LlamaConfig",
        "template": FIXTURES / "templates" / "unknown.jinja",
        "specials": ["<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "stops": ["</s>"],
    },
}
# Gemma 2 differs only by its architecture and its own template, which refuses a system turn.
FAMILY_FIXTURES["gemma2"] = {
    **FAMILY_FIXTURES["gemma3"],
    "config": "Gemma2Config",
    "template": FIXTURES / "templates" / "gemma2.jinja",
}
FAMILY_OF_FIXTURE = {"gemma2": "gemma", "gemma3": "gemma"}  # fixture name -> tunesmith family name


def family_tokenizer(name: str):
    """The tiny tokenizer dressed as fixture `name`: its special tokens, BOS/EOS/pad and chat template."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from tunesmith import families

    spec = FAMILY_FIXTURES[name]
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": spec.get("specials", [])})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.get("plain", [])])
    for role in ("bos", "eos", "pad"):
        setattr(tok, f"{role}_token", spec[role])
    template = spec.get("template") or families.get(FAMILY_OF_FIXTURE.get(name, name)).template
    path = Path(template) if isinstance(template, Path) else Path(families.__file__).parent / "templates" / template
    tok.chat_template = path.read_text(encoding="utf-8")
    return tok


def save_tiny_family(out: Path, name: str, hidden: int = 32) -> Path:
    """A 2-layer random model of fixture `name`'s architecture (seed 0) with its tokenizer, as an HF folder."""
    import torch
    import transformers

    tok = family_tokenizer(name)
    spec = FAMILY_FIXTURES[name]
    ids = {f"{r}_token_id": tok.convert_tokens_to_ids(spec[r]) if spec[r] else None for r in ("bos", "eos", "pad")}
    config = tiny_config(spec["config"], tok, hidden, **ids)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    stops = [tok.convert_tokens_to_ids(t) for t in spec["stops"]]
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=stops, pad_token_id=ids["pad_token_id"]
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def family_name(fixture: str) -> str:
    """The tunesmith family a fixture belongs to (gemma2 and gemma3 are both `gemma`)."""
    return FAMILY_OF_FIXTURE.get(fixture, fixture)


def build_family_dirs(root: Path) -> dict[str, Path]:
    """Every family fixture saved under `root` (about a second for all of them)."""
    return {name: save_tiny_family(root / name, name) for name in FAMILY_FIXTURES}


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each run of consecutive trained tokens (labels != -100), in order."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels):
        if label != -100:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != -100
    return [tokenizer.decode(run) for run in runs]


def predictable_temp_names(monkeypatch) -> None:
    """Make tunesmith's random temp names predictable: the first name each writer draws is `planted`, then fresh ones.

    With `plant_links`, this puts a symlink exactly where a writer would first try to create its temp file.
    """
    import itertools
    import secrets
    import tempfile

    hexes = itertools.chain(["planted"], (f"fresh{i}" for i in itertools.count()))
    monkeypatch.setattr(secrets, "token_hex", lambda n=8: next(hexes))
    names = itertools.chain(["planted"], (f"fresh{i}" for i in itertools.count()))
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)


def plant_links(folder: Path, names: list[str], outside: Path) -> list[Path]:
    """Symlinks to `outside` at every temp name a writer of folder/NAME could pick: the fixed `.NAME.tmp` older
    versions used and the first random ones (see predictable_temp_names). Returns the links."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name in names:
        for temp in (f".{name}.tmp", f".{name}.planted.tmp", f".{name}.plantedtmp"):
            (folder / temp).symlink_to(outside)
            links.append(folder / temp)
    return links


def victim(root: Path) -> Path:
    """A file outside the folders under test that planted links point at; `untouched` checks it and the links."""
    path = root / "elsewhere" / "victim.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not yours\n")
    return path


def untouched(outside: Path, links: list[Path]) -> bool:
    return outside.read_text() == "not yours\n" and all(link.is_symlink() and link.resolve() == outside for link in links)
