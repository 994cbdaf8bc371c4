"""One definition of each judgement: GRPO rewards score what eval scores, synth validates answers with eval's
parser, a reward GRPO cannot learn from is reported, and QLoRA eval/merge say which base weights they used."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers import chat_rows, write_jsonl
from tunesmith.config import load_recipe
from tunesmith.eval import metrics
from tunesmith.method_sections import RewardSpec
from tunesmith.train import rewards
from tunesmith.train.reward_watch import EVENT, RewardWatch

TEXTS = [
    '{"a": 1}',
    '"42"',
    "42",
    "null",
    "true",
    "[1, 2]",
    '```json\n{"a": 1}\n```',
    '```json {"a": 1}```',
    'Sure! {"a": 1}',
    ' {"a":  1} ',
    "NaN",
    '{"a": NaN}',
    "",
    "   ",
    '{"a": 1',
    "Paris",
    "paris",
    "Paris\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_json_rewards_score_what_eval_scores(text):
    chat = [{"role": "assistant", "content": text}]
    assert rewards.json_valid(None, [text, chat]) == [metrics.json_valid(text)] * 2
    schema_any = rewards.build([RewardSpec(type="json_schema_valid", json_schema={})])[0]
    assert schema_any(None, [text]) == [float(metrics.parse_json(text) is not None)]


@pytest.mark.parametrize("ref", ['{"a": 1}', "Paris", "42", '{"b": 2, "a": 1}'])
@pytest.mark.parametrize("text", TEXTS)
def test_exact_match_reward_is_eval_exact_match(text, ref):
    assert rewards.make_exact_match("reference")(None, [text], reference=[ref]) == [metrics.exact_match(text, ref)]


def test_a_quoted_number_is_not_valid_json_output_for_either():
    assert rewards.json_valid(None, ['"42"'])[0] == metrics.json_valid('"42"') == 0.0
    assert not hasattr(rewards, "parse_json")  # one parser: tunesmith.eval.metrics.parse_json


def test_synth_schema_check_uses_the_eval_parser():
    from tunesmith.data.synth import CandidateValidator

    seeds = chat_rows(3)
    validator = CandidateValidator(seeds, schema={"type": "object", "required": ["sum"]})
    fenced = {
        "messages": [
            {"role": "user", "content": "Add 400 and 1."},
            {"role": "assistant", "content": '```json\n{"sum": 401}\n```'},
        ]
    }
    row, verdict = validator.check(json.dumps(fenced))
    assert verdict == "accepted" and row is not None  # eval scores this answer json_valid 1.0, so synth keeps it
    number = {"messages": [{"role": "user", "content": "Add 500 and 2."}, {"role": "assistant", "content": "502"}]}
    assert validator.check(json.dumps(number))[1] == "schema_mismatch"


def _state(step):
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def test_reward_watch_flags_a_reward_that_never_varies(tmp_path):
    metrics_path = tmp_path / "metrics.jsonl"
    watch = RewardWatch(num_generations=4, metrics_path=metrics_path)

    def flat(prompts, completions, **kw):
        return [0.0] * len(completions)

    def varied(prompts, completions, **kw):
        return [float(i % 2) for i in range(len(completions))]

    flat, moving = watch.wrap(flat), watch.wrap(varied)
    assert moving.__name__ == "varied"  # TRL logs rewards by name
    for _ in range(2):
        assert moving(None, list("abcdefgh")) == [0.0, 1.0] * 4
        flat(None, list("abcdefgh"))
    watch.on_log(None, _state(1), None, logs={})
    assert watch.warnings == []  # too early to judge
    watch.on_log(None, _state(2), None, logs={})
    assert len(watch.warnings) == 1 and "`flat`" in watch.warnings[0]
    assert "0 x16" in watch.warnings[0]
    event = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    assert event[0]["event"] == EVENT and event[0]["values"] == {"0.0": 16}
    watch.on_log(None, _state(3), None, logs={})
    assert len(watch.warnings) == 1  # once


def test_grpo_run_warns_when_its_reward_cannot_vary(tiny_recipe, tmp_path):
    from tunesmith.run import read_metrics
    from tunesmith.train.entry import run as train_run

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["messages"][:2]} for r in chat_rows(16, 4)])
    (tmp_path / "const.py").write_text("def always_one(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    recipe = load_recipe(
        tiny_recipe(
            method="grpo",
            data={"train": ["prompts.jsonl"], "eval": None},
            training={"max_steps": 2},
            grpo={"rewards": ["const:always_one", "length_penalty"], "num_generations": 4, "max_completion_length": 4},
        )
    )
    run = train_run(recipe)
    warnings = run.manifest.details.warnings
    assert any("always_one" in w and "1 x" in w for w in warnings)
    events = [r for r in read_metrics(run.dir) if r.get("event") == EVENT]
    assert any(e["reward_name"] == "always_one" for e in events)


def test_eval_notes_say_qlora_and_degenerate_and_worse():
    from tunesmith.eval.notes import QLORA_NOTE, eval_warnings
    from tunesmith.records import Judgement

    degenerate = {
        "base": {"hit_budget": 0.0, "loop_rate": 0.0, "degenerate": 0.0},
        "tuned": {"hit_budget": 0.5, "loop_rate": 0.4, "degenerate": 0.6},
    }
    notes = eval_warnings(degenerate, 64, Judgement(wins=23, losses=37, ties=0), quantized_base=True)
    assert "worse than base on 37 of 60" in notes[0]
    assert any(n.startswith("tuned: 60% of outputs are degenerate (50% hit the 64-token budget") for n in notes)
    assert QLORA_NOTE in notes and not any(n.startswith("base:") for n in notes)
