"""Graders in the OpenAI evals shape on hand-made outputs; semantic similarity with the bundled MiniLM."""

from __future__ import annotations

import json
import os

import pytest

from helpers import chat_rows, write_jsonl
from tunesmith.config import EvalSection, recipe_from_dict
from tunesmith.errors import RecipeError
from tunesmith.eval import gates
from tunesmith.eval.graders import calculate, grade, grader_items, load_graders, run_graders, scores

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
    # a reference that is not JSON: that output scores 0, counted with the reason; the others are scored
    done = grade(grader, ['{"city": "Paris"}', '{"city": "Madrid"}'], ITEMS)
    assert done.scores == [0.0, 1.0] and done.failed == 1 and "no attribute 'city'" in (done.errors[0] or "")


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
    [missing] = load_graders([{"type": "string_check", "name": "s", "input": "{{ sample.nope }}"}])
    report = run_graders([missing], {"tuned": ["a", "b"]}, ITEMS)["s"]["tuned"]
    assert report["failed"] == 2 and report["pass_rate"] == 0.0 and "{{ sample.nope }}" in report["first_error"]
    assert "'dict object' has no attribute 'nope'" in report["first_error"]
    with pytest.raises(ValueError, match="line 1"):  # a template that does not parse is wrong for every output
        load_graders([{"type": "string_check", "name": "s", "input": "{{ sample.output_text"}])
    with pytest.raises(ValueError, match="source line 1"):
        load_graders([{"type": "python", "name": "p", "source": "def grade(sample, item) return 1"}])


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
    assert report["m"]["tuned"] == {
        "mean": 3.5,
        "pass_rate": 0.5,
        "failed": 1,
        "first_error": "the judge's reply holds no score: 'no number here'",
    }


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
    assert report["exact"]["base"] == {"mean": 0.0, "pass_rate": 0.0, "failed": 0, "first_error": None}
    assert report["exact"]["tuned"] == {"mean": 0.5, "pass_rate": 0.5, "failed": 0, "first_error": None}
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


def test_python_graders_run_in_a_separate_process_with_time_and_memory_limits():
    source = (
        "import os\n"
        "def grade(sample, item):\n"
        "    text = sample['output_text']\n"
        "    print('noise on stdout')  # never mistaken for an answer\n"
        "    if text == 'loop':\n"
        "        while True:\n"
        "            pass\n"
        "    if text == 'hog':\n"
        "        return len(bytearray(900 * 2**20))\n"
        "    if text == 'die':\n"
        "        os._exit(3)\n"
        "    if text == 'raise':\n"
        "        raise KeyError('max_chars')\n"
        "    if text == 'nan':\n"
        "        return float('nan')\n"
        "    return float(os.getpid())\n"
    )
    [grader] = load_graders([{"type": "python", "name": "p", "source": source, "timeout_s": 5, "memory_mb": 256}])
    outputs = ["ok", "loop", "ok", "hog", "die", "raise", "nan", "ok"]
    items = grader_items([str(i) for i in range(8)], ["q"] * 8, ["r"] * 8)
    done = grade(grader, outputs, items)
    pids = [done.scores[i] for i in (0, 2, 7)]
    assert all(p > 0 and p != os.getpid() for p in pids)  # scored in another process
    assert len(set(pids)) == 3  # the looping and the dying process were replaced by fresh ones
    assert done.scores[1::2][:3] == [0.0, 0.0, 0.0] and done.scores[5:7] == [0.0, 0.0]
    errors = done.errors
    assert "timed out after 5 s" in errors[1] and "MemoryError" in errors[3] and "exit status 3" in errors[4]
    assert "KeyError: 'max_chars'" in errors[5] and "not a finite number" in errors[6]
    assert errors[0] is errors[2] is errors[7] is None and done.failed == 5
    report = run_graders([grader], {"tuned": outputs}, items)["p"]["tuned"]
    assert report["failed"] == 5 and report["first_error"].startswith("timed out")


def test_label_model_asks_the_judge_for_a_label_in_text_parts():
    seen = []

    class Fake:
        def complete(self, conversations):
            seen.extend(conversations)
            return ["Polite.", "It is rude", "no idea", "impolite"]

    definition = {
        "type": "label_model",
        "name": "tone",
        "model": "judge-x",
        "input": [
            {"role": "developer", "content": "Classify the tone."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Answer: "},
                    {"type": "input_text", "text": "{{ sample.output_text }}"},
                ],
            },
        ],
        "labels": ["polite", "rude", "impolite"],
        "passing_labels": ["polite"],
    }
    items = grader_items(["1", "2", "3", "4"], ["q"] * 4, ["r"] * 4)
    [grader] = load_graders([definition])
    done = grade(grader, ["Thanks!", "Go away", "Hm", "whatever"], items, lambda name: Fake())
    assert done.scores == [1.0, 0.0, 0.0, 0.0] and done.failed == 1 and "none of the labels" in done.errors[2]
    assert seen[0][0] == {"role": "system", "content": "Classify the tone."}
    assert seen[0][1]["content"] == "Answer: Thanks!" and "polite, rude, impolite" in seen[0][2]["content"]
    with pytest.raises(ValueError, match="passing_labels"):
        load_graders([{**definition, "passing_labels": ["kind"]}])
    image = {"type": "input_image", "image_url": "x.png"}
    with pytest.raises(ValueError, match="input_image"):
        load_graders([{**definition, "type": "score_model", "input": [{"role": "user", "content": [image]}]}])


def test_multi_formula_floor_ceil_and_outputs_it_cannot_score():
    assert calculate("floor(a * 2.5) + ceil(b)", {"a": 1.0, "b": 0.2}) == 3.0
    multi = {
        "type": "multi",
        "name": "m",
        "calculate_output": "exact / city",
        "graders": {
            "exact": {"type": "string_check", "name": "exact", "input": "Paris"},
            "city": {"type": "string_check", "name": "city", "input": "{{ sample.output_json.city }}", "reference": "Paris"},
        },
    }
    [grader] = load_graders([multi])
    done = grade(grader, ['{"city": "Paris"}', '{"city": "Rome"}'], ITEMS)
    # 1/1; 1/0 (a division by zero): that output scores 0, counted with the reason
    assert done.scores == [1.0, 0.0] and "ZeroDivisionError" in done.errors[1] and done.errors[0] is None
    [summed] = load_graders([{**multi, "calculate_output": "exact + city"}])
    done = grade(summed, ['{"city": "Paris"}', "not json"], ITEMS)
    # a sub-grader that cannot render this output counts 0 in the formula, and the output is counted as failed
    assert done.scores == [2.0, 0.0] and done.errors[0] is None and "city: template" in done.errors[1]
    with pytest.raises(ValueError, match="calculate_output"):
        load_graders([{**multi, "calculate_output": "exact.real"}])
