"""Behaviour of tunesmith.eval.metrics on hand-checked inputs."""

from __future__ import annotations

import pytest

from tunesmith.eval import metrics as M


def test_normalize_collapses_whitespace_keeps_case():
    assert M.normalize("  Hello \n\t World  ") == "Hello World"


def test_exact_match_ignores_whitespace_not_case():
    assert M.exact_match("Paris  is\nnice ", " Paris is nice") == 1.0
    assert M.exact_match("paris is nice", "Paris is nice") == 0.0


def test_token_f1_partial_overlap():
    # pred tokens: the cat sat (3); ref: the cat is here now (5); overlap 2.
    # P = 2/3, R = 2/5, F1 = 2PR/(P+R) = 0.5
    assert M.token_f1("The cat sat", "the cat is here now") == pytest.approx(0.5)


def test_token_f1_counts_repeats_as_bag():
    # pred "a a a" vs ref "a b": overlap min(3,1)=1; P=1/3, R=1/2, F1=0.4
    assert M.token_f1("a a a", "a b") == pytest.approx(0.4)


def test_token_f1_edges():
    assert M.token_f1("", "  ") == 1.0
    assert M.token_f1("x", "") == 0.0
    assert M.token_f1("x", "y") == 0.0


def test_rouge_l_values():
    assert M.rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    # LCS "the cat" = 2; P = 2/2, R = 2/3, F = 0.8
    assert M.rouge_l("the cat", "the cat sat") == pytest.approx(0.8)
    assert M.rouge_l("dog", "the cat") == 0.0
    assert M.rouge_l("", "") == 1.0


def test_bleu_scale_and_bounds():
    assert M.sentence_bleu("the quick brown fox jumps", "the quick brown fox jumps") == 100.0
    assert M.sentence_bleu("zzz", "the quick brown fox") == 0.0
    partial = M.sentence_bleu("the quick brown fox", "the quick brown fox jumps over")
    assert 0.0 < partial < 100.0
    assert M.corpus_bleu(["a b c d", "e f g h"], ["a b c d", "e f g h"]) == 100.0
    assert M.corpus_bleu([], []) == 0.0
    with pytest.raises(ValueError):
        M.corpus_bleu(["a"], [])


def test_parse_json_accepts_plain_and_fenced():
    assert M.parse_json('  {"a": 1}\n') == {"a": 1}
    assert M.parse_json('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert M.parse_json("\n```\n[1]\n```  ") == [1]


def test_parse_json_rejects_prose_and_nan():
    assert M.parse_json('Sure! {"a": 1}') is None
    assert M.parse_json('{"a": 1} Hope this helps.') is None
    assert M.parse_json('Here you go:\n```json\n{"a": 1}\n```') is None
    assert M.parse_json('{"a": NaN}') is None
    assert M.parse_json("") is None


def test_json_valid():
    assert M.json_valid('{"a": 1}') == 1.0
    assert M.json_valid("[1, 2]") == 1.0
    assert M.json_valid("42") == 0.0  # valid JSON but not a structure
    assert M.json_valid('Sure! {"a": 1}') == 0.0


def test_json_field_accuracy_two_of_three():
    ref = '{"name": "Ada Lovelace", "year": 1815, "field": "math"}'
    pred = '{"name": "Ada  Lovelace", "year": 1815.0000001, "field": "poetry"}'
    assert M.json_field_accuracy(pred, ref) == pytest.approx(2 / 3)


def test_json_field_accuracy_edges():
    ref = '{"ok": true, "n": 1, "tags": ["a", "b"]}'
    # true != 1, and 1 != true: bools are not numbers here
    assert M.json_field_accuracy('{"ok": 1, "n": true, "tags": ["a", "b"]}', ref) == pytest.approx(1 / 3)
    assert M.json_field_accuracy('{"ok": true, "n": 1.5, "tags": ["a"]}', ref) == pytest.approx(1 / 3)
    assert M.json_field_accuracy("not json", ref) == 0.0
    assert M.json_field_accuracy("[1, 2]", ref) == 0.0
    assert M.json_field_accuracy('{"a": 1}', "plain text answer") is None
    assert M.json_field_accuracy('{"a": 1}', "[1]") is None


def test_references_are_json_threshold():
    obj = '{"a": 1}'
    assert M.references_are_json([obj] * 4 + ["text"]) is True  # 80%
    assert M.references_are_json([obj] * 3 + ["text", "[1]"]) is False  # 60%, arrays don't count
    assert M.references_are_json([]) is False


def test_score_example_keys():
    from tunesmith.eval.scoring import score_example

    text = score_example("a b", "a b", json_mode=False)
    assert set(text) == {"exact_match", "token_f1", "rouge_l", "bleu"}
    assert text["exact_match"] == 1.0 and text["token_f1"] == 1.0
    js = score_example('{"a": 1}', '{"a": 1}', json_mode=True)
    assert set(js) == {"exact_match", "token_f1", "rouge_l", "bleu", "json_valid", "json_field_accuracy"}
    assert js["json_valid"] == 1.0 and js["json_field_accuracy"] == 1.0
    assert score_example("x", "plain", json_mode=True)["json_field_accuracy"] is None


def test_aggregate_means_ignoring_none():
    rows = [
        {"exact_match": 1.0, "json_field_accuracy": None},
        {"exact_match": 0.0, "json_field_accuracy": 0.5},
        {"exact_match": 0.5, "json_field_accuracy": 1.0},
    ]
    assert M.aggregate(rows) == {"exact_match": pytest.approx(0.5), "json_field_accuracy": pytest.approx(0.75)}
    assert M.aggregate([{"x": None}]) == {}
    assert M.aggregate([]) == {}


def test_primary_metrics():
    assert M.primary_metrics(True) == ("json_field_accuracy", "exact_match", "json_valid", "token_f1")
    assert M.primary_metrics(False) == ("exact_match", "token_f1", "rouge_l")


def test_judge_text_mode():
    base = {"exact_match": 0.0, "token_f1": 0.5, "rouge_l": 0.9}
    assert M.judge(base, {"exact_match": 1.0, "token_f1": 0.1, "rouge_l": 0.1}, False) == "win"
    # exact_match ties, token_f1 decides even though rouge_l is better
    assert M.judge(base, {"exact_match": 0.0, "token_f1": 0.4, "rouge_l": 1.0}, False) == "loss"
    # first two tie, rouge_l decides
    assert M.judge(base, {"exact_match": 0.0, "token_f1": 0.5, "rouge_l": 0.95}, False) == "win"
    # differences within 1e-9 are noise; bleu is not a primary metric
    assert M.judge(base, {"exact_match": 0.0, "token_f1": 0.5 + 1e-12, "rouge_l": 0.9, "bleu": 99.0}, False) == "tie"


def test_judge_json_mode_field_accuracy_first_and_none_skipped():
    base = {"json_field_accuracy": 1 / 3, "exact_match": 1.0, "json_valid": 1.0, "token_f1": 0.9}
    tuned = {"json_field_accuracy": 2 / 3, "exact_match": 0.0, "json_valid": 1.0, "token_f1": 0.1}
    assert M.judge(base, tuned, True) == "win"
    assert M.judge(tuned, base, True) == "loss"
    # None field accuracy (ref not an object) falls through to exact_match
    b2 = {**base, "json_field_accuracy": None}
    t2 = {**tuned, "json_field_accuracy": None}
    assert M.judge(b2, t2, True) == "loss"


def test_compare_counts_and_win_rate():
    base = [{"exact_match": 0.0}, {"exact_match": 1.0}, {"exact_match": 0.0}, {"exact_match": 1.0}]
    tuned = [{"exact_match": 1.0}, {"exact_match": 0.0}, {"exact_match": 1.0}, {"exact_match": 1.0}]
    out = M.compare(base, tuned, json_mode=False)
    assert out == {"wins": 2, "losses": 1, "ties": 1, "win_rate": 0.5}
    assert M.compare([], [], json_mode=False)["win_rate"] == 0.0
    with pytest.raises(ValueError):
        M.compare(base, tuned[:2], json_mode=False)
