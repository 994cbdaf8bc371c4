"""Hallucination rate against a truth set.

Extraction / JSON tasks: every scalar value in a predicted JSON object is a claim. It is supported when it equals
a value of the reference (at any key, same rules as metrics.json_field_accuracy) or, for strings and numbers, when it
appears in the input (the prompt, retrieved context included). A supported-by-neither value is hallucinated.
true / false / null cannot be read off the input, so they are supported only by the reference at the same key.
Free-text answers: an LLM judge lists the answer's claims and labels each supported or not by the truth (the
reference) and the input (judge.unsupported_claims). Rate = hallucinated / claims, over all examples. Examples in
docs/gates.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tunesmith.eval import metrics

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _leaves(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, value) for every scalar in a JSON value; list items share their list's path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v, path)
    else:
        yield path, obj


def _same(a: Any, b: Any) -> bool:
    # The one value-equality rule: json_field_accuracy's, applied to a one-key object.
    return metrics.json_field_accuracy(json.dumps({"v": a}), json.dumps({"v": b})) == 1.0


def in_input(value: Any, source: str) -> bool:
    """A string (case- and whitespace-insensitive) or number (numerically) that the input text contains."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return any(abs(float(n) - float(value)) < 1e-6 for n in _NUMBER.findall(source))
    text = metrics.normalize(str(value)).lower()
    return not text or text in metrics.normalize(source).lower()


def json_claims(pred: str, ref: str, source: str) -> tuple[int, int] | None:
    """(claims, hallucinated) for one JSON prediction; None when pred is not a JSON object (not scored here:
    json_valid already counts it)."""
    p = metrics.parse_json(pred)
    if not isinstance(p, dict):
        return None
    r = metrics.parse_json(ref)
    ref_leaves = list(_leaves(r)) if r is not None else []
    claims = hallucinated = 0
    for path, value in _leaves(p):
        claims += 1
        if isinstance(value, bool) or value is None:
            supported = any(rp == path and _same(value, rv) for rp, rv in ref_leaves)
        else:
            supported = any(_same(value, rv) for _, rv in ref_leaves) or in_input(value, source)
        hallucinated += not supported
    return claims, hallucinated


def rate(per_example: list[tuple[int, int] | None]) -> dict[str, Any]:
    """{rate, claims, hallucinated, scored}: rate is None when nothing could be scored."""
    scored = [c for c in per_example if c is not None]
    claims = sum(c for c, _ in scored)
    bad = sum(h for _, h in scored)
    return {
        "rate": bad / claims if claims else None,
        "claims": claims,
        "hallucinated": bad,
        "scored": len(scored),
        "examples": len(per_example),
    }


def json_hallucination(preds: list[str], refs: list[str], sources: list[str]) -> dict[str, Any]:
    """Hallucination rate of JSON predictions against references and inputs (see the module docstring)."""
    result = rate([json_claims(p, r, s) for p, r, s in zip(preds, refs, sources, strict=True)])
    return {**result, "method": "json fields vs reference and input"}


def source_text(conversation: list[dict[str, Any]]) -> str:
    """Everything the model was shown: every prompt turn's content, retrieved context included."""
    return "\n".join(str(m.get("content", "")) for m in conversation)
