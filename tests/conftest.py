"""Shared fixtures: a tiny random Llama built from a config + the committed tiny tokenizer. Nothing downloads."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER = FIXTURES / "tiny-tokenizer"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved as a normal HF folder, with the tiny ChatML tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
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
        rows.append({"id": f"r{i}", "messages": [
            {"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": f"Add {a} and {b}."},
            {"role": "assistant", "content": json.dumps({"sum": a + b})},
        ]})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """Factory: write data + a recipe YAML for the tiny model; returns the recipe path."""
    import yaml

    def make(**sections) -> Path:
        write_jsonl(tmp_path / "train.jsonl", chat_rows(24, seed=1))
        write_jsonl(tmp_path / "eval.jsonl", chat_rows(6, seed=2))
        recipe = {
            "name": "tiny",
            "model": {"base": str(tiny_model_dir)},
            "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 128},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 2, "save_total_limit": 5},
            "eval": {"max_new_tokens": 8, "batch_size": 4},
            "output_dir": "runs/tiny",
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                recipe.setdefault(key, {}).update(value)
            else:
                recipe[key] = value
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return make
