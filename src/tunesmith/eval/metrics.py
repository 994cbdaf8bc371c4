"""Per-example and corpus metrics for comparing a tuned model against its base.

Pure functions over strings; no torch, no model. Scores in [0, 1] unless noted:
BLEU follows sacrebleu and is on a 0-100 scale.

`tunesmith.eval.registry` declares each metric (direction, range, label); `tunesmith.eval.scoring` scores
outputs against references with them, averages with `aggregate`, and decides per example which output is
better with `judge` (tallied by `compare`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_WS = re.compile(r"\s+")
# One fenced block covering the whole (stripped) text: ```json ... ``` or bare ``` ... ```.
_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.IGNORECASE)
# Differences at or below this are float noise, not a real preference.
_EPS = 1e-9
# Numbers inside JSON values count as equal within this absolute tolerance.
_NUM_TOL = 1e-6
# Share of references that must be JSON objects before a set is scored in JSON mode.
_JSON_REF_SHARE = 0.8

PRIMARY_ORDER: dict[bool, tuple[str, ...]] = {
    # JSON tasks: getting the fields right matters most, well-formedness next.
    True: ("json_field_accuracy", "exact_match", "json_valid", "token_f1"),
    False: ("exact_match", "token_f1", "rouge_l"),
}
"""Metrics used to decide which of two outputs is better, most important first,
keyed by json_mode. Use `primary_metrics(json_mode)`."""
TOOL_PRIMARY_ORDER = ("tool_trajectory_match", "tool_arguments_match", "tool_name_match", "tool_decision", "tool_call_valid")
"""The same for tool-call turns (eval.tool_metrics): the whole turn right first, then its arguments, its function."""

_scorer: Any = None


def primary_metrics(json_mode: bool, tools: bool = False) -> tuple[str, ...]:
    """The metric names `judge` compares, in priority order, for this mode (tools: tool-call turns)."""
    return TOOL_PRIMARY_ORDER if tools else PRIMARY_ORDER[bool(json_mode)]


def normalize(text: str) -> str:
    """Strip and collapse every whitespace run to a single space. Case is kept."""
    return _WS.sub(" ", text).strip()


def exact_match(pred: str, ref: str) -> float:
    """1.0 if pred equals ref after `normalize` (case-sensitive), else 0.0."""
    return 1.0 if normalize(pred) == normalize(ref) else 0.0


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-tokens F1 in [0, 1] over lowercased whitespace tokens.

    Both empty gives 1.0 (nothing expected, nothing said); exactly one empty gives 0.0.
    """
    p = normalize(pred).lower().split()
    r = normalize(ref).lower().split()
    if not p and not r:
        return 1.0
    if not p or not r:
        return 0.0
    overlap = sum((Counter(p) & Counter(r)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(p)
    recall = overlap / len(r)
    return 2 * precision * recall / (precision + recall)


def _rouge() -> Any:
    # Built on first use, imported then too: importing this module (the metric registry does, and the recipe
    # schema reads the registry) should not cost anything for callers that never score ROUGE.
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"])
    return _scorer


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure in [0, 1] (rouge_score's tokenizer: lowercase ASCII words).

    Both empty gives 1.0, matching `token_f1`; rouge_score itself would say 0.
    Note rouge_score drops non-ASCII characters, so non-Latin text scores 0.
    """
    if not normalize(pred) and not normalize(ref):
        return 1.0
    return float(_rouge().score(ref, pred)["rougeL"].fmeasure)


def _clamp_bleu(score: float) -> float:
    # sacrebleu reports a perfect match as 100.00000000000004; keep the scale honest.
    return min(100.0, max(0.0, float(score)))


def sentence_bleu(pred: str, ref: str) -> float:
    """Smoothed sentence BLEU on sacrebleu's 0-100 scale. Both empty gives 100."""
    if not normalize(pred) and not normalize(ref):
        return 100.0
    import sacrebleu

    return _clamp_bleu(sacrebleu.sentence_bleu(pred, [ref]).score)


def corpus_bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (one reference each) on sacrebleu's 0-100 scale; 0.0 for no data."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        return 0.0
    import sacrebleu

    return _clamp_bleu(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; Python accepts them by default, a strict format check must not.
    raise ValueError(f"not valid JSON: {name}")


def parse_json(text: str) -> Any | None:
    """Parse text as JSON, or None if it is not JSON.

    Tolerated: surrounding whitespace, and the whole text being one ```json (or bare
    ```) fenced block. Nothing else: prose before or after the JSON is a format failure,
    because following the output format is part of what is being evaluated.
    A literal `null` also comes back as None.
    """
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        return json.loads(s, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def json_valid(pred: str) -> float:
    """1.0 if pred parses (per `parse_json`) to a JSON object or array, else 0.0."""
    return 1.0 if isinstance(parse_json(pred), (dict, list)) else 0.0


def first_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a generator meant, from a chatty answer: the whole text (per `parse_json`), else the
    first `{...}` that parses. For extracting rows a model wrote (synth), never for scoring an output."""
    whole = parse_json(text)
    if isinstance(whole, dict):
        return whole
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    body = fenced.group(1) if fenced else text
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    for m in re.finditer(r"\{", body):
        try:
            obj, _ = decoder.raw_decode(body, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


# A loop: the last `_LOOP_LINES` non-empty lines are the same line, or the tail of the text is one n-gram
# (n = 1.._LOOP_MAX_N words) repeated at least `_LOOP_REPEATS` times, or at least half of all word 4-grams repeat.
_LOOP_LINES, _LOOP_REPEATS, _LOOP_MAX_N, _LOOP_NGRAM_SHARE = 3, 4, 12, 0.5


def is_repetition_loop(text: str) -> bool:
    """True when the text ends in a greedy repetition loop (a line, phrase or word repeated until the budget ran out).

    Short answers that merely repeat a word twice are not loops; the n-gram share rule needs 20+ words.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) >= _LOOP_LINES and len(set(lines[-_LOOP_LINES:])) == 1:
        return True
    words = text.split()
    for n in range(1, _LOOP_MAX_N + 1):
        if len(words) < n * _LOOP_REPEATS:
            break
        tail = words[-n:]
        if all(words[-(k + 1) * n : len(words) - k * n] == tail for k in range(_LOOP_REPEATS)):
            return True
    if len(words) >= 20:
        grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
        repeated = len(grams) - len(set(grams))
        return repeated / len(grams) >= _LOOP_NGRAM_SHARE
    return False


def degeneration(texts: Sequence[str], hit_budget: Sequence[bool]) -> dict[str, float]:
    """Degenerate output of one model: share (0-1) of outputs that hit the token budget, share that end in a
    repetition loop (`is_repetition_loop`), and share that do either."""
    n = len(texts)
    if n == 0:
        return {"hit_budget": 0.0, "loop_rate": 0.0, "degenerate": 0.0}
    loops = [is_repetition_loop(t) for t in texts]
    either = sum(a or b for a, b in zip(loops, hit_budget))
    return {"hit_budget": sum(map(bool, hit_budget)) / n, "loop_rate": sum(loops) / n, "degenerate": either / n}


def same_value(a: Any, b: Any) -> bool:
    # bool is an int subclass in Python; true must not equal 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=_NUM_TOL)
    if isinstance(a, str) and isinstance(b, str):
        return normalize(a) == normalize(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a is None and b is None


def json_field_accuracy(pred: str, ref: str) -> float | None:
    """Share in [0, 1] of the reference object's top-level keys that pred reproduces.

    None when ref is not a non-empty JSON object (the metric does not apply).
    Numbers match within 1e-6 absolute, strings after `normalize`, nested values
    recursively by the same rules. A pred that is not a JSON object scores 0.0.
    """
    r = parse_json(ref)
    if not isinstance(r, dict) or not r:
        return None
    p = parse_json(pred)
    if not isinstance(p, dict):
        return 0.0
    hits = sum(1 for k, v in r.items() if k in p and same_value(p[k], v))
    return hits / len(r)


def references_are_json(refs: Sequence[str]) -> bool:
    """True when at least 80% of refs parse to JSON objects (empty input: False)."""
    if not refs:
        return False
    n_obj = sum(1 for r in refs if isinstance(parse_json(r), dict))
    return n_obj / len(refs) >= _JSON_REF_SHARE


def aggregate(rows: Sequence[dict[str, float | None]]) -> dict[str, float]:
    """Mean of each metric over rows, ignoring None; metrics with no values are omitted."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if v is None:
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def judge(base: dict[str, float | None], tuned: dict[str, float | None], json_mode: bool, tools: bool = False) -> str:
    """Return "win", "loss" or "tie" for the tuned output against the base output.

    Walks `primary_metrics(json_mode)` in order; the first metric on which the two
    differ by more than 1e-9 decides. Metrics missing or None on either side are
    skipped (e.g. json_field_accuracy when the reference is not an object).
    """
    for m in primary_metrics(json_mode, tools):
        b, t = base.get(m), tuned.get(m)
        if b is None or t is None:
            continue
        if t - b > _EPS:
            return "win"
        if b - t > _EPS:
            return "loss"
    return "tie"


def compare(
    base_rows: Sequence[dict[str, float | None]],
    tuned_rows: Sequence[dict[str, float | None]],
    json_mode: bool,
    tools: bool = False,
) -> dict[str, int | float]:
    """Tally `judge` over paired rows (tools: tool-call turns).

    Returns wins, losses, ties (counts) and win_rate = wins / examples (ties count
    against; 0.0 when there are no examples).
    """
    if len(base_rows) != len(tuned_rows):
        raise ValueError(f"{len(base_rows)} base rows but {len(tuned_rows)} tuned rows")
    tally = Counter(judge(b, t, json_mode, tools) for b, t in zip(base_rows, tuned_rows))
    n = len(base_rows)
    return {
        "wins": tally["win"],
        "losses": tally["loss"],
        "ties": tally["tie"],
        "win_rate": tally["win"] / n if n else 0.0,
    }
