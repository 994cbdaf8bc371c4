"""A tiny run of every chat family (tests/helpers.py's fixtures) and what the family tests record while it runs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import yaml

from helpers import chat_rows, family_name, save_tiny_family, write_jsonl

TRACE = "Add the two numbers."
# Families whose template renders an earlier answer in a context inference never builds (Qwen 3 strips the earlier
# trace, Mistral moves the system prompt to the last user turn): their two-turn rows are expanded, one row per answer.
EXPANDS = {"qwen3", "mistral"}
# llama.cpp's converter reads these architectures' vocabulary from a SentencePiece tokenizer.model (Gemma 2, Phi-3)
# or a GPT-2 tokenizer (Phi-4): the tiny byte-level tokenizer is refused, naming the architecture.
GGUF_REFUSED = {"gemma2": "Gemma2ForCausalLM", "phi3": "Phi3ForCausalLM", "phi4": "Phi3ForCausalLM"}


def family_rows(name: str, n: int, seed: int) -> list[dict]:
    """chat_rows for fixture `name` (system + question + JSON answer); Qwen 3's answers carry a reasoning trace."""
    rows = chat_rows(n, seed)
    if family_name(name) == "qwen3":
        for row in rows:
            row["messages"][-1]["reasoning_content"] = TRACE
    return rows


def two_turn_rows(name: str, n: int) -> list[dict]:
    """Rows with two answers (the first with a trace for Qwen 3): the first answer is not trainable in one render
    for the EXPANDS families."""
    rows = []
    for i in range(n):
        first = {"role": "assistant", "content": f'{{"sum": {i + 2}}}'}
        if family_name(name) == "qwen3":
            first["reasoning_content"] = TRACE
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with JSON."},
                    {"role": "user", "content": f"Add 1 and {i + 1}."},
                    first,
                    {"role": "user", "content": f"And {i} and {i}?"},
                    {"role": "assistant", "content": f'{{"sum": {2 * i}}}'},
                ]
            }
        )
    return rows


def family_recipe(root: Path, name: str, steps: int = 2, max_new_tokens: int = 8) -> Path:
    """A tiny model of fixture `name`, 12 one-turn + 2 two-turn train rows, 3 held-out rows, and its recipe."""
    root.mkdir(parents=True, exist_ok=True)
    model = save_tiny_family(root / "model", name)
    write_jsonl(root / "train.jsonl", family_rows(name, 12, seed=1) + two_turn_rows(name, 2))
    write_jsonl(root / "eval.jsonl", family_rows(name, 3, seed=2))
    recipe = {
        "name": name.replace(".", "-"),
        "model": {"base": str(model)},
        "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 256},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 5e-2, "logging_steps": 1, "save_steps": steps},
        "eval": {"max_new_tokens": max_new_tokens, "batch_size": 4},
        "output_dir": "runs/tuned",
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@contextmanager
def recorded_prompts(model, seen: list[list[int]]):
    """Every prompt `model.generate` is given, as token ids without padding, appended to `seen`."""
    original = model.generate

    def generate(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for i, row in enumerate(ids):
            seen.append(row[mask[i].bool()].tolist() if mask is not None else row.tolist())
        return original(*args, **kwargs)

    model.generate = generate
    try:
        yield seen
    finally:
        del model.generate  # the instance attribute goes; the class's method is back


def scripted(model, tokenizer, text: str, end: str | None = None):
    """Make `model.generate` answer every prompt with `text` (then the `end` token when given), greedy or streamed,
    so what a reasoning model writes is chosen by the test. Returns the ids it writes."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.convert_tokens_to_ids(end)] if end else [])

    def generate(input_ids=None, generation_config=None, streamer=None, stopping_criteria=None, **_):
        n = min(len(ids), generation_config.max_new_tokens)
        new = torch.tensor([ids[:n]] * input_ids.shape[0], dtype=input_ids.dtype)
        out = torch.cat([input_ids, new], dim=1)
        if streamer is not None:
            streamer.put(input_ids.cpu())
            for j in range(n):
                if stopping_criteria is not None:
                    stopping_criteria(out[:, : input_ids.shape[1] + j + 1], None)
                streamer.put(new[:, j])
            streamer.end()
        return out

    model.generate = generate
    return ids
