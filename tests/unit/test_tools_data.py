"""Tool-calling data: rows with `tools` (per row, or per file with data.tools), calls and results in OpenAI's shape,
ShareGPT and glaive function-call rows converted with counts, the audit's tool codes with line numbers, `data show`
marking calls trained and results not, and a call with `content: null` on a template that renders no calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_checks import TOOL, answer, call, calling, clean_row, result, tool_row, write
from typer.testing import CliRunner

from helpers import family_tokenizer, save_tiny_family, save_tiny_llama
from tunesmith.cli import app
from tunesmith.data.audit import audit
from tunesmith.data.convert import convert_file
from tunesmith.data.formats import load_examples, to_messages
from tunesmith.data.show import counts_line, nth_record, plain, show_row

runner = CliRunner()

SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Where is order A7?"},
        {"from": "function_call", "value": '{"name": "lookup_order", "arguments": {"order_id": "A7"}}'},
        {"from": "observation", "value": '{"status": "shipped"}'},
        {"from": "gpt", "value": "Order A7 has shipped."},
    ],
    "tools": json.dumps([TOOL["function"]]),  # LLaMA-Factory stores bare functions, as JSON text
}
GLAIVE = {
    "system": "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
    + json.dumps(TOOL["function"], indent=4),
    "chat": 'USER: Where is order B2?\n\n\nASSISTANT: <functioncall> {"name": "lookup_order", "arguments": '
    '\'{"order_id": "B2"}\'} <|endoftext|>\n\n\nFUNCTION RESPONSE: {"status": "packed"}\n\n\n'
    "ASSISTANT: Order B2 is packed. <|endoftext|>\n\n\n",
}


@pytest.fixture(scope="module")
def chatml():
    return family_tokenizer("chatml")


def test_sharegpt_and_glaive_function_calls_become_openai_calls_and_results():
    for row, order, status in ((SHAREGPT, "A7", "shipped"), (GLAIVE, "B2", "packed")):
        messages = to_messages(row)
        user, calling_turn, tool, final = messages
        assert user == {"role": "user", "content": f"Where is order {order}?"}
        (the_call,) = calling_turn["tool_calls"]
        assert the_call["function"]["name"] == "lookup_order"
        assert json.loads(the_call["function"]["arguments"]) == {"order_id": order}
        # the result names the call it answers
        assert tool["role"] == "tool" and tool["tool_call_id"] == the_call["id"] and status in tool["content"]
        assert final["role"] == "assistant" and status in final["content"]


def test_convert_counts_calls_and_results_and_writes_the_tools(tmp_path):
    src = write(tmp_path / "fc.jsonl", [SHAREGPT, GLAIVE, clean_row(0), {"conversations": "nope"}])
    res = convert_file(src, tmp_path / "out.jsonl", "messages")
    assert res.converted == 3 and dict(res.skipped) == {"missing_messages_list": 1}
    assert dict(res.tools) == {"rows_with_tools": 2, "calls": 2, "results": 2}
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["tools"] == [TOOL] and rows[1]["tools"] == [TOOL]  # OpenAI's shape, whatever the source's
    assert "system" not in rows[1] and "chat" not in rows[1]
    # the converted file audits clean for the tool checks and trains the calls
    report = audit([str(tmp_path / "out.jsonl")])
    assert not [f for f in report.findings if f.code.startswith("tool") or f.code == "invalid_tools"]
    out = runner.invoke(app, ["data", "convert", str(src), "--to", "messages", "--out", str(tmp_path / "again.jsonl")])
    assert out.exit_code == 0 and "2 row(s) offer tools, 2 call(s), 2 result(s) converted" in " ".join(out.output.split())


def test_the_tool_codes_name_line_and_message(tmp_path, chatml):
    rows = [
        tool_row(calling(call()), result("c1"), answer("Shipped.")),  # clean
        tool_row(calling(call("refund_order"))),
        tool_row(calling(call(args='{"order_id": 7}'))),
        tool_row(calling(call()), answer("Shipped.")),
        tool_row(calling(call(), content="Let me look that up.")),
    ]
    path = write(tmp_path / "t.jsonl", rows)
    report = audit([str(path)], tokenizer=chatml)
    found = {(f.code, f.line, f.message_index) for f in report.findings if f.code.startswith("tool")}
    assert found == {
        ("tool_not_declared", 2, 1),
        ("tool_arguments_schema", 3, 1),
        ("tool_call_unanswered", 4, 1),
        ("tool_content_and_calls", 5, 1),
    }
    schema = next(f for f in report.findings if f.code == "tool_arguments_schema")
    assert "order_id" in schema.message and "not of type 'string'" in schema.message
    # the mixed turn is kept (a warning) and counted with the usable rows; both its text and its call are trained
    tools = report.stats["tools"]
    assert tools == {
        "rows_with_tools": 2,
        "calls": 2,
        "results": 1,
        "content_and_calls": 1,
        "calls_per_tool": {"lookup_order": 2},
    }
    shown = show_row(chatml, nth_record(path, 5))
    assert "[[Let me look that up.\n<tool_call>" in plain(shown)


def test_data_tools_offers_a_files_tools_to_rows_without_their_own(tmp_path, chatml):
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([TOOL]))
    bare = {"messages": tool_row(calling(call()))["messages"]}
    path = write(tmp_path / "t.jsonl", [bare])
    assert {f.code for f in audit([str(path)], tokenizer=chatml).findings} >= {"tool_not_declared"}
    report = audit([str(path)], tokenizer=chatml, tools=json.loads(tools_file.read_text()))
    assert not [f for f in report.findings if f.code.startswith("tool")]
    # training reads the same tools through the recipe (data.tools), and the held-out copy keeps them
    from tunesmith.config import DataSection
    from tunesmith.data.dataset import split_examples

    rows = [dict(bare, id=f"r{i}") for i in range(4)]
    rows = [
        {**r, "messages": [{**r["messages"][0], "content": f"Where is order A{i}?"}, *r["messages"][1:]]}
        for i, r in enumerate(rows)
    ]
    write(tmp_path / "many.jsonl", rows)
    section = DataSection(train=[str(tmp_path / "many.jsonl")], tools=str(tools_file), eval_fraction=0.25)
    train, held = split_examples(section, 0)
    assert all(e.extra["tools"] == [TOOL] for e in train + held)


def test_data_show_marks_calls_trained_and_results_not(tmp_path, chatml):
    row = tool_row(calling(call()), result("c1", '{"status": "shipped"}'), answer("It has shipped."))
    path = write(tmp_path / "t.jsonl", [row])
    shown = show_row(chatml, nth_record(path, 1))
    text = plain(shown)
    assert '[[<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A1"}}\n</tool_call><|im_end|>]]' in text
    assert '<tool_response>\n{"status": "shipped"}\n</tool_response>' in text
    assert '[[{"status"' not in text and 'shipped"}\n</tool_response><|im_end|>]]' not in text  # the result is prompt
    assert "<tools>" in text and "[[<tools>" not in text  # the tool list is prompt too
    assert "tools: 1 call(s) trained, 1 result(s) not trained" in counts_line(shown)
    model = save_tiny_family(tmp_path / "chatml", "chatml")
    out = runner.invoke(app, ["data", "show", str(path), "--model", str(model)])
    assert out.exit_code == 0, out.output
    assert "[[<tool_call>" in out.output and "1 call(s) trained, 1 result(s) not trained" in " ".join(out.output.split())


def test_a_call_on_a_template_that_renders_no_calls_is_one_clear_finding(tmp_path):
    """content: null + tool_calls on the tiny ChatML model (SmolLM2's own template, which renders no tools or calls):
    one finding and one red paragraph, never a jinja2 traceback, and never the calls silently dropped."""
    from tunesmith.data.template import TemplateRefused, render_turns

    model = save_tiny_llama(tmp_path / "tiny")
    row = tool_row(calling(call()), result("c1"), answer("Shipped."))
    path = write(tmp_path / "t.jsonl", [row])
    out = runner.invoke(app, ["data", "show", str(path), "--model", str(model)])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), out.output
    assert "Traceback" not in out.output and "does not render tools" in " ".join(out.output.split())
    out = runner.invoke(app, ["data", "check", str(path), "--model", str(model), "--json"])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit)
    report = json.loads(out.output)
    (refused,) = [f for f in report["findings"] if f["code"] == "template_refuses_row"]
    assert refused["line"] == 1 and "does not render tools" in refused["message"]
    # without `tools`, the call is still never rendered away: the template is refused for the calls themselves
    from transformers import AutoTokenizer

    with pytest.raises(TemplateRefused, match="does not render tool calls"):
        render_turns(AutoTokenizer.from_pretrained(model), row["messages"])


def test_load_examples_keeps_the_tools_in_openai_shape(tmp_path):
    path = write(tmp_path / "fc.jsonl", [SHAREGPT, GLAIVE])
    first, second = load_examples(str(path))
    assert first.extra["tools"] == [TOOL] and second.extra["tools"] == [TOOL]
    assert Path(first.source).name == "fc.jsonl:1"
