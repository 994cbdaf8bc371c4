"""Serving tools: /v1/chat/completions with `tools` and `tool_choice`, the official openai client streamed and not,
the calls parsed in the family's format, `tool` messages after them, unparsable calls counted in /metrics, a forced
choice without its call an OpenAI-shaped 422, and the request log keeping calls that `feedback export` turns into
SFT and DPO rows. What the tiny ChatML model writes is chosen by the test (family_helpers.scripted)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_helpers import live_server

from family_helpers import scripted
from tool_helpers import TOOLS, hermes, tool_recipe

KEY = "sk-tools"
ASK = [{"role": "user", "content": "Where is order A1?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 2-step tiny ChatML run on tool rows, served with a request log; yields (client, engine, url, folder)."""
    from tunesmith.config import load_recipe
    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.engine import load_engine
    from tunesmith.serve.security import KeyRing
    from tunesmith.serve.store import RequestLog
    from tunesmith.train.entry import run as train_run

    root = tmp_path_factory.mktemp("served")
    run = train_run(load_recipe(tool_recipe(root)))
    engine = load_engine(run.dir)
    folder = root / "serve"
    store = RequestLog.open(folder, create=True)
    app = create_app(lambda: engine, ServeSettings(keys=KeyRing.build([KEY], [])), store)
    with live_server(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0), engine, url, folder


def ask(client, engine, **kwargs):
    return client.chat.completions.create(model=engine.default_name, max_tokens=120, temperature=0, **kwargs)


def test_a_call_comes_back_as_tool_calls_and_the_loop_completes(served):
    client, engine, _, _ = served
    scripted(engine.model, engine.tokenizer, hermes("lookup_order", {"order_id": "A1"}), "<|im_end|>")
    res = ask(client, engine, messages=ASK, tools=TOOLS)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A1"}
    # the prompt the model saw offers the tools, rendered by the run's template
    assert "<tools>" in engine.prompt(engine.default_name, ASK, TOOLS)
    # step two: the call and its result go back; the model answers in text
    scripted(engine.model, engine.tokenizer, "Order A1 has shipped.", "<|im_end|>")
    follow = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'},
    ]
    done = ask(client, engine, messages=follow, tools=TOOLS)
    assert done.choices[0].message.content == "Order A1 has shipped." and done.choices[0].finish_reason == "stop"
    assert not done.choices[0].message.tool_calls
    prompt = engine.prompt(engine.default_name, [*ASK, follow[1], follow[2]], TOOLS)
    assert '<tool_response>\n{"status": "shipped"}\n</tool_response>' in prompt and '"name": "lookup_order"' in prompt


def test_a_streamed_call_arrives_as_the_clients_deltas(served):
    client, engine, _, _ = served
    args = {"order_id": "A1", "amount": 12.5}
    scripted(engine.model, engine.tokenizer, hermes("refund_order", args), "<|im_end|>")
    chunks = list(ask(client, engine, messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    first = calls[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "refund_order" and first.function.arguments == ""
    assert len(calls) > 2 and all(tc.index == 0 and tc.id is None and tc.function.name is None for tc in calls[1:])
    assert json.loads("".join(tc.function.arguments for tc in calls)) == args
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"] and chunks[-1].usage is not None
    # the client's own stream helper assembles the same call
    with client.chat.completions.stream(
        model=engine.default_name, messages=ASK, tools=TOOLS, max_tokens=120, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "refund_order" and json.loads(call.function.arguments) == args


def test_tool_choice_none_required_named_and_bad(served):
    client, engine, _, _ = served
    scripted(engine.model, engine.tokenizer, hermes("lookup_order", {"order_id": "A1"}), "<|im_end|>")
    plain = ask(client, engine, messages=ASK, tools=TOOLS, tool_choice="none")
    assert plain.choices[0].finish_reason == "stop" and not plain.choices[0].message.tool_calls
    assert '"lookup_order"' in plain.choices[0].message.content
    named = ask(client, engine, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup_order"}})
    assert named.choices[0].message.tool_calls[0].function.name == "lookup_order"
    with pytest.raises(openai.UnprocessableEntityError) as wrong:
        ask(client, engine, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "refund_order"}})
    assert wrong.value.body["code"] == "tool_call_missing"
    scripted(engine.model, engine.tokenizer, "I cannot tell.", "<|im_end|>")
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as missing:
            res = ask(client, engine, messages=ASK, tools=TOOLS, tool_choice="required", stream=stream)
            list(res) if stream else None
        assert missing.value.status_code == 422 and missing.value.body["code"] == "tool_call_missing"
    for bad in ({"type": "function", "function": {"name": "cancel_order"}}, "sometimes"):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, engine, messages=ASK, tools=TOOLS, tool_choice=bad)
        assert refused.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as no_name:
        ask(client, engine, messages=ASK, tools=[{"type": "function", "function": {"parameters": {}}}])
    assert no_name.value.body["param"] == "tools"


def test_an_unparsable_call_is_content_and_counted(served):
    client, engine, url, _ = served
    broken = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": '
    scripted(engine.model, engine.tokenizer, broken, "<|im_end|>")

    def counted() -> float:
        text = httpx.get(url + "/metrics").text
        line = next((x for x in text.splitlines() if x.startswith("tunesmith_tool_calls_unparsable_total{")), "x 0")
        return float(line.split()[-1])

    before = counted()
    res = ask(client, engine, messages=ASK, tools=TOOLS)
    assert res.choices[0].finish_reason == "stop" and not res.choices[0].message.tool_calls
    assert res.choices[0].message.content.startswith("<tool_call>")
    streamed = list(ask(client, engine, messages=ASK, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("<tool_call>")
    assert counted() == before + 2


def test_the_log_keeps_calls_and_feedback_exports_them(served, tmp_path):
    from tunesmith.monitor.feedback import export
    from tunesmith.serve.store import RequestLog

    client, engine, url, folder = served
    headers = {"Authorization": f"Bearer {KEY}"}
    scripted(engine.model, engine.tokenizer, hermes("lookup_order", {"order_id": "A9"}), "<|im_end|>")
    wrong = ask(client, engine, messages=ASK, tools=TOOLS)
    scripted(engine.model, engine.tokenizer, hermes("lookup_order", {"order_id": "A1"}), "<|im_end|>")
    right = ask(client, engine, messages=ASK, tools=TOOLS)
    row = RequestLog.open(folder).get_request(wrong.id)
    assert row is not None and row.tools == TOOLS and row.finish_reason == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in row.tool_calls] == [
        ("lookup_order", {"order_id": "A9"})
    ]
    fix = [{"type": "function", "function": {"name": "lookup_order", "arguments": {"order_id": "A1"}}}]
    for body in (
        {"request_id": wrong.id, "rating": "down", "tool_calls": fix},
        {"request_id": right.id, "rating": "up"},
    ):
        assert httpx.post(url + "/v1/feedback", json=body, headers=headers).status_code == 200
    export(folder, "sft", tmp_path / "sft.jsonl")
    sft = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    (corrected,) = [r for r in sft if r["tools"] == TOOLS]
    answer = corrected["messages"][-1]
    assert answer["role"] == "assistant" and json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {"order_id": "A1"}
    export(folder, "dpo", tmp_path / "dpo.jsonl")
    pairs = [json.loads(x) for x in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    tool_pairs = [p for p in pairs if p.get("tools") == TOOLS]
    assert tool_pairs
    for pair in tool_pairs:
        good, bad = pair["preferred_output"][0], pair["non_preferred_output"][0]
        assert json.loads(good["tool_calls"][0]["function"]["arguments"]) == {"order_id": "A1"}
        assert json.loads(bad["tool_calls"][0]["function"]["arguments"]) == {"order_id": "A9"}
    # the exported rows audit clean for the tool checks (they train as written)
    from tunesmith.data.audit import audit

    for path in (tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"):
        assert not [f for f in audit([str(path)]).findings if f.code.startswith("tool")]
