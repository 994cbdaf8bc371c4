"""A grader is a GRPO reward and an eval metric with one definition: grpo.rewards type `grader` names an eval.graders
entry; the reward sees the training row's own fields (nested ones too) as the held-out rows give them to eval; a
score_model grader is a reward through the judge (a real HTTP endpoint answered through the official client)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from helpers import write_jsonl
from tunesmith.config import load_recipe, recipe_from_dict
from tunesmith.train import rewards

NESTED = {
    "type": "string_check",
    "name": "nested",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.expected.value }}",
    "operation": "eq",
}


def prompt_rows(n: int, start: int = 0) -> list[dict]:
    # `expected` is an object whose value is a number in some rows and text in others: no Arrow column holds it
    return [
        {
            "prompt": [{"role": "user", "content": f"Say {i}."}],
            "expected": {"value": i if i % 2 else str(i), "tags": ["t"] * (i % 3)},
            "level": i % 3,
        }
        for i in range(start, start + n)
    ]


def grpo_recipe(tmp_path, tiny_model_dir, graders: list[dict], reward: dict, **eval_section) -> dict:
    write_jsonl(tmp_path / "train.jsonl", prompt_rows(16))
    write_jsonl(tmp_path / "eval.jsonl", prompt_rows(4, start=100))
    return {
        "name": "graded",
        "method": "grpo",
        "model": {"base": str(tiny_model_dir)},
        "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 64},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "report_to": []},
        "grpo": {"num_generations": 4, "max_completion_length": 4, "rewards": [reward]},
        "eval": {"graders": graders, "max_new_tokens": 4, "batch_size": 4, **eval_section},
        "output_dir": "runs/graded",
    }


def test_a_grader_reward_names_an_eval_grader(tmp_path, tiny_model_dir):
    values = grpo_recipe(tmp_path, tiny_model_dir, [NESTED], {"type": "grader", "grader": "nested"})
    recipe = recipe_from_dict(values, tmp_path)
    [reward] = rewards.for_recipe(recipe)
    assert reward.__name__ == "nested"
    with pytest.raises(Exception, match="reward grader `missing` is not in eval.graders \\(it has: nested\\)"):
        recipe_from_dict({**values, "grpo": {**values["grpo"], "rewards": [{"type": "grader", "grader": "missing"}]}}, tmp_path)
    with pytest.raises(Exception, match="grader needs `grader`"):
        recipe_from_dict({**values, "grpo": {**values["grpo"], "rewards": [{"type": "grader"}]}}, tmp_path)


def test_the_reward_and_eval_read_every_field_of_the_row(tmp_path, tiny_model_dir):
    """Train GRPO with a grader reading a nested field, then `tunesmith eval` the run: the held-out rows keep the
    field (data/eval.jsonl), the grader scores on it as the metric graders.nested, and its gate passes."""
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.records import read_eval_report
    from tunesmith.train.entry import run as train_run
    from tunesmith.train.methods import held_out_examples

    always = {**NESTED, "name": "always", "input": "{{ item.expected.value }}"}  # passes exactly when the field is there
    values = grpo_recipe(tmp_path, tiny_model_dir, [NESTED, always], {"type": "grader", "grader": "nested"})
    values["eval"]["gates"] = {"graders.always": ">=1"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(values))
    run = train_run(load_recipe(tmp_path / "recipe.yaml"))
    from tunesmith.run import read_metrics

    assert any("rewards/nested/mean" in row for row in read_metrics(run.dir))
    saved = [json.loads(line) for line in (run.dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert saved[1]["fields"] == {"expected": {"value": 101, "tags": ["t", "t"]}, "level": 2}
    assert held_out_examples(run)[1].extra == saved[1]["fields"]
    result = CliRunner().invoke(app, ["eval", str(run.dir)])
    assert result.exit_code in (0, 3), result.output  # 3: a built-in check (loss, beats base) may fail on 2 steps
    report = read_eval_report(run.dir / "eval" / "report.json")
    assert report.summary["tuned"]["graders.always"] == 1.0 and report.extra.graders["always"]["tuned"].failed == 0
    assert {g.name: g.status for g in report.gates}["graders.always"] == "pass"
    assert "graders.always" in result.output  # in the base-vs-tuned table, as a registry metric


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: scores 1 when the user message holds the row's expected value, else 0."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        self.seen.append(text)
        score = "1" if "expected=7 answer=7" in text else "0"
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Score: {score}"}, "finish_reason": "stop"}],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_score_model_grader_is_a_reward_through_the_judge(tmp_path, tiny_model_dir, judge_url):
    score = {
        "type": "score_model",
        "name": "judged",
        "model": "grader-model",
        "input": [
            {"role": "developer", "content": "Score 0 or 1."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "expected={{ item.expected.value }} answer={{ sample.output_text }}"}],
            },
        ],
        "range": [0, 1],
    }
    judge = {"model": judge_url, "endpoint_model": "judge-model"}
    values = grpo_recipe(tmp_path, tiny_model_dir, [score], {"type": "grader", "grader": "judged"}, judge=judge)
    [reward] = rewards.for_recipe(recipe_from_dict(values, tmp_path))
    row = {"prompt": [{"role": "user", "content": "Say 7."}], "reference": "", "expected": {"value": 7}}
    columns = rewards.columns([""] * 2, [{"expected": row["expected"]}] * 2)
    assert columns["row_fields"] == ['{"expected": {"value": 7}}'] * 2 and "expected" not in columns  # nested: JSON only
    got = reward([row["prompt"]] * 2, ["7", "8"], **columns)
    assert got == [1.0, 0.0]
    assert _Judge.seen[-2:] == ["expected=7 answer=7", "expected=7 answer=8"]
