"""Tool-call scoring, one definition: the registry's tool metrics on canonical turns, the same functions as GRPO's
rewards, and eval, the ladder (a few-shot rung with tools in the prompt), the gates, the HTML report and the studio's
report showing them per tool. What the tiny model writes is chosen by the test (family_helpers.scripted)."""

from __future__ import annotations

import json
import re
import typing

import pytest

from family_helpers import scripted
from helpers import family_tokenizer
from studio_helpers import StudioClient
from tool_helpers import TOOLS, call_message, hermes, tool_recipe
from tunesmith.eval import registry
from tunesmith.eval.tool_metrics import NO_CALL, output_turn, reference_turn

ASK = {"role": "user", "content": "Refund 2.50 on order A1."}
REF = reference_turn([ASK, call_message("refund_order", {"order_id": "A1", "amount": 2.5})], TOOLS)
TEXT_REF = reference_turn([ASK, {"role": "assistant", "content": "Which order?"}], TOOLS)
KEYS = registry.TOOL_METRICS  # call valid, name, arguments exact, arguments schema-valid, decision, whole turn


def scores(text: str, ref: str = REF, style: str = "hermes") -> tuple[float | None, ...]:
    out = output_turn(text, style)
    return tuple(registry.METRICS[k].fn(out, ref) for k in KEYS)  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, want",
    [
        # the same call, keys in another order: every metric passes
        (hermes("refund_order", {"amount": 2.5, "order_id": "A1"}), (1, 1, 1, 1, 1, 1)),
        (hermes("refund_order", {"order_id": "A1", "amount": 2.50000001}), (1, 1, 1, 1, 1, 1)),  # numbers as JSON
        (hermes("refund_order", {"order_id": "A2", "amount": 2.5}), (1, 1, 0, 1, 1, 0)),  # wrong value
        (hermes("lookup_order", {"order_id": "A1"}), (1, 0, 0, 1, 1, 0)),  # wrong function
        (hermes("refund_order", {"order_id": 1, "amount": 2.5}), (1, 1, 0, 0, 1, 0)),  # breaks the schema
        (hermes("cancel_order", {"order_id": "A1"}), (1, 0, 0, 0, 1, 0)),  # a function the row does not offer
        ('<tool_call>\n{"name": "refund_order", "arguments": {"order_id": ', (0, 0, 0, 0, 1, 0)),  # unparsable
        ("Sure, refunding now.", (0, 0, 0, None, 0, 0)),  # answered in text where it should call
    ],
)
def test_each_metric_on_a_call_reference(text, want):
    assert scores(text) == tuple(None if w is None else float(w) for w in want)


def test_a_reference_answered_in_text_and_parallel_calls_in_any_order():
    # should not call: a text answer is right, a call is the wrong decision (and name / arguments do not apply)
    assert scores("Which order?", TEXT_REF) == (None, None, None, None, 1.0, 1.0)
    assert scores(hermes("lookup_order", {"order_id": "A1"}), TEXT_REF) == (1.0, None, None, 1.0, 0.0, 0.0)
    both = [ASK, call_message("lookup_order", {"order_id": "A1"})]
    both[1]["tool_calls"].append(
        {"id": "c2", "type": "function", "function": {"name": "refund_order", "arguments": '{"order_id": "A1", "amount": 1}'}}
    )
    ref = reference_turn(both, TOOLS)
    swapped = hermes("refund_order", {"amount": 1, "order_id": "A1"}) + "\n" + hermes("lookup_order", {"order_id": "A1"})
    assert scores(swapped, ref) == (1.0,) * 6
    # a row without tools is not scored by the tool metrics
    assert scores("x", "plain reference") == (None,) * 6


@pytest.mark.parametrize(
    "family, text",
    [
        ("mistral", '[TOOL_CALLS] [{"name": "refund_order", "arguments": {"order_id": "A1", "amount": 2.5}}]'),
        ("phi3", '<|tool_call|>[{"name": "refund_order", "arguments": {"order_id": "A1", "amount": 2.5}}]<|/tool_call|>'),
        ("llama3", '<|python_tag|>{"name": "refund_order", "parameters": {"order_id": "A1", "amount": 2.5}}'),
        ("chatml", hermes("refund_order", {"order_id": "A1", "amount": 2.5})),
    ],
)
def test_the_grpo_rewards_are_the_registry_metrics(family, text):
    """Each tool reward gives what the registry metric gives eval, on TRL's completion ids decoded with their special
    tokens: Mistral's [TOOL_CALLS] and Phi's <|tool_call|> are special tokens TRL's text drops."""
    from tunesmith import families
    from tunesmith.method_sections import RewardSpec
    from tunesmith.train.rewards import completion_text, make_tool_reward

    tok = family_tokenizer(family)
    style = families.for_tokenizer(tok).tools
    end = families.for_tokenizer(tok).end_of_turn[0]
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(end)]
    trl_text = tok.decode(ids, skip_special_tokens=True)
    for name in registry.TOOL_METRICS:
        reward = make_tool_reward(name, tok)
        got = reward([[ASK]], [trl_text], completion_ids=[ids], reference=[REF])
        assert got == [registry.METRICS[name].fn(output_turn(text, style), REF)] == [1.0], name  # type: ignore[misc]
        # eval's scorer hands the rewards the tool turn it scored; other rewards read the answer text it came from
        assert reward([[ASK]], [output_turn(text, style)], reference=[REF]) == [1.0]
    assert completion_text(output_turn(text, style)) == text.strip()
    kinds = typing.get_args(RewardSpec.model_fields["type"].annotation)
    assert set(registry.TOOL_METRICS) <= set(kinds)


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    from tunesmith.config import load_recipe
    from tunesmith.train.entry import run as train_run

    gates = {"tool_call_valid": 0.5, "tool_arguments_match.lookup_order": ">=0.5", "tool_arguments_match.refund_order": 0.5}
    return train_run(load_recipe(tool_recipe(tmp_path_factory.mktemp("tools"), eval={"gates": gates})))


def test_eval_scores_calls_per_tool_with_gates_html_and_studio(tool_run, monkeypatch):
    from tunesmith.eval import compare
    from tunesmith.train import methods

    seen: list[list[int]] = []
    original = compare.load_run_model

    def load(run):
        loaded = original(run)
        scripted(loaded.model, loaded.tokenizer, hermes("lookup_order", {"order_id": "A140"}), "<|im_end|>")
        loaded.model.generate = _recording(loaded.model.generate, seen)
        return loaded

    monkeypatch.setattr(compare, "load_run_model", load)
    report = methods.evaluate(tool_run)
    assert report.tool_mode and not report.json_mode
    tuned = report.summary["tuned"]
    # held-out: a lookup of A140 (right), a refund (wrong function), a greeting and a reply after a result (no call due)
    assert tuned["tool_call_valid"] == 1.0 and tuned["tool_arguments_valid"] == 1.0
    assert tuned["tool_name_match"] == tuned["tool_arguments_match"] == 0.5
    assert tuned["tool_decision"] == 0.5 and tuned["tool_trajectory_match"] == 0.25
    per_tool = report.per_tool["tuned"]
    assert per_tool["lookup_order"]["tool_arguments_match"] == 1.0 and per_tool["refund_order"]["tool_arguments_match"] == 0.0
    assert per_tool[NO_CALL] == {
        "n": 2.0,
        "tool_call_valid": 1.0,
        "tool_arguments_valid": 1.0,
        "tool_decision": 0.0,
        "tool_trajectory_match": 0.0,
    }
    gates = {g.name: g.status for g in report.gates}
    assert gates["tool_arguments_match.lookup_order"] == "pass" and gates["tool_arguments_match.refund_order"] == "fail"
    # every prompt offered the row's tools, rendered by the family's template
    tok = _tokenizer(tool_run)
    assert seen and all("<tools>" in tok.decode(p) and "refund_order" in tok.decode(p) for p in seen)
    rows = [json.loads(x) for x in (tool_run.dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["tuned_turn"]["calls"] == [{"name": "lookup_order", "arguments": {"order_id": "A140"}}]
    page = (tool_run.dir / "eval" / "report.html").read_text()
    assert "Per tool" in page and "refund_order" in page and "tool-call mode" in page
    from tunesmith.studio.app import StudioConfig, create_app

    client = StudioClient(create_app(StudioConfig(runs=[tool_run.dir.parent])))
    key = re.search(r'href="/run\?k=([^"]+)">', client.get("/").text).group(1)
    html = client.get(f"/report?k={key}").text
    assert 'id="per-tool"' in html and "refund_order" in html and "tool_arguments_match" in html


def test_the_ladder_shows_tools_in_every_rung_and_calls_in_the_shots(tool_run, monkeypatch):
    from tunesmith.eval import ladder as ladder_mod
    from tunesmith.eval import scoring

    seen: list[list[int]] = []
    original = scoring.run_answerers

    def answerers(run, loaded):
        scripted(loaded.model, loaded.tokenizer, hermes("refund_order", {"order_id": "A141", "amount": 41.5}), "<|im_end|>")
        loaded.model.generate = _recording(loaded.model.generate, seen)
        return original(run, loaded)

    monkeypatch.setattr(scoring, "run_answerers", answerers)
    recipe = tool_run.recipe.model_copy(deep=True)
    recipe.ladder.rungs = ["base", "base_few_shot", "tuned"]
    recipe.ladder.few_shot_k = 4
    report, _ = ladder_mod.run_ladder(recipe)
    assert report.tool_mode and report.primary_metric == "tool_call_valid"  # the first quality gate
    for rung in report.measured:
        assert rung.metrics["tool_call_valid"] == 1.0 and rung.metrics["tool_arguments_match"] == 0.5, (rung.name, rung.metrics)
        assert rung.per_tool["refund_order"]["tool_arguments_match"] == 1.0
    tok = _tokenizer(tool_run)
    texts = [tok.decode(p) for p in seen]
    assert all("<tools>" in t for t in texts)
    # the few-shot prompts show training rows' calls as the family writes them
    assert any(t.count("<tool_call>") >= 1 and "Where is order" in t for t in texts[4:8])


def _recording(generate, seen):
    def wrapped(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for i, row in enumerate(ids):
            seen.append(row[mask[i].bool()].tolist() if mask is not None else row.tolist())
        return generate(*args, **kwargs)

    return wrapped


def _tokenizer(run):
    from tunesmith.models import load_tokenizer

    return load_tokenizer(str(run.adapter_dir))


@pytest.mark.parametrize(
    "text, style",
    [
        (hermes("refund_order", {"order_id": "A1", "amount": 2.5}), "hermes"),
        ('<tool_call>\n{"name": "refund_order", "arguments": ["A1"]}\n</tool_call>', "hermes"),  # not an object
        ('<tool_call>\n{"name": "refund_order", "arguments": {"order_id": ', "hermes"),  # cut off
        ("Sure, refunding now.", "hermes"),
        ('[TOOL_CALLS] [{"name": "refund_order", "arguments": {"order_id": "A1", "amount": 2.5}}]', "mistral"),
        ('{"name": "refund_order", "parameters": {"order_id": "A1", "amount": 2.5}}', "llama3_json"),
        ('<|tool_call|>[{"name": "refund_order", "arguments": "{"}]<|/tool_call|>', "phi4_mini"),
    ],
)
def test_serve_returns_a_call_exactly_when_the_metric_counts_it_valid(text, style):
    """One definition of a valid call: what `serve` returns as tool_calls is what eval and the rewards score 1.0,
    and an output serve returns as content (counted unparsable) scores 0."""
    from tunesmith.serve.tool_calls import ToolChoice, read_reply, tool_error

    reply = read_reply(text, style, ToolChoice("auto"))
    valid = registry.METRICS["tool_call_valid"].fn(output_turn(text, style), REF)  # type: ignore[misc]
    assert bool(reply.calls) == (valid == 1.0)
    opened = not text.startswith("Sure")  # every other output opens a call, parsed or not
    assert (tool_error(text, style) is not None) == (opened and not reply.calls)
