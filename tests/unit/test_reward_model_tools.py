"""A reward model scores tool rows as it was trained on them: each prompt with the tools it offered, a call as the
assistant message with its `tool_calls`. Every caller (GRPO's reward, eval's `reward_model` metric, a reward run's own
eval, the monitor and the rollout figures on served requests) passes the row's tools: the ids it scores are the ids
training's `encode` gives that row."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from helpers import write_jsonl
from tool_helpers import TOOLS, call_message, call_pairs, hermes, tool_recipe

ASK = {"role": "user", "content": "Refund 3.50 on order B3."}
GOOD = {"order_id": "B3", "amount": 3.5}


@pytest.fixture(scope="module")
def tool_reward(tmp_path_factory):
    """A 2-step reward run on pairs of calls (the right refund vs a lookup), on the tiny ChatML model."""
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    root = tmp_path_factory.mktemp("tool-reward")
    path = tool_recipe(root, "chatml", method="reward")
    write_jsonl(root / "pairs.jsonl", call_pairs(12))
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = {"train": ["pairs.jsonl"], "max_length": 1024, "eval_fraction": 0.25}
    path.write_text(yaml.safe_dump(recipe))
    return train_run(load_recipe(path))


@pytest.fixture
def scored_ids(tool_reward, monkeypatch):
    """The loaded reward model, and the token ids of every sequence it scores from now on."""
    from tunesmith.eval.reward_model import RewardModel

    model = RewardModel.load(tool_reward.dir)
    seen: list[list[int]] = []
    forward = model._forward

    def spy(batch):
        seen.extend(batch)
        return forward(batch)

    monkeypatch.setattr(model, "_forward", spy)
    return model, seen


def _trained_ids(tokenizer, prompt, answer, tools=TOOLS) -> list[int]:
    """What reward training encodes for a preference row with this prompt, this answer (the chosen side) and tools."""
    from tunesmith.eval.reward_model import encode
    from tunesmith.train.rows import pair_tools, preference_row

    row = preference_row({"prompt": prompt, "chosen": [answer], "rejected": [{"role": "assistant", "content": "x"}],
                          **({"tools": tools} if tools else {})})  # fmt: skip
    return encode(tokenizer, row["prompt"], row["chosen"], pair_tools(row))


def test_a_tool_row_is_scored_with_its_tools_and_its_call_as_a_message(scored_ids):
    model, seen = scored_ids
    written = hermes("refund_order", GOOD)  # the call as the model writes it
    with_tools = model.score([[ASK]], [written], tools=[TOOLS])
    without = model.score([[ASK]], [written])
    assert with_tools != without  # the tool list is part of what the reward model reads
    assert seen[0] == _trained_ids(model.tokenizer, [ASK], call_message("refund_order", GOOD))
    assert seen[1] == _trained_ids(model.tokenizer, [ASK], {"role": "assistant", "content": written}, tools=None)
    # a reply in text on a tool row stays text; a message is taken as it is
    model.score([[ASK]], ["I cannot refund that."], tools=[TOOLS])
    assert seen[2] == _trained_ids(model.tokenizer, [ASK], {"role": "assistant", "content": "I cannot refund that."})


def test_a_reward_runs_eval_scores_its_held_out_pairs_with_their_tools(tool_reward, scored_ids):
    from tunesmith.config import load_recipe
    from tunesmith.eval.reward_eval import evaluate_pairs, read_pairs
    from tunesmith.train.reward import METHOD

    model, seen = scored_ids
    pairs = read_pairs(tool_reward)
    assert pairs and all(json.loads(p["tools"]) == TOOLS for p in pairs)  # saved with the run
    data = METHOD.datasets(load_recipe(tool_reward.dir / "run.yaml", check_files=False), model.tokenizer)
    evaluate_pairs(tool_reward)
    n = len(pairs)
    assert seen[:n] == list(data.eval["chosen_ids"]) and seen[n : 2 * n] == list(data.eval["rejected_ids"])


def test_grpos_reward_model_reward_reads_each_rows_tools_and_messages(tool_reward, scored_ids, tmp_path):
    """GRPO renders a tool row's prompt as text for TRL: the reward reads its messages and tools from their columns,
    and the completion's ids decoded with special tokens, parsed into its call."""
    from tunesmith.config import load_recipe
    from tunesmith.train import methods, rewards

    model, seen = scored_ids
    recipe = load_recipe(tool_recipe(tmp_path, "chatml", method="grpo", grpo={"rewards": [f"run:{tool_reward.dir}"]}))
    tok = model.tokenizer
    data = methods.get("grpo").datasets(recipe, tok).train
    (fn,) = rewards.for_recipe(recipe, tok)
    k = next(i for i, r in enumerate(data["reference"]) if '"refund_order"' in r)
    row = data[k]
    columns = {c: [row[c]] for c in data.column_names if c != "prompt"}
    ids = tok(hermes("refund_order", GOOD), add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    fn([row["prompt"]], [tok.decode(ids, skip_special_tokens=True)], completion_ids=[ids], **columns)
    messages = json.loads(row["prompt_messages"])
    assert isinstance(row["prompt"], str) and messages[-1]["role"] == "user"
    assert seen == [_trained_ids(tok, messages, call_message("refund_order", GOOD))]


def test_evals_reward_model_metric_scores_tool_turns_with_their_tools(tool_reward, scored_ids):
    from tunesmith.eval.reward_model import add_scores
    from tunesmith.eval.tool_metrics import completion_turn

    model, seen = scored_ids
    turn = completion_turn(hermes("refund_order", GOOD), "hermes")  # what eval scores a tool row's answer as
    summary, rows = {"tuned": {}}, [{"tuned_metrics": {}}, {"tuned_metrics": {}}]
    add_scores(str(tool_reward.dir), [[ASK], [ASK]], {"tuned": [turn, "plain"]}, summary, rows, [TOOLS, None])
    assert seen[0] == _trained_ids(model.tokenizer, [ASK], call_message("refund_order", GOOD))
    assert seen[1] == _trained_ids(model.tokenizer, [ASK], {"role": "assistant", "content": "plain"}, tools=None)
    assert isinstance(summary["tuned"]["reward_model"], float)


def test_served_requests_are_scored_as_their_feedback_export_trains(tool_reward, scored_ids):
    """A logged second step (the call, its result, the answer) and a logged call: the monitor's and the rollout's
    reward figures score each as `feedback export --to dpo` writes it, the prompt's calls and call ids kept."""
    from tunesmith.config import MonitorSection
    from tunesmith.eval.reward_model import encode
    from tunesmith.monitor import traffic
    from tunesmith.monitor.feedback import dpo_rows
    from tunesmith.monitor.variants import compare
    from tunesmith.serve.store import FeedbackRow, Message, RequestRow
    from tunesmith.train.rows import pair_tools, preference_row

    model, seen = scored_ids
    now = datetime.now(timezone.utc)
    called = call_message("refund_order", GOOD, call_id="call_ab12")
    step_two = [ASK, called, {"role": "tool", "tool_call_id": "call_ab12", "content": '{"ok": true}'}]
    requests = {
        "r1": RequestRow(request_id="r1", time=now, model="m", messages=[Message(**ASK)], tools=TOOLS,
                         output=hermes("lookup_order", {"order_id": "B3"}), finish_reason="tool_calls",
                         tool_calls=call_message("lookup_order", {"order_id": "B3"}, call_id="call_x")["tool_calls"]),
        "r2": RequestRow(request_id="r2", time=now, model="m", messages=[Message(**{**m, "content": m["content"] or ""}) for m in step_two], tools=TOOLS,
                         output="Refunded."),
    }  # fmt: skip
    feedback = [
        FeedbackRow(request_id="r1", rating="down", tool_calls=called["tool_calls"]),
        FeedbackRow(request_id="r2", rating="down", correction="Refunded 3.50 on B3."),
    ]
    exported, skipped = dpo_rows(requests, feedback)
    assert len(exported) == 2 and not skipped
    trained = []
    for obj in exported:
        row = preference_row(obj)
        trained.append(encode(model.tokenizer, row["prompt"], row["rejected"], pair_tools(row)))  # the served side
    compare(list(requests.values()), [], model)  # the rollout's and the monitor's per-variant figures
    assert seen == trained
    seen.clear()
    cfg = MonitorSection(embedder="char-ngrams", max_samples=10)
    scored = traffic._scored(model, list(requests.values()), cfg, 0)  # the monitor's reward signal and hours
    assert set(scored) == {"r1", "r2"} and sorted(map(tuple, seen)) == sorted(map(tuple, trained))
