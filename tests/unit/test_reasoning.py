"""Reasoning traces: every spelling normalised and counted, train | mask | drop per family, history traces rendered
as at inference, empty traces never trained, and completions split into (reasoning, answer)."""

from __future__ import annotations

import pytest

from helpers import FAMILY_FIXTURES, family_tokenizer, trained_runs
from tunesmith.data.formats import RowError, to_messages
from tunesmith.data.reasoning import Split, sources, split_output, thinking_mode
from tunesmith.data.template import render_prompt, render_turns, tokenize_example

TRACE = "Two and two make four."


def row(**assistant):
    return {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", **assistant}]}


@pytest.mark.parametrize(
    "assistant",
    [
        {"content": "4", "reasoning_content": TRACE},
        {"content": "4", "reasoning": TRACE},
        {"content": "4", "thinking": TRACE},
        {"content": f"<think>\n{TRACE}\n</think>\n\n4"},
        {"content": f"{TRACE}</think>4"},  # the open tag was in the prompt (R1-style outputs)
        {"content": f"<think>{TRACE}</think>\n4", "thinking": TRACE},  # the same trace twice is one trace
    ],
)
def test_every_spelling_becomes_reasoning_content(assistant):
    msg = to_messages(row(**assistant))[-1]
    assert msg == {"role": "assistant", "content": "4", "reasoning_content": TRACE}


@pytest.mark.parametrize(
    ("assistant", "code"),
    [
        ({"content": "4", "reasoning_content": "a", "thinking": "b"}, "conflicting_reasoning"),
        ({"content": "<think>started, never closed"}, "unclosed_reasoning"),
        ({"content": "<think>a</think>b<think>c</think>d"}, "multiple_reasoning_blocks"),
        ({"content": "Sure. <think>a</think>4"}, "text_before_reasoning"),
        ({"content": "4", "reasoning": 3}, "reasoning_not_string"),
    ],
)
def test_bad_traces_are_row_errors_never_silent(assistant, code):
    with pytest.raises(RowError) as exc:
        to_messages(row(**assistant))
    assert exc.value.code == code and exc.value.index == 1


def test_a_trace_on_a_user_message_is_an_error():
    with pytest.raises(RowError, match="carries `thinking`"):
        to_messages({"messages": [{"role": "user", "content": "hi", "thinking": "x"}, {"role": "assistant", "content": "a"}]})


def test_sources_count_where_traces_come_from():
    raw = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking": "t"},
        {"role": "assistant", "content": "<think>t</think>a"},
        {"role": "assistant", "content": "a", "reasoning_content": ""},
    ]
    assert sources(raw) == {"thinking": 1, "inline": 1, "reasoning_content": 1, "empty": 1}


# A two-turn conversation with a trace on both answers.
CONV = to_messages(
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": TRACE},
        ]
    }
)
FIXTURES = list(FAMILY_FIXTURES)


@pytest.fixture(scope="module")
def toks():
    return {name: family_tokenizer(name) for name in FIXTURES}


@pytest.mark.parametrize("name", FIXTURES)
def test_train_learns_the_trace_mask_shows_it_drop_removes_it(toks, name):
    tok = toks[name]
    trained = tokenize_example(tok, CONV, reasoning="train")
    last = trained_runs(tok, trained.input_ids, trained.labels)[-1]
    assert TRACE in last and last.rstrip().endswith(("4<|eot_id|>", "4<|im_end|>", "4<end_of_turn>", "4</s>", "4<|end|>"))
    assert trained.counts["traces_trained"] == 1

    masked = tokenize_example(tok, CONV, reasoning="mask")
    runs = trained_runs(tok, masked.input_ids, masked.labels)
    assert TRACE in tok.decode(masked.input_ids) and not any(TRACE in r for r in runs)
    assert runs[-1].lstrip().startswith("4") and masked.counts["traces_masked"] == 1

    dropped = tokenize_example(tok, CONV, reasoning="drop")
    assert TRACE not in tok.decode(dropped.input_ids) and dropped.counts["traces_dropped"] == 2


@pytest.mark.parametrize("name", FIXTURES)
def test_earlier_traces_are_not_rendered_and_that_turn_is_not_trained(toks, name):
    """At inference the history carries no earlier trace (clients send content back; Qwen 3's template strips
    it): training renders it the same way, and does not train an answer whose trace it could not show."""
    tok = toks[name]
    t = tokenize_example(tok, CONV)
    assert "A greeting." not in tok.decode(t.input_ids)
    assert t.counts["history_traces_stripped"] == 1 and t.counts["turns_not_trainable"] == 1
    assert not any("Hello!" in r for r in trained_runs(tok, t.input_ids, t.labels))


def test_qwen3_empty_trace_is_prompt_not_target(toks):
    """Qwen 3's template opens the last answer with an empty <think></think> when there is no trace: it belongs
    to the prompt (thinking off), never to the loss."""
    tok = toks["qwen3"]
    conv = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert "<think>\n\n</think>\n\n4" in tok.apply_chat_template(conv, tokenize=False)
    t = tokenize_example(tok, conv)
    assert trained_runs(tok, t.input_ids, t.labels) == ["4<|im_end|>"] and t.thinking is False
    assert render_prompt(tok, conv[:1], thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("name", ["qwen3", "llama3", "gemma3"])
def test_an_empty_trace_is_counted_and_never_trained(toks, name):
    tok = toks[name]
    conv = to_messages(row(content="4", reasoning_content="  "))
    t = tokenize_example(tok, conv)
    assert t.counts["empty_traces"] == 1 and "traces_trained" not in t.counts
    assert not any("think>" in r for r in trained_runs(tok, t.input_ids, t.labels))


def test_a_template_that_inserts_an_empty_trace_into_the_answer_keeps_it_out_of_the_loss(toks):
    tok = family_tokenizer("unknown")
    tok.chat_template = tok.chat_template.replace(
        '"ASSISTANT: " + message.content', '"ASSISTANT: <think>\\n\\n</think>\\n\\n" + message.content'
    )
    conv = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    t = tokenize_example(tok, conv)
    assert trained_runs(tok, t.input_ids, t.labels) == ["4</s>"] and t.counts["empty_traces_untrained"] == 1


def test_qwen3_keeps_traces_of_tool_steps_after_the_last_question(toks):
    tok = toks["qwen3"]
    conv = to_messages(
        {
            "messages": [
                {"role": "user", "content": "Add 1 and 2."},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "I should call add.",
                    "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
                },
                {"role": "tool", "content": "3"},
                {"role": "assistant", "content": "3", "reasoning_content": "The tool said 3."},
            ]
        }
    )
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    rendered = render_turns(tok, conv, tools=tools)
    assert "I should call add." in rendered.text and rendered.counts["turns_trained"] == 2


@pytest.mark.parametrize(
    ("text", "opened", "expected"),
    [
        ("4", False, Split(None, "4")),
        ("<think>\nadd\n</think>\n\n4", False, Split("add", "4")),
        ("<think>\n\n</think>\n\n4", False, Split("", "4")),
        ("<think>\nadd and then", False, Split("add and then", "", closed=False)),
        ("add</think>\n\n4", True, Split("add", "4")),
        ("add and then", True, Split("add and then", "", closed=False)),
    ],
)
def test_split_output(text, opened, expected):
    assert split_output(text, opened_in_prompt=opened) == expected


def test_thinking_mode_of_a_run():
    assert thinking_mode([None, None]) is None
    assert thinking_mode([False, True, False]) is True
    assert thinking_mode([False, False]) is False
