"""The shapes added to formats.py: preference pairs, OpenAI DPO, prompt-only, names and tool calls."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import (
    RowError,
    detect_shape,
    to_messages,
    to_preference,
    to_prompt_only,
)

U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


def test_preference_string_and_conversational_forms():
    flat = to_preference({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert flat == {
        "prompt": [U],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    conv = to_preference({"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "b"}]})
    assert conv["prompt"] == [U] and conv["chosen"] == [A]


def test_implicit_prompt_is_the_shared_prefix():
    pair = to_preference({"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "worse"}]})
    assert pair["prompt"] == [U] and pair["chosen"] == [A] and pair["rejected"][0]["content"] == "worse"


def test_openai_dpo_shape():
    row = {
        "input": {"messages": [U], "tools": [], "parallel_tool_calls": True},
        "preferred_output": [A],
        "non_preferred_output": [{"role": "assistant", "content": "meh"}],
    }
    assert detect_shape(row) == "openai_dpo"
    pair = to_preference(row)
    assert pair["prompt"] == [U] and pair["chosen"] == [A]
    assert to_messages(row) == [U, A]  # SFT on a preference row learns the chosen answer
    assert to_prompt_only(row) == [U]


@pytest.mark.parametrize(
    "row, code",
    [
        ({"prompt": "q", "chosen": "", "rejected": "b"}, None),  # empty answers are the audit's business
        ({"prompt": "q", "chosen": [], "rejected": "b"}, "missing_chosen"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "missing_rejected"),
        ({"chosen": "a", "rejected": "b"}, "missing_prompt"),
        ({"input": {}, "preferred_output": [A], "non_preferred_output": [A]}, "missing_prompt"),
        ({"prompt": "q", "chosen": [U], "rejected": [A]}, "missing_chosen"),
        ({"messages": [U, A]}, "not_preference"),
        ("text", "data_type"),
    ],
)
def test_preference_errors_have_codes(row, code):
    if code is None:
        to_preference(row)
        return
    with pytest.raises(RowError) as exc:
        to_preference(row)
    assert exc.value.code == code


def test_prompt_only_rows():
    assert detect_shape({"prompt": "solve 2+2"}) == "prompt_only"
    assert to_prompt_only({"prompt": "solve 2+2"}) == [{"role": "user", "content": "solve 2+2"}]
    assert to_prompt_only({"messages": [{"role": "system", "content": "s"}, U, A]}) == [{"role": "system", "content": "s"}, U]
    assert to_prompt_only({"messages": [U]}) == [U]
    with pytest.raises(RowError) as exc:
        to_messages({"prompt": "solve 2+2"})
    assert exc.value.code == "missing_assistant_message"
    with pytest.raises(RowError) as exc:
        to_prompt_only({"messages": [A]})
    assert exc.value.code == "missing_prompt"


def test_names_and_tool_calls_in_messages():
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    row = {
        "messages": [
            {"role": "user", "content": "find it", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "found", "tool_call_id": "c1"},
            {"role": "assistant", "content": "here it is"},
        ]
    }
    assert len(to_messages(row)) == 4
    bad = {"messages": [U, {"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}]}
    with pytest.raises(RowError) as exc:
        to_messages(bad)
    assert (exc.value.code, exc.value.index) == ("invalid_tool_call", 1)
    with pytest.raises(RowError) as exc:
        to_messages({"messages": [U, {"role": "assistant", "content": None}]})
    assert exc.value.code == "content_not_string"  # null content is only allowed with a tool call
