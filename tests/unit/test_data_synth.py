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


def _cli(*args):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    out = " ".join(res.output.split())
    assert "Traceback" not in out and not (res.exception and not isinstance(res.exception, SystemExit)), out
    return res.exit_code, out


@pytest.fixture
def no_model(monkeypatch):
    """data synth's generator, replaced: loading it fails the test (a refusal must come first)."""
    from tunesmith.data import synth

    def refuse(spec):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(synth, "load_generator", refuse)
    return synth


@pytest.mark.parametrize(
    "schema, message",
    [
        ('{"type": "nope"}', "not a valid JSON schema: at type"),
        ('{"properties": {"a": {"minimum": "x"}}}', "not a valid JSON schema: at properties/a/minimum"),
        ("[1, 2]", "not a valid JSON schema"),
        ("{broken", "invalid JSON"),
        ("[" * 3000 + "]" * 3000, "nested deeper than"),
        (b"\x89PNG\r\n\x1a\n\x00", "can't decode"),
        (None, "is a folder"),
    ],
)
def test_an_invalid_schema_is_refused_before_the_model_loads(tmp_path, no_model, schema, message):
    from helpers import write_jsonl

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [clean_row(i) for i in range(4)])
    path = tmp_path / "schema.json"
    if schema is None:
        path.mkdir()
    elif isinstance(schema, bytes):
        path.write_bytes(schema)
    else:
        path.write_text(schema)
    out = tmp_path / "out.jsonl"
    code, text = _cli("data", "synth", "--seed-file", seeds, "--model", "x", "--out", out, "--schema", path)
    assert code == 1 and message in text and str(path) in text, text
    assert not out.exists()


def test_nothing_accepted_writes_no_file_and_fails(tmp_path, no_model, monkeypatch):
    from collections import Counter

    from helpers import write_jsonl

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [clean_row(i) for i in range(4)])
    monkeypatch.setattr(no_model, "load_generator", lambda spec: (None, None))
    monkeypatch.setattr(
        no_model,
        "synthesize",
        lambda *a, **k: no_model.SynthResult(rejected=Counter(unparseable=8), attempts=8, examples={"unparseable": "zzz"}),
    )
    out = tmp_path / "out.jsonl"
    code, text = _cli("data", "synth", "--seed-file", seeds, "--model", "x", "--out", out, "--n", "4")
    assert code == 1 and "none of 8 candidates passed validation" in text and "was not written" in text, text
    assert "unparseable" in text and not out.exists()


def test_seed_rows_left_out_are_counted_and_deep_ones_never_crash(tmp_path, no_model, monkeypatch):
    seeds = tmp_path / "seeds.jsonl"
    rows = [json.dumps(clean_row(1)), "[" * 5000 + "]" * 5000, json.dumps(clean_row(2)), json.dumps({"no": "messages"})]
    seeds.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(no_model, "load_generator", lambda spec: (None, None))
    monkeypatch.setattr(
        no_model, "synthesize", lambda model, tok, seeds, *a, **k: no_model.SynthResult(accepted=seeds[:1], attempts=1)
    )
    out = tmp_path / "out.jsonl"
    code, text = _cli("data", "synth", "--seed-file", seeds, "--model", "x", "--out", out, "--n", "1")
    assert code == 0, text
    assert "left out 2 seed row(s)" in text and "seeds.jsonl:2: JSON nested deeper than 64 levels" in text
    assert json.loads(out.read_text()) == clean_row(1)
    assert CandidateValidator([clean_row(1)]).check('{"a":' * 900 + "1" + "}" * 900)[1] in ("unparseable", "invalid_row")
