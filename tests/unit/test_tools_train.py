"""Training on tool rows: each family renders tools and calls its own way, its assistant calls and content are trained,
tool results and the tool list never (the trained spans decoded, and parsed back into the same call by the family's
parser); SFT, DPO (a preferred vs a rejected call) and GRPO (the tool metrics as rewards) run a few steps."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import FAMILY_FIXTURES, family_name, family_tokenizer, trained_runs, write_jsonl
from tool_helpers import TOOLS, call_message, call_pairs, tool_recipe
from tunesmith import families
from tunesmith.families.tools import parse_tool_calls

# Families whose template renders tools (Phi-4 documents none; the test-only unknown and Gemma 2 templates render none).
TOOL_FAMILIES = [n for n in FAMILY_FIXTURES if families.get(family_name(n)).tools and n != "gemma2"]
ARGS = {"order_id": "A7", "amount": 12.5}
RESULT = '{"status": "refunded", "ticket": "R-88"}'


def _trained_text(fixture: str, messages: list[dict]) -> list[str]:
    """The decoded runs of trained tokens of a conversation, as training tokenizes it (expanded where the family's
    template cannot train every answer in one row)."""
    from tunesmith.data.dataset import tokenize_row
    from tunesmith.data.formats import Example

    tok = family_tokenizer(fixture)
    parts, _ = tokenize_row(tok, Example("r", messages, "t.jsonl:1", {"tools": TOOLS}), 4096, "drop")
    return [run for part in parts for run in trained_runs(tok, part.input_ids, part.labels)]


@pytest.mark.parametrize("fixture", TOOL_FAMILIES)
def test_each_family_trains_its_calls_and_never_results_or_the_tool_list(fixture):
    family = families.get(family_name(fixture))
    ask = {"role": "user", "content": "Refund 12.50 on order A7."}
    reply = {"role": "assistant", "content": "Refunded: ticket R-88."}
    messages = [ask, call_message("refund_order", ARGS), {"role": "tool", "tool_call_id": "call_1", "content": RESULT}, reply]
    runs = _trained_text(fixture, messages)
    ends = family.end_of_turn
    # the call turn is trained as the family writes it, end of turn included, and parses back into the same call
    call_run = next(r for r in runs if "refund_order" in r)
    assert any(call_run.rstrip().endswith(e) for e in ends), call_run
    body = call_run
    for e in ends:
        body = body.replace(e, "")
    parsed = parse_tool_calls(body.strip(), family.tools)
    assert parsed.error is None and [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.calls] == [
        ("refund_order", ARGS)
    ], (fixture, call_run)
    # the answer after the result is trained; the result and the tool list never are
    assert any("Refunded: ticket R-88." in r for r in runs)
    assert not any('"status"' in r or 'R-88"}' in r for r in runs), runs
    assert not any("Find an order by its id." in r or "Refund an order." in r for r in runs)


def test_sft_trains_tool_rows(tmp_path):
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    run = train_run(load_recipe(tool_recipe(tmp_path, "chatml")))
    tokens = run.manifest.tokens.train
    assert run.manifest.figures.global_step == 2 and tokens is not None and tokens.kept == 16
    assert tokens.turns["tool_calls_trained"] == 12 and tokens.turns["tool_results_untrained"] == 4
    held = [json.loads(x) for x in (run.dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert all(r["tools"] == TOOLS for r in held)  # held-out rows keep their tools


def _capture(monkeypatch, name: str) -> dict:
    """The TRL trainer `_trl.<name>` builds, kept for the test to look at."""
    from tunesmith.train import _trl

    seen: dict = {}
    original = getattr(_trl, name)

    def build(*args, **kwargs):
        seen["trainer"] = original(*args, **kwargs)
        return seen["trainer"]

    monkeypatch.setattr(_trl, name, build)
    return seen


def test_dpo_prefers_the_right_call_with_the_rows_tools(tmp_path, monkeypatch):
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    path = tool_recipe(tmp_path, "chatml", method="dpo")
    write_jsonl(tmp_path / "pairs.jsonl", call_pairs(14))
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = {"train": ["pairs.jsonl"], "max_length": 1024, "eval_fraction": 0.15}
    path.write_text(yaml.safe_dump(recipe))
    seen = _capture(monkeypatch, "dpo_trainer")
    run = train_run(load_recipe(path))
    assert run.manifest.figures.global_step == 2
    trainer = seen["trainer"]
    row = trainer.train_dataset[0]
    tok = trainer.processing_class
    prompt = tok.decode(row["prompt_ids"])
    assert "<tools>" in prompt and "refund_order" in prompt  # TRL rendered the row's own tools
    assert '<tool_call>\n{"name": "refund_order"' in tok.decode(row["chosen_ids"])
    assert '<tool_call>\n{"name": "lookup_order"' in tok.decode(row["rejected_ids"])


def test_grpo_learns_from_the_tool_metrics_as_rewards(tmp_path, monkeypatch):
    from tunesmith.config import load_recipe
    from tunesmith.run import read_metrics
    from tunesmith.train.entry import run as train_run

    grpo = {
        "rewards": ["tool_arguments_match", "tool_decision"],
        "num_generations": 2,
        "max_completion_length": 24,
    }
    seen = _capture(monkeypatch, "grpo_trainer")
    run = train_run(load_recipe(tool_recipe(tmp_path, "chatml", method="grpo", grpo=grpo)))
    assert run.manifest.figures.global_step == 2
    logged = [r for r in read_metrics(run.dir) if "rewards/tool_arguments_match/mean" in r]
    assert logged and all("rewards/tool_decision/mean" in r for r in logged)
    # TRL receives each prompt rendered with its row's tools, and each row's answer turn as `reference`
    data = seen["trainer"].train_dataset
    assert all("<tools>" in p and p.endswith("<|im_start|>assistant\n") for p in data["prompt"])
    assert all(json.loads(r)["tool_turn"] == "reference" for r in data["reference"])


def test_a_reward_model_reads_each_pair_of_calls_with_its_rows_tools(tmp_path):
    """A reward run on pairs of calls (feedback export's rows keep their tools): each pair is encoded with the tool
    list its prompt offered, as the policy saw it."""
    from tunesmith.config import load_recipe
    from tunesmith.models import load_tokenizer
    from tunesmith.train.reward import METHOD

    rows = []
    for i in range(12):
        ask = {"role": "user", "content": f"Refund {i}.50 on order B{i}."}
        good = call_message("refund_order", {"order_id": f"B{i}", "amount": i + 0.5})
        bad = call_message("lookup_order", {"order_id": f"B{i}"})
        rows.append(
            {
                "id": f"p{i}",
                "input": {"messages": [ask]},
                "preferred_output": [good],
                "non_preferred_output": [bad],
                "tools": TOOLS,
            }
        )
    path = tool_recipe(tmp_path, "chatml", method="reward")
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = {"train": ["pairs.jsonl"], "max_length": 1024, "eval_fraction": 0.2}
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    tok = load_tokenizer(loaded.model.base)
    data = METHOD.datasets(loaded, tok)
    chosen, rejected = (tok.decode(data.train[0][k]) for k in ("chosen_ids", "rejected_ids"))
    assert "<tools>" in chosen and "<tools>" in rejected and "Refund an order." in chosen
    assert '<tool_call>\n{"name": "refund_order"' in chosen and '<tool_call>\n{"name": "lookup_order"' in rejected
