"""Tool-calling rows and a tiny run for the tool tests: two tools, calls, results, answers in text."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from helpers import save_tiny_family, write_jsonl

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order by its id.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
}
REFUND = {
    "type": "function",
    "function": {
        "name": "refund_order",
        "description": "Refund an order.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
            "required": ["order_id", "amount"],
        },
    },
}
TOOLS = [LOOKUP, REFUND]


def call_message(name: str, args: dict, call_id: str = "call_1", content: str | None = None) -> dict:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}],
    }


def tool_rows(n: int, start: int = 0) -> list[dict]:
    """Rows cycling: a lookup call, a refund call, an answer in text (no call), a lookup with its result and a reply."""
    rows = []
    for i in range(start, start + n):
        order = f"A{100 + i}"
        kind = i % 4
        if kind == 0:
            messages = [
                {"role": "user", "content": f"Where is order {order}?"},
                call_message("lookup_order", {"order_id": order}),
            ]
        elif kind == 1:
            ask = f"Please refund {i}.50 on order {order}."
            messages = [{"role": "user", "content": ask}, call_message("refund_order", {"order_id": order, "amount": i + 0.5})]
        elif kind == 2:
            messages = [
                {"role": "user", "content": f"Hello number {i}!"},
                {"role": "assistant", "content": "Hello! How can I help?"},
            ]
        else:
            messages = [
                {"role": "user", "content": f"Is order {order} shipped?"},
                call_message("lookup_order", {"order_id": order}),
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"status": "shipped"})},
                {"role": "assistant", "content": f"Order {order} has shipped."},
            ]
        rows.append({"id": f"t{i}", "messages": messages, "tools": TOOLS})
    return rows


def call_pairs(n: int) -> list[dict]:
    """Preference pairs of calls: the right refund preferred to a lookup of the same order, with the tools."""
    rows = []
    for i in range(n):
        ask = {"role": "user", "content": f"Refund {i}.50 on order B{i}."}
        good = call_message("refund_order", {"order_id": f"B{i}", "amount": i + 0.5})
        bad = call_message("lookup_order", {"order_id": f"B{i}"})
        rows.append({"id": f"p{i}", "prompt": [ask], "chosen": [good], "rejected": [bad], "tools": TOOLS})
    return rows


def tool_recipe(root: Path, family: str = "chatml", method: str = "sft", **overrides: dict) -> Path:
    """A tiny model of `family`, 16 train + 4 held-out tool rows (a lookup, a refund, a text answer, a reply after a
    result), and a 2-step recipe."""
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_tool_model(root / "model", family)
    write_jsonl(root / "train.jsonl", tool_rows(16))
    write_jsonl(root / "eval.jsonl", tool_rows(4, start=40))
    recipe: dict = {
        "name": f"tools-{family.replace('.', '')}",
        "method": method,
        "model": {"base": str(model)},
        "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 1024},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2, "logging_steps": 1, "save_steps": 2},
        "eval": {"max_new_tokens": 96, "batch_size": 4},
        "output_dir": "runs/tuned",
    }
    for section, values in overrides.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def tiny_tool_model(out: Path, family: str = "chatml") -> Path:
    """The family's tiny model (tests/helpers.py) with room for a tool list: the tiny tokenizer spends a token on
    almost every character, so a prompt offering two tools is ~500 tokens (its positions are rotary: any length runs)."""
    save_tiny_family(out, family)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = 2048
    (out / "config.json").write_text(json.dumps(config))
    return out


def hermes(name: str, args: dict) -> str:
    """A call as the ChatML family writes it."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
