"""The audit, per chat family: what is trained is checked with the family's own tokens (end of turn, reasoning
blocks, tool results, whitespace), packed rows that could attend to each other are found, trace sources are
counted, and the HTML report shows sampled rows as training sees them."""

from __future__ import annotations

import json

import pytest

from helpers import FAMILY_FIXTURES, chat_rows, family_name, family_tokenizer, write_jsonl
from tunesmith.data.audit import audit


def _codes(report):
    return {f.code for f in report.findings}


@pytest.mark.parametrize("name", list(FAMILY_FIXTURES))
def test_clean_rows_train_the_family_end_of_turn(tmp_path, name):
    """Phi-3's EOS (<|endoftext|>) is never trained, its <|end|> is: the check asks the family, not the EOS."""
    tok = family_tokenizer(name)
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", chat_rows(12)))], tokenizer=tok, max_length=256)
    assert "eos_not_trained" not in _codes(report)
    assert report.stats["tokens"]["eos_trained_rows"] == report.stats["tokens"]["eos_checked_rows"] == 12


@pytest.mark.parametrize("name", ["phi3", "gemma3", "llama3"])
def test_a_cut_end_of_turn_is_named(tmp_path, name):
    from tunesmith import families

    tok = family_tokenizer(name)
    rows = chat_rows(12)
    rows[3]["messages"][-1]["content"] = "word " * 80
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", rows))], tokenizer=tok, max_length=120, overlong="truncate")
    (hit,) = [f for f in report.findings if f.code == "eos_not_trained"]
    assert hit.line == 4 and families.get(family_name(name)).end_of_turn[0] in hit.message


def test_whitespace_only_trained(tmp_path):
    from tunesmith.data.template import render_prompt

    tok = family_tokenizer("chatml")
    rows = chat_rows(12)
    rows[5]["messages"][-1]["content"] = "\n\n\nThe sum is 7."
    prompt = render_prompt(tok, rows[5]["messages"][:-1])
    keep = len(tok(prompt, add_special_tokens=False)["input_ids"]) + 2  # the prompt and two newline tokens
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", rows))], tokenizer=tok, max_length=keep, overlong="truncate")
    hits = [f for f in report.findings if f.code == "whitespace_only_trained"]
    assert [f.line for f in hits] == [6]


def test_an_empty_reasoning_block_a_template_trains_is_found(tmp_path):
    tok = family_tokenizer("unknown")
    tok.chat_template = tok.chat_template.replace(
        '"ASSISTANT: " + message.content', '"ASSISTANT: Sure. <think></think> " + message.content'
    )
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", chat_rows(12)))], tokenizer=tok, max_length=256)
    assert [f.line for f in report.findings if f.code == "empty_trace_trained"] == list(range(1, 13))
    clean = audit([str(tmp_path / "t.jsonl")], tokenizer=family_tokenizer("unknown"), max_length=256)
    assert "empty_trace_trained" not in _codes(clean)


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def _tool_rows() -> list[dict]:
    rows = chat_rows(12)
    rows[2] = {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Where is order 7?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 7}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "shipped from Rotterdam"},
            {"role": "assistant", "content": "It has shipped."},
        ],
    }
    return rows


def test_tool_results_are_context_and_a_mask_that_trains_them_is_found(tmp_path, monkeypatch):
    from tunesmith.data import checks
    from tunesmith.data.template import tokenize_example

    path = str(write_jsonl(tmp_path / "t.jsonl", _tool_rows()))
    report = audit([path], tokenizer=family_tokenizer("qwen2.5"), max_length=1024)
    assert not _codes(report) & {"tool_result_trained", "over_max_length"} and not report.errors

    def everything_trained(*args, **kwargs):  # a loss mask that forgot to mask: every token a label
        tok = tokenize_example(*args, **kwargs)
        tok.labels, tok.n_trained = list(tok.input_ids), len(tok.input_ids)
        return tok

    monkeypatch.setattr(checks, "tokenize_example", everything_trained)
    report = audit([path], tokenizer=family_tokenizer("qwen2.5"), max_length=1024)
    (hit,) = [f for f in report.findings if f.code == "tool_result_trained"]
    assert (hit.line, hit.message_index) == (3, 2)


def test_packed_rows_that_can_attend_to_each_other(tmp_path, tiny_recipe, monkeypatch):
    from transformers import masking_utils

    from tunesmith.config import load_recipe
    from tunesmith.data.audit import packing_leaks as leaks
    from tunesmith.train.sft import METHOD as SFT

    def packing_leaks(recipe):
        return leaks(recipe, SFT)

    assert packing_leaks(load_recipe(tiny_recipe())) is None  # varlen on CPU
    assert packing_leaks(load_recipe(tiny_recipe(speed={"attention": "mask"}))) is None  # transformers' per-row mask
    remote = load_recipe(tiny_recipe(speed={"attention": "mask"}, model={"trust_remote_code": True, "revision": "abc"}))
    assert "remote" in packing_leaks(remote)
    assert packing_leaks(load_recipe(tiny_recipe(speed={"attention": "mask", "packing": "off"}))) is None
    monkeypatch.delattr(masking_utils, "find_packed_sequence_indices")
    assert "position_ids" in packing_leaks(load_recipe(tiny_recipe(speed={"attention": "mask"})))


def test_the_recipe_audit_reports_packing(tiny_recipe, monkeypatch):
    from transformers import AutoTokenizer, masking_utils

    from helpers import TINY_TOKENIZER
    from tunesmith.config import load_recipe
    from tunesmith.data.audit import audit_recipe
    from tunesmith.train.sft import METHOD as SFT

    monkeypatch.delattr(masking_utils, "find_packed_sequence_indices")
    recipe = load_recipe(tiny_recipe(speed={"attention": "mask"}))
    report = audit_recipe(recipe, SFT, AutoTokenizer.from_pretrained(TINY_TOKENIZER))
    assert [f.file for f in report.findings if f.code == "packed_rows_attend"] == ["(recipe)"]


def test_trace_sources_are_counted(tmp_path):
    rows = chat_rows(12)
    spellings = [("reasoning_content", "r1"), ("reasoning", "r2"), ("thinking", "r3"), ("thinking", "")]
    for row, (key, trace) in zip(rows, spellings):
        row["messages"][-1][key] = trace
    rows[4]["messages"][-1]["content"] = "<think>\ninline\n</think>\n\n" + rows[4]["messages"][-1]["content"]
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", rows))], tokenizer=family_tokenizer("qwen3"), reasoning="mask")
    traces = report.stats["reasoning"]
    assert traces["policy"] == "mask"
    assert traces["sources"] == {"reasoning_content": 1, "reasoning": 1, "thinking": 2, "empty": 1, "inline": 1}
    assert traces["traces"] == 4 and traces["traces_masked"] == 4 and traces["empty_traces"] == 1


def test_the_html_report_shows_rows_as_training_sees_them(tmp_path):
    from tunesmith.data.html import write_html

    rows = chat_rows(12)
    rows[0]["messages"][1]["content"] = "<script>alert(1)</script> Add 1 and 2."
    report = audit([str(write_jsonl(tmp_path / "t.jsonl", rows))], tokenizer=family_tokenizer("gemma3"), max_length=256)
    page = write_html(tmp_path / "report.html", report).read_text()
    assert "What the model will learn" in page and "trained: the model learns to write this" in page
    assert page.count("class='ts-row'") == 5  # the first rows (no row has a finding about its mask)
    assert "class='ts-trained'" in page and "&lt;end_of_turn&gt;</span>" in page  # special tokens marked
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert json.dumps("family gemma")[1:-1] in page
