"""Forgetting: what the tuned model lost of the base's general ability.

A bundled probe (probes/general.jsonl: 40 short questions with checkable answers in five categories:
arithmetic, unit conversion, capitals, simple instructions, a little JSON) is answered by base and tuned;
the forgetting score is base accuracy minus tuned accuracy (0-1; negative = the tuned model did better), overall
and per category. Alongside, the reference-text loss (nats/token) on a small general-text sample
(probes/general_text.jsonl) for both; its increase is reported as text_loss_increase.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from tunesmith.eval import metrics
from tunesmith.eval.generate import generate
from tunesmith.eval.loss import reference_loss

PROBE_MAX_NEW_TOKENS = 48  # every probe answer is a word, a number or a one-line JSON object
PROBE_BATCH = 16  # probe prompts are one short line each: batch wider than eval.batch_size
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class ProbeItem:
    id: str
    category: str
    prompt: str
    answer: Any
    check: Literal["number", "contains", "exact", "json"]


def load_probe() -> list[ProbeItem]:
    """The bundled general-capability probe items."""
    text = resources.files("tunesmith.eval").joinpath("probes/general.jsonl").read_text(encoding="utf-8")
    return [ProbeItem(**json.loads(line)) for line in text.splitlines() if line.strip()]


def load_general_text() -> list[list[dict[str, str]]]:
    """The bundled general-text sample as conversations (the assistant turn is the text whose loss is measured)."""
    text = resources.files("tunesmith.eval").joinpath("probes/general_text.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def answer_ok(output: str, item: ProbeItem) -> bool:
    """Whether `output` answers the probe item: `number` its last number equals the answer (the question's own numbers,
    echoed first, do not count); `contains` the answer
    appears as a whole word (case-insensitive); `exact` per metrics.exact_match, ignoring case and a final period;
    `json` the output is JSON (metrics.parse_json) reproducing every expected field (metrics.json_field_accuracy)."""
    if item.check == "number":
        numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(output)]
        return bool(numbers) and abs(numbers[-1] - float(item.answer)) < 1e-6
    if item.check == "contains":
        return re.search(rf"(?<!\w){re.escape(str(item.answer))}(?!\w)", output, re.IGNORECASE) is not None
    if item.check == "exact":
        return metrics.exact_match(output.strip().rstrip(".").lower(), str(item.answer).lower()) == 1.0
    return metrics.json_field_accuracy(output, json.dumps(item.answer)) == 1.0


def forgetting_scores(
    items: list[ProbeItem], base: list[str], tuned: list[str], base_loss: float, tuned_loss: float
) -> dict[str, Any]:
    """score (overall base accuracy - tuned accuracy), per category {base, tuned, drop, n}, and text_loss
    {base, tuned, increase} in nats/token. Pure: outputs in, numbers out."""
    by_cat: dict[str, dict[str, float]] = {}
    for item, b, t in zip(items, base, tuned, strict=True):
        c = by_cat.setdefault(item.category, {"base": 0.0, "tuned": 0.0, "n": 0})
        c["base"] += answer_ok(b, item)
        c["tuned"] += answer_ok(t, item)
        c["n"] += 1
    n = max(len(items), 1)
    base_acc = sum(c["base"] for c in by_cat.values()) / n
    tuned_acc = sum(c["tuned"] for c in by_cat.values()) / n
    categories = {
        cat: {"base": c["base"] / c["n"], "tuned": c["tuned"] / c["n"], "drop": (c["base"] - c["tuned"]) / c["n"], "n": c["n"]}
        for cat, c in by_cat.items()
    }
    return {
        "score": base_acc - tuned_acc,
        "base_accuracy": base_acc,
        "tuned_accuracy": tuned_acc,
        "categories": categories,
        "n_items": len(items),
        "text_loss": {"base": base_loss, "tuned": tuned_loss, "increase": tuned_loss - base_loss},
    }


def probe_side(model: Any, tokenizer: Any, items: list[ProbeItem], batch_size: int, max_length: int) -> tuple[list[str], float]:
    """One model's probe answers (greedy, the one generation function) and its general-text reference loss."""
    convs = [[{"role": "user", "content": item.prompt}] for item in items]
    outputs = generate(model, tokenizer, convs, PROBE_MAX_NEW_TOKENS, max(batch_size, PROBE_BATCH))
    return outputs, reference_loss(model, tokenizer, load_general_text(), max_length)
