"""What the model will learn, as plain text (`data show` outside a terminal) and as HTML (audit report, studio)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from helpers import FAMILY_FIXTURES, build_family_dirs, family_tokenizer, write_jsonl
from tunesmith.cli import app
from tunesmith.data.html import row_html, rows_section
from tunesmith.data.show import nth_record, plain, show_row, trained_runs

QWEN3_ROW = {
    "messages": [
        {"role": "user", "content": "What is 17 * 3?"},
        {"role": "assistant", "content": "<think>\n17 * 3 = 51.\n</think>\n\n51"},
    ]
}
GEMMA_ROW = {
    "messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return build_family_dirs(tmp_path_factory.mktemp("families"))


def test_plain_view_marks_the_trace_and_answer_of_a_qwen3_row(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", [QWEN3_ROW])
    shown = show_row(family_tokenizer("qwen3"), nth_record(src, 1))
    assert plain(shown) == (
        "<|im_start|>user\nWhat is 17 * 3?<|im_end|>\n<|im_start|>assistant\n"
        "[[<think>\n17 * 3 = 51.\n</think>\n\n51<|im_end|>]]\n"
    )
    masked = show_row(family_tokenizer("qwen3"), nth_record(src, 1), reasoning="mask")
    assert trained_runs(masked) == ["51<|im_end|>"] and masked.counts["traces_masked"] == 1


def test_plain_view_of_a_gemma_row_with_a_system_prompt(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", [GEMMA_ROW])
    shown = show_row(family_tokenizer("gemma3"), nth_record(src, 1))
    assert plain(shown) == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n[[Paris<end_of_turn>]]\n"
    )
    assert shown.family == "gemma" and shown.eos_trained


@pytest.mark.parametrize("name", list(FAMILY_FIXTURES))
def test_data_show_prints_plain_text_when_not_a_terminal(dirs, tmp_path, name):
    src = write_jsonl(tmp_path / "rows.jsonl", [GEMMA_ROW])
    result = CliRunner().invoke(app, ["data", "show", str(src), "--model", str(dirs[name])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[[" in result.output and "Paris" in result.output.split("[[", 1)[1].split("]]")[0]
    assert "Answer in one word." not in "".join(part.split("]]")[0] for part in result.output.split("[[")[1:])
    assert f"family {name if name not in ('gemma2', 'gemma3') else 'gemma'}" in result.output


def test_data_show_takes_the_reasoning_policy(dirs, tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", [QWEN3_ROW])
    result = CliRunner().invoke(app, ["data", "show", str(src), "--model", str(dirs["qwen3"]), "--reasoning", "drop"])
    assert result.exit_code == 0, result.output
    assert "17 * 3 = 51." not in result.output and "traces dropped 1" in result.output


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.trained: list[str] = []
        self.special: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":  # void element: no end tag
            return
        self.stack.append(dict(attrs).get("class") or tag)

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if "ts-trained" in self.stack:
            self.trained.append(data)
        if self.stack and self.stack[-1] == "ts-special":
            self.special.append(data)


def test_row_html_colours_trained_runs_and_shows_special_tokens(tmp_path):
    src = write_jsonl(
        tmp_path / "rows.jsonl",
        [QWEN3_ROW, {"messages": [{"role": "user", "content": "<b>hi</b>"}, {"role": "assistant", "content": "x"}]}],
    )
    tok = family_tokenizer("qwen3")
    page = rows_section([show_row(tok, nth_record(src, 1)), show_row(tok, nth_record(src, 2))])
    parser = _Tags()
    parser.feed(page)
    assert parser.stack == []  # every tag closed
    assert "".join(parser.trained).startswith("<think>\n17 * 3 = 51.") and "51<|im_end|>" in "".join(parser.trained)
    assert {"<|im_start|>", "<|im_end|>", "<think>", "</think>"} <= set(parser.special)
    assert "<b>hi</b>" not in page and "&lt;b&gt;hi&lt;/b&gt;" in page  # row text is escaped
    assert page.count("trained: the model learns") == 1  # one legend for the section
    assert "trained: the model learns" in row_html(show_row(tok, nth_record(src, 1)))


def test_show_counts_in_the_footer_name_untrainable_turns(tmp_path):
    from tunesmith.data.show import counts_line

    row = {
        "messages": [
            *GEMMA_ROW["messages"],
            {"role": "user", "content": "And Spain?"},
            {"role": "assistant", "content": "Madrid"},
        ]
    }
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(row) + "\n")
    shown = show_row(family_tokenizer("mistral"), nth_record(src, 1))
    assert trained_runs(shown) == [" Madrid</s>"]
    assert "1 not trainable" in counts_line(shown)
