"""Synthetic data: the candidate validator on hand-written candidates, and a real (tiny, random) generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_checks import LONG, chat, clean_row

from tunesmith.data.synth import (
    REASONS,
    CandidateValidator,
    build_prompt,
    parse_candidate,
    synthesize,
)

TOKENIZER_DIR = Path(__file__).parents[1] / "fixtures" / "tiny-tokenizer"
SCHEMA = {"type": "object", "required": ["sum", "id"], "properties": {"sum": {"type": "integer"}, "id": {"type": "integer"}}}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def candidate(row: dict) -> str:
    return json.dumps(row)


def test_validator_verdicts(tok):
    seeds = [clean_row(i) for i in range(5)]
    v = CandidateValidator(seeds, tok, max_length=96, schema=SCHEMA)
    new = clean_row(40)
    assert v.check("Sure! Here it is:\n```json\n" + candidate(new) + "\n```")[1] == "accepted"
    assert v.check(candidate(new))[1] == "duplicate_of_candidate"
    assert v.check(candidate(seeds[2]))[1] == "duplicate_of_seed"
    spaced = json.loads(json.dumps(seeds[3]))
    spaced["messages"][1]["content"] += "   "
    assert v.check(candidate(spaced))[1] == "duplicate_of_seed"  # whitespace does not hide a copy
    assert v.check("no json at all")[1] == "unparseable"
    assert v.check('{"messages": []}')[1] == "invalid_row"
    assert v.check(candidate(chat("new question", " ")))[1] == "empty_answer"
    assert v.check(candidate(chat("new question?", json.dumps({"total": 3}))))[1] == "schema_mismatch"
    assert v.check(candidate(chat("another one?", "not json")))[1] == "schema_mismatch"
    assert v.check(candidate(chat("long?", json.dumps({"sum": 1, "id": 2, "pad": LONG}))))[1] == "too_long"


def test_near_copy_of_a_seed_is_rejected():
    seeds = [chat("write about it", LONG)]
    v = CandidateValidator(seeds)
    assert v.check(candidate(chat("write about it", LONG.replace("apple0", "pear0"))))[1] == "duplicate_of_seed"
    assert v.check(candidate(chat("something else", "entirely different words here")))[1] == "accepted"


def test_parse_candidate_and_prompt():
    assert parse_candidate('noise {"a": 1} more {"b": 2}') == {"a": 1}
    assert parse_candidate("{broken") is None and parse_candidate("[1, 2]") is None
    import random

    prompt = build_prompt([clean_row(i) for i in range(10)], random.Random(0), k=3)
    assert prompt[0]["role"] == "system" and prompt[1]["content"].count('{"id"') == 3


def test_tiny_random_model_rejections_are_counted(tiny_model_dir):
    from tunesmith import models

    model = models.load_model(str(tiny_model_dir)).eval()
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    seeds = [clean_row(i) for i in range(6)]
    res = synthesize(model, tokenizer, seeds, n=3, max_new_tokens=12, batch_size=3, max_attempts=6)
    assert res.attempts == 6
    assert len(res.accepted) + sum(res.rejected.values()) == res.attempts
    assert set(res.rejected) <= set(REASONS) and res.rejected  # a random model writes junk: rejected, by reason
    assert all(reason in res.examples for reason in res.rejected)
