"""`data synth`: synthetic examples written by a model (a base model or a tuned run) from seed examples.

Each prompt shows the model a few seed rows (a different seeded sample each time, so greedy
decoding still varies) and asks for one new row as JSON. Every candidate is validated before
it is kept: it parses, it is a valid row for training, its answer matches the JSON schema when
one is given, it is not a (near-)duplicate of a seed or of an accepted candidate, and it fits
in max_length tokens. Rejections are counted by reason.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data import dedup
from tunesmith.data.checks import ERROR, check_record, last_answer
from tunesmith.data.formats import Record, parse_json, read_records, too_deep
from tunesmith.data.template import tokenize_example
from tunesmith.errors import DataError
from tunesmith.eval import metrics
from tunesmith.eval.generate import generate
from tunesmith.loader import load_target

REASONS = (
    "unparseable",
    "invalid_row",
    "empty_answer",
    "schema_mismatch",
    "duplicate_of_seed",
    "duplicate_of_candidate",
    "too_long",
)
SYSTEM = (
    "You write training examples for a fine-tuning dataset. Reply with exactly one new example: a single JSON "
    "object on one line, in the same format as the examples, on a different topic or with different details."
)


def parse_candidate(text: str) -> Any:
    """The first JSON object in a model's answer (code fences and chatter around it ignored); None if there is none."""
    return metrics.first_json_object(text)


class CandidateValidator:
    """Checks candidates one by one; an accepted candidate joins the duplicate index."""

    def __init__(
        self,
        seeds: list[dict[str, Any]],
        tokenizer: Any = None,
        max_length: int = 1024,
        schema: dict[str, Any] | None = None,
        threshold: float = dedup.DEFAULT_THRESHOLD,
    ):
        self.tokenizer, self.max_length, self.threshold = tokenizer, max_length, threshold
        self.schema = schema
        if schema is not None:
            import jsonschema

            jsonschema.Draft202012Validator.check_schema(schema)
            self._schema = jsonschema.Draft202012Validator(schema)
        self.index = dedup.NearIndex(threshold)
        for i, obj in enumerate(seeds):
            row, _ = check_record(Record("seed", i + 1, obj))
            if row is not None:
                self.index.add(dedup.row_key(row.messages, row.rejected), dedup.row_text(row.messages), "seed")

    def check(self, text: str) -> tuple[dict[str, Any] | None, str]:
        """(row, 'accepted') or (None, reason) with reason one of REASONS."""
        obj = parse_candidate(text)
        if obj is None:
            return None, "unparseable"
        if too_deep(obj):  # brackets, not a row: never handed to code that recurses
            return None, "invalid_row"
        row, findings = check_record(Record("candidate", 1, obj))
        if row is None:
            codes = {f.code for f in findings if f.severity == ERROR}
            return None, "empty_answer" if codes == {"empty_assistant_content"} else "invalid_row"
        if self.schema is not None:
            # The answer is judged as eval judges an output: metrics.parse_json (one ``` fence allowed).
            answer = metrics.parse_json(last_answer(row))
            if answer is None or next(self._schema.iter_errors(answer), None) is not None:
                return None, "schema_mismatch"
        key, body = dedup.row_key(row.messages, row.rejected), dedup.row_text(row.messages)
        match = self.index.match(key, body)
        if match is not None:
            return None, "duplicate_of_seed" if match[1] == "seed" else "duplicate_of_candidate"
        if (
            self.tokenizer is not None
            and row.trained
            and tokenize_example(self.tokenizer, row.messages).n_tokens > self.max_length
        ):
            return None, "too_long"
        self.index.add(key, body, "candidate")
        return obj, "accepted"


@dataclass
class SynthResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    attempts: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one rejected output (truncated)


def build_prompt(seeds: list[dict[str, Any]], rng: random.Random, k: int = 3) -> list[dict[str, str]]:
    shots = rng.sample(seeds, min(k, len(seeds)))
    body = "\n".join(json.dumps(s, ensure_ascii=False) for s in shots)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Examples:\n{body}\n\nWrite one new example as one JSON object."},
    ]


def load_seeds(path: str | Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The valid rows of a seed file; each row left out is appended to `skipped` as "file:line: reason"."""
    seeds = []
    for rec in read_records(path):
        row, findings = check_record(rec)
        if row is not None:
            seeds.append(rec.obj)
        elif skipped is not None:
            reason = next((f.message for f in findings if f.severity == ERROR), "not a training row")
            skipped.append(f"{rec.where}: {reason}")
    if not seeds:
        raise DataError(f"{path}: no valid seed rows", hint="Check it with `tunesmith data check`.")
    return seeds


def load_schema(path: Path) -> dict[str, Any]:
    """A JSON schema file, checked against the JSON Schema 2020-12 meta-schema (DataError naming the problem)."""
    import jsonschema

    try:
        schema = parse_json(path.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise DataError(f"--schema {path} is a folder, not a JSON schema file") from None
    except OSError as exc:
        raise DataError(f"--schema {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # invalid JSON, too deep, or not UTF-8 text
        raise DataError(f"--schema {path}: {exc}", hint="Give a JSON schema file (UTF-8 JSON).") from None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise DataError(f"--schema {path} is not a valid JSON schema: at {where}: {exc.message}") from None
    if not isinstance(schema, dict):
        raise DataError(f"--schema {path} must be a JSON object (a schema), not {type(schema).__name__}")
    return schema


def synthesize(
    model: Any,
    tokenizer: Any,
    seeds: list[dict[str, Any]],
    n: int,
    schema: dict[str, Any] | None = None,
    max_length: int = 1024,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    k: int = 3,
    seed: int = 0,
    max_attempts: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Generate until `n` candidates are accepted or `max_attempts` (default 4 x n) are spent."""
    validator = CandidateValidator(seeds, tokenizer, max_length, schema)
    rng = random.Random(seed)
    result = SynthResult()
    limit = max_attempts if max_attempts is not None else 4 * n
    while len(result.accepted) < n and result.attempts < limit:
        size = min(batch_size, limit - result.attempts)
        prompts = [build_prompt(seeds, rng, k) for _ in range(size)]
        for text in generate(model, tokenizer, prompts, max_new_tokens, batch_size):
            result.attempts += 1
            row, verdict = validator.check(text)
            if row is not None and len(result.accepted) < n:
                result.accepted.append(row)
            elif row is None:
                result.rejected[verdict] += 1
                result.examples.setdefault(verdict, text[:300])
        if on_batch:
            on_batch(len(result.accepted), result.attempts)
    return result


def load_generator(spec: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a run folder (base + adapter) or a base model spec."""
    loaded = load_target(spec)
    return loaded.model, loaded.tokenizer
