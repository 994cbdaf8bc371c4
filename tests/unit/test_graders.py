"""Graders in the OpenAI evals shape on hand-made outputs; semantic similarity with the bundled MiniLM."""

from __future__ import annotations

import json

import pytest

from helpers import chat_rows, write_jsonl
from tunesmith.config import EvalSection, recipe_from_dict
from tunesmith.errors import RecipeError
from tunesmith.eval import gates
from tunesmith.eval.graders import calculate, grader_items, load_graders, run_graders, scores

ITEMS = grader_items(["1", "2"], ["Capital of France?", "Capital of Spain?"], ["Paris", '{"city": "Madrid"}'])


def one(definition: dict, outputs: list[str], judge_for=None) -> list[float]:
    [grader] = load_graders([definition])
    return scores(grader, outputs, ITEMS, judge_for)


def test_string_check_operations():
    base = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": "{{ item.reference }}"}
    assert one({**base, "operation": "eq"}, ["Paris", "Madrid"]) == [1.0, 0.0]
    assert one({**base, "operation": "ne"}, ["Paris", "Madrid"]) == [0.0, 1.0]
    assert one({**base, "operation": "like"}, ["It is Paris.", "paris"]) == [1.0, 0.0]
    assert one({**base, "operation": "ilike"}, ["it is PARIS", "x"]) == [1.0, 0.0]
    # Templates reach into the parsed output and reference.
    city = {**base, "input": "{{ sample.output_json.city }}", "reference": "{{ item.reference_json.city }}", "operation": "eq"}
    [grader] = load_graders([city])
    items = grader_items(["1", "2"], ["q", "q"], ['{"city": "Paris"}', '{"city": "Rome"}'])
    assert scores(grader, ['{"city": "Paris"}', '{"city": "Madrid"}'], items) == [1.0, 0.0]
    with pytest.raises(RecipeError, match="no attribute 'city'"):  # a reference that is not JSON: said, not scored 0
        scores(grader, ['{"city": "Paris"}', '{"city": "Madrid"}'], ITEMS)


def test_text_similarity_metrics():
    base = {"type": "text_similarity", "name": "t", "pass_threshold": 0.8}
    assert one({**base, "evaluation_metric": "fuzzy_match"}, ["Paris", "nothing alike"])[0] == 1.0
    bleu = one({**base, "evaluation_metric": "bleu", "reference": "the cat sat on the mat"}, ["the cat sat on the mat", "dogs"])
    assert bleu[0] == pytest.approx(1.0) and bleu[1] < 0.2
    rouge = one({**base, "evaluation_metric": "rouge_1", "reference": "a b c d"}, ["a b", "x"])
    assert rouge == [pytest.approx(2 / 3), 0.0]
    assert one({**base, "evaluation_metric": "rouge_l", "reference": "a b c"}, ["a b c", "c b a"])[0] == pytest.approx(1.0)
    assert 0 < one({**base, "evaluation_metric": "gleu", "reference": "a b c d"}, ["a b c x", "x"])[0] < 1


def test_python_grader_and_errors():
    source = "def grade(sample, item):\n    return 1.0 if item['reference'] in sample['output_text'] else 0.25\n"
    assert one({"type": "python", "name": "p", "source": source}, ["Paris!", "Rome"]) == [1.0, 0.25]
    with pytest.raises(RecipeError, match="grade"):
        one({"type": "python", "name": "p", "source": "x = 1"}, ["a", "b"])
    with pytest.raises(RecipeError, match="templates see"):
        one({"type": "string_check", "name": "s", "input": "{{ sample.nope }}"}, ["a", "b"])


def test_score_model_asks_the_judge_with_rendered_messages():
    seen = []

    class Fake:
        def complete(self, conversations):
            seen.extend(conversations)
            return ["Score: 7", "no number here"]

    definition = {
        "type": "score_model",
        "name": "m",
        "model": "judge-x",
        "range": [0, 10],
        "pass_threshold": 5,
        "input": [
            {"role": "system", "content": "Rate 0-10."},
            {"role": "user", "content": "Q: {{ item.input }} A: {{ sample.output_text }}"},
        ],
    }
    asked = []
    got = one(definition, ["Paris", "Lyon"], judge_for=lambda name: asked.append(name) or Fake())
    assert got == [7.0, 0.0] and asked == ["judge-x"]
    assert seen[0][1]["content"] == "Q: Capital of France? A: Paris"
    report = run_graders(load_graders([definition]), {"tuned": ["Paris", "Lyon"]}, ITEMS, lambda n: Fake())
    assert report["m"]["tuned"] == {"mean": 3.5, "pass_rate": 0.5}


def test_multi_combines_sub_graders_and_pass_rates_feed_gates():
    multi = {
        "type": "multi",
        "name": "combo",
        "calculate_output": "0.5 * exact + 0.5 * fuzzy",
        "pass_threshold": 0.75,
        "graders": {
            "exact": {"type": "string_check", "name": "exact", "operation": "eq"},
            "fuzzy": {"type": "text_similarity", "name": "fuzzy", "evaluation_metric": "fuzzy_match"},
        },
    }
    graders = load_graders([multi, {"type": "string_check", "name": "exact", "operation": "eq"}])
    report = run_graders(graders, {"base": ["Lyon", "Rome"], "tuned": ["Paris", "Rome"]}, ITEMS)
    assert report["combo"]["tuned"]["pass_rate"] == 0.5 and report["combo"]["tuned"]["mean"] > report["combo"]["base"]["mean"]
    assert report["exact"] == {"base": {"mean": 0.0, "pass_rate": 0.0}, "tuned": {"mean": 0.5, "pass_rate": 0.5}}
    values = {"graders.combo": report["combo"]["tuned"]["pass_rate"]}
    assert [g.status for g in gates.check_rules({"graders.combo": ">=0.5"}, values)] == ["pass"]


def test_calculate_is_arithmetic_only():
    assert calculate("max(a, b) - 2 ** 2 / 4", {"a": 0.5, "b": 2.0}) == 1.0
    for evil in ("__import__('os')", "a.real", "[a]", "c"):
        with pytest.raises(RecipeError, match="calculate_output"):
            calculate(evil, {"a": 1.0})


def test_graders_load_from_a_json_file_into_the_recipe(tmp_path):
    definitions = [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.reference }}",
            "operation": "eq",
        }
    ]
    (tmp_path / "graders.json").write_text(json.dumps({"graders": definitions}))
    write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    recipe = recipe_from_dict({"data": {"train": ["train.jsonl"]}, "eval": {"graders": "graders.json"}}, tmp_path)
    assert recipe.eval.graders == definitions  # read relative to the recipe and inlined: run.yaml carries them
    with pytest.raises(Exception, match="operation"):
        EvalSection.model_validate({"graders": [{"type": "string_check", "name": "x", "operation": "regex"}]})
    with pytest.raises(Exception, match="unique"):
        EvalSection.model_validate({"graders": definitions * 2})
    with pytest.raises(Exception, match="meteor"):
        EvalSection.model_validate({"graders": [{"type": "text_similarity", "name": "t", "evaluation_metric": "meteor"}]})


def test_semantic_similarity_with_the_bundled_minilm():
    from tunesmith.eval.similarity import cosine_similarities, mean_similarity

    refs = ["The cat is sleeping on the sofa.", "The cat is sleeping on the sofa."]
    same, para = cosine_similarities(["The cat is sleeping on the sofa.", "A cat naps on the couch."], refs)
    [unrelated] = cosine_similarities(["Quarterly revenue grew by ten percent."], refs[:1])
    assert same == pytest.approx(1.0, abs=1e-4) and para > 0.6 > unrelated
    assert mean_similarity([], []) == 0.0
