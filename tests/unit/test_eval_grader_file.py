"""`tunesmith eval --grader G.json [--data evals.jsonl]`: OpenAI graders score a run's held-out set as graders.<name>,
or an OpenAI Evals-style file's recorded samples (no model) or a run's base and tuned answers to its items."""

from __future__ import annotations

import json

from test_nothing_lost import cli  # the real CLI: exit code and output, asserting no traceback

from helpers import FIXTURES, write_jsonl

GRADERS = FIXTURES / "openai" / "graders.json"


def evals_rows() -> list[dict]:
    return [
        {"item": {"question": "Sum 2 and 3.", "reference": "the sum is 5"}, "sample": {"output_text": "The sum is 5"}},
        {"item": {"question": "Sum 1 and 1.", "reference": "the sum is 2"}, "sample": {"output_text": "2"}},
        {"item": {"question": "Sum 4 and 4.", "reference": "the sum is 8"}, "sample": {"output_text": "Sum: 8"}},
    ]


def test_recorded_samples_are_scored_without_a_model(tmp_path):
    data = write_jsonl(tmp_path / "evals.jsonl", evals_rows())
    out = tmp_path / "graders-report.json"
    code, text = cli("eval", "--grader", GRADERS, "--data", data, "--out", out, "--gate", "graders.has_sum=>=0.9")
    assert code == 3, text  # has_sum passes 2 of 3 rows: the gate fails and says so
    assert "not carried over: graders.json[2]: evaluation_metric meteor" in text
    assert "not carried over: graders.json[3]: label_model needs a judge model" in text
    report = json.loads(out.read_text())
    assert report["n_examples"] == 3 and set(report["graders"]) == {"has_sum", "bleu_ref"}
    assert report["graders"]["has_sum"]["samples"]["pass_rate"] == 2 / 3
    assert "FAIL graders.has_sum: 0.6667" in text
    assert cli("eval", "--grader", GRADERS, "--data", data, "--out", out)[0] == 73  # never over a file


def test_a_row_without_a_sample_or_prompt_is_named(tmp_path):
    rows = evals_rows()
    del rows[1]["sample"]
    code, text = cli("eval", "--grader", GRADERS, "--data", write_jsonl(tmp_path / "e.jsonl", rows))
    assert code == 1 and "1 row(s) carry no sample.output_text (first: " in text and "e.jsonl:2" in text
    (tmp_path / "bad.jsonl").write_text('{"item": {}}\n[1]\n')
    code, text = cli("eval", "--grader", GRADERS, "--data", tmp_path / "bad.jsonl")
    assert code == 1 and "bad.jsonl:2: not a JSON object" in text
    code, text = cli("eval", "--data", tmp_path / "bad.jsonl")
    assert code == 1 and "--grader" in text


def test_a_runs_held_out_set_and_its_answers_to_an_evals_file(tiny_recipe, tmp_path):
    from tunesmith.config import load_recipe
    from tunesmith.records import read_eval_report
    from tunesmith.train.entry import run as train_run

    run = train_run(load_recipe(tiny_recipe(training={"max_steps": 2})))
    grader = {
        "type": "string_check",
        "name": "said_sum",
        "input": "{{ sample.output_text }}",
        "reference": "sum",
        "operation": "like",
    }
    (tmp_path / "g.json").write_text(json.dumps(grader))
    code, text = cli("eval", run.dir, "--grader", tmp_path / "g.json")
    assert code in (0, 3), text
    report = read_eval_report(run.dir / "eval" / "report.json")
    assert "graders.said_sum" in report.summary["tuned"] and "graders.said_sum" in text
    assert "said_sum" not in (run.dir / "run.yaml").read_text()  # the run's recipe is never rewritten
    rows = [{"item": {"input": r["item"]["question"], "reference": r["item"]["reference"]}} for r in evals_rows()]
    out = tmp_path / "answers.json"
    code, text = cli(
        "eval", run.dir, "--grader", tmp_path / "g.json", "--data", write_jsonl(tmp_path / "q.jsonl", rows), "--out", out
    )
    assert code == 0, text
    scored = json.loads(out.read_text())["graders"]["said_sum"]
    assert set(scored) == {"base", "tuned"} and scored["tuned"]["failed"] == 0
