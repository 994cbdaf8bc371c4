"""The bundled tool-calling demo task (`tunesmith demo --task tools`): a shop's support requests for four tools.

Each row offers the same four tools (OpenAI's shape) and asks for one thing: look an order up, cancel it, refund
an amount on it, or a store's opening hours; some rows only greet or thank, and are answered in text; some carry the
call's result and the answer written from it (the second step of a tool loop). Held-out rows use order ids,
amounts and cities that never appear in train, so a right call there means the arguments were read from the request,
not remembered. `run_tool` is the shop's backend: the same results the data shows, for the demo's served loop.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from tunesmith.demo.generator import write_split_files

SYSTEM = "You are the support assistant of the Pinewood shop. Call a tool when a request needs one."

_ORDER = {"order_id": {"type": "string"}}  # short schemas: the tool list is in every prompt


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    params = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


TOOLS = [
    _tool("lookup_order", "Order status and delivery date.", _ORDER),
    _tool("cancel_order", "Cancel an order.", _ORDER),
    _tool("refund_order", "Refund an amount on an order.", {**_ORDER, "amount": {"type": "number"}}),
    _tool("store_hours", "Opening hours of a city's store.", {"city": {"type": "string"}}),
]

ASK: dict[str, list[str]] = {
    "lookup_order": [
        "Where is my order {order_id}?",
        "Hi, has order {order_id} shipped yet?",
        "Can you check the status of {order_id} please?",
        "When will order {order_id} arrive?",
    ],
    "cancel_order": [
        "Please cancel order {order_id}.",
        "I changed my mind, cancel {order_id}.",
        "Cancel my order {order_id}, thanks.",
    ],
    "refund_order": [
        "Please refund {amount} on order {order_id}.",
        "I was overcharged {amount} on {order_id}, refund it please.",
        "Order {order_id}: one item was missing, I want {amount} back.",
    ],
    "store_hours": [
        "When is your {city} store open?",
        "What are the opening hours in {city}?",
        "Is the {city} shop open today?",
    ],
}
# A request may open with a greeting; held-out rows greet in ways train never does.
GREETINGS = ["", "", "Hello! ", "Hi there. ", "Good morning. ", "Hey, "]
EVAL_GREETINGS = ["Good evening! ", "Howdy. "]
SMALL_TALK = [
    ("Who am I talking to?", "I am the Pinewood shop's support assistant. How can I help?"),
    ("Are you a bot?", "I am the Pinewood shop's support assistant. How can I help?"),
    ("Thanks, that is all.", "You're welcome! Have a nice day."),
    ("Thank you so much for the help!", "You're welcome! Have a nice day."),
    ("Can you help me with something?", "Of course! What do you need?"),
]
TRAIN_CITIES = ["Austin", "Berlin", "Lyon", "Oslo", "Porto", "Dublin", "Leeds", "Graz", "Turin", "Malmo", "Bergen", "Ghent"]
EVAL_CITIES = ["Tampere", "Basel", "Cork", "Brno"]
MIX = (("lookup_order", 4), ("cancel_order", 2), ("refund_order", 3), ("store_hours", 2), ("small_talk", 1))


def run_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The shop's backend: a deterministic result for a call (what the data's results and the served loop show)."""
    digest = int(hashlib.sha256(json.dumps([name, arguments], sort_keys=True).encode()).hexdigest(), 16)
    if name == "lookup_order":
        status = ("shipped", "packed", "delivered")[digest % 3]
        return {"order_id": arguments.get("order_id"), "status": status, "eta": f"2026-12-{10 + digest % 18:02d}"}
    if name == "cancel_order":
        return {"order_id": arguments.get("order_id"), "cancelled": True}
    if name == "refund_order":
        return {
            "order_id": arguments.get("order_id"),
            "refunded": arguments.get("amount"),
            "refund_id": f"R{digest % 90000 + 10000}",
        }
    if name == "store_hours":
        return {"city": arguments.get("city"), "opens": f"{8 + digest % 3:02d}:00", "closes": f"{18 + digest % 3}:00"}
    return {"error": f"unknown tool {name}"}


def reply(name: str, result: dict[str, Any]) -> str:
    """The answer written from a tool's result (the second step of the loop)."""
    if name == "lookup_order":
        return f"Order {result['order_id']} is {result['status']}; expected delivery {result['eta']}."
    if name == "cancel_order":
        return f"Order {result['order_id']} is cancelled."
    if name == "refund_order":
        return f"Refunded {result['refunded']} on order {result['order_id']} (refund {result['refund_id']})."
    return f"The {result['city']} store is open from {result['opens']} to {result['closes']}."


class _Values:
    """Argument values drawn without repeats, so the held-out rows' values never occur in train."""

    def __init__(self, rng: random.Random, cities: list[str], greetings: list[str]) -> None:
        self.rng, self.cities, self.greetings, self.used = rng, cities, greetings, set[str]()

    def _fresh(self, make: Any) -> str:
        while (value := make()) in self.used:
            pass
        self.used.add(value)
        return str(value)

    def arguments(self, name: str) -> dict[str, Any]:
        rng = self.rng
        if name == "store_hours":
            return {"city": rng.choice(self.cities)}
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        args: dict[str, Any] = {
            "order_id": self._fresh(lambda: f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(1000, 9999)}")
        }
        if name == "refund_order":
            args["amount"] = float(self._fresh(lambda: f"{rng.randint(5, 240)}.{rng.choice(['99', '25', '75', '49'])}"))
        return args


def _row(k: int, rng: random.Random, values: _Values, two_step: float) -> dict[str, Any]:
    kind = rng.choices([n for n, _ in MIX], [w for _, w in MIX])[0]
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    greeting = rng.choice(values.greetings)
    if kind == "small_talk":
        ask, answer = rng.choice(SMALL_TALK)
        messages += [{"role": "user", "content": greeting + ask}, {"role": "assistant", "content": answer}]
        return {"id": f"tools-{k:05d}", "messages": messages, "tools": TOOLS}
    args = values.arguments(kind)
    text = greeting + rng.choice(ASK[kind]).format(**args)  # an amount reads as its JSON value (37.99)
    call = {"id": f"call_{k}", "type": "function", "function": {"name": kind, "arguments": json.dumps(args)}}
    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    if rng.random() < two_step:  # the loop's second step: the result comes back, the answer is written from it
        result = run_tool(kind, args)
        messages += [
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)},
            {"role": "assistant", "content": reply(kind, result)},
        ]
    return {"id": f"tools-{k:05d}", "messages": messages, "tools": TOOLS}


def make_splits(n_train: int = 240, n_eval: int = 24, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train rows (a quarter with the result and the answer after the call) and held-out requests (one step: the
    call, or the text answer) whose order ids, amounts and cities never appear in train."""
    rng, seen = random.Random(seed), set[str]()
    held = _Values(rng, EVAL_CITIES, EVAL_GREETINGS)
    evaluation = _unique(n_eval, n_train, rng, held, 0.0, seen)
    train_values = _Values(rng, TRAIN_CITIES, GREETINGS)
    train_values.used |= held.used  # order ids and amounts: never one the held-out rows use
    return _unique(n_train, 0, rng, train_values, 0.25, seen), evaluation


def _unique(n: int, start: int, rng: random.Random, values: _Values, two_step: float, seen: set[str]) -> list[dict[str, Any]]:
    """`n` rows with ids from `start` whose requests are not in `seen` (updated): no duplicates, no overlap."""
    rows: list[dict[str, Any]] = []
    for _ in range(n * 50):  # a generous cap: a repeat is rare, but never loop forever
        if len(rows) == n:
            return rows
        row = _row(start + len(rows), rng, values, two_step)
        if (text := row["messages"][1]["content"]) not in seen:
            seen.add(text)
            rows.append(row)
    raise RuntimeError(f"could not generate {n} distinct requests")


def write_splits(out_dir: Path, n_train: int = 240, n_eval: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Write `train.jsonl` and `eval.jsonl` under `out_dir`; returns their paths."""
    return write_split_files(out_dir, *make_splits(n_train, n_eval, seed))
