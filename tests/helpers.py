"""Helpers shared by the test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER = FIXTURES / "tiny-tokenizer"


def save_tiny_llama(out: Path, hidden: int = 32) -> Path:
    """A 2-layer random Llama (intermediate = 2 x hidden, seed 0) saved with the tiny ChatML tokenizer as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
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
